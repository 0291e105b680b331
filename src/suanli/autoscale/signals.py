"""What an autoscaler sees: a service's load at one instant, and its per-replica targets."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Observation:
    """A service at ``t_s``. Totals over its *ready* replicas; replicas still starting
    are counted apart and left out of every average (as the HPA leaves out pods that
    are not ready: they would drag the per-replica load down and stall a scale-up)."""

    t_s: float
    ready: int
    starting: int = 0
    waiting: float = 0.0  # requests queued, at the router and on replicas
    running: float = 0.0  # requests being decoded
    kv_use: float = 0.0  # mean KV-cache use over ready replicas, 0-1
    tokens_per_s: float = 0.0  # generated tokens/s, all ready replicas
    arrivals_per_s: float = 0.0  # requests/s arrived over the last control period

    @property
    def concurrency(self) -> float:
        """Requests in the system, Knative's signal."""
        return self.waiting + self.running


@dataclass(frozen=True, slots=True)
class Targets:
    """What one replica should carry; None leaves a signal out."""

    concurrency: float | None = None
    waiting: float | None = None
    kv_use: float | None = None
    tokens_per_s: float | None = None

    def __post_init__(self) -> None:
        given = {k: getattr(self, k) for k in ("concurrency", "waiting", "kv_use", "tokens_per_s")}
        if not any(v is not None for v in given.values()):
            raise ValueError(
                "give at least one target (concurrency, waiting, kv_use, tokens_per_s)"
            )
        for k, v in given.items():
            if v is not None and not v > 0:
                raise ValueError(f"target {k} must be > 0, got {v}")


def per_signal_replicas(obs: Observation, targets: Targets, tolerance: float) -> dict[str, int]:
    """For each signal, ``ceil(ready × metric / target)`` (the HPA's formula, the metric a
    per-ready-replica average), or ``ready`` when the ratio is within ``tolerance`` of 1.

    With no ready replica there is no average: any load asks for one replica (activation
    from zero), none asks for zero.
    """
    if obs.ready == 0:
        load = obs.concurrency > 0 or obs.arrivals_per_s > 0
        return {"activation": 1 if load else 0}
    metric = {
        "concurrency": obs.concurrency / obs.ready,
        "waiting": obs.waiting / obs.ready,
        "kv_use": obs.kv_use,
        "tokens_per_s": obs.tokens_per_s / obs.ready,
    }
    out = {}
    for name, value in metric.items():
        target = getattr(targets, name)
        if target is None:
            continue
        ratio = value / target
        out[name] = (
            obs.ready if abs(ratio - 1) <= tolerance else math.ceil(obs.ready * ratio - 1e-9)
        )
    return out


def clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, n))
