"""The device a process computes on: its name, and which precision it runs fastest.

The one module of the platform that both the built-in workloads (programs jobs
run) and calibration (which measures for perf) import, so neither imports the
other. It needs PyTorch only when asked to measure, and imports it then.

Why precision is measured, not assumed: without bf16 instructions (an AVX2-only
EPYC) PyTorch computes bf16 on a slow path — a 1024² ``torch.mm`` took 6.1 s in
bf16 against 0.055 s in fp32 there — while a CPU with AMX or AVX512-BF16, and
any recent GPU, runs bf16 faster than fp32. A training step that assumed bf16
on the first kind never finished. So bf16 is chosen only where a small GEMM
shows it beats fp32 on the device itself.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any

#: set to ``emulated`` to treat bf16 as emulated on any device: calibration and the
#: workloads then take the path a CPU without bf16 instructions takes (so that path
#: stays tested on machines that have them)
BF16_ENV = "SUANLI_BF16"
#: CPU flags (``/proc/cpuinfo``) that mean bf16 arithmetic in hardware
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
PROBE_N = 256  # the GEMM a precision is judged on: ms in fp32, ~0.1 s in emulated bf16


def device_name(device: str) -> str:
    """The device's model name: a GPU's as its driver reports it, else the CPU's."""
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(device))
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The first CPU's feature flags; empty where the file does not say."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_forced_emulated() -> bool:
    return os.environ.get(BF16_ENV, "").strip().lower() == "emulated"


@dataclass(frozen=True)
class Precision:
    """The precision chosen for a device, with the measurement behind it."""

    dtype: str  # "bf16" or "fp32"
    reason: str
    bf16_tflops: float | None = None  # the probe GEMM's rates (None: not measured)
    fp32_tflops: float | None = None


def probe_tflops(torch: Any, device: str, dtype: Any, n: int = PROBE_N) -> float:
    """TFLOP/s of one n×n GEMM: a warm-up, then at least two calls and 20 ms."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    a = torch.ones(n, n, device=device, dtype=dtype)
    b = torch.ones(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    sync()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < 0.02:
        torch.mm(a, b)
        sync()
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e12


def judge(device: str, bf16_tflops: float, fp32_tflops: float, n: int = PROBE_N) -> Precision:
    """The rule, in one place for the workloads and calibration: bf16 where the device ran
    an n×n GEMM faster in it than in fp32, unless ``SUANLI_BF16=emulated`` says otherwise."""
    flags = [f for f in BF16_CPU_FLAGS if f in cpu_flags()] if device == "cpu" else []
    what = f"bf16 {bf16_tflops:.3g} vs fp32 {fp32_tflops:.3g} TFLOP/s at {n}²" + (
        f"; CPU flags: {', '.join(flags) or 'no bf16 instructions'}" if device == "cpu" else ""
    )
    if bf16_forced_emulated():
        return Precision("fp32", f"{BF16_ENV}=emulated ({what})", bf16_tflops, fp32_tflops)
    if bf16_tflops > fp32_tflops:
        return Precision("bf16", what, bf16_tflops, fp32_tflops)
    return Precision("fp32", f"bf16 is not faster here ({what})", bf16_tflops, fp32_tflops)


def choose_precision(device: str) -> Precision:
    """bf16 where the device runs it faster than fp32, measured (`judge`); else fp32."""
    import torch

    if bf16_forced_emulated():  # said, not measured: no reason to spend the probe
        return Precision("fp32", f"{BF16_ENV}=emulated: bf16 treated as emulated")
    if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        return Precision("fp32", f"{device_name(device)} has no bf16")
    bf16 = probe_tflops(torch, device, torch.bfloat16)
    return judge(device, bf16, probe_tflops(torch, device, torch.float32))
