"""Matmul kernel efficiency at the shapes a 135M decode step uses (rows = batch size).

`python bench/bench_matmul.py` — effective GB/s of weights read, fp32 vs bf16, for the
576x1536 / 1536x576 block projections and the 576x49152 LM head at 1, 8 and 16 rows: the
ceiling that decode (batch 1) and PPO rollouts / evaluation (batch 8-16) run into.
"""
from __future__ import annotations

import json
import time

from common import command, machine

SHAPES = {"block 576->1536": (576, 1536), "block 1536->576": (1536, 576), "LM head 576->49152": (576, 49152)}


def _ms(fn, reps: int) -> float:
    for _ in range(max(2, reps // 10)):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def run(rows=(1, 8, 16)) -> dict:
    import torch

    torch.manual_seed(0)
    out = []
    for m in rows:
        for name, (k, n) in SHAPES.items():
            w, x = torch.randn(n, k), torch.randn(m, k)
            wb, xb = w.bfloat16(), x.bfloat16()
            reps = 30 if n > 10000 else 200
            f32 = _ms(lambda: torch.nn.functional.linear(x, w), reps)
            b16 = _ms(lambda: torch.nn.functional.linear(xb, wb), reps)
            out.append({"rows": m, "shape": name, "fp32_ms": round(f32, 3), "bf16_ms": round(b16, 3),
                        "fp32_gb_s": round(n * k * 4 / f32 / 1e6, 1), "bf16_gb_s": round(n * k * 2 / b16 / 1e6, 1)})
    result = {"benchmark": "matmul kernels at decode shapes", "results": out, "machine": machine(),
              "command": command()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run()
