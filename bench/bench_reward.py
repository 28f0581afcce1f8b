"""Reward-model training throughput (preference pairs / s): this project's demo recipe against plain fp32.

`python bench/bench_reward.py [--pairs 64]` — both runs train one epoch on the same pairs of the
embedded demo data; the baseline is fp32 with every layer trainable (transformers' Trainer defaults).
Each is timed over the whole training call (load, tokenize, the demo recipe's one pass over its frozen
blocks, train, evaluate 8 pairs, save), so work moved out of the Trainer's own timer still counts.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, machine  # noqa: E402


def run(pairs: int = 64) -> dict:
    from rlhflab.config import RewardConfig, build_config
    from rlhflab.reward_training import train_reward_model

    variants = {"plain fp32, all layers trainable": dict(bf16=False, freeze_layers=0),
                "rlhflab demo recipe (bf16 autocast, lower 24 of 30 blocks frozen)": dict(bf16=True)}
    out = {}
    for name, kw in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = build_config(RewardConfig, "demo", train_size=pairs, dev_size=8, epochs=1,
                               output_dir=str(Path(tmp) / "rm"), **kw)
            started = time.perf_counter()
            train_reward_model(cfg)  # the whole call: the demo recipe's one-off pass over the frozen blocks counts
            out[name] = pairs / (time.perf_counter() - started)
    (base_name, base), (ours_name, ours) = list(out.items())
    result = {"benchmark": f"reward-model training, {pairs} pairs x 1 epoch (batch 8, max 128 tokens), whole call",
              "baseline": base_name, "baseline_pairs_per_s": base, "ours": ours_name, "ours_pairs_per_s": ours,
              "speedup": ours / base, "machine": machine(), "command": command()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=64)
    run(parser.parse_args().pairs)
