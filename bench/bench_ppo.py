"""One PPO step with this project's defaults against plain TRL (fp32, TRL's defaults) on the same batch.

`python bench/bench_ppo.py [--steps 3]` — needs checkpoints/reward (python training/reward.py --profile demo).
Reports the median seconds per step after the first (warm-up) step, and the ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, demo_ppo_metrics, machine  # noqa: E402


def run(steps: int = 3, mode: str = "full", reward_model: str | None = None) -> dict:
    from rlhflab.config import CHECKPOINTS_DIR, PPOConfig, profile_defaults

    reward_model = reward_model or str(CHECKPOINTS_DIR / "reward")
    variants = {
        "plain TRL (fp32, gradient checkpointing on, whole value model trains: TRL's defaults)":
            ({"bf16": False, "value_freeze_layers": 0}, {"gradient_checkpointing": True}),
        "rlhflab demo defaults (bf16 autocast, no gradient checkpointing, value model's lower blocks frozen)":
            ({}, {}),
    }
    out = {}
    for name, (cfg_kw, trl_kw) in variants.items():
        records, _ = demo_ppo_metrics(trl_kw, mode=mode, reward_model=reward_model, max_steps=steps, **cfg_kw)
        times = [r["seconds_per_step"] for r in records[1:]] or [records[0]["seconds_per_step"]]
        out[name] = statistics.median(times)
    (base_name, base), (ours_name, ours) = list(out.items())
    demo = profile_defaults(PPOConfig, "demo")
    result = {"benchmark": f"PPO step ({mode}, demo batch: {demo['batch_size']} rollouts x "
                           f"{demo['max_response_length']} tokens, {demo['ppo_epochs']} PPO epochs)",
              "baseline": base_name, "baseline_s_per_step": base, "ours": ours_name, "ours_s_per_step": ours,
              "speedup": base / ours, "steps_timed": steps - 1, "machine": machine(), "command": command()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mode", default="full", choices=("full", "lora"))
    args = parser.parse_args()
    run(args.steps, args.mode)
