"""Where a demo training step spends its time, for the Trainer-based steps: the reward model, DPO and GRPO (PPO has
its own loop and its own script, bench/ppo_phases.py). Issue 27, item 3: profile before cutting.

    python bench/step_phases.py --step reward|dpo|grpo [--max-steps N] [--tiny]

Runs the demo profile's training of that step into a temporary folder (GRPO: probe off, `--max-steps`, default 4;
the reward model and DPO: their whole demo run, which is short) with these methods timed, wall seconds summed over the
run, each also counted without the timed phases nested inside it:

- the run outside `Trainer.train()` (loading models and data; the reward model's one pass of its frozen blocks; the
  final checkpoint and its card),
- GRPO: `_generate_and_score_completions` (rollouts, scoring, reference log-probs), and inside it the sampling on
  the decode engine,
- `training_step` (forward and loss, after the phases nested in it), `Accelerator.backward`, the optimizer step,
- `Trainer.evaluate` (the reward model's dev pairs at each epoch's end) and `_save_checkpoint`,
- "other": the rest of `train()` (data loading, callbacks: the lab's metrics records and rollout log).

On a CPU without native bf16 set ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 to emulate one; the machine line
names the vector features and says when they are capped.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import command, machine, tiny_models


@contextlib.contextmanager
def timed_methods(targets: list[tuple[object, str, str]], totals: dict, inner: dict):
    """Wrap each (owner, method name, label) so its wall time adds to totals[label]; a call running inside another
    timed call also adds to inner[outer label], so exclusive = totals - inner."""
    stack: list[str] = []
    originals = []
    for owner, name, label in targets:
        fn = owner.__dict__[name]
        originals.append((owner, name, fn))

        def wrapper(*args, _fn=fn, _label=label, **kwargs):
            outer = stack[-1] if stack else None
            stack.append(_label)
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                stack.pop()
                totals[_label] += dt
                if outer is not None:
                    inner[outer] += dt

        setattr(owner, name, wrapper)
    try:
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def _targets(step: str) -> list[tuple[object, str, str]]:
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from transformers import Trainer

    targets = [(Trainer, "train", "train()"), (Accelerator, "backward", "backward"),
               (AcceleratedOptimizer, "step", "optimizer step"), (Trainer, "evaluate", "dev evaluation"),
               (Trainer, "_save_checkpoint", "checkpoint saves"), (Trainer, "training_step", "forward + loss")]
    if step == "dpo":
        from trl import DPOTrainer

        targets[-1] = (DPOTrainer, "training_step", "forward + loss")
    if step == "grpo":
        import rlhflab.training.grpo as grpo
        from trl import GRPOTrainer

        lab = grpo.lab_grpo_trainer("grpo")
        targets[-1] = (GRPOTrainer, "training_step", "forward + loss")
        targets += [(lab, "_generate_and_score_completions", "rollouts: generate, score, reference"),
                    (grpo, "sample_rollouts", "sampling (decode engine)")]
    return targets


def _run_step(step: str, tmp: Path, max_steps: int, overrides: dict):
    from rlhflab.config import DPOConfig, GRPOConfig, RewardConfig, build_config

    if step == "reward":
        from rlhflab.training.reward import train_reward_model

        return train_reward_model(build_config(RewardConfig, "demo", output_dir=str(tmp / "reward"), **overrides))
    if step == "dpo":
        from rlhflab.training.dpo import train_dpo

        return train_dpo(build_config(DPOConfig, "demo", output_dir=str(tmp / "dpo"), **overrides))
    from rlhflab.training.grpo import train_grpo

    return train_grpo(build_config(GRPOConfig, "demo", output_dir=str(tmp / "grpo"), probe_every=0,
                                   max_steps=max_steps, **overrides))


def run(step: str, max_steps: int = 4, overrides: dict | None = None) -> dict:
    from rlhflab.config import CHECKPOINTS_DIR
    from rlhflab.models.precision import autocast_dtype

    overrides = dict(overrides or {})
    if step == "grpo":
        overrides.setdefault("reward_model", str(CHECKPOINTS_DIR / "reward"))
    totals: dict[str, float] = defaultdict(float)
    inner: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with timed_methods(_targets(step), totals, inner):
            _run_step(step, Path(tmp), max_steps, overrides)
        total = time.perf_counter() - t0
    exclusive = {k: totals[k] - inner.get(k, 0.0) for k in totals}
    phases = {"outside train() (loading, data, frozen-prefix pass, final save and card)": total - totals["train()"]}
    phases.update({k: v for k, v in exclusive.items() if k != "train()"})
    phases["other (inside train())"] = exclusive.get("train()", 0.0)
    result = {"benchmark": f"{step} demo run, phases (wall s summed over the run; nested phases counted once)",
              "bf16_autocast": autocast_dtype(True) is not None, "total_s": round(total, 2),
              "phases_s": {k: round(v, 2) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
              "phases_share": {k: f"{100 * v / total:.0f} %" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
              "machine": machine(), "command": command()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", required=True, choices=("reward", "dpo", "grpo"))
    parser.add_argument("--max-steps", type=int, default=4, help="GRPO steps (the reward model and DPO run whole)")
    parser.add_argument("--tiny", action="store_true", help="a 2-block model: checks the code in seconds")
    a = parser.parse_args()
    if a.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            models = tiny_models(Path(tmp))
            extra = {"base_model": models["base_model"]}
            if a.step == "grpo":
                extra.update(reward_model=models["reward_model"], judge_model="", num_prompts=16, num_heldout=4,
                             batch_size=2, num_generations=2, max_response_length=8)
            elif a.step == "dpo":
                extra.update(train_size=8, batch_size=4, max_length=64)
            else:
                extra.update(max_length=64, epochs=1)
            run(a.step, a.max_steps, extra)
    else:
        run(a.step, a.max_steps)
