"""Memory rates: a streaming copy, and decode-shaped GEMMs that read their weights once."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from suanli.calibration.timing import (
    DTYPES,
    Budget,
    Plan,
    steady,
    sweep,
    sync_for,
    timed,
    torch_module,
)


def copy_bandwidth(device: str, plan: Plan) -> float:
    """GB/s of a large copy, counting the read and the write (STREAM's convention)."""
    torch = torch_module()
    sync = sync_for(torch, device)
    n = plan.copy_mb * 2**20 // 4
    src = torch.ones(n, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), sync, plan.min_time_s, Budget(plan.probe_budget_s))
    return round(2 * n * 4 / t / 1e9, 2)


def gemv(device: str, plan: Plan, dtypes: tuple[str, ...], tokens: int = 8) -> dict[str, float]:
    """GB/s at which a decode-shaped GEMM (``tokens`` rows against a 64 MB weight) reads it."""
    torch = torch_module()
    sync = sync_for(torch, device)
    budget = Budget(plan.probe_budget_s)
    out = {}
    for name in dtypes:
        dtype = getattr(torch, DTYPES[name])
        w = torch.ones(64 * 2**20 // (2 if name == "bf16" else 4) // 1024, 1024, dtype=dtype)
        w = w.to(device)
        x = torch.randn(tokens, 1024, device=device, dtype=dtype)

        def mv(x: Any = x, w: Any = w) -> Any:
            return torch.nn.functional.linear(x, w)

        t = timed(mv, sync, plan.min_time_s, budget)
        out[name] = round(w.numel() * w.element_size() / t / 1e9, 2)
    return out


def last_level_cache_bytes(root: str = "/sys/devices/system/cpu") -> int:
    """Bytes of last-level cache this process can reach: every distinct cache of the
    highest level over the CPUs it may run on (an EPYC has an L3 per core complex, a
    two-socket Xeon one per socket), from sysfs; 0 where sysfs does not say."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    caches: dict[tuple[int, str], int] = {}  # (level, CPUs that share it) -> bytes
    for cpu in cpus:
        for index in glob.glob(f"{root}/cpu{cpu}/cache/index*"):
            with contextlib.suppress(OSError, ValueError):
                level = int(Path(index, "level").read_text())
                if Path(index, "type").read_text().strip() == "Instruction":
                    continue
                shared = Path(index, "shared_cpu_list").read_text().strip()
                text = Path(index, "size").read_text().strip().upper()
                unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
                caches[(level, shared)] = int(text.rstrip("KMG")) * unit
    if not caches:
        return 0
    top = max(level for level, _ in caches)
    return sum(size for (level, _), size in caches.items() if level == top)


def sweep_bytes(device: str, plan: Plan) -> int:
    """Bytes of distinct matrices a decode-GEMM sweep streams: eight times the last-level
    cache (a GPU's L2 is tens of MB: 128 MB), at least 64 MB, at most 1 GB or an eighth
    of RAM. Twice was not enough to read none of it again: on a 2-core EPYC (32 MB of
    L3) [8, 512] x [512, 2048] products streamed 36.5, 33 and 30.5 GB/s through
    OpenVINO over sets of 64, 128 and 256 MB, 28.9, 28.4 and 26.8 through ONNX Runtime,
    22.4, 21.9 and 21.6 in PyTorch bf16."""
    floor = (64 if plan.copy_mb <= 256 else 96) * 2**20
    if device.startswith("cuda"):
        return max(floor, 128 * 2**20)
    import psutil

    cap = min(2**30, psutil.virtual_memory().total // 8)
    return int(min(cap, max(floor, 8 * last_level_cache_bytes())))


def decode_rows(k: int) -> int:
    """Output rows of a decode-GEMM probe matrix of inner size ``k``: a layer's shape
    (4k), at most 16 MB in 16 bits."""
    return min(4 * k, 16 * 2**20 // (2 * k))


#: the side of a GEMM too small to cost bytes: what is left of its call is the call's cost
CALL_PROBE_SIDE = 64
CALL_PROBE_COUNT = 256


def int8_kernel(torch: Any, device: str) -> bool:
    """Whether serve_lm's int8 weights run PyTorch's int8-weight GEMM here (a CPU's)."""
    return device == "cpu" and hasattr(torch, "_weight_int8pack_mm")


def decode_gemms(
    torch: Any, x: Any, rows: int, count: int, quantized: bool = False
) -> Callable[[], None]:
    """A call that runs ``x`` ([tokens, K]) against ``count`` distinct [rows, K] weights,
    decode-shaped: 16-bit ones in ``x``'s dtype, or serve_lm's int8 ones through PyTorch's
    int8-weight kernel. Filled, not random: a GB of randn takes seconds, and a GEMM's
    speed is not the values'."""
    k = x.shape[-1]
    if quantized:
        qs = [torch.full((rows, k), 3, dtype=torch.int8) for _ in range(count)]
        scale = torch.ones(rows, dtype=x.dtype)

        def run8() -> None:
            for q in qs:
                torch._weight_int8pack_mm(x, q, scale)

        return run8
    ws = [torch.full((rows, k), 0.01, dtype=x.dtype, device=x.device) for _ in range(count)]

    def run() -> None:
        for w in ws:
            torch.nn.functional.linear(x, w)

    return run


def gemm_call_us(device: str, plan: Plan, dtype: str = "bf16", tokens: int = 8) -> dict[str, float]:
    """µs one decode GEMM call costs whatever its size: dtype -> µs (``int8`` too where
    serve_lm runs PyTorch's int8-weight kernel), timed over many distinct 64 x 64
    matrices, which cost no bytes or FLOPs worth counting.

    On one 2-core Xeon with AMX a bf16 call cost 18-20 µs and an int8 one 3-4: a
    512 x 512 bf16 matrix took 41 µs from the cache, of which its 0.5 MB at 27 GB/s
    took 20. serve_lm's fixed costs (`overheads.fixed_costs_us`) already count
    every call of a decode step, so `gemv_by_k` takes it out of its rates."""
    torch = torch_module()
    sync = sync_for(torch, device)
    dt = getattr(torch, DTYPES[dtype])
    x = torch.randn(tokens, CALL_PROBE_SIDE, dtype=dt, device=device)
    kinds = {dtype: False, **({"int8": True} if int8_kernel(torch, device) else {})}
    out = {}
    for name, quantized in kinds.items():
        run = decode_gemms(torch, x, CALL_PROBE_SIDE, CALL_PROBE_COUNT, quantized)
        out[name] = round(steady(run, sync, plan.min_time_s) / CALL_PROBE_COUNT * 1e6, 2)
    return out


def streamed_gbs(weight_bytes: float, seconds: float, calls: int, call_us: float) -> float:
    """GB/s of ``weight_bytes`` read by ``calls`` GEMM calls in ``seconds``, the calls' own
    cost (``call_us`` each) taken out; at most half the time is taken, so a call cost
    measured high on a noisy machine cannot make a rate out of nothing."""
    moved_s = max(seconds - calls * call_us * 1e-6, seconds / 2)
    return round(weight_bytes / moved_s / 1e9, 2)


def gemv_by_k(
    device: str,
    plan: Plan,
    dtype: str = "bf16",
    tokens: int = 8,
    call_us: dict[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """GB/s at which decode-shaped GEMMs stream *many distinct* weights: dtype -> K -> GB/s.

    A decode step reads each of a model's matrices once, none still in cache; small
    ones stream slower (per-call cost, shorter rows). The set per K is eight times the
    last-level cache (`sweep_bytes`), so none is re-read from it: a 64 MB set on a
    CPU with hundreds of MB of L3 streamed 17 GB/s where serve_lm's decode got 11.
    ``dtype`` is the one serve_lm computes in here (bf16, or fp32 where bf16 is
    emulated); ``int8`` is the weight-only kernel serve_lm uses on CPUs
    (``_weight_int8pack_mm``, activations in ``dtype``): it streams its bytes at half
    bf16's rate or less, so half the bytes buy little.

    ``call_us`` (`gemm_call_us`, by dtype): each call's fixed cost, taken out of the rate,
    since perf adds a decode step's fixed costs on their own (at K = 512 a bf16 call is
    a ninth fixed cost here).
    """
    torch = torch_module()
    sync = sync_for(torch, device)
    dt = getattr(torch, DTYPES[dtype])
    size = torch.tensor([], dtype=dt).element_size()
    total = sweep_bytes(device, plan)
    budget = Budget(plan.probe_budget_s)
    # (weight dtype, bytes a weight)
    kinds = [(dtype, size)] + ([("int8", 1)] if int8_kernel(torch, device) else [])
    out: dict[str, dict[str, float]] = {name: {} for name, _ in kinds}
    fixed = call_us or {}

    def call_s(k: int) -> float:
        rows = decode_rows(k)
        count = max(2, total // (rows * k * size))
        x = torch.randn(tokens, k, dtype=dt, device=device)
        t = 0.0
        for name, width in kinds:
            # one set at a time: the call holds it, and it is freed before the next is made
            run = decode_gemms(torch, x, rows, count, quantized=name == "int8")
            t_set = timed(run, sync, plan.min_time_s, budget)
            del run
            out[name][str(k)] = streamed_gbs(
                count * rows * k * width, t_set, count, fixed.get(name, 0)
            )
            t += t_set
        return t

    # each K streams the same bytes: the next costs about what this one did
    sweep((512, 1024, 4096), call_s, lambda k, t: t, lambda k: 1.0, budget)
    return out
