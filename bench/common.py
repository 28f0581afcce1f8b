"""Shared helpers for the benchmarks: machine description and result records."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def machine() -> str:
    from rlhflab.checkpoints import hardware_description

    return hardware_description()


def command() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


class Stopwatch:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def demo_ppo_metrics(trl_overrides: dict | None = None, **cfg_overrides) -> tuple[list[dict], object]:
    """Run PPO with the demo profile (plus overrides) into a temporary folder; (metrics records, config)."""
    import tempfile

    from rlhflab.checkpoints import METRICS_FILE, read_jsonl
    from rlhflab.config import CHECKPOINTS_DIR, PPOConfig, build_config
    from rlhflab.ppo import train_ppo

    cfg_overrides.setdefault("reward_model", str(CHECKPOINTS_DIR / "reward"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config(PPOConfig, "demo", output_dir=str(Path(tmp) / "ppo"), **cfg_overrides)
        train_ppo(cfg, trl_overrides=trl_overrides)
        return read_jsonl(Path(tmp) / "ppo" / METRICS_FILE), cfg
