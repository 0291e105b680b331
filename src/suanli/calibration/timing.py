"""How calibration times things: rates after a warm-up, within a wall budget per probe.

A probe measures sizes in increasing order and stops growing them once the next
size would not fit what is left of its budget, so a device that runs a dtype
on a slow path (bf16 emulated on an AVX2-only CPU: ~100x slower than fp32)
gives a profile in bounded time instead of a sweep that never ends.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from suanli.errors import SuanliError


class TorchMissing(SuanliError):
    """PyTorch is not installed."""


def torch_module() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise TorchMissing(
            "calibration runs PyTorch: pip install 'suanli[torch]' (torch==2.13.0)"
        ) from exc
    return torch


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Plan:
    """How much to measure: sizes, how long each timing runs, and each probe's budget."""

    gemm_sizes: tuple[int, ...]
    dtypes: tuple[str, ...]
    copy_mb: int
    attn_seq: tuple[int, ...]
    allreduce_mb: tuple[float, ...]
    min_time_s: float
    probe_budget_s: float  # wall seconds one probe may spend growing its sizes

    @classmethod
    def quick(cls) -> Plan:
        return cls((256, 1024, 2048), ("fp32", "bf16"), 256, (256, 1024), (1.0, 16.0), 0.15, 3.0)

    @classmethod
    def full(cls) -> Plan:
        return cls(
            (256, 512, 1024, 2048, 4096),
            ("fp32", "bf16", "fp16"),
            1024,
            (256, 1024, 4096),
            (1.0, 16.0, 64.0),
            0.5,
            30.0,
        )


@dataclass
class Budget:
    """A probe's wall budget: the first size is always measured; a larger one only if a
    warm-up and two calls of it, scaled from the last call, fit in what is left."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left_s(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def affords(self, call_s: float) -> bool:
        return 3 * call_s <= self.left_s()


def timed(
    fn: Callable[[], object],
    sync: Callable[[], None],
    min_time_s: float,
    budget: Budget | None = None,
) -> float:
    """Seconds per call: one warm-up, then repeated until ``min_time_s`` has passed, or
    after one call once the budget is spent."""
    fn()
    sync()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time_s or (budget is not None and budget.left_s() <= 0):
            return elapsed / n


def steady(
    fn: Callable[[], object],
    sync: Callable[[], None],
    min_time_s: float,
    windows: int = 3,
) -> float:
    """Seconds per call: the median of ``windows`` runs of `timed`. A shared machine
    stalls one window now and then (memory reclaimed while it sat cold, a neighbour's
    burst): run four times in one process, OpenVINO's decode-attention probe read
    2.1-2.9 GB/s three times and 0.15-0.22 GB/s once, which one window alone records."""
    return statistics.median(timed(fn, sync, min_time_s) for _ in range(windows))


def sync_for(torch: Any, device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def sweep(
    sizes: tuple[int, ...],
    call_s: Callable[[int], float],
    rate: Callable[[int, float], float],
    work: Callable[[int], float],
    budget: Budget,
) -> dict[str, float]:
    """``rate(n, call_s(n))`` for each size ``n`` in turn, while the budget affords the
    next size: its call is taken to last the last one's times the ratio of ``work``."""
    out: dict[str, float] = {}
    last: tuple[int, float] | None = None
    for n in sizes:
        if last is not None and not budget.affords(last[1] * work(n) / work(last[0])):
            break
        t = call_s(n)
        out[str(n)] = rate(n, t)
        last = (n, t)
    return out


def sweep_in_rounds(
    sizes: tuple[int, ...],
    make_call: Callable[[int], Callable[[], object]],
    work: Callable[[int], float],
    budget: Budget,
    sync: Callable[[], None],
    min_time_s: float,
    rounds: int = 3,
) -> dict[int, float]:
    """Seconds per call of the call ``make_call(n)`` builds for each size (once a size):
    the sizes the budget affords (`sweep`, one `timed` window each), then ``rounds - 1``
    more rounds of one window per kept size, and each size's fastest window.

    A shared machine slows for a second now and then, and a spell only slows: in three
    minutes of 0.1 s windows of a bf16 1,024² GEMM on the 2-core Xeon of
    ``benchmarks/closing_loop.py``, the median read 1.35 TFLOP/s and 40 of 882 windows
    under 80% of it, most near 0.54, in runs of 2-5 windows every 5-20 s. In rounds such
    a spell reaches one window of a size, or two, where back to back it reaches all of
    them; a median of three still took two slow windows for its rate (closing-loop run m:
    bf16 1,024² at 0.70 TFLOP/s, the one-process step predicted 25% slow). The workloads'
    step times are medians over many steps, which leave such spells out too."""
    calls: dict[int, Callable[[], object]] = {}

    def window_s(n: int) -> float:
        if n not in calls:
            calls[n] = make_call(n)
        return timed(calls[n], sync, min_time_s)

    first = sweep(sizes, window_s, lambda n, t: t, work, budget)
    windows = {int(n): [t] for n, t in first.items()}
    for _ in range(rounds - 1):
        for n, ts in windows.items():
            ts.append(window_s(n))
    return {n: min(ts) for n, ts in windows.items()}
