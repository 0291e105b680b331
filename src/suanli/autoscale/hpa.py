"""Kubernetes' HPA (autoscaling/v2) as a pure function.

``desired = ceil(ready × metric / target)`` per signal, each within a 10% tolerance of
the current count left alone, the largest over signals taken; then the behaviour's
stabilisation windows: a scale-up goes to the *smallest* recommendation of the up
window (default 0 s: at once), a scale-down to the *largest* of the down window
(default 300 s), so one quiet minute does not drop replicas that the next burst needs;
and the scale-up policies: at most double, or add 4, per 15 s period (the larger), so a
queue that piled up while replicas start does not ask for many times what the load needs.
Sources: kubernetes.io, "Horizontal Pod Autoscaling" (algorithm details, tolerance
0.1, stabilizationWindowSeconds defaults 0 up and 300 down, default scaleUp policies
Percent 100 and Pods 4 per 15 s with selectPolicy Max), and
pkg/controller/podautoscaler/horizontal.go ``stabilizeRecommendationWithBehaviors`` and
``calculateScaleUpLimitWithScalingRules``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from suanli.autoscale.signals import Observation, Targets, clamp, per_signal_replicas

UP_POLICY_PERIOD_S = 15.0  # the default scale-up policies' periodSeconds


@dataclass(frozen=True, slots=True)
class HpaSpec:
    targets: Targets
    min_replicas: int = 1
    max_replicas: int = 10
    tolerance: float = 0.1
    up_window_s: float = 0.0
    down_window_s: float = 300.0
    #: a scale-up adds at most this share of the current replicas per 15 s...
    up_max_percent: float = 100.0
    #: ...or this many replicas, whichever allows more
    up_max_pods: int = 4
    period_s: float = 15.0  # between decisions: the limits above compound over it


@dataclass(frozen=True, slots=True)
class Decision:
    """``desired`` replicas now; ``recommendation`` is what the caller keeps (with
    ``t_s``) and passes back as history next time; ``why`` names the deciding signal."""

    desired: int
    recommendation: int
    why: str


def recommend(spec: HpaSpec, obs: Observation) -> tuple[int, str]:
    """The raw recommendation, before stabilisation: the largest over signals."""
    per = per_signal_replicas(obs, spec.targets, spec.tolerance)
    if not per:
        return obs.ready, "no signal"
    why = max(per, key=lambda k: per[k])
    return clamp(per[why], spec.min_replicas, spec.max_replicas), why


def stabilise(
    rec: int,
    current: int,
    now_s: float,
    history: Sequence[tuple[float, int]],
    up_window_s: float,
    down_window_s: float,
) -> int:
    """The HPA's behaviour: never above the least recent-up-window recommendation,
    never below the greatest recent-down-window one."""
    up = min([r for t, r in history if now_s - t < up_window_s] + [rec])
    down = max([r for t, r in history if now_s - t < down_window_s] + [rec])
    if current < up:
        return up
    if current > down:
        return down
    return current


def up_limit(spec: HpaSpec, current: int) -> int:
    """The most replicas one decision may scale ``current`` up to: Kubernetes' limits per
    15 s policy period, compounded over the time between decisions."""
    periods = max(spec.period_s, 1e-9) / UP_POLICY_PERIOD_S
    percent = float(current * (1 + spec.up_max_percent / 100) ** periods)
    return max(math.ceil(percent - 1e-9), current + math.ceil(spec.up_max_pods * periods - 1e-9))


def hpa(
    spec: HpaSpec, obs: Observation, current: int, history: Sequence[tuple[float, int]]
) -> Decision:
    """Desired replicas for a service with ``current`` replicas (ready and starting)."""
    rec, why = recommend(spec, obs)
    desired = stabilise(rec, current, obs.t_s, history, spec.up_window_s, spec.down_window_s)
    desired = min(desired, up_limit(spec, current))
    return Decision(clamp(desired, spec.min_replicas, spec.max_replicas), rec, why)
