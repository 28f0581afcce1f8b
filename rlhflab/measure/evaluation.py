"""Evaluation of the policies: gains under the training reward model and an independent judge (paired intervals,
length-controlled), KL to base, agreement with the raters, curves, rating items, report."""
from __future__ import annotations

import contextlib
import json
import math
import re
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
from rlhflab.measure.kl import exact_kl_of_responses
from rlhflab.measure.overopt import JUDGE_COMMAND, read_overopt
from rlhflab.measure.ppo_metrics import run_summary_table, summarize_metrics
from rlhflab.measure.scoring import score_responses
from rlhflab.models.hardware import follow_thread_share
from rlhflab.models.loading import load_reward_model
from rlhflab.models.policies import PolicySet
from rlhflab.models.precision import autocast, policy_dtype
from rlhflab.models.prompts import with_system
from rlhflab.store.cards import Timer, command_line, markdown_table
from rlhflab.store.checkpoints import METRICS_FILE, REPORT_FILE, RESULTS_FILE, resolve_checkpoint
from rlhflab.store.jsonio import read_jsonl, write_json
from rlhflab.store.ratings import RatingsStore, aggregate_markdown, preference_pairs

NO_JUDGE = f"n/a (no judge: train one with `{JUDGE_COMMAND}`)"


OVEROPT_FIGURE = "overoptimisation"


FRONTIER_FIGURE = "reward_kl_frontier"


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
    info = {"model": display_name(cfg.judge_model), "available": model is not None, "accuracy": None,
            "note": strip_local_paths(note or "")}
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


