"""Precision choices: bf16 autocast where the hardware is fast at it, fp32 elsewhere."""
from __future__ import annotations

import torch

from rlhflab.models.hardware import best_device, cpu_bf16_fast


def autocast_dtype(want_bf16: bool, device: torch.device | str = "cpu") -> torch.dtype | None:
    """bf16 when asked and the hardware runs it fast (CUDA with bf16, CPU with AMX or AVX512-bf16), else None."""
    if not want_bf16:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_bf16_fast() else None


def runs_bf16(want_bf16: bool = True) -> bool:
    """Whether a run asking for bf16 (`want_bf16`) gets bf16 autocast on this machine's best device: what ran, as
    cards, benchmarks and the pipeline's expected times name it; False on a CPU without native bf16."""
    return autocast_dtype(want_bf16, best_device()) is not None


def policy_dtype(want_bf16: bool, device: torch.device | str | None = None) -> torch.dtype:
    """Weights dtype for a policy that only generates (app, evaluation): bf16 where bf16 is fast here
    (`autocast_dtype`), since its matmuls would run in bf16 anyway; fp32 otherwise. Half the memory, no
    re-cast of frozen (LoRA-shared) base weights at every decode step, and a faster chat decode than fp32 weights
    where bf16 is fast (BENCHMARKS.md, "Lab notes moved out of the code")."""
    device = torch.device(device) if device is not None else best_device()
    return torch.bfloat16 if autocast_dtype(want_bf16, device) is not None else torch.float32


def clear_autocast_cache_after_steps(optimizer) -> None:
    """Make `optimizer.step()` clear autocast's cache of bf16 weight copies afterwards.

    One autocast context spanning a whole run caches the bf16 casts of trainable weights until the outermost
    context exits: without a reset every forward after the first optimizer step would still see the step-0
    weights (LoRA adapters stuck at zero). Wrapping the instance's step works for any optimizer object a trainer
    holds, DeepSpeed's included."""
    step = optimizer.step

    def step_then_clear_cast_cache(*args, **kwargs):
        result = step(*args, **kwargs)
        torch.clear_autocast_cache()
        return result

    optimizer.step = step_then_clear_cast_cache


def autocast(want_bf16: bool, device: torch.device | str | None = None):
    """A bf16 autocast context where `autocast_dtype` allows it, else a no-op context."""
    import contextlib

    device = torch.device(device) if device is not None else best_device()
    dtype = autocast_dtype(want_bf16, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
