"""Evaluation of the policies: gains under the training reward model and an independent judge (paired intervals,
length-controlled), KL to base, agreement with the raters, curves, rating items, report."""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from rlhflab.config import EvalConfig
from rlhflab.data.oasst1 import read_prompts
from rlhflab.errors import UserError
from rlhflab.generation.sampling import GenerationSettings, generate_batch
from rlhflab.measure import overopt, stats
from rlhflab.measure.kl import exact_kl_of_responses, kl_per_token, response_logprobs
from rlhflab.measure.overopt import JUDGE_COMMAND, read_overopt
from rlhflab.measure.ppo_metrics import run_summary_table, summarize_metrics
from rlhflab.measure.scoring import score_responses
from rlhflab.models.hardware import follow_thread_share
from rlhflab.models.loading import load_reward_model
from rlhflab.models.policies import PolicySet
from rlhflab.models.precision import autocast, policy_dtype
from rlhflab.store.cards import Timer, command_line, markdown_table
from rlhflab.store.checkpoints import METRICS_FILE, REPORT_FILE, RESULTS_FILE, resolve_checkpoint
from rlhflab.store.jsonio import read_jsonl, write_json
from rlhflab.store.ratings import RatingsStore, aggregate_markdown, preference_pairs

NO_JUDGE = f"n/a (no judge: train one with `{JUDGE_COMMAND}`)"


OVEROPT_FIGURE = "overoptimisation"


def heldout_prompts(cfg: EvalConfig, policy_dirs: dict[str, Path]) -> tuple[list[str], str]:
    """The held-out prompts (default: those the PPO runs saved) — refused if any was trained on."""
    if cfg.prompts:
        prompts, source = read_prompts(cfg.prompts), cfg.prompts
    else:
        files = [d / "heldout_prompts.jsonl" for d in policy_dirs.values() if (d / "heldout_prompts.jsonl").is_file()]
        if not files:
            raise UserError("no held-out prompt set found in the PPO checkpoints; pass --prompts FILE.jsonl "
                            "(a JSONL of {\"prompt\": ...}) or train with training/ppo.py first.")
        prompts, source = read_prompts(files[0]), str(files[0])
    trained: set[str] = set()
    for d in policy_dirs.values():
        if (d / "train_prompts.jsonl").is_file():
            trained |= set(read_prompts(d / "train_prompts.jsonl"))
    overlap = [p for p in prompts if p in trained]
    if overlap:
        raise UserError(f"{len(overlap)} of the evaluation prompts in {source} were used in PPO training; "
                        f"evaluate on held-out prompts only.")
    if len(prompts) < min(cfg.num_prompts, 50):
        print(f"warning: only {len(prompts)} held-out prompts available (asked for {cfg.num_prompts}).", flush=True)
    return prompts[:cfg.num_prompts], source


def _settings(cfg: EvalConfig) -> GenerationSettings:
    return GenerationSettings(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                              repetition_penalty=cfg.repetition_penalty, max_new_tokens=cfg.max_new_tokens,
                              seed=cfg.seed, greedy=cfg.greedy).validate()


def run_evaluation(cfg: EvalConfig, progress=print) -> Path:
    with autocast(cfg.bf16):  # every policy and the reward model under the same numerics
        return _run_evaluation(cfg, progress)


def policy_sources(cfg: EvalConfig) -> dict[str, Path]:
    """The policy checkpoints to evaluate (key -> folder): --policies all means every policy in the store;
    --full-model / --lora-model name the PPO runs' folders."""
    from rlhflab.config import CHECKPOINTS_DIR
    from rlhflab.models.policies import discover_policies

    store = Path(cfg.full_model).parent if Path(cfg.full_model).parent.is_dir() else CHECKPOINTS_DIR
    found = {k: Path(e.source) for k, e in discover_policies(store).items()}
    overrides = {"full": Path(cfg.full_model), "lora": Path(cfg.lora_model)}
    names = [n.strip() for n in cfg.policies.split(",") if n.strip()]
    if names == ["all"]:
        found.update({k: p for k, p in overrides.items() if p.is_dir()})
        return {k: found[k] for k in found}
    out = {}
    for name in names:
        if name == "base":
            continue
        path = overrides.get(name) if name in overrides else found.get(name, store / name)
        out[name] = resolve_checkpoint(path)
    return out


