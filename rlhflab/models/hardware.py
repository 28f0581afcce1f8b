"""What this machine can do: the CPU's vector features (as torch and oneDNN may use them), the device, thread shares."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from rlhflab.config import THREADS_FILE_ENV

CPU_FLAGS_ENV = "RLHFLAB_CPU_FLAGS"


# ONEDNN_MAX_CPU_ISA values that stop oneDNN below AVX-512 (the AVX2 emulation of SPEC §7 sets AVX2).
_BELOW_AVX512_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as torch and oneDNN may use them here.

    /proc/cpuinfo's flags, without the AVX-512 and AMX ones where ATEN_CPU_CAPABILITY or ONEDNN_MAX_CPU_ISA caps the
    kernels below AVX-512 (how an AVX2 laptop is emulated on a newer host); RLHFLAB_CPU_FLAGS, a space- or
    comma-separated list, replaces them all (a test or a user simulating another CPU)."""
    override = os.environ.get(CPU_FLAGS_ENV)
    if override is not None:
        return frozenset(override.replace(",", " ").lower().split())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((l for l in text.splitlines() if l.startswith(("flags", "Features"))), "")
    flags = frozenset(line.split(":", 1)[-1].split())
    if _capped_below_avx512():
        flags = frozenset(f for f in flags if not f.startswith(("avx512", "amx")))
    return flags


def _capped_below_avx512() -> bool:
    return (os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2")
            or os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _BELOW_AVX512_ISAS)


def vector_features(flags: frozenset[str] | None = None) -> str:
    """The CPU's widest vector features in words, e.g. 'AVX2', 'AVX-512 + AVX512-BF16', 'AVX-512 + AVX512-BF16 + AMX'."""
    flags = cpu_flags() if flags is None else flags
    names = []
    if "avx512f" in flags:
        names.append("AVX-512")
    elif "avx2" in flags:
        names.append("AVX2")
    if "avx512_bf16" in flags:
        names.append("AVX512-BF16")
    if "amx_bf16" in flags:
        names.append("AMX")
    if not names:
        names.append("no AVX2" if flags else "unknown")
    return " + ".join(names)


def cpu_bf16_fast() -> bool:
    """Whether this CPU has native bf16 arithmetic (AMX or AVX512-BF16); elsewhere bf16 is emulated and slower than fp32."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_packing_available() -> bool:
    """Whether oneDNN's packed bf16 linear can run here: it needs AVX512BW/VL/DQ or AVX-NE-CONVERT, and refuses
    with a RuntimeError otherwise. Torch's own check covers the CPU, the build and ONEDNN_MAX_CPU_ISA; the flags
    check lets RLHFLAB_CPU_FLAGS simulate a CPU without them."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    flags = cpu_flags()
    if not ({"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags):
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True


def fp16_matmul_available() -> bool:
    """Whether fp16 weights can serve decoding here: an x86 CPU with F16C (every AVX2 one), whose fp16 matrix-vector
    kernel was measured faster than fp32's (BENCHMARKS.md); other CPUs were not measured, so they keep fp32."""
    return {"f16c", "avx2"} <= cpu_flags()


def follow_thread_share() -> int:
    """Adopt the CPU thread count the pipeline gives this step now; returns the count in use.

    `training/pipeline.py` runs independent steps side by side with the cores split between them, and
    rewrites each step's share (the file named by RLHFLAB_THREADS_FILE) when a step beside it ends, so
    a step that outlives its neighbour takes the freed core at its next phase. Call it from the main
    thread (OpenMP thread counts are per calling thread). Outside the pipeline it does nothing.
    """
    path = os.environ.get(THREADS_FILE_ENV)
    if path:
        try:
            share = int(Path(path).read_text().strip())
        except (OSError, ValueError):
            share = 0
        if share >= 1 and share != torch.get_num_threads():
            torch.set_num_threads(share)
    return torch.get_num_threads()


def best_device() -> torch.device:
    """This process's GPU (under torchrun/accelerate the one of its LOCAL_RANK), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def hardware_description() -> str:
    """One line naming the machine: CPU model, its vector features as torch may use them (marked where an environment
    variable caps or replaces them, i.e. an emulated host), cores, GPU if any, torch version."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    features = vector_features()
    if os.environ.get(CPU_FLAGS_ENV) is not None or _capped_below_avx512():
        features += " (emulated)"
    text = (f"{cpu} [{features}], {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text
