"""The pipeline's PPO stage one step at a time vs side by side: `python bench/bench_pipeline.py [--steps 6]`.

Baseline: the full and the LoRA demo PPO runs one after the other, each with all the cores (what
`training/pipeline.py --jobs 1` does). Ours: both at once with one thread each (`--jobs 2`, the CPU
default). Both arms run the same commands, as separate processes, so start-up, model loading and
saving count too. Needs the demo reward model (python training/reward.py --profile demo).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from common import ROOT, command, machine


def _ppo_cmd(mode: str, out: Path, steps: int, reward: str) -> list[str]:
    return [sys.executable, str(ROOT / "training" / "ppo.py"), "--mode", mode, "--profile", "demo",
            "--max-steps", str(steps), "--reward-model", reward, "--output-dir", str(out / f"ppo-{mode}")]


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}


def _run(cmds: list[list[str]], threads: int, logs: Path) -> float:
    """Start `cmds` together with `threads` threads each; wall seconds until the last one ends."""
    t0 = time.perf_counter()
    procs = []
    for i, cmd in enumerate(cmds):
        with open(logs / f"{threads}t-{i}.log", "w") as fh:
            procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(threads), cwd=ROOT))
    for p, cmd in zip(procs, cmds):
        if p.wait() != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed; see {logs}")
    return time.perf_counter() - t0


def run(steps: int = 6, reward: str | None = None) -> dict:
    from rlhflab.config import CHECKPOINTS_DIR
    from rlhflab.store.jsonio import read_jsonl

    reward = reward or str(CHECKPOINTS_DIR / "reward")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seq_out, par_out = tmp / "one-by-one", tmp / "side-by-side"
        seq_s = sum(_run([_ppo_cmd(m, seq_out, steps, reward)], cores, tmp) for m in ("full", "lora"))
        par_s = _run([_ppo_cmd(m, par_out, steps, reward) for m in ("full", "lora")], 1, tmp)
        steps_logged = {}
        for arm, out in (("one_by_one", seq_out), ("side_by_side", par_out)):
            for m in ("full", "lora"):
                steps_logged[f"{arm}_{m}_steps"] = len(read_jsonl(out / f"ppo-{m}" / "metrics.jsonl"))
    return {
        "benchmark": "pipeline PPO stage (full + LoRA demo runs, whole processes)",
        "steps_per_run": steps,
        "baseline": f"one after the other, {cores} threads each",
        "baseline_s": round(seq_s, 1),
        "ours": "side by side, 1 thread each",
        "ours_s": round(par_s, 1),
        "speedup": round(seq_s / par_s, 2),
        **steps_logged,
        "machine": machine(),
        "command": command(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="PPO steps per run")
    parser.add_argument("--reward-model", default=None, help="reward model checkpoint (default checkpoints/reward)")
    args = parser.parse_args()
    print(json.dumps(run(args.steps, args.reward_model), indent=2))


if __name__ == "__main__":
    main()
