"""Where a PPO step spends its time: wall seconds per phase of TRL's PPO loop, summed over a run.

`python bench/ppo_phases.py [--mode full|lora] [--steps 2] [--ppo-epochs N] [--no-bf16]` — patches TRL's
module-level helpers (generation, no-grad forwards, reward/value scoring, backward, optimizer step)
with timers; everything else is "other". Needs checkpoints/reward.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import defaultdict

from common import command, demo_ppo_metrics, machine


@contextlib.contextmanager
def phase_timers(totals: dict):
    """Patch TRL 1.12's PPO helpers so each call adds its wall time to `totals[phase]`."""
    import torch
    from accelerate import Accelerator

    import rlhflab.training.ppo as ppo
    from rlhflab.training.ppo import _trl

    module = _trl()[2]
    originals = {name: getattr(module, name) for name in ("batch_generation", "forward", "get_reward")}
    ours = {name: getattr(ppo, name) for name in ("sample_responses", "save_atomically")}

    def wrap(name, fn, label):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label(*args) if callable(label) else label] += time.perf_counter() - t0
        return timed

    def forward_label(model, *_):
        return "policy+value fwd (train)" if torch.is_grad_enabled() else "reference fwd (no grad)"

    def reward_label(model, *_):
        return "value fwd (no grad)" if model.training else "reward fwd (no grad)"  # TRL trains the value model

    module.batch_generation = wrap("batch_generation", originals["batch_generation"], "generation")
    # train_ppo samples on the decode engine (its own batch_generation replaces TRL's) and saves its work state
    ppo.sample_responses = wrap("sample_responses", ours["sample_responses"], "rollout sampling (decode engine)")
    ppo.save_atomically = wrap("save_atomically", ours["save_atomically"], "work-state saves")
    module.forward = wrap("forward", originals["forward"], forward_label)
    module.get_reward = wrap("get_reward", originals["get_reward"], reward_label)
    backward, step = Accelerator.backward, torch.optim.AdamW.step
    Accelerator.backward = wrap("backward", backward, "backward")
    torch.optim.AdamW.step = wrap("step", step, "optimizer step")
    try:
        yield totals
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)
        for name, fn in ours.items():
            setattr(ppo, name, fn)
        Accelerator.backward, torch.optim.AdamW.step = backward, step


def run(steps: int = 2, mode: str = "full", ppo_epochs: int | None = None, bf16: bool = True, **overrides) -> dict:
    totals: dict[str, float] = defaultdict(float)
    kw = dict(mode=mode, max_steps=steps, bf16=bf16, **overrides)
    if ppo_epochs:
        kw["ppo_epochs"] = ppo_epochs
    with phase_timers(totals):
        records, cfg = demo_ppo_metrics(**kw)
    step_s = sum(r["seconds_per_step"] for r in records)
    phases = {k: round(v / len(records), 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    phases["other"] = round(step_s / len(records) - sum(phases.values()), 2)
    result = {"benchmark": f"PPO step phases ({mode}, demo batch, ppo_epochs={cfg.ppo_epochs}, bf16={bf16})",
              "seconds_per_step": round(step_s / len(records), 2), "phases_s_per_step": phases,
              "machine": machine(), "command": command()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--mode", default="full", choices=("full", "lora"))
    parser.add_argument("--ppo-epochs", type=int)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    args = parser.parse_args()
    run(args.steps, args.mode, args.ppo_epochs, args.bf16)
