"""The demo's bar over seeds (issue 18, point 7): each demo recipe trained with several seeds, each seed's policies
evaluated against the base by the training reward model and by the independent judge, and per method the judge's
held-out gain with a 95 % t-interval across seeds and the exact KL per token at the end of each seed.

    python bench/seeds.py [--seeds 0,1,2,3,4] [--methods sft,dpo,ppo-full,ppo-lora,grpo] [--store DIR] [--jobs 2]

Needs the demo reward model and judge (checkpoints/reward, checkpoints/judge: `make demo`, or
`python training/reward.py --profile demo` and `... --role judge`). Per seed it builds a store DIR/seed<S> beside
links to those two, trains each method there with `--seed S` (the prompt split stays the demo's: `--data-seed`),
then runs `eval/evaluate.py --profile demo --seed 1000+S` on that store, so base and policies are sampled afresh
per seed and the variation across seeds includes sampling. One record per (seed, method) is appended to
bench/seeds.jsonl; the table is printed from every record of the chosen methods and seeds (a rerun with the
same seeds replaces nothing: use --fresh to start over). The runs go `--jobs` at a time (default 2 on
a multi-core CPU, one thread each, as the demo pipeline runs its steps), a seed's evaluation as soon as its
methods are trained; each seed's records are written when its evaluation ends. Without --fresh a run goes on where
an interrupted one stopped: complete checkpoints (and an evaluation newer than all of them) are not made again.

The bar: some method's judge gain interval (across seeds) excludes zero while its exact KL to the base ends in
0.02-0.1 nats/token in at least 4 of 5 seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
from common import command, machine
from seed_interval import t_interval

RESULTS = HERE / "seeds.jsonl"
EVAL_COPIES = HERE / "seeds_eval"  # each seed's evaluation report and results.json, kept beside the records
KL_BAND = (0.02, 0.1)
# method -> (script, its flags, the evaluation's key for it)
METHODS = {
    "sft": ("training/sft.py", [], "sft"),
    "dpo": ("training/dpo.py", [], "dpo"),
    "ppo-full": ("training/ppo.py", ["--mode", "full", "--data-seed", "42"], "full"),
    "ppo-lora": ("training/ppo.py", ["--mode", "lora", "--data-seed", "42"], "lora"),
    "grpo": ("training/grpo.py", ["--data-seed", "42"], "grpo"),
}


@dataclass
class Job:
    key: tuple  # (seed, method) or (seed, "eval")
    cmd: list[str]
    env: dict
    log: Path
    after: list = field(default_factory=list)  # keys this job waits for
    seconds: float | None = None
    done: bool = False  # its output is already complete (an earlier, interrupted run): not run again


def run_jobs(jobs: list[Job], workers: int, cores: int, on_done=None) -> None:
    """Run the jobs at most `workers` at a time, in list order as their dependencies allow, the cores split between
    the running ones as the demo pipeline splits them (one thread each side by side is 1.32-1.43x the throughput of
    one run after the other with both threads: BENCHMARKS.md); a job left alone with nothing ready to start beside
    it is given the freed cores at its next phase (rlhflab.models.hardware.follow_thread_share). `on_done(job)` is
    called as each job ends. Stops at the first failure, naming its log."""
    from rlhflab.pipeline import _step_env

    pending, running = [j for j in jobs if not j.done], []
    finished = {j.key for j in jobs if j.done}

    def share_file(job):
        return job.log.with_suffix(".threads")

    while pending or running:
        ready = [j for j in pending if all(a in finished for a in j.after)]
        batch = ready[: max(0, workers - len(running))]
        for job in batch:
            threads = max(1, cores // (len(running) + len(batch)))
            pending.remove(job)
            share_file(job).write_text(str(threads))
            print(f"seed {job.key[0]}: {job.key[1]} ({threads} thread{'s' * (threads > 1)}), log: {job.log}",
                  flush=True)
            with job.log.open("w") as fh:
                proc = subprocess.Popen(job.cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                        env={**_step_env(threads, share_file(job)), **job.env})
            running.append((job, proc, time.perf_counter()))
        time.sleep(1.0)
        for item in list(running):
            job, proc, t0 = item
            rc = proc.poll()
            if rc is None:
                continue
            running.remove(item)
            if rc:
                for other, p, _ in running:
                    p.terminate()
                sys.exit(f"failed (exit {rc}): {' '.join(job.cmd)}; log: {job.log}")
            job.seconds = time.perf_counter() - t0
            finished.add(job.key)
            if running and not any(all(a in finished for a in j.after) for j in pending):
                for other, _, _ in running:
                    share_file(other).write_text(str(max(1, cores // len(running))))
            if on_done:
                on_done(job)


def _online_rl_metrics(folder: Path) -> list[dict]:
    """The run's metrics.jsonl where it is an online-RL log (PPO, GRPO: scores and the exact KL to the reference per
    step); SFT and DPO log their losses there, with no KL to summarise: []."""
    path = folder / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return records if records and all("score" in r for r in records) else []


def last_training_kl(folder: Path) -> float | None:
    """The run's own exact KL over its last pass over the training prompts (metrics.jsonl; the window the evaluation
    and ppo_metrics.summarize_metrics call "last pass"), where it logged one."""
    from rlhflab.measure.ppo_metrics import summarize_metrics

    records = _online_rl_metrics(folder)
    return summarize_metrics(records).get("kl_exact_per_token_last") if records else None


def last_training_kl_se(folder: Path) -> float | None:
    """The standard error (over the last pass's steps) of last_training_kl."""
    from rlhflab.measure.ppo_metrics import summarize_metrics

    records = _online_rl_metrics(folder)
    return summarize_metrics(records).get("kl_exact_per_token_last_se") if records else None


def final_probe_kl(folder: Path) -> dict | None:
    """The trainer's own exact KL of its final policy: the over-optimisation probe at the run's last step (overopt.jsonl,
    written after that step's update), on its held-out prompts under the evaluation's sampling and token budget, with
    its 95 % bootstrap interval. None where the run has no probe (SFT, DPO, a run with --probe-every 0)."""
    from rlhflab.measure.overopt import read_overopt

    probes = [r for r in read_overopt(folder) if r.get("kl_exact_per_token") is not None and r.get("kl_exact_ci")]
    if not probes:
        return None
    last = max(probes, key=lambda r: r["step"])
    return {"kl": [last["kl_exact_per_token"], *last["kl_exact_ci"]], "step": last["step"],
            "prompts": last.get("n_prompts")}


def eval_kl_on_first(results: dict, key: str, n: int | None) -> list | None:
    """The evaluation's exact KL for policy `key` on its first `n` prompts only (the probe's: both take the held-out
    set in its saved order), with the evaluation's bootstrap (resamples, seed 4); None where results.json predates
    the per-prompt KL sums."""
    from rlhflab.measure.stats import ratio_bootstrap_ci

    rows = (results.get("per_prompt") or {}).get(key) or {}
    if not n or "kl_exact_sum" not in rows or len(rows["kl_exact_sum"]) < n:
        return None
    samples = (results.get("settings") or {}).get("bootstrap_samples", 1000)
    return list(ratio_bootstrap_ci(rows["kl_exact_sum"][:n], rows["kl_tokens"][:n], samples=samples, seed=4))


def final_kls_agree(record: dict) -> bool | None:
    """Do the trainer's final probe (its final policy, bootstrap interval) and the evaluation (the same policy, other
    samples, bootstrap interval) agree: is their difference within 1.96 times the root of the summed variances? On
    the probe's own prompts where the evaluation kept its per-prompt KL, else on all of the evaluation's. None where
    the record has no probe."""
    probe = record.get("kl_training_final_probe")
    ev = record.get("kl_exact_per_token_probe_prompts") or record.get("kl_exact_per_token")
    if not probe or not ev or per_seed_se(probe) is None or per_seed_se(ev) is None:
        return None
    return _within_errors(probe[0], per_seed_se(probe), ev[0], per_seed_se(ev))


def _within_errors(a: float, se_a: float, b: float, se_b: float) -> bool:
    """Two independent estimates agree: their difference is within 1.96 times the root of their summed variances."""
    return abs(a - b) <= Z95 * (se_a ** 2 + se_b ** 2) ** 0.5


def kls_agree(record: dict) -> bool | None:
    """Do the training log's exact KL (last pass, ± 1.96 SE over its steps) and the evaluation's (its bootstrap
    interval) agree: is their difference within 1.96 times the root of the summed variances? None where either
    has no interval (records from before issue 25)."""
    train, se_t, ev = record.get("kl_training_last_exact"), record.get("kl_training_last_exact_se"), \
        record.get("kl_exact_per_token")
    if not isinstance(train, (int, float)) or not isinstance(se_t, (int, float)) or not ev:
        return None
    return _within_errors(train, se_t, ev[0], per_seed_se(ev))


def seed_jobs(seed: int, methods: list[str], store: Path, reward: Path, judge: Path, best_of_n: str = "4") -> list[Job]:
    """One seed's jobs: its store DIR/seed<S> (links to the reward model and judge), each method's training, then
    the evaluation of base and every method on that store."""
    store.mkdir(parents=True, exist_ok=True)
    for name, target in (("reward", reward), ("judge", judge)):
        link = store / name
        if not link.exists():
            link.symlink_to(target.resolve())
    from rlhflab.pipeline import is_done
    from rlhflab.steps import step_making

    env = {"RLHFLAB_CHECKPOINTS": str(store)}
    # a method's folder is named like the method (METHODS' keys are the pipeline's output folders)
    jobs = [Job((seed, m), [sys.executable, METHODS[m][0], "--profile", "demo", *METHODS[m][1], "--seed", str(seed)],
                env, store / f"{m}.log", done=is_done(step_making(m), store)) for m in methods]
    keys = ",".join(["base", *(METHODS[m][2] for m in methods)])
    # the evaluation is current only if it ran after every policy it reads: none of them is trained in this run
    evaluated = (store / "eval" / "results.json").is_file() and all(j.done for j in jobs)
    jobs.append(Job((seed, "eval"), [sys.executable, "eval/evaluate.py", "--profile", "demo", "--policies", keys,
                                     "--seed", str(1000 + seed), "--best-of-n", best_of_n], env, store / "eval.log",
                    after=[(seed, m) for m in methods], done=evaluated))
    return jobs


def seed_records(seed: int, methods: list[str], store: Path, seconds: dict, eval_s: float) -> list[dict]:
    """The seed's records from its evaluation's results.json and each method's training log."""
    results = json.loads((store / "eval" / "results.json").read_text())
    out = []
    for m in methods:
        e = results["policies"][METHODS[m][2]]
        out.append({"seed": seed, "method": m, "eval_seconds": None if eval_s is None else round(eval_s, 1),
                    "judge_gain": e.get("judge_gain_vs_base"), "rm_gain": e.get("gain_vs_base"),
                    "length_controlled_judge_gain": (e.get("length_controlled") or {}).get("judge", {}).get("gain"),
                    "kl_exact_per_token": e.get("kl_per_token_to_base"),
                    "kl_training_last_exact": last_training_kl(store / m),  # the output folder is named like the method
                    "kl_training_window": "last pass",
                    "kl_training_last_exact_se": last_training_kl_se(store / m),
                    **final_probe_fields(store / m, results, METHODS[m][2]),
                    "length_change": e.get("length_gain_vs_base"), "n_prompts": e.get("n"),
                    "train_seconds": None if seconds[m] is None else round(seconds[m], 1),
                    "judge": results.get("judge", {}).get("model"), "reward_model": results["reward_model"]["model"]})
    bon = results["policies"].get("best-of-4")
    if bon:
        out.append({"seed": seed, "method": "best-of-4", "judge_gain": bon.get("judge_gain_vs_base"),
                    "rm_gain": bon.get("gain_vs_base"), "kl_bound_per_token": bon.get("kl_bound_per_token"),
                    "n_prompts": bon.get("n"), "eval_seconds": None if eval_s is None else round(eval_s, 1)})
    return out


def final_probe_fields(folder: Path, results: dict | None = None, key: str | None = None) -> dict:
    """A record's final-probe fields, and with the evaluation's `results` the evaluation's KL for `key` on the
    probe's prompts ({} for a run without a probe)."""
    probe = final_probe_kl(folder)
    if probe is None:
        return {}
    fields = {"kl_training_final_probe": probe["kl"], "kl_training_final_probe_step": probe["step"],
              "kl_training_final_probe_prompts": probe["prompts"]}
    if results is not None:
        fields["kl_exact_per_token_probe_prompts"] = eval_kl_on_first(results, key, probe["prompts"])
    return fields


def _fmt(mean, low, high, digits=3):
    return f"{mean:+.{digits}f}" + ("" if low is None else f" [{low:+.{digits}f}, {high:+.{digits}f}]")


def table(records: list[dict]) -> tuple[str, list[str]]:
    lines = ["| method | seeds | judge gain, mean [95 % t-interval across seeds] | training-RM gain | "
             "length-controlled judge gain | exact KL to base per seed (nats/token) | training log's exact KL, "
             "last pass | trainer's final probe: the same policy's exact KL on its held-out prompts (the evaluation's on "
             "those prompts) | "
             "seeds with KL in 0.02–0.1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    passing = []
    for m in dict.fromkeys(r["method"] for r in records):
        rs = sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"])
        judge = [r["judge_gain"][0] for r in rs if r.get("judge_gain")]
        rm = [r["rm_gain"][0] for r in rs if r.get("rm_gain")]
        lc = [r["length_controlled_judge_gain"][0] for r in rs if r.get("length_controlled_judge_gain")]
        kls = [r["kl_exact_per_token"][0] if r.get("kl_exact_per_token") else r.get("kl_bound_per_token")
               for r in rs]
        in_band = sum(1 for k in kls if k is not None and KL_BAND[0] <= k <= KL_BAND[1])
        jt = t_interval(judge) if judge else None
        kl_text = ", ".join("—" if k is None else f"{k:.3f}" for k in kls)
        if m == "best-of-4":
            kl_text = "bound ≤ " + ", ".join(f"{k:.4f}" for k in kls if k is not None)
        # records written before the one named window averaged the last 3 steps: said where they are shown
        train_kl = ", ".join(f"{r['kl_training_last_exact']:.3f}" + ("" if r.get("kl_training_window") == "last pass"
                                                                     else " (last 3 steps)")
                             for r in rs if isinstance(r.get("kl_training_last_exact"), (int, float))) or "—"
        agree = [a for a in (kls_agree(r) for r in rs) if a is not None]
        if agree:  # records since issue 25: the training and evaluation KLs side by side, with intervals
            train_kl += f" (agree with the evaluation's within intervals: {sum(agree)}/{len(agree)})"
        probes = [r for r in rs if r.get("kl_training_final_probe")]
        final = ", ".join(f"{r['kl_training_final_probe'][0]:.3f}" + (
            f" ({r['kl_exact_per_token_probe_prompts'][0]:.3f})" if r.get("kl_exact_per_token_probe_prompts") else "")
            for r in probes) or "—"
        final_agree = [a for a in (final_kls_agree(r) for r in probes) if a is not None]
        if final_agree:
            final += f" (agree with the evaluation's within intervals: {sum(final_agree)}/{len(final_agree)})"
        lines.append(f"| {m} | {','.join(str(r['seed']) for r in rs)} | {_fmt(*jt) if jt else 'n/a'} | "
                     f"{_fmt(*t_interval(rm)) if rm else 'n/a'} | {_fmt(*t_interval(lc)) if lc else 'n/a'} | "
                     f"{kl_text} | {train_kl} | {final} | "
                     f"{'n/a (a bound)' if m == 'best-of-4' else f'{in_band}/{len(rs)}'} |")
        if jt and jt[1] is not None and (jt[1] > 0 or jt[2] < 0) and in_band >= max(1, len(rs) - 1) \
                and m != "best-of-4":
            passing.append(m)
    return "\n".join(lines), passing


Z95 = 1.959963984540054


def per_seed_se(interval) -> float | None:
    """A seed's standard error from its 95 % bootstrap interval [mean, low, high] (half-width / 1.96)."""
    if not interval or interval[1] is None or interval[2] is None:
        return None
    return (interval[2] - interval[1]) / (2 * Z95)


def pooled_gain(rows: list[dict], key: str) -> dict | None:
    """The seeds' gains pooled with their own errors: a random-effects meta-analysis (DerSimonian–Laird), each seed
    weighted by 1 / (its within-seed variance + the between-seed variance tau^2), so the interval holds both the
    within-seed error (prompts, sampling) and the spread across seeds; normal interval and two-sided p-value
    (scipy.stats.norm). None with fewer than two seeds."""
    import numpy as np
    from scipy.stats import norm

    pairs = [(r[key][0], per_seed_se(r[key])) for r in rows if r.get(key)]
    pairs = [(m, se) for m, se in pairs if se is not None and se > 0]
    if len(pairs) < 2:
        return None
    y, v = np.array([m for m, _ in pairs]), np.array([se ** 2 for _, se in pairs])
    w = 1 / v
    fixed = float((w * y).sum() / w.sum())
    q = float((w * (y - fixed) ** 2).sum())
    c = float(w.sum() - (w ** 2).sum() / w.sum())
    tau2 = max(0.0, (q - (len(y) - 1)) / c) if c > 0 else 0.0
    w_star = 1 / (v + tau2)
    mean = float((w_star * y).sum() / w_star.sum())
    se = float(np.sqrt(1 / w_star.sum()))
    p = float(2 * norm.sf(abs(mean) / se))
    return {"mean": mean, "low": mean - Z95 * se, "high": mean + Z95 * se, "se": se, "tau2": tau2,
            "p": p, "seeds": len(y), "mean_within_se": float(np.sqrt(v.mean())), "between_sd": float(y.std(ddof=1))}


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (family-wise error over the methods tested): the i-th smallest p times
    (m - i), made monotone, capped at 1. (scipy has no Holm; statsmodels' multipletests is not installed here.)"""
    order = sorted(p_values, key=p_values.get)
    m, running, out = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        out[name] = running
    return out


def pooled_table(records: list[dict], alpha: float = 0.05) -> tuple[str, list[str]]:
    """Per trained method: judge and training-RM gain pooled over seeds (random effects), p-values Holm-corrected
    over the trained methods (best-of-4, a reranked base, is shown but not in the family), and the verdict."""
    methods = [m for m in dict.fromkeys(r["method"] for r in records)]
    pooled = {m: {k: pooled_gain([r for r in records if r["method"] == m], k)
                  for k in ("judge_gain", "rm_gain", "length_controlled_judge_gain")} for m in methods}
    family = {m: pooled[m]["judge_gain"]["p"] for m in methods if m != "best-of-4" and pooled[m]["judge_gain"]}
    adjusted = holm(family)
    lines = ["| method | seeds | judge gain, pooled [95 % random-effects interval] | within-seed SE (rms) / "
             "spread across seeds (SD) | p | Holm-adjusted p (over the trained methods) | training-RM gain, pooled | "
             "length-controlled judge gain, pooled | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    real = []

    def fmt(g):
        return "n/a" if not g else f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"

    for m in methods:
        j = pooled[m]["judge_gain"]
        if not j:
            continue
        if m in adjusted:
            verdict = ("gain (judge), Holm-significant" if adjusted[m] < alpha and j["mean"] > 0 else
                       "loss (judge), Holm-significant" if adjusted[m] < alpha else "not told apart from zero")
            if adjusted[m] < alpha:
                real.append(m)
        else:
            verdict = ("not in the family (reranked base); " +
                       ("interval excludes 0" if j["low"] > 0 or j["high"] < 0 else "interval covers 0"))
        lines.append(f"| {m} | {j['seeds']} | {fmt(j)} | {j['mean_within_se']:.3f} / {j['between_sd']:.3f} | "
                     f"{j['p']:.3g} | {adjusted[m]:.3g} | " if m in adjusted else
                     f"| {m} | {j['seeds']} | {fmt(j)} | {j['mean_within_se']:.3f} / {j['between_sd']:.3f} | "
                     f"{j['p']:.3g} | — | ")
        lines[-1] += f"{fmt(pooled[m]['rm_gain'])} | {fmt(pooled[m]['length_controlled_judge_gain'])} | {verdict} |"
    return "\n".join(lines), real


def evaluation_table(seeds: list[int]) -> str:
    """Per seed, from its evaluation's results.json (EVAL_COPIES): the share of answers cut at the token budget per
    policy, and how independent the judge was of the training reward model on that seed's answers (Pearson r of
    their scores after regressing out length, and their agreement on the shared test pairs, 95 % intervals)."""
    lines = ["| seed | answers cut at the budget: base / sft / dpo / ppo-full / ppo-lora / grpo | RM–judge Pearson r, "
             "length regressed out [95 %] | RM and judge order the test pairs alike [95 % Wilson] |",
             "|---|---|---|---|"]
    for seed in seeds:
        path = EVAL_COPIES / f"seed{seed}" / "results.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        cut = " / ".join(f"{r['policies'][k]['cut_rate']:.0%}" if k in r["policies"] else "—"
                         for k in ("base", "sft", "dpo", "full", "lora", "grpo"))
        ind = r.get("judge_independence") or {}
        pr = ind.get("pearson_length_controlled")
        tp = ind.get("test_pairs") or {}
        lines.append(f"| {seed} | {cut} | " + (f"{pr[0]:+.2f} [{pr[1]:+.2f}, {pr[2]:+.2f}]" if pr else "—") + " | "
                     + (f"{tp['rate'][0]:.1%} [{tp['rate'][1]:.1%}, {tp['rate'][2]:.1%}] ({tp['agree']} of {tp['n']})"
                        if tp.get("rate") else "—") + " |")
    return "\n".join(lines)


def read_records() -> list[dict]:
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()] if RESULTS.is_file() else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--methods", default="sft,dpo,ppo-full,ppo-lora,grpo")
    p.add_argument("--store", default="/tmp/rlhflab-seeds", help="folder for the per-seed checkpoint stores")
    p.add_argument("--reward-model", default=str(ROOT / "checkpoints" / "reward"))
    p.add_argument("--judge-model", default=str(ROOT / "checkpoints" / "judge"))
    p.add_argument("--fresh", action="store_true",
                   help="start over: remove bench/seeds.jsonl and the chosen seeds' stores (without it, a run goes on "
                        "where an interrupted one stopped: complete checkpoints and evaluations are kept)")
    p.add_argument("--jobs", type=int, default=2 if (os.cpu_count() or 1) > 1 else 1,
                   help="runs side by side, the cores split between them (the demo pipeline's CPU default: 2)")
    p.add_argument("--best-of-n", default="4", help="the evaluation's best-of-n baseline ('' for none: a run that "
                                                    "checks the trained methods only)")
    p.add_argument("--report-only", action="store_true", help="print the table from bench/seeds.jsonl, run nothing")
    p.add_argument("--results", default=str(HERE / "seeds.jsonl"),
                   help="the records file (each seed's evaluation is kept in <its name>_eval/ beside it): another file "
                        "keeps another host's or another subset's run apart from the demo's five-seed table")
    args = p.parse_args(argv)
    global RESULTS, EVAL_COPIES
    RESULTS = Path(args.results)
    EVAL_COPIES = RESULTS.with_name(RESULTS.stem + "_eval")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not args.report_only:
        for path in (args.reward_model, args.judge_model):
            if not (Path(path) / "config.json").is_file():
                sys.exit(f"{path} is not a reward-model checkpoint; build the demo's reward model and judge first.")
        if args.fresh:
            RESULTS.unlink(missing_ok=True)
            for seed in seeds:
                shutil.rmtree(Path(args.store) / f"seed{seed}", ignore_errors=True)
        jobs = [j for seed in seeds for j in seed_jobs(seed, methods, Path(args.store) / f"seed{seed}",
                                                         Path(args.reward_model), Path(args.judge_model),
                                                         args.best_of_n)]
        by_key = {j.key: j for j in jobs}

        def seed_done(job: Job) -> None:  # each seed's records are kept as soon as it is evaluated
            seed = job.key[0]
            if job.key[1] != "eval":
                return
            records = seed_records(seed, methods, Path(args.store) / f"seed{seed}",
                                   {m: by_key[(seed, m)].seconds for m in methods}, job.seconds)
            with RESULTS.open("a") as f:
                for r in records:
                    f.write(json.dumps({**r, "command": command(), "machine": machine(), "jobs": args.jobs,
                                        "time": time.strftime("%Y-%m-%dT%H:%M%z")}) + "\n")
            copy = EVAL_COPIES / f"seed{seed}"
            copy.mkdir(parents=True, exist_ok=True)
            for name in ("report.md", "results.json"):
                shutil.copy2(Path(args.store) / f"seed{seed}" / "eval" / name, copy / name)

        kept = {r["seed"] for r in read_records()}
        for job in jobs:  # a seed evaluated by an interrupted run: its records, if they were not written then
            if job.key[1] == "eval" and job.done and job.key[0] not in kept:
                seed_done(job)
        run_jobs(jobs, args.jobs, os.cpu_count() or 1, seed_done)
    records = [r for r in read_records() if r["seed"] in seeds and (r["method"] in methods or r["method"] == "best-of-4")]
    text, passing = table(records)
    print(text)
    print(f"\nbar (judge-gain interval excludes 0 and exact KL in {KL_BAND[0]}–{KL_BAND[1]} in at least 4 of 5 "
          f"seeds), on the t-interval across seeds: " + (f"met by {', '.join(passing)}" if passing else
                                                        "met by no method"))
    pooled_text, real = pooled_table(records)
    print("\nPooled over seeds with each seed's own error (random effects, DerSimonian-Laird; a seed's SE is its "
          "bootstrap interval's half-width / 1.96), Holm-corrected over the trained methods:\n")
    print(pooled_text)
    print("\nmethods whose judge gain stands after pooling and Holm's correction (alpha 0.05): "
          + (", ".join(real) if real else "none"))
    if any((EVAL_COPIES / f"seed{s}" / "results.json").is_file() for s in seeds):
        print(f"\nEach seed's evaluation ({EVAL_COPIES.relative_to(ROOT) if EVAL_COPIES.is_relative_to(ROOT) else EVAL_COPIES}/seed<S>/: report.md, results.json):\n")
        print(evaluation_table(seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
