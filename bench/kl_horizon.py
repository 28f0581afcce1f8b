"""Why a run's training log and the evaluation read different exact KLs for one policy (issue 25, "one KL"): the
two average over different things — the log over training prompts and rollouts of the demo's rollout budget
(64 tokens), the evaluation over held-out prompts and answers of up to its answer budget (128). This measures one
policy both ways and the two steps between them, from fresh samples at the evaluation's settings:

    held-out prompts, answers up to 128 tokens       (what the evaluation measures)
    held-out prompts, the same answers' first 64     (the horizon changed, the prompts not)
    training prompts, answers up to 64 tokens        (what the log measures, at the end of training)

    python bench/kl_horizon.py --store /tmp/rlhflab-seeds [--seeds 0,1,2,3,4] [--methods ppo-full,ppo-lora]

Reads the seed stores `bench/seeds.py` leaves (DIR/seed<S>/<method>); per seed and method prints the three exact
KLs per token (Σ p log p/q over the sampled tokens / their count, T as the evaluation) with 95 % bootstrap intervals
over prompts, beside the training log's last pass (and each of its steps' KL, the policy as it sampled before that
step's update) and the evaluation's figure from bench/seeds.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

from common import command, machine
from seeds import _online_rl_metrics

HERE = Path(__file__).resolve().parent
METHODS = ("ppo-full", "ppo-lora", "grpo")  # the online-RL runs, whose logs hold an exact KL


def measure(store: Path, seed: int, method: str, n: int, rollout_tokens: int) -> dict:
    import torch

    from rlhflab.config import build_config, EvalConfig
    from rlhflab.data.oasst1 import read_prompts
    from rlhflab.generation.sampling import generate_batch
    from rlhflab.measure.evaluation import _model_of, _settings
    from rlhflab.measure.kl import exact_kl_of_responses
    from rlhflab.measure.stats import ratio_bootstrap_ci
    from rlhflab.models.policies import PolicySet
    from rlhflab.models.precision import autocast, policy_dtype
    from rlhflab.models.prompts import with_system

    cfg = build_config(EvalConfig, "demo", seed=1000 + seed)  # the evaluation's settings and seed for this seed
    folder = store / f"seed{seed}" / method
    policies = PolicySet(cfg.base_model, {method: str(folder)}, dtype=policy_dtype(cfg.bf16))
    out = {}

    def per_token(sums, counts):  # Σ KL / Σ tokens with the evaluation's own interval (its resamples and seed)
        return list(ratio_bootstrap_ci(sums, counts, samples=cfg.bootstrap_samples, seed=4))

    with autocast(cfg.bf16):
        with policies.use("base") as (_, tokenizer):
            pass
        for label, prompt_file, budget in (("heldout", "heldout_prompts.jsonl", cfg.max_new_tokens),
                                           ("train", "train_prompts.jsonl", rollout_tokens)):
            asked = [with_system(p, cfg.system_prompt) for p in read_prompts(folder / prompt_file)[:n]]
            settings = replace(_settings(cfg), max_new_tokens=budget)
            torch.manual_seed(cfg.seed)
            with policies.use(method) as (model, tok):
                ids = [g.token_ids or [] for g in generate_batch(model, tok, asked, settings, batch_size=cfg.batch_size)]
            kl = partial(exact_kl_of_responses, partial(_model_of, policies, method),
                         partial(_model_of, policies, "base"), tokenizer, asked, temperature=cfg.temperature)
            sums, counts = kl(ids)
            out[f"{label}_{budget}"] = per_token(sums, counts)
            if label == "heldout":
                sums, counts = kl([r[:rollout_tokens] for r in ids])  # KL at a position depends only on its prefix
                out[f"heldout_first_{rollout_tokens}"] = per_token(sums, counts)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="/tmp/rlhflab-seeds")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--methods", default="ppo-full")
    p.add_argument("--prompts", type=int, default=50)
    args = p.parse_args(argv)
    from rlhflab.config import DEMO_ROLLOUT_TOKENS

    recorded = {(r["seed"], r["method"]): r for r in map(json.loads, (HERE / "seeds.jsonl").read_text().splitlines())
                if r.get("method") in METHODS}
    print(f"command: {command()}\nmachine: {machine()}\n")
    print("| seed | method | evaluation (bench/seeds.jsonl) | held-out, up to 128 | held-out, first 64 of the same | "
          "training prompts, up to 64 | training log, last pass (its steps) |\n|---|---|---|---|---|---|---|")
    fmt = lambda v: "—" if not v else f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"  # noqa: E731
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in args.methods.split(","):
            r = measure(Path(args.store), seed, method, args.prompts, DEMO_ROLLOUT_TOKENS)
            rec = recorded.get((seed, method), {})
            log = rec.get("kl_training_last_exact")
            metrics = _online_rl_metrics(Path(args.store) / f"seed{seed}" / method)
            last_pass = [m["kl_exact_per_token"] for m in metrics if m.get("pass") == metrics[-1].get("pass")]
            print(f"| {seed} | {method} | {fmt(rec.get('kl_exact_per_token'))} | {fmt(r.get('heldout_128'))} | "
                  f"{fmt(r.get(f'heldout_first_{DEMO_ROLLOUT_TOKENS}'))} | {fmt(r.get(f'train_{DEMO_ROLLOUT_TOKENS}'))} | "
                  f"{'—' if log is None else f'{log:.4f}'} ({', '.join(f'{v:.3f}' for v in last_pass)}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
