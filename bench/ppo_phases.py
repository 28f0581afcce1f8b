"""Where a PPO step spends its time: wall seconds per phase of TRL's PPO loop, summed over a run.

`python bench/ppo_phases.py [--mode full|lora] [--steps 2] [--ppo-epochs N] [--no-bf16] [--max-response-length N]`
— times the hooks of
train_ppo's trainer (forward passes, reward/value scoring) through a subclass, and the rollout sampler, work-state
saves, backward and optimizer step; everything else is "other". Needs checkpoints/reward.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import defaultdict

from common import command, demo_ppo_metrics, machine


def _timed(totals: dict, label: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        totals[label] += time.perf_counter() - t0


def timed_trainer(totals: dict) -> type:
    """train_ppo's trainer (rlhflab.training.ppo.lab_ppo_trainer) with the hooks of TRL's PPO loop timed: each call
    adds its wall time to `totals[phase]` (passed to train_ppo as its documented `trainer_class`)."""
    import torch

    from rlhflab.training.ppo import lab_ppo_trainer

    class TimedPPOTrainer(lab_ppo_trainer()):
        def upcast_forward(self, model, *args):  # every forward pass of the policy, the value model and the reference
            label = ("policy+value fwd (train)" if torch.is_grad_enabled()
                     else "no-grad fwd (rollout log-probs, reference)")
            return _timed(totals, label, super().upcast_forward, model, *args)

        def get_reward(self, model, *args):  # TRL trains the value model
            label = "value fwd (no grad)" if model.training else "reward fwd (no grad)"
            return _timed(totals, label, super().get_reward, model, *args)

    return TimedPPOTrainer


@contextlib.contextmanager
def phase_timers(totals: dict):
    """Time the rollout sampler, the work-state saves, backward and the optimizer step (public functions)."""
    import torch
    from accelerate import Accelerator

    import rlhflab.training.online as online
    import rlhflab.training.ppo as ppo

    replaced = [(online, "sample_responses", "rollout sampling (decode engine)"),
                (ppo, "save_atomically", "work-state saves"), (Accelerator, "backward", "backward"),
                (torch.optim.AdamW, "step", "optimizer step")]
    originals = [getattr(owner, name) for owner, name, _ in replaced]
    for (owner, name, label), fn in zip(replaced, originals):
        setattr(owner, name, lambda *a, _fn=fn, _label=label, **kw: _timed(totals, _label, _fn, *a, **kw))
    try:
        yield totals
    finally:
        for (owner, name, _), fn in zip(replaced, originals):
            setattr(owner, name, fn)


def run(steps: int = 2, mode: str = "full", ppo_epochs: int | None = None, bf16: bool = True, **overrides) -> dict:
    totals: dict[str, float] = defaultdict(float)
    kw = dict(mode=mode, max_steps=steps, bf16=bf16, **overrides)
    if ppo_epochs:
        kw["ppo_epochs"] = ppo_epochs
    with phase_timers(totals):
        records, cfg = demo_ppo_metrics(trainer_class=timed_trainer(totals), **kw)
    step_s = sum(r["seconds_per_step"] for r in records)
    phases = {k: round(v / len(records), 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    phases["other"] = round(step_s / len(records) - sum(phases.values()), 2)
    from rlhflab.models.precision import runs_bf16

    result = {"benchmark": f"PPO step phases ({mode}, demo batch, ppo_epochs={cfg.ppo_epochs}, "
                           f"bf16={runs_bf16(bf16)}, "  # what ran: fp32 on a CPU without native bf16
                           f"rollouts of up to {cfg.max_response_length} tokens)",
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
    parser.add_argument("--max-response-length", type=int, help="rollout tokens (default: the demo profile's)")
    args = parser.parse_args()
    extra = {} if args.max_response_length is None else {"max_response_length": args.max_response_length}
    run(args.steps, args.mode, args.ppo_epochs, args.bf16, **extra)
