"""Mean and 95 % t-interval across seeds of the PPO recipe runs in bench/ppo_recipe.jsonl.

    python bench/seed_interval.py --arm "full, reward head=sgd015_s*" --arm "full, zero head=vzero_lam1_full_s*"

Each --arm is LABEL=PATTERN[,PATTERN...] (shell-style patterns on the records' names). One run's interval in
the jsonl is over prompts; whether a recipe helps is a statement over runs, so this script treats each run's
point estimate as one observation and reports the mean with a Student-t interval over runs (n − 1 degrees of
freedom). With two or more arms it also reports each arm minus the first, paired by seed over the seeds both
arms hold once each: a recipe change measured one factor at a time shares its seeds with the recipe it changes.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "ppo_recipe.jsonl"
GAINS = (("eval_gain_train_prompts", "gain, training prompts"), ("eval_gain_heldout_prompts", "gain, held-out prompts"))


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) with a Student-t interval over the values; no interval from a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    from scipy.stats import t

    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _fmt(mean: float, low: float | None, high: float | None) -> str:
    return f"{mean:+.3f}" + ("" if low is None else f" [{low:+.3f}, {high:+.3f}]")


def parse_arm(text: str) -> tuple[str, list[str]]:
    label, sep, patterns = text.rpartition("=")
    if not sep or not label.strip() or not patterns.strip():
        raise SystemExit(f"--arm {text!r}: write it as LABEL=PATTERN[,PATTERN...], e.g. 'zero head=vzero_lam1_full_s*'.")
    return label.strip(), [p.strip() for p in patterns.split(",") if p.strip()]


def select(records: list[dict], patterns: list[str]) -> list[dict]:
    return [r for r in records if any(fnmatch.fnmatchcase(r["name"], p) for p in patterns)]


def arm_summary(label: str, runs: list[dict]) -> list[str]:
    names = ", ".join(f"{r['name']} seed {r['seed']}" for r in runs)
    kls = ", ".join(f"{r['kl_per_token_last_pass']:.3f}" for r in runs)
    reward_models = ", ".join(sorted({r.get("reward_model") or "not recorded" for r in runs}))
    lines = [f"{label}: n = {len(runs)} runs ({names})",
             f"  KL over the last pass (k1, nats/token): {kls}",
             f"  reward models: {reward_models}"]
    for key, name in GAINS:
        values = [r[key][0] for r in runs]
        lines.append(f"  {name}: per run {', '.join(f'{v:+.2f}' for v in values)}; "
                     f"mean {_fmt(*t_interval(values))} (95 % t over runs)")
    return lines


def paired_difference(label: str, first_label: str, runs: list[dict], first: list[dict]) -> list[str]:
    # A seed that names two runs in one arm (make demo's runs all use 42) pairs with nothing: which of them
    # shares the other arm's start would be a guess.
    def once(arm: list[dict]) -> dict:
        seeds = [r["seed"] for r in arm]
        return {r["seed"]: r for r in arm if seeds.count(r["seed"]) == 1}

    mine, theirs = once(runs), once(first)
    pairs = [(mine[s], theirs[s]) for s in sorted(mine) if s in theirs]
    seeds = [r["seed"] for r, _ in pairs]
    lines = [f"{label} minus {first_label}, paired by seed (seeds {', '.join(map(str, seeds)) or 'none in common'}):"]
    for key, name in GAINS:
        diffs = [a[key][0] - b[key][0] for a, b in pairs]
        if diffs:
            lines.append(f"  {name}: per seed {', '.join(f'{d:+.2f}' for d in diffs)}; "
                         f"mean {_fmt(*t_interval(diffs))} (95 % t over seeds)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", required=True, help="LABEL=PATTERN[,PATTERN...] (repeatable)")
    parser.add_argument("--unpaired", action="store_true",
                        help="no paired differences: the arms differ in more than one factor (e.g. LoRA and full PPO)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the jsonl that bench/ppo_recipe.py appends to")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        raise SystemExit(f"{args.results} does not exist: run bench/ppo_recipe.py first, or pass --results.")
    records = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    arms = []
    for text in args.arm:
        label, patterns = parse_arm(text)
        runs = sorted(select(records, patterns), key=lambda r: (r["seed"], r["name"]))
        if not runs:
            raise SystemExit(f"--arm {text!r} matches no run in {args.results}; its names start with "
                             f"{', '.join(sorted({r['name'].split('_')[0] for r in records}))}.")
        arms.append((label, runs))
    out = []
    for label, runs in arms:
        out += arm_summary(label, runs)
    for label, runs in [] if args.unpaired else arms[1:]:
        out += paired_difference(label, arms[0][0], runs, arms[0][1])
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
