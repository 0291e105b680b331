"""Knative's pod autoscaler (KPA) as a pure function: concurrency averaged over a stable
window and a short panic window; a burst that would need twice the ready replicas
enters panic mode, which scales on the panic window and never down until a stable
window has passed without panic; idle for the grace period, the service goes to zero.

Defaults are Knative Serving's (config-autoscaler): stable window 60 s, panic window
10% of it, panic threshold 200%, target utilisation 70%, max scale-up rate 1000,
max scale-down rate 2, scale-to-zero grace period 30 s. Source: knative.dev,
"Configuring the autoscaler" / "Kn autoscaler: scale bounds, panic mode", and
pkg/autoscaler/scaling/autoscaler.go (``Scale``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from suanli.autoscale.signals import clamp

KPA_TARGET_UTILIZATION = 0.7  # Knative: container-concurrency-target-percentage 70


@dataclass(frozen=True, slots=True)
class KpaSpec:
    target_concurrency: float  # requests one replica serves at once (containerConcurrency)
    min_replicas: int = 0
    max_replicas: int = 10
    target_utilization: float = KPA_TARGET_UTILIZATION
    stable_window_s: float = 60.0
    panic_window_pct: float = 10.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_s: float = 30.0


@dataclass(frozen=True, slots=True)
class KpaState:
    panic_since_s: float | None = None  # when panic mode last saw its threshold crossed
    max_panic: int = 0  # the most replicas panic mode asked for (it never goes below)
    zero_since_s: float | None = None  # since when the stable desire has been zero


def _mean(samples: Sequence[tuple[float, float]], now_s: float, window_s: float) -> float | None:
    vals = [c for t, c in samples if now_s - window_s < t <= now_s]
    return sum(vals) / len(vals) if vals else None


def kpa(
    spec: KpaSpec,
    samples: Sequence[tuple[float, float]],
    now_s: float,
    ready: int,
    state: KpaState,
) -> tuple[int, KpaState]:
    """Desired replicas from concurrency ``samples`` (time, requests in the system)."""
    target = spec.target_concurrency * spec.target_utilization
    stable = _mean(samples, now_s, spec.stable_window_s)
    panic = _mean(samples, now_s, spec.stable_window_s * spec.panic_window_pct / 100)
    if stable is None:  # no data: hold (Knative keeps the current scale)
        return ready, state
    panic = stable if panic is None else panic
    want_stable = math.ceil(stable / target - 1e-9)
    want_panic = math.ceil(panic / target - 1e-9)
    base = max(ready, 1)  # ratios against zero ready replicas use one
    up = math.ceil(spec.max_scale_up_rate * base)
    down = math.floor(ready / spec.max_scale_down_rate)
    want_stable = clamp(want_stable, down, up)
    want_panic = clamp(want_panic, down, up)

    over = want_panic / base >= spec.panic_threshold
    panic_since = state.panic_since_s
    if over:
        panic_since = now_s  # enter, or extend
    elif panic_since is not None and now_s - panic_since >= spec.stable_window_s:
        panic_since = None  # a whole stable window without crossing the threshold
    if panic_since is not None:
        desired = max(want_panic, state.max_panic)
        max_panic = desired
    else:
        desired, max_panic = want_stable, 0

    zero_since = state.zero_since_s
    if desired == 0:
        zero_since = now_s if zero_since is None else zero_since
        if ready > 0 and now_s - zero_since < spec.scale_to_zero_grace_s:
            desired = 1  # the grace period: stay warm for a returning client
    else:
        zero_since = None
    desired = clamp(desired, spec.min_replicas, spec.max_replicas)
    return desired, KpaState(panic_since, max_panic, zero_since)
