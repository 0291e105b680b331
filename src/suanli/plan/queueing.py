"""Queueing approximations for a continuously batched LLM replica.

A replica serves requests (Poisson arrivals at ``rate`` per second) of ``I``
prompt and ``O`` output tokens:

* Prefills are an M/D/1 queue with service time ``t_prefill`` and load
  ``rho = rate * t_prefill``; the waiting time has mean ``rho S / 2(1 - rho)``
  (Pollaczek-Khinchine) and an exponential tail ``P(W > t) = rho exp(-t theta)``
  whose mean matches it (Kingman's heavy-traffic form).
* Decoding sequences are an M/G/infinity population, so the batch size is
  Poisson with mean ``b = rate * O * tpot(b)`` (Little's law, solved as a fixed
  point), and each decode step is stretched by ``1 / (1 - rho)`` when prefills
  share the device.

These give p50/p99 TTFT and TPOT and the share of requests meeting both SLOs,
which is what the serving planner ranks on — not averages alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


def poisson_cdf(k: float, mean: float) -> float:
    """P(N <= k) for N ~ Poisson(mean), summed in log space (no SciPy import at start-up)."""
    if k < 0:
        return 0.0
    if mean <= 0:
        return 1.0
    term = -mean  # log P(N = 0)
    total = math.exp(term)
    for i in range(1, int(k) + 1):
        term += math.log(mean) - math.log(i)
        total += math.exp(term)
    return min(1.0, total)


def poisson_ppf(q: float, mean: float) -> float:
    """Smallest k with P(N <= k) >= q."""
    if mean <= 0:
        return 0.0
    k = 0
    term = -mean
    total = math.exp(term)
    while total < q and k < mean + 50 * math.sqrt(mean) + 50:
        k += 1
        term += math.log(mean) - math.log(k)
        total += math.exp(term)
    return float(k)


@dataclass(frozen=True)
class ReplicaLoad:
    """Steady state of one replica; ``stable`` is False when it cannot keep up."""

    stable: bool
    rho_prefill: float
    mean_batch: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    slo_attainment: float


def wait_quantile(rho: float, service_s: float, q: float) -> float:
    """q-quantile of the M/D/1 waiting time (0 when the queue is usually empty)."""
    if rho <= 0:
        return 0.0
    if rho >= 1:
        return math.inf
    theta = 2 * (1 - rho) / service_s
    return max(0.0, math.log(rho / (1 - q)) / theta)


def wait_cdf(rho: float, service_s: float, t: float) -> float:
    """P(wait <= t) for the same approximation."""
    if rho <= 0:
        return 1.0
    if rho >= 1 or t < 0:
        return 0.0
    theta = 2 * (1 - rho) / service_s
    return 1 - rho * math.exp(-theta * t)


def replica_load(
    rate: float,
    output_len: int,
    prefill_s: float,
    tpot: Callable[[float], float],
    batch_limit: int,
    *,
    prefill_here: bool = True,
    extra_ttft_s: float = 0.0,
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
) -> ReplicaLoad:
    """Steady state of a replica at ``rate`` requests/s (see module docstring).

    ``prefill_here=False`` is a decode-only replica of a disaggregated service;
    ``extra_ttft_s`` adds what happens before it (remote prefill, KV transfer).
    """
    rho = rate * prefill_s if prefill_here else 0.0
    if rho >= 1:
        return ReplicaLoad(False, rho, math.inf, math.inf, math.inf, math.inf, math.inf, 0.0)
    stretch = 1 / (1 - rho)
    b = max(1.0, rate * output_len * tpot(1.0) * stretch)
    for _ in range(60):  # fixed point b = rate * O * tpot(b) * stretch
        nb = rate * output_len * tpot(max(1.0, b)) * stretch
        if abs(nb - b) < 1e-3 * max(1.0, b):
            b = nb
            break
        b = nb
        if b > batch_limit:
            break
    if b > batch_limit * 0.95:  # no headroom for fluctuation: requests would queue for slots
        return ReplicaLoad(False, rho, b, math.inf, math.inf, math.inf, math.inf, 0.0)
    b50 = min(batch_limit, max(1.0, poisson_ppf(0.5, b)))
    b99 = min(batch_limit, max(1.0, poisson_ppf(0.99, b)))
    step_now = tpot(max(1.0, b))
    base_ttft = extra_ttft_s + (prefill_s if prefill_here else 0.0) + step_now
    ttft50 = base_ttft + (wait_quantile(rho, prefill_s, 0.5) if prefill_here else 0.0)
    ttft99 = base_ttft + (wait_quantile(rho, prefill_s, 0.99) if prefill_here else 0.0)
    tpot50, tpot99 = tpot(b50) * stretch, tpot(b99) * stretch
    attain = 1.0
    if ttft_slo_s is not None:
        attain *= (
            wait_cdf(rho, prefill_s, ttft_slo_s - base_ttft)
            if prefill_here
            else float(base_ttft <= ttft_slo_s)
        )
    if tpot_slo_s is not None:
        # the largest batch whose stretched step still meets the SLO
        if tpot(1.0) * stretch > tpot_slo_s:
            attain = 0.0
        else:
            lo, hi = 1, batch_limit
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if tpot(mid) * stretch <= tpot_slo_s else (lo, mid - 1)
            attain *= poisson_cdf(lo, b)
    return ReplicaLoad(True, rho, b, ttft50, ttft99, tpot50, tpot99, attain)
