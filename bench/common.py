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