@contextlib.contextmanager
def _model_of(policies: PolicySet, name: str):
    with policies.use(name) as (model, _):
        yield model


def best_of_n_values(cfg: EvalConfig) -> list[int]:
    try:
        values = [int(v) for v in cfg.best_of_n.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--best-of-n takes comma-separated whole numbers (e.g. 4,16), got {cfg.best_of_n!r}.") from None
    if any(n < 2 or n > 64 for n in values):
        raise UserError(f"--best-of-n values must be between 2 and 64, got {cfg.best_of_n!r}.")
    return values


def best_of_n_kl_bound(n: int) -> float:
    """KL(best-of-n || base) <= log n - (n - 1)/n nats per sequence (an upper bound, tight for distinct samples)."""
    return math.log(n) - (n - 1) / n


def heldout_accuracy(name_or_path: str) -> list[float] | None:
    """A reward model's accuracy [point, low, high] on its test pairs (its reward_eval.json), None if not measured."""
    path = Path(name_or_path) / "reward_eval.json"
    if not path.is_file():
        return None
    try:
        acc = json.loads(path.read_text(encoding="utf-8")).get("accuracy")
        return [float(x) for x in acc] if isinstance(acc, list) and len(acc) == 3 else None
    except (ValueError, OSError, TypeError, AttributeError):
        return None


def load_judge(cfg: EvalConfig):
    """(model, tokenizer, info) of the independent judge, or (None, None, info) saying why there is none: a missing
    or unloadable judge leaves the judge columns n/a instead of stopping the evaluation."""
    model, tok, note = overopt.load_judge(cfg.judge_model, reward_model=cfg.reward_model)
    info = {"model": cfg.judge_model, "available": model is not None, "accuracy": None, "note": note or ""}
    if model is not None:
        info["accuracy"] = heldout_accuracy(str(resolve_checkpoint(cfg.judge_model)))
    return model, tok, info


def scorer_agreement(scores: dict[str, dict[str, np.ndarray]], names: list[str]) -> dict | None:
    """Training RM vs judge on the evaluated responses: over every two policies' responses to the same prompt, how
    often both put them in the same order (pairs either one ties left out), with a Wilson interval."""
    if "judge" not in scores:
        return None
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    if not pairs:
        return stats.order_agreement([], [], [], [])
    rm, judge = scores["reward_model"], scores["judge"]
    return stats.order_agreement(np.concatenate([rm[a] for a, _ in pairs]), np.concatenate([rm[b] for _, b in pairs]),
                                 np.concatenate([judge[a] for a, _ in pairs]),
                                 np.concatenate([judge[b] for _, b in pairs]))


def rater_agreement(store: RatingsStore, scorers: dict[str, tuple], batch_size: int) -> dict:
    """For each comparison a blind rater made (two responses to one prompt, one rated higher), does the reward
    model (and the judge) score the rater's preferred response higher? The rated texts are scored afresh, so
    ratings of earlier evaluations' responses count too."""
    pairs, ties = preference_pairs(store.ratings())
    out = {"comparisons": len(pairs), "rater_ties": ties}
    if not pairs:
        return out
    prompts = [p["prompt"] for p in pairs]
    for key, (model, tok) in scorers.items():
        preferred = np.array(score_responses(model, tok, prompts, [p["preferred"] for p in pairs], batch_size))
        other = np.array(score_responses(model, tok, prompts, [p["other"] for p in pairs], batch_size))
        agree, n = int((preferred > other).sum()), len(pairs)  # a tie by the model does not side with the rater
        out[key] = {"agree": agree, "n": n, "rate": list(stats.wilson_interval(agree, n))}
    return out


def _gain_fields(entry: dict, prefix: str, mine: np.ndarray, base: np.ndarray, b: int) -> None:
    """Paired gain and win rate (ties half) with wins/ties/losses under one scorer."""
    entry[f"{prefix}gain_vs_base"] = list(stats.paired_bootstrap_diff(mine, base, samples=b, seed=3))
    wtl = stats.win_rate_with_ties(mine, base, samples=b, seed=6)
    entry[f"{prefix}win_rate_vs_base"] = wtl["rate"]
    entry[f"{prefix}wins_ties_losses_vs_base"] = [wtl["wins"], wtl["ties"], wtl["losses"]]


def _run_evaluation(cfg: EvalConfig, progress) -> Path:
    timer = Timer()
    policy_dirs = policy_sources(cfg)
    names = ["base", *policy_dirs] if ("base" in cfg.policies.split(",") or cfg.policies == "all") else list(policy_dirs)
    bon = best_of_n_values(cfg)
    if bon and "base" not in names:
        raise UserError("--best-of-n samples from the base model: include base in --policies.")
    prompts, prompt_source = heldout_prompts(cfg, policy_dirs)
    policies = PolicySet(cfg.base_model, {k: str(p) for k, p in policy_dirs.items()}, dtype=policy_dtype(cfg.bf16))
    reward_model, reward_tok = load_reward_model(cfg.reward_model)
    judge_model, judge_tok, judge = load_judge(cfg)
    if not judge["available"]:
        progress(judge["note"])
    settings = _settings(cfg)
    torch.manual_seed(cfg.seed)

    responses: dict[str, list[str]] = {}
    response_ids: dict[str, list[list[int]]] = {}
    tokens: dict[str, list[int]] = {}
    finished: dict[str, list[bool]] = {}
    logps: dict[str, list[torch.Tensor]] = {}
    for name in names:
        t = Timer()
        follow_thread_share()  # under the pipeline, take a core freed by the step beside this one
        with policies.use(name) as (model, tok):
            gens = generate_batch(model, tok, prompts, settings, batch_size=cfg.batch_size)
            responses[name] = [g.text for g in gens]
            response_ids[name] = [g.token_ids or [] for g in gens]
            tokens[name] = [g.num_tokens for g in gens]
            finished[name] = [g.finished for g in gens]
            if name != "base":
                logps[name] = response_logprobs(model, tok, prompts, responses[name], cfg.batch_size)
        progress(f"generated {len(prompts)} responses with {name} in {t.elapsed_s:.0f} s")
    base_logps = {}
    follow_thread_share()
    if "base" in names:
        with policies.use("base") as (model, tok):
            for name in logps:
                base_logps[name] = response_logprobs(model, tok, prompts, responses[name], cfg.batch_size)
    exact: dict[str, tuple[list[float], list[int]]] = {}
    if "base" in names:
        with policies.use("base") as (_, tokenizer):
            pass
        for name in logps:
            follow_thread_share()
            exact[name] = exact_kl_of_responses(partial(_model_of, policies, name), partial(_model_of, policies, "base"),
                                                tokenizer, prompts, response_ids[name], temperature=cfg.temperature,
                                                batch_size=cfg.batch_size)
    follow_thread_share()
    rewards = {n: np.array(score_responses(reward_model, reward_tok, prompts, responses[n], cfg.batch_size))
               for n in names}
    judged: dict[str, np.ndarray] = {}
    if judge_model is not None:
        judged = {n: np.array(score_responses(judge_model, judge_tok, prompts, responses[n], cfg.batch_size))
                  for n in names}
    progress(f"scored {len(names) * len(prompts)} responses" + (" and judged them" if judged else ""))
    for n_samples in bon:  # n base samples per prompt (seeded apart from the base row's), the reward model's pick
        t = Timer()
        key = f"best-of-{n_samples}"
        with policies.use("base") as (model, tok):
            samples = generate_batch(model, tok, [p for p in prompts for _ in range(n_samples)],
                                     GenerationSettings(**{**settings.as_dict(), "seed": settings.seed + n_samples}),
                                     batch_size=cfg.batch_size)
        scores = np.array(score_responses(reward_model, reward_tok, [p for p in prompts for _ in range(n_samples)],
                                          [g.text for g in samples], cfg.batch_size)).reshape(len(prompts), n_samples)
        pick = scores.argmax(1)
        chosen = [samples[i * n_samples + j] for i, j in enumerate(pick)]
        responses[key], tokens[key] = [g.text for g in chosen], [g.num_tokens for g in chosen]
        finished[key] = [g.finished for g in chosen]
        rewards[key] = scores[np.arange(len(prompts)), pick]
        if judge_model is not None:  # the judge sees only the pick: it never chooses, so its gain is not selected for
            judged[key] = np.array(score_responses(judge_model, judge_tok, prompts, responses[key], cfg.batch_size))
        names.append(key)
        progress(f"best-of-{n_samples} from the base: {n_samples * len(prompts)} samples in {t.elapsed_s:.0f} s")

    b = cfg.bootstrap_samples
    results = {"command": command_line(), "settings": asdict(cfg), "generation": settings.as_dict(),
               "policy_weights_dtype": str(policies.dtype).replace("torch.", ""),
               "prompt_source": prompt_source, "num_prompts": len(prompts), "units": {
                   "reward": "reward-model score (logit, higher is better)",
                   "judge": "judge reward-model score (logit, higher is better; its own scale)",
                   "kl": "nats per token", "length": "response tokens",
                   "length_slope": "score per response token"},
               "reward_model": {"model": cfg.reward_model,
                                "accuracy": heldout_accuracy(str(resolve_checkpoint(cfg.reward_model)))},
               "judge": judge, "policies": {}}
    for n in names:
        entry = {"n": len(prompts), "reward_mean": list(stats.bootstrap_ci(rewards[n], samples=b, seed=1)),
                 "response_tokens_mean": list(stats.bootstrap_ci(tokens[n], samples=b, seed=2)),
                 "reward_length_pearson_r": stats.pearson(rewards[n], tokens[n]),
                 "cut_rate": float(1 - np.mean(finished[n])),
                 "source": (policies.source(n) if n == "base" else str(policy_dirs[n]) if n in policy_dirs
                            else f"{n} samples of the base, reranked by the reward model")}
        if n in judged:
            entry["judge_mean"] = list(stats.bootstrap_ci(judged[n], samples=b, seed=1))
        if n.startswith("best-of-"):
            n_samples = int(n.rsplit("-", 1)[1])
            entry["kl_bound_per_sequence"] = best_of_n_kl_bound(n_samples)
            entry["kl_bound_per_token"] = best_of_n_kl_bound(n_samples) / max(float(np.mean(tokens[n])), 1.0)
        if n != "base" and "base" in names:
            _gain_fields(entry, "", rewards[n], rewards["base"], b)  # ties count half
            if n in judged:
                _gain_fields(entry, "judge_", judged[n], judged["base"], b)
            controlled = {}
            for scorer, scores in (("reward_model", rewards), ("judge", judged)):
                if n in scores:
                    *gain, slope = stats.length_controlled_gain(scores[n], scores["base"], tokens[n], tokens["base"],
                                                                samples=b, seed=7)
                    controlled[scorer] = {"gain": gain, "slope_per_token": slope}
            entry["length_controlled"] = controlled
            headline = "judge" if "judge" in controlled else "reward_model"
            entry["length_controlled_gain_vs_base"] = controlled[headline]["gain"]
            entry["length_controlled_scorer"] = headline.replace("_", " ")
            if n in exact:
                # Exact KL over the vocabulary on the tokens the policy generated (end-of-turn included), with both
                # models' next-token distributions at the sampling temperature (softmax(logits / T), as PPO's KL is
                # computed; top-k/top-p left out), as total KL / total tokens with a bootstrap over prompts.
                entry["kl_per_token_to_base"] = list(stats.ratio_bootstrap_ci(*exact[n], samples=b, seed=4))
                entry["kl_estimator"] = f"exact, softmax(logits / {cfg.temperature}), total KL / total tokens"
                entry["kl_per_sequence_to_base"] = float(np.mean(exact[n][0]))
                k1 = kl_per_token(logps[n], base_logps[n])  # the earlier estimate, on re-tokenised text, for comparison
                entry["kl_k1_per_token_to_base"] = list(stats.bootstrap_ci(k1, samples=b, seed=4))
                records = read_jsonl(Path(policy_dirs[n]) / METRICS_FILE) if n in policy_dirs else []
                if records and "kl_coef" in records[0]:  # an RL run's own log of the same quantity, set beside it
                    entry["kl_exact_per_token_training_last"] = summarize_metrics(records).get("kl_exact_per_token_last")
            entry["length_gain_vs_base"] = list(stats.paired_bootstrap_diff(tokens[n], tokens["base"], samples=b,
                                                                            seed=5))
        results["policies"][n] = entry
    results["training_curves"] = {n: summarize_metrics(records) for n in policy_dirs
                                  if (records := read_jsonl(policy_dirs[n] / METRICS_FILE))
                                  and "kl_coef" in records[0]}  # the RL runs (PPO, GRPO); SFT/DPO log other fields
    results["examples"] = [{"prompt": prompts[i], **{n: responses[n][i] for n in names},
                            **{f"{n}_reward": float(rewards[n][i]) for n in names},
                            **{f"{n}_judge": float(judged[n][i]) for n in judged}} for i in range(min(5, len(prompts)))]
    results["per_prompt"] = {n: {"reward": rewards[n].round(4).tolist(), "tokens": tokens[n],
                                 **({"judge": judged[n].round(4).tolist()} if n in judged else {})} for n in names}

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = RatingsStore(cfg.ratings_db)
    scorers = {"reward_model": (reward_model, reward_tok),
               **({"judge": (judge_model, judge_tok)} if judge_model is not None else {})}
    results["agreement"] = {"reward_model_vs_judge": scorer_agreement(
                                {"reward_model": rewards, **({"judge": judged} if judged else {})}, names),
                            "raters": rater_agreement(store, scorers, cfg.batch_size)}
    k = min(cfg.num_rating_prompts, len(prompts))
    rated = [n for n in names if not n.startswith("best-of-")]
    store.replace_items([{"prompt_index": i, "prompt": prompts[i], "policy": n, "response": responses[n][i]}
                         for i in range(k) for n in rated])
    results["rating_items"] = {"prompts": k, "policies": rated, "db": str(cfg.ratings_db),
                               "cut_rate": {n: float(1 - np.mean(finished[n][:k])) for n in rated}}
    results["overopt_runs"] = [n for n, d in policy_dirs.items() if read_overopt(d)]
    results["seconds"] = timer.elapsed_s
    write_json(out / RESULTS_FILE, results)
    _write_figures(out, policy_dirs, results)
    (out / REPORT_FILE).write_text(render_report(results, store), encoding="utf-8")
    progress(f"evaluation written to {out} ({timer.elapsed_s:.0f} s)")
    return out


def _write_figures(out: Path, policy_dirs: dict[str, Path], results: dict) -> None:
    from rlhflab.measure.plots import overoptimisation_figure, reward_comparison_figure, training_curves_figure

    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    runs = {{"full": "ppo-full", "lora": "ppo-lora"}.get(n, n): records for n, d in policy_dirs.items()
            if (records := read_jsonl(d / METRICS_FILE)) and "kl_coef" in records[0]}
    for fig, name in ((training_curves_figure(runs), "kl_per_token"),
                      (training_curves_figure(runs, per_sequence=True), "kl_per_sequence"),
                      (reward_comparison_figure(results), "reward_by_policy")):
        (figs / f"{name}.json").write_text(fig.to_json(), encoding="utf-8")
        fig.write_html(figs / f"{name}.html", include_plotlyjs=True, full_html=True)
    checks = {{"full": "ppo-full", "lora": "ppo-lora"}.get(n, n): records for n, d in policy_dirs.items()
              if (records := read_overopt(d))}
    if checks:
        fig, name = overoptimisation_figure(checks), OVEROPT_FIGURE
        (figs / f"{name}.json").write_text(fig.to_json(), encoding="utf-8")
        fig.write_html(figs / f"{name}.html", include_plotlyjs=True, full_html=True)


def _ci(v, digits=3, pct=False, signed=False):
    """results.json's [estimate, low, high] as text; '—' when it is missing or malformed (the app reads files
    written by other versions), 'n/a' when it could not be estimated (nan)."""
    try:
        est, lo, hi = (float(x) for x in v)
    except (TypeError, ValueError):
        return "—"
    if math.isnan(est):
        return "n/a"
    if math.isnan(lo) or math.isnan(hi):
        return f"{est:{'+' if signed else ''}.{digits}f} [no interval]"
    return stats.format_interval(est, lo, hi, 1 if pct else digits, pct=pct, signed=signed)


def _win(e: dict, prefix: str = "") -> str:
    """Win rate (ties half) with its interval, then wins/ties/losses."""
    rate = _ci(e.get(f"{prefix}win_rate_vs_base"), pct=True)
    wtl = e.get(f"{prefix}wins_ties_losses_vs_base")
    if isinstance(wtl, list) and len(wtl) == 3:
        return f"{rate} ({'/'.join(str(x) for x in wtl)})"
    return rate


def _judge_state(results: dict) -> str:
    """'yes', 'no' (this evaluation had no judge) or 'unknown' (results written before the judge existed)."""
    judge = results.get("judge")
    if not isinstance(judge, dict):
        return "unknown"
    return "yes" if judge.get("available") else "no"


def policy_results_table(results: dict) -> str:
    """The one results table of every evaluated policy (report.md and the app's Evaluation tab), in two parts:
    gains over the base under the training reward model and under the independent judge (paired intervals, win
    rates with wins/ties/losses, the length-controlled gain), then what each gain cost: exact KL to the base (a
    bound for best-of-n), length, cut rate, reward-length correlation."""
    pols = {k: e for k, e in (results.get("policies") or {}).items() if isinstance(e, dict)}
    if not pols:
        return "results.json lists no policies."
    judge = _judge_state(results)
    gains, costs = [], []
    for name, e in pols.items():
        has_base = name != "base"
        if judge == "no" and has_base:
            j_gain, j_win = NO_JUDGE, "n/a"
        elif has_base:
            j_gain, j_win = _ci(e.get("judge_gain_vs_base"), signed=True), _win(e, "judge_")
        else:
            j_gain = j_win = "—"
        lc = _ci(e.get("length_controlled_gain_vs_base"), signed=True)
        if lc not in ("—", "n/a") and e.get("length_controlled_scorer"):
            lc += f" ({e['length_controlled_scorer']})"
        gains.append([name, _ci(e.get("reward_mean"), signed=True),
                      _ci(e.get("gain_vs_base"), signed=True) if has_base else "—",
                      _win(e) if has_base else "—", j_gain, j_win, lc if has_base else "—", e.get("n", "—")])
        kl = _ci(e.get("kl_per_token_to_base"), 4)
        if kl == "—" and isinstance(e.get("kl_bound_per_sequence"), (int, float)):
            kl = (f"≤ {e.get('kl_bound_per_token', float('nan')):.4f} (bound: log n − (n−1)/n = "
                  f"{e['kl_bound_per_sequence']:.3f} nats/sequence)")
        cut = f"{100 * e['cut_rate']:.0f} %" if isinstance(e.get("cut_rate"), (int, float)) else "—"
        r = e.get("reward_length_pearson_r")
        logged = e.get("kl_exact_per_token_training_last")
        costs.append([name, kl, f"{logged:.4f}" if isinstance(logged, (int, float)) else "—",
                      _ci(e.get("response_tokens_mean"), 1),
                      _ci(e.get("length_gain_vs_base"), 1, signed=True) if has_base else "—", cut,
                      _r(r) if isinstance(r, (int, float)) else "—"])
    gain_table = markdown_table(
        ["policy", "mean reward (training RM) [95 % CI]", "training-RM gain vs base",
         "training-RM win rate, ties half (W/T/L)", "judge gain vs base", "judge win rate, ties half (W/T/L)",
         "length-controlled gain (scorer)", "n prompts"], gains)
    cost_table = markdown_table(["policy", "KL to base (nats/token)", "training log's exact KL, last steps",
                                 "response tokens", "length change (tokens)",
                                 "cut at max tokens", "r(reward, length)"], costs)
    return ("**Gains over the base** (training reward model and independent judge)\n\n" + gain_table +
            "\n\n**What they cost** (exact KL to the base, length, responses cut at the token limit)\n\n" + cost_table)


def _r(value: float) -> str:
    return "n/a (lengths all equal)" if value != value else f"{value:.2f}"


def _accuracy(info) -> str:
    acc = info.get("accuracy") if isinstance(info, dict) else None
    text = _ci(acc, pct=True)
    return "held-out accuracy not measured (no reward_eval.json)" if text == "—" else \
        f"held-out accuracy {text} on its test pairs"


def scorers_markdown(results: dict) -> str:
    """Which models scored the responses, their held-out accuracy, and whether a judge was there (one line if not)."""
    rm, judge = results.get("reward_model") or {}, results.get("judge")
    lines = [f"- **Training reward model** `{rm.get('model', '?')}` — the one the RL policies were optimised "
             f"against: {_accuracy(rm)}."]
    if not isinstance(judge, dict):
        lines.append("- **Judge**: none (these results predate the independent judge).")
    elif judge.get("available"):
        lines.append(f"- **Judge** `{judge.get('model')}` — an independent reward model trained on a disjoint share "
                     f"of the preference data with its own seed, never used to train any policy: {_accuracy(judge)}.")
    else:
        lines.append(f"- **No judge**: {judge.get('note') or NO_JUDGE} — the judge columns are n/a.")
    return "\n".join(lines)


def _agreement_cell(a) -> str:
    if not isinstance(a, dict) or not a.get("n"):
        return "—"
    return f"{_ci(a.get('rate'), pct=True)} ({a.get('agree')} of {a['n']})"


def agreement_markdown(results: dict) -> str:
    """Agreement between the judge, the training reward model and the blind raters (Wilson intervals)."""
    agreement = results.get("agreement")
    if not isinstance(agreement, dict):
        return "Not measured (these results predate the agreement check)."
    lines = []
    pair = agreement.get("reward_model_vs_judge")
    if isinstance(pair, dict):
        lines.append(f"- **Training RM vs judge** on the evaluated responses (every two policies' answers to the same "
                     f"prompt, pairs either model ties left out): same order in {_agreement_cell(pair)} pairs.")
    else:
        lines.append("- **Training RM vs judge**: n/a (no judge).")
    raters = agreement.get("raters") or {}
    if not raters.get("comparisons"):
        lines.append("- **Raters**: no ratings yet (no rater has rated two different answers to one prompt "
                     "differently).")
    else:
        lines.append(f"- **Raters**: {raters['comparisons']} rated comparison(s) (two answers to one prompt, one rated "
                     f"higher on the mean of the five criteria; {raters.get('rater_ties', 0)} tied comparisons left "
                     f"out). The rater's preferred answer also scores higher under the training RM in "
                     f"{_agreement_cell(raters.get('reward_model'))}, under the judge in "
                     f"{_agreement_cell(raters.get('judge')) if 'judge' in raters else 'n/a (no judge)'}.")
    return "\n".join(lines)


def render_report(results: dict, store: RatingsStore | None = None) -> str:
    n = results["num_prompts"]
    pols = results["policies"]
    g = results["generation"]
    judged = _judge_state(results) == "yes"
    lines = ["# Evaluation report\n",
             f"Held-out prompts: **{n}** from `{results['prompt_source']}` (never used in PPO training). "
             f"Generation: {'greedy' if g['greedy'] else 'sampling'}, temperature {g['temperature']}, top-k {g['top_k']}, "
             f"top-p {g['top_p']}, repetition penalty {g['repetition_penalty']}, max {g['max_new_tokens']} new tokens, "
             f"seed {g['seed']} — identical for every policy.\n",
             "Scored by:\n", scorers_markdown(results) + "\n",
             "Intervals are 95 % bootstrap intervals over prompts (paired for gains and win rates; a tie counts half). "
             "Reward = reward-model score (logit); the judge's scores are on its own scale, so compare its gains, not "
             "its means, with the training RM's. The length-controlled gain is the gain left after an OLS fit of "
             "score on response length (tokens) with a policy indicator over the base's and the policy's responses "
             "(gain − slope × length change), its interval from resampling prompts and refitting; it is given under "
             "the judge when there is one. KL to base in nats per token: exact (Σ p log p/q over the vocabulary) "
             "on the tokens each policy generated, end-of-turn token included, both models at the sampling "
             "temperature, total KL ÷ total tokens.\n",
             "## Gains of every policy\n"]
    lines.append(policy_results_table(results))
    if any(name.startswith("best-of-") for name in pols):
        honest = ("its judge gain is the honest number." if judged else "only a judge can say what it is worth.")
        lines.append("\nBest-of-n rows draw n samples per prompt from the base and keep the training reward model's "
                     "pick: no weights change, and its KL to the base has no per-token log-probability to measure, so "
                     "the known upper bound is shown (per token: divided by the picked responses' mean length). The "
                     f"pick is made by the training RM, so its training-RM gain is selected for by construction; "
                     f"{honest}\n")
    controlled = []
    for name, e in pols.items():
        for scorer, label in (("reward_model", "training RM"), ("judge", "judge")):
            c = (e.get("length_controlled") or {}).get(scorer)
            if isinstance(c, dict) and isinstance(c.get("slope_per_token"), (int, float)):
                slope = c["slope_per_token"]
                fit = "no length variation to fit" if slope != slope else f"slope {slope:+.4f} per token"
                controlled.append(f"{name} under the {label}: {_ci(c.get('gain'), signed=True)} ({fit})")
    lines.append("\nIs the gain only length? Length change per policy: " + "; ".join(
        f"{name} {_ci(e['length_gain_vs_base'], 1, signed=True)} tokens" for name, e in pols.items()
        if "length_gain_vs_base" in e) + ". Length-controlled gains: " + ("; ".join(controlled) or "—") +
        ". A raw gain whose length-controlled gain is near zero was made of length.\n")
    lines.append("Mean reward per policy with its interval: `figures/reward_by_policy.html` (interactive; the app's "
                 "Evaluation tab draws it above this report).\n")
    lines.append("## Agreement: judge, training reward model and raters\n")
    lines.append(agreement_markdown(results) + "\n")
    lines.append("## KL and reward during the RL runs (PPO, GRPO)\n")
    lines.append(run_summary_table(results.get("training_curves", {})))
    lines.append("\nCurves (per token with the target band, and per sequence): `figures/kl_per_token.html`, "
                 "`figures/kl_per_sequence.html` — also in the app's Training curves tab.\n")
    if results.get("overopt_runs"):
        lines.append(f"Over-optimisation ({', '.join(results['overopt_runs'])}): training-RM and judge score on "
                     f"held-out prompts against exact KL per token during training, `figures/{OVEROPT_FIGURE}.html` "
                     f"— also in the Training curves tab. A training-RM curve that keeps rising while the judge's "
                     f"turns down is reward hacking.\n")
    lines.append("## Example responses\n")
    for ex in results["examples"][:3]:
        lines.append(f"**Prompt:** {ex['prompt']}\n")
        for name in pols:
            text = ex[name].replace("\n", " ")
            judge = f", judge {ex[f'{name}_judge']:.2f}" if f"{name}_judge" in ex else ""
            lines.append(f"- *{name}* (reward {ex[f'{name}_reward']:.2f}{judge}): {text}")
        lines.append("")
    lines.append("## Human evaluation (blind)\n")
    ri = results.get("rating_items", {})
    lines.append(f"{ri.get('prompts', 0)} prompts × {len(ri.get('policies', []))} policies stored for blind rating "
                 f"(app → Human evaluation tab, up to three responses at a time). Responses cut at the token limit "
                 f"(rate completeness with that in mind): " + ", ".join(
                     f"{n} {100 * r:.0f} %" for n, r in ri.get("cut_rate", {}).items()) + ". Current aggregate:\n")
    lines.append(aggregate_markdown(store.aggregate()) if store else "No ratings yet.")
    lines.append(f"\n---\nProduced by `{results['command']}` in {results.get('seconds', 0):.0f} s.")
    return "\n".join(lines) + "\n"


def ratings_report(cfg: EvalConfig) -> str:
    store = RatingsStore(cfg.ratings_db)
    table = aggregate_markdown(store.aggregate())
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ratings.md").write_text("# Blind human ratings\n\n" + table + "\n", encoding="utf-8")
    (out / "ratings.csv").write_text(store.csv_text(), encoding="utf-8")
    return table
