"""PPO metrics-log constants and summaries (no torch import, so the app and eval read logs cheaply)."""
from __future__ import annotations

KL_BAND = (0.02, 0.1)  # target KL to the reference, nats per token
LAST_PASS = "last pass"  # the one named window of a run's end: its last pass over the prompts (bench/seeds.py too)


def summarize_metrics(metrics: list[dict], k: int | None = None) -> dict:
    """Mean score and per-token KL over the first and last steps of a run.

    When the run made two or more passes over its prompts, the windows are the first and the last
    pass: the same prompts in both, so the comparison is not confounded by which prompts were drawn.
    Otherwise (or when `k` is given) they are the first and last k steps (a quarter of the run).
    """
    if not metrics:
        return {}
    passes = sorted({r["pass"] for r in metrics if "pass" in r})
    if k is None and len(passes) >= 2:
        first = [r for r in metrics if r.get("pass") == passes[0]]
        last = [r for r in metrics if r.get("pass") == passes[-1]]
        k, windows = min(len(first), len(last)), "passes"
        first, last = first[:k], last[:k]
    else:
        k = k or max(1, len(metrics) // 4)
        first, last, windows = metrics[:k], metrics[-k:], "steps"

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    def se(rows, key):  # standard error of a window mean, over its steps
        if len(rows) < 2:
            return float("nan")
        m = mean(rows, key)
        return (sum((r[key] - m) ** 2 for r in rows) / (len(rows) - 1) / len(rows)) ** 0.5

    def exact_mean(rows):  # logs written before the exact KL was logged have none: None, not a wrong number
        values = [r.get("kl_exact_per_token") for r in rows]
        return sum(values) / len(values) if values and all(v is not None for v in values) else None

    def exact_se(rows):  # standard error of the window's exact KL over its steps (None where not logged)
        values = [r.get("kl_exact_per_token") for r in rows]
        if len(values) < 2 or any(v is None for v in values):
            return None
        m = sum(values) / len(values)
        return (sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5

    gain = paired_pass_gain(metrics) if windows == "passes" else None
    return {"steps_logged": len(metrics), "window_steps": k, "windows": windows, "paired_score_gain": gain,
            "window_label": (f"first vs {LAST_PASS} over the same prompts ({k} steps each)" if windows == "passes"
                             else f"first vs last {k} steps (one pass only: no {LAST_PASS} to compare)"),
            "last_window_name": LAST_PASS if windows == "passes" else f"last {k} steps",
            "score_first": mean(first, "score"), "score_last": mean(last, "score"),
            "score_first_se": se(first, "score"), "score_last_se": se(last, "score"),
            "kl_per_token_first": mean(first, "kl_per_token"), "kl_per_token_last": mean(last, "kl_per_token"),
            "kl_per_token_final": metrics[-1]["kl_per_token"], "kl_coef_final": metrics[-1]["kl_coef"],
            # what kl_per_token is (TRL's estimate: k1 for PPO and RLOO, k3 for GRPO) and the exact KL beside it
            "kl_estimator": metrics[-1].get("kl_estimator", "k1"),
            "kl_exact_per_token_first": exact_mean(first), "kl_exact_per_token_last": exact_mean(last),
            "kl_exact_per_token_last_se": exact_se(last),
            "kl_controller_estimator": metrics[-1].get("kl_controller_estimator")}


def band_kl(summary: dict) -> tuple[float, str]:
    """(KL per token of the last window, its name): the exact KL where the log has it, else TRL's estimate."""
    if summary.get("kl_exact_per_token_last") is not None:
        return summary["kl_exact_per_token_last"], "exact"
    return summary.get("kl_per_token_last", float("nan")), summary.get("kl_estimator", "k1")


def paired_pass_gain(metrics: list[dict], samples: int = 2000) -> dict | None:
    """Score gain from the first to the last pass, paired by prompt: per prompt, its rollout's score
    in the last pass minus in the first; mean with a 95 % bootstrap interval over prompts."""
    passes = sorted({r["pass"] for r in metrics if "pass" in r})
    if len(passes) < 2 or not all("rollout_scores" in r for r in metrics):
        return None

    def by_prompt(p):
        out: dict[int, list[float]] = {}
        for r in metrics:
            if r.get("pass") == p:
                for key, score in zip(r["rollout_prompts"], r["rollout_scores"]):
                    out.setdefault(key, []).append(score)
        return {k: sum(v) / len(v) for k, v in out.items()}

    first, last = by_prompt(passes[0]), by_prompt(passes[-1])
    common = sorted(set(first) & set(last))
    if len(common) < 2:
        return None
    from rlhflab.measure.stats import bootstrap_ci

    mean, low, high = bootstrap_ci([last[k] - first[k] for k in common], samples=samples, seed=7)
    return {"mean": mean, "low": low, "high": high, "n_prompts": len(common),
            "label": "last pass minus first pass, same prompts, 95 % bootstrap over prompts"}


def format_gain(gain: dict | None) -> str:
    """'+0.280 [+0.050, +0.510] (n = 48 prompts)' or 'n/a' when the run has no paired passes."""
    if not gain:
        return "n/a (needs two passes over the prompts)"
    from rlhflab.measure.stats import format_interval

    return f"{format_interval(gain['mean'], gain['low'], gain['high'], signed=True)} (n = {gain['n_prompts']} prompts)"


def run_summary_table(summaries: dict[str, dict]) -> str:
    """The one table of RL runs (PPO, GRPO): the exact KL (Σ_v p log p/q at each response position) and TRL's
    sampled estimate (k1 or k3, named), first → last window, and whether the last window is in the band (judged on
    the exact KL where logged); score first → last (± standard error over steps), the score gain paired by prompt,
    the final β. The model cards, report.md and the app's curves tab all show it."""
    from rlhflab.store.cards import markdown_table

    lo, hi = KL_BAND
    rows = []
    for name, s in summaries.items():
        if not s:
            continue
        exact_first, exact_last = s.get("kl_exact_per_token_first"), s.get("kl_exact_per_token_last")
        exact = (f"{exact_first:.4f} → {exact_last:.4f}" if exact_first is not None and exact_last is not None
                 else "not logged")
        band, band_name = band_kl(s)
        rows.append([name, s["steps_logged"], exact,
                     f"{s['kl_per_token_first']:.4f} → {s['kl_per_token_last']:.4f} ({s.get('kl_estimator', 'k1')})",
                     f"{'yes' if lo <= band <= hi else 'no'} ({band_name})",
                     f"{s['score_first']:.3f} ± {s.get('score_first_se', float('nan')):.3f} → "
                     f"{s['score_last']:.3f} ± {s.get('score_last_se', float('nan')):.3f}",
                     s.get("window_label", ""), format_gain(s.get("paired_score_gain")), f"{s['kl_coef_final']:.4f}"])
    if not rows:
        return "No RL training logs."
    return markdown_table(["run", "steps logged", "exact KL nats/token, first → last window",
                           "TRL's sampled KL estimate nats/token, first → last window",
                           f"last window in {lo}–{hi}?",
                           "reward-model score, first → last (± SE over steps)", "windows",
                           "score gain, paired by prompt (95 % CI)", "final β"], rows)