def rater_agreement(store: RatingsStore, scorers: dict[str, tuple], batch_size: int, system: str | None = None) -> dict:
    """For each comparison a blind rater made (two responses to one prompt, one rated higher), does the reward
    model (and the judge) score the rater's preferred response higher? The rated texts are scored afresh, so
    ratings of earlier evaluations' responses count too, each prompt as the policies were asked it (`system`)."""
    pairs, ties = preference_pairs(store.ratings())
    out = {"comparisons": len(pairs), "rater_ties": ties}
    if not pairs:
        return out
    prompts = [with_system(p["prompt"], system) for p in pairs]
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
    # every policy, scorer and KL sees the prompt as asked (the profile's system message); reports show `prompts`
    asked = [with_system(p, cfg.system_prompt) for p in prompts]
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
    for name in names:
        t = Timer()
        follow_thread_share()  # under the pipeline, take a core freed by the step beside this one
        with policies.use(name) as (model, tok):
            gens = generate_batch(model, tok, asked, settings, batch_size=cfg.batch_size)
            responses[name] = [g.text for g in gens]
            response_ids[name] = [g.token_ids or [] for g in gens]
            tokens[name] = [g.num_tokens for g in gens]
            finished[name] = [g.finished for g in gens]
        progress(f"generated {len(prompts)} responses with {name} in {t.elapsed_s:.0f} s")
    # one pass of each policy and of the base over each policy's own tokens gives the exact KL and k1 both
    exact: dict[str, tuple[list[float], list[int], list[float]]] = {}
    if "base" in names:
        with policies.use("base") as (_, tokenizer):
            pass
        for name in (n for n in names if n != "base"):
            follow_thread_share()
            exact[name] = exact_kl_of_responses(partial(_model_of, policies, name), partial(_model_of, policies, "base"),
                                                tokenizer, asked, response_ids[name], temperature=cfg.temperature,
                                                with_k1=True)
    follow_thread_share()
    def score_all(model, tok) -> dict[str, np.ndarray]:
        # every policy's answers in one call: an answer two policies share is scored once and ties exactly
        flat = score_responses(model, tok, asked * len(names), [r for n in names for r in responses[n]])
        return {n: np.array(flat[i * len(asked):(i + 1) * len(asked)]) for i, n in enumerate(names)}

    rewards = score_all(reward_model, reward_tok)
    judged: dict[str, np.ndarray] = {}
    if judge_model is not None:
        judged = score_all(judge_model, judge_tok)
    progress(f"scored {len(names) * len(prompts)} responses" + (" and judged them" if judged else ""))
    for n_samples in bon:  # n base samples per prompt (seeded apart from the base row's), the reward model's pick
        t = Timer()
        key = f"best-of-{n_samples}"
        with policies.use("base") as (model, tok):
            samples = generate_batch(model, tok, [p for p in asked for _ in range(n_samples)],
                                     GenerationSettings(**{**settings.as_dict(), "seed": settings.seed + n_samples}),
                                     batch_size=cfg.batch_size)
        scores = np.array(score_responses(reward_model, reward_tok, [p for p in asked for _ in range(n_samples)],
                                          [g.text for g in samples])).reshape(len(prompts), n_samples)
        pick = scores.argmax(1)
        chosen = [samples[i * n_samples + j] for i, j in enumerate(pick)]
        responses[key], tokens[key] = [g.text for g in chosen], [g.num_tokens for g in chosen]
        finished[key] = [g.finished for g in chosen]
        rewards[key] = scores[np.arange(len(prompts)), pick]
        if judge_model is not None:  # the judge sees only the pick: it never chooses, so its gain is not selected for
            judged[key] = np.array(score_responses(judge_model, judge_tok, asked, responses[key]))
        names.append(key)
        progress(f"best-of-{n_samples} from the base: {n_samples * len(prompts)} samples in {t.elapsed_s:.0f} s")

    b = cfg.bootstrap_samples
    results = {"command": display_command(command_line()), "settings": asdict(cfg), "generation": settings.as_dict(),
               "policy_weights_dtype": str(policies.dtype).replace("torch.", ""),
               "prompt_source": display_name(prompt_source), "num_prompts": len(prompts), "units": {
                   "reward": "reward-model score (logit, higher is better)",
                   "judge": "judge reward-model score (logit, higher is better; its own scale)",
                   "kl": "nats per token", "length": "response tokens",
                   "length_slope": "score per response token"},
               "reward_model": {"model": display_name(cfg.reward_model),
                                "accuracy": heldout_accuracy(str(resolve_checkpoint(cfg.reward_model)))},
               "judge": judge, "policies": {}}
    for n in names:
        entry = {"n": len(prompts), "reward_mean": list(stats.bootstrap_ci(rewards[n], samples=b, seed=1)),
                 "response_tokens_mean": list(stats.bootstrap_ci(tokens[n], samples=b, seed=2)),
                 "reward_length_pearson_r": stats.pearson(rewards[n], tokens[n]),
                 "cut_rate": float(1 - np.mean(finished[n])),
                 "source": (display_name(policies.source(n)) if n == "base" else display_name(str(policy_dirs[n]))
                            if n in policy_dirs
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
                kl_sums, counts, k1_sums = exact[n]
                entry["kl_per_token_to_base"] = list(stats.ratio_bootstrap_ci(kl_sums, counts, samples=b, seed=4))
                entry["kl_estimator"] = f"exact, softmax(logits / {cfg.temperature}), total KL / total tokens"
                entry["kl_per_sequence_to_base"] = float(np.mean(kl_sums))
                # the sampled estimate TRL's PPO logs, on the same tokens at the same temperature, for comparison
                entry["kl_k1_per_token_to_base"] = list(stats.ratio_bootstrap_ci(k1_sums, counts, samples=b, seed=4))
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
    # each prompt's exact-KL sum and its token count: a figure taken on some of these prompts (the training probe's
    # first ones) can be held against the evaluation's on the same prompts
    results["per_prompt"] = {n: {"reward": rewards[n].round(4).tolist(), "tokens": tokens[n],
                                 **({"judge": judged[n].round(4).tolist()} if n in judged else {}),
                                 **({"kl_exact_sum": [round(float(x), 6) for x in exact[n][0]],
                                     "kl_tokens": [int(c) for c in exact[n][1]]} if n in exact else {})}
                             for n in names}

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = RatingsStore(cfg.ratings_db)
    scorers = {"reward_model": (reward_model, reward_tok),
               **({"judge": (judge_model, judge_tok)} if judge_model is not None else {})}
    results["agreement"] = {"reward_model_vs_judge": scorer_agreement(
                                {"reward_model": rewards, **({"judge": judged} if judged else {})}, names),
                            "raters": rater_agreement(store, scorers, cfg.batch_size, cfg.system_prompt)}
    results["judge_independence"] = judge_independence(
        rewards, judged, tokens, names, b,
        heldout_pair_agreement(resolve_checkpoint(cfg.reward_model), resolve_checkpoint(cfg.judge_model))
        if judged else None)
    k = min(cfg.num_rating_prompts, len(prompts))
    rated = [n for n in names if not n.startswith("best-of-")]
    store.replace_items([{"prompt_index": i, "prompt": prompts[i], "policy": n, "response": responses[n][i]}
                         for i in range(k) for n in rated])
    results["rating_items"] = {"prompts": k, "policies": rated, "db": display_name(str(cfg.ratings_db)),
                               "cut_rate": {n: float(1 - np.mean(finished[n][:k])) for n in rated}}
    results["overopt_runs"] = [n for n, d in policy_dirs.items() if read_overopt(d)]
    results["seconds"] = timer.elapsed_s
    write_json(out / RESULTS_FILE, results)
    _write_figures(out, policy_dirs, results)
    (out / REPORT_FILE).write_text(strip_local_paths(render_report(results, store)), encoding="utf-8")
    progress(f"evaluation written to {out} ({timer.elapsed_s:.0f} s)")
    return out


def _write_figures(out: Path, policy_dirs: dict[str, Path], results: dict) -> None:
    from rlhflab.measure.plots import (
        overoptimisation_figure,
        reward_comparison_figure,
        reward_kl_frontier_figure,
        training_curves_figure,
    )

    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    runs = {{"full": "ppo-full", "lora": "ppo-lora"}.get(n, n): records for n, d in policy_dirs.items()
            if (records := read_jsonl(d / METRICS_FILE)) and "kl_coef" in records[0]}
    for fig, name in ((training_curves_figure(runs), "kl_per_token"),
                      (training_curves_figure(runs, per_sequence=True), "kl_per_sequence"),
                      (reward_comparison_figure(results), "reward_by_policy"),
                      (reward_kl_frontier_figure(results), FRONTIER_FIGURE)):
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
    cost_table = markdown_table(["policy", "KL to base (nats/token)", "training log's exact KL, last pass",
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


def system_sentence(results: dict) -> str:
    """How the prompts were asked: the system message every policy saw and every scorer scored with."""
    system = (results.get("settings") or {}).get("system_prompt")
    if not system:
        return "No system message was added (each model's chat template applies its own default)."
    return (f"Every prompt was asked with the system message \"{system}\", in training and here; the reward model and "
            f"the judge score each answer with it.")


def render_report(results: dict, store: RatingsStore | None = None) -> str:
    n = results["num_prompts"]
    pols = results["policies"]
    g = results["generation"]
    judged = _judge_state(results) == "yes"
    lines = ["# Evaluation report\n",
             f"Held-out prompts: **{n}** from `{results['prompt_source']}` (never used in PPO training). "
             f"Generation: {'greedy' if g['greedy'] else 'sampling'}, temperature {g['temperature']}, top-k {g['top_k']}, "
             f"top-p {g['top_p']}, repetition penalty {g['repetition_penalty']}, max {g['max_new_tokens']} new tokens, "
             f"seed {g['seed']} — identical for every policy. " + system_sentence(results) + "\n",
             "Scored by:\n", scorers_markdown(results) + "\n",
             "Intervals are 95 % bootstrap intervals over prompts (paired for gains and win rates; a tie counts half). "
             "Reward = reward-model score (logit); the judge's scores are on its own scale, so compare its gains, not "
             "its means, with the training RM's. The length-controlled gain is the gain left after an OLS fit of "
             "score on response length (tokens) with a policy indicator over the base's and the policy's responses "
             "(gain − slope × length change), its interval from resampling prompts and refitting; it is given under "
             "the judge when there is one. KL to base in nats per token: exact (Σ p log p/q over the vocabulary) "
             "on the tokens each policy generated, end-of-turn token included, both models at the sampling "
             "temperature, total KL ÷ total tokens. " + one_kl_sentence(g) + "\n",
             "## Gains of every policy\n"]
    lines.append(policy_results_table(results))
    lines.append("\n" + cut_rate_sentence(results) + "\n")
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
    lines.append(f"The reward–KL frontier (each policy's judge and training-RM gain against its exact KL to the base, "
                 f"both intervals; best-of-n at its KL bound): `figures/{FRONTIER_FIGURE}.html` — the app's Evaluation "
                 f"tab opens with it. Mean reward per policy: `figures/reward_by_policy.html`.\n")
    lines.append("## Agreement: judge, training reward model and raters\n")
    lines.append(agreement_markdown(results) + "\n")
    lines.append("## Judge independence\n")
    lines.append(independence_markdown(results) + "\n")
    lines.append("## KL and reward during the RL runs (PPO, GRPO)\n")
    lines.append(run_summary_table(results.get("training_curves", {})))
    lines.append("\nCurves (per token with the target band, and per sequence): `figures/kl_per_token.html`, "
                 "`figures/kl_per_sequence.html` — also in the app's Training curves tab.\n")
    if results.get("overopt_runs"):
        lines.append(f"Over-optimisation ({', '.join(results['overopt_runs'])}): training-RM and judge score on "
                     f"held-out prompts (as the change against step 0, paired by prompt, with each point's minimal "
                     f"detectable effect, where the run logged it) against exact KL per token during training, "
                     f"`figures/{OVEROPT_FIGURE}.html` "
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


# ---------------------------------------------------------------- judge independence (SPEC §9)
NEAR_COPY_R = 0.9  # a length-controlled score correlation whose interval lies above this: the judge is a near-copy
JUDGE_NAME, SECOND_RM_NAME = "judge", "second reward model"


def heldout_pair_agreement(reward_dir, judge_dir, samples: int = 2000) -> dict | None:
    """The training RM and the judge on the shared test pairs (their reward_eval.json and split.json): how often
    both order chosen vs rejected the same way (Wilson interval), what two scorers with these accuracies would
    agree on if their errors were independent (a·b + (1−a)(1−b)), and the correlation of their margins (chosen −
    rejected) with a bootstrap interval over pairs. None when either file is missing or the pairs differ."""
    evals, splits = [], []
    for folder in (reward_dir, judge_dir):
        try:
            folder = Path(folder)
            evals.append(json.loads((folder / "reward_eval.json").read_text(encoding="utf-8")))
            split = folder / "split.json"
            splits.append(json.loads(split.read_text(encoding="utf-8")) if split.is_file() else None)
        except (OSError, ValueError, TypeError):
            return None
    try:
        (rc, rr), (jc, jr) = ((np.asarray(e["chosen_rewards"], float), np.asarray(e["rejected_rewards"], float))
                              for e in evals)
    except (KeyError, TypeError, ValueError):
        return None
    same_ids = all(splits) and splits[0].get("ids", {}).get("test") == splits[1].get("ids", {}).get("test")
    if rc.shape != jc.shape or rc.size == 0 or (all(splits) and not same_ids):
        return None
    out = stats.order_agreement(rc, rr, jc, jr)
    a, b = float(np.mean(rc > rr)), float(np.mean(jc > jr))
    out["independent_errors_expectation"] = a * b + (1 - a) * (1 - b)
    out["accuracies"] = [a, b]
    out["margin_pearson"] = list(stats.correlation_ci(rc - rr, jc - jr, samples=samples, seed=11))
    out["same_test_ids"] = bool(same_ids)
    return out


def judge_independence(rewards: dict, judged: dict, tokens: dict, names: list[str], samples: int,
                       test_pairs: dict | None = None) -> dict | None:
    """How much the judge is the training RM again, measured on the same policy outputs (best-of-n rows left out:
    the RM picked them): Pearson and Spearman correlation of the two scorers' scores with a bootstrap interval over
    prompts, the same after regressing response length out of both, and their agreement on the test pairs. It names
    the scorer: "judge" when its length-controlled correlation is measured and its interval is not wholly above
    NEAR_COPY_R, else "second reward model". None without a judge."""
    if not judged:
        return None
    used = [n for n in names if n in judged and n in rewards and not n.startswith("best-of-")]
    out: dict = {"policies": used, "outputs": 0, "test_pairs": test_pairs, "near_copy_r": NEAR_COPY_R}
    if used:
        rm = np.stack([np.asarray(rewards[n], float) for n in used], 1)  # (prompts, policies)
        jd = np.stack([np.asarray(judged[n], float) for n in used], 1)
        ln = np.stack([np.asarray(tokens[n], float) for n in used], 1)
        out["outputs"] = int(rm.size)
        for method in ("pearson", "spearman"):
            out[method] = list(stats.correlation_ci(rm, jd, method, samples=samples, seed=12))
            out[f"{method}_length_controlled"] = list(stats.correlation_ci(rm, jd, method, control=ln,
                                                                           samples=samples, seed=13))
    lc = out.get("pearson_length_controlled") or [float("nan")] * 3
    raw = out.get("pearson") or [float("nan")] * 3
    r = lc if lc[0] == lc[0] else raw  # lengths all equal: the raw correlation is already length-free
    if r[0] != r[0]:
        out.update(name=SECOND_RM_NAME, verdict="independence not measured (no correlation could be computed): a "
                                               "scorer whose independence is not measured is a second reward model")
    elif r[1] == r[1] and r[1] >= NEAR_COPY_R:
        out.update(name=SECOND_RM_NAME, verdict=f"its scores follow the training RM's (r {r[0]:.2f}, interval "
                                                f"wholly ≥ {NEAR_COPY_R}): a near-copy, fooled where the RM is fooled")
    else:
        out.update(name=JUDGE_NAME, verdict=f"measured: r {r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}] after length, not "
                                            f"wholly above a near-copy's {NEAR_COPY_R}")
    return out


def independence_markdown(results: dict) -> str:
    """The report's "Judge independence" section (also in the app's Evaluation tab)."""
    ind = results.get("judge_independence")
    if _judge_state(results) != "yes":
        return "n/a (no judge)."
    if not isinstance(ind, dict):
        return (f"Not measured (these results predate the independence check): the judge is a "
                f"**{SECOND_RM_NAME}** until it is.")
    lines = [f"**Verdict: {ind.get('name', SECOND_RM_NAME)}** — {ind.get('verdict', '')}.", ""]
    rows = []
    for method in ("pearson", "spearman"):
        rows.append([method.capitalize(), _ci(ind.get(method), 2, signed=True),
                     _ci(ind.get(f"{method}_length_controlled"), 2, signed=True)])
    lines.append(markdown_table(["correlation of training-RM and judge scores (95 % bootstrap over prompts)",
                                 "raw", "after regressing out response length"], rows))
    lines.append(f"\nOn the same {ind.get('outputs', 0)} outputs ({', '.join(ind.get('policies') or [])}; "
                 f"best-of-n left out: the training RM picked those). A near-copy of the reward model shows r near 1 "
                 f"and cannot catch reward hacking; a scorer whose length-controlled interval lies wholly above "
                 f"{ind.get('near_copy_r', NEAR_COPY_R)} is called a {SECOND_RM_NAME}, not a judge.\n")
    tp = ind.get("test_pairs")
    if isinstance(tp, dict) and tp.get("n"):
        lines.append(f"- **Test pairs** (the shared preference test part): both order chosen vs rejected the same "
                     f"way in {_agreement_cell(tp)} pairs (Wilson interval); two scorers with their accuracies "
                     f"({100 * tp['accuracies'][0]:.0f} % and {100 * tp['accuracies'][1]:.0f} %) and independent "
                     f"errors would agree in {100 * tp['independent_errors_expectation']:.1f} %. Correlation of "
                     f"their margins (chosen − rejected): {_ci(tp.get('margin_pearson'), 2, signed=True)}.")
    else:
        lines.append("- **Test pairs**: not compared (a scorer without reward_eval.json, or different test pairs).")
    return "\n".join(lines)


CUT_AIM = 0.2  # SPEC §9: budgets such that most answers finish; the aim: at most 20 % of the base's cut


def cut_rate_sentence(results: dict) -> str:
    """Every policy's share of answers cut at the token budget, and whether the base's meets the aim."""
    pols = {k: e for k, e in (results.get("policies") or {}).items() if isinstance(e, dict)}
    rates = {k: e["cut_rate"] for k, e in pols.items() if isinstance(e.get("cut_rate"), (int, float))}
    if not rates:
        return "Cut rate: not recorded (results written before it was)."
    budget = (results.get("generation") or {}).get("max_new_tokens", "?")
    text = (f"**Cut at the {budget}-token budget** (answers that had not ended; a cut answer is scored as a "
            f"fragment): " + ", ".join(f"{k} {100 * r:.0f} %" for k, r in rates.items()) + ".")
    if "base" in rates:
        met = rates["base"] <= CUT_AIM
        text += (f" The base's {100 * rates['base']:.0f} % {'meets' if met else 'misses'} the aim of at most "
                 f"{100 * CUT_AIM:.0f} %" + ("." if met else ": read the gains as gains on fragments."))
    return text


def one_kl_sentence(generation: dict) -> str:
    """Whether the evaluation's KL is the trainers' quantity: the same only under temperature-alone sampling."""
    if generation.get("greedy"):
        return "Greedy decoding: the KL is of the temperature-scaled distributions, not of what was decoded."
    plain = (generation.get("top_k") in (0, None) and float(generation.get("top_p", 1.0)) >= 1.0
             and float(generation.get("repetition_penalty", 1.0)) == 1.0)
    if plain:
        return ("Sampling is by temperature alone, as the trainers sample, so this KL is of the distribution actually "
                "sampled and the same quantity as the training log's exact KL.")
    return ("Sampling here truncates the distribution (top-k / top-p / repetition penalty) while the KL is of the "
            "untruncated ones: it is not the distribution sampled, nor the training log's quantity.")


# ---------------------------------------------------------------- names, not local paths
# two parts at least: a lone "/n" is arithmetic ("(n−1)/n" in the best-of-n bound), not a local path
_LOCAL_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+=-]+/)+[\w.@+=-]+/?")


def display_name(value):
    """A checkpoint or file as the report names it: a local path under the checkpoint store as its store name
    ('reward', 'ppo-full', 'eval/ratings.sqlite'), under the repository as its repository path
    ('data/demo/oasst1.jsonl'), anywhere else as its last part; a Hub id or a relative path as it is."""
    from rlhflab.config import CHECKPOINTS_DIR, REPO_ROOT

    if not isinstance(value, str) or not value.startswith("/"):
        return value
    path = Path(value)
    for root in (CHECKPOINTS_DIR, REPO_ROOT):
        for candidate, base in ((path, Path(root)), (path.resolve(), Path(root).resolve())):
            try:
                rel = candidate.relative_to(base)
            except ValueError:
                continue
            return str(rel) if str(rel) != "." else base.name
    return path.name or value


def strip_local_paths(text: str) -> str:
    """Every absolute local path in a text replaced by its display_name (report.md and the app's tab)."""
    return _LOCAL_PATH.sub(lambda m: display_name(m.group(0).rstrip("/")), text) if isinstance(text, str) else text


def display_command(command: str) -> str:
    return strip_local_paths(command)
