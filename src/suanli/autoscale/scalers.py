"""The policies as controllers: each keeps the little history its pure function needs
and answers, at each decision, how many replicas of each kind the service should have.
The serving simulator and the live services controller call these same objects."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from suanli.autoscale.hpa import HpaSpec, hpa
from suanli.autoscale.kpa import KpaSpec, KpaState, kpa
from suanli.autoscale.mix import Mix, ReplicaKind, cheapest_mix
from suanli.autoscale.predictive import PredictiveSpec, forecast, predictive
from suanli.autoscale.signals import Observation
from suanli.autoscale.sizes import SizeHistory


def measures_rate(span_s: float, period_s: float) -> bool:
    """Whether a decision after ``span_s`` seconds of traffic measures an arrival rate:
    over at least half a period (of at most a minute). The first decision comes after
    no period at all, where one request in its last millisecond would read as 1,000/s
    (and a zero as idleness), and stay in the forecasts' past for an hour. The live
    controller and the simulator both decide by this rule."""
    return span_s > 0 and span_s >= min(period_s, 60.0) / 2


@dataclass
class Window:
    """What the control loop has observed: now, arrival rates per decision period
    (oldest first), concurrency samples, and the sizes of recent requests."""

    obs: Observation
    rates: list[float] = field(default_factory=list)
    concurrency: list[tuple[float, float]] = field(default_factory=list)
    sizes: SizeHistory = field(default_factory=SizeHistory)


class Scaler(Protocol):
    name: str
    period_s: float

    def decide(self, w: Window, current: dict[str, int]) -> dict[str, int]: ...


@dataclass
class Static:
    """Provisioned once for the peak; never changes. ``mix``: a chip mix chosen once
    (Mélange's own evaluation: a fixed fleet for a known rate), which the router draws
    from as it does the optimizer's."""

    counts: dict[str, int]
    name: str = "static"
    period_s: float = math.inf
    mix: Mix | None = None

    def decide(self, w: Window, current: dict[str, int]) -> dict[str, int]:
        return dict(self.counts)


@dataclass
class Hpa:
    kind: str
    spec: HpaSpec
    name: str = "hpa"
    period_s: float = 15.0  # the HPA controller's sync period
    history: list[tuple[float, int]] = field(default_factory=list)

    def decide(self, w: Window, current: dict[str, int]) -> dict[str, int]:
        d = hpa(self.spec, w.obs, current.get(self.kind, 0), self.history)
        self.history = [(t, r) for t, r in self.history if w.obs.t_s - t < 3600]
        self.history.append((w.obs.t_s, d.recommendation))
        return {self.kind: d.desired}


@dataclass
class Kpa:
    kind: str
    spec: KpaSpec
    name: str = "kpa"
    period_s: float = 2.0  # Knative's tick
    state: KpaState = field(default_factory=KpaState)

    def decide(self, w: Window, current: dict[str, int]) -> dict[str, int]:
        desired, self.state = kpa(self.spec, w.concurrency, w.obs.t_s, w.obs.ready, self.state)
        return {self.kind: desired}


@dataclass
class Predictive:
    kind: str
    spec: PredictiveSpec
    name: str = "predictive"
    period_s: float = 15.0
    history: list[tuple[float, int]] = field(default_factory=list)
    history_points: int = 120  # the last 30 minutes at 15 s

    def decide(self, w: Window, current: dict[str, int]) -> dict[str, int]:
        rates = w.rates[-self.history_points :]
        d = predictive(self.spec, rates, w.obs, current.get(self.kind, 0), self.history)
        self.history = [(t, r) for t, r in self.history if w.obs.t_s - t < 3600]
        self.history.append((w.obs.t_s, d.recommendation))
        return {self.kind: d.desired}


@dataclass
class Optimizer:
    """Mélange's mix, re-solved each period for the forecast peak of the coming start
    time and the size distribution of the last 30 minutes' requests (`SizeHistory`).
    ``kinds`` gives each kind's capacity for the representatives of the ``buckets``
    size buckets the sizes are counted in."""

    kinds: Sequence[ReplicaKind]
    buckets: int
    cold_start_s: float
    name: str = "optimizer"
    period_s: float = 15.0
    z: float = 2.33
    down_window_s: float = 60.0
    max_spot_share: float = 1.0
    max_miss_share: float = 0.0  # of requests planned outside the SLO (`cheapest_mix`)
    #: a new mix's starts must pay back their cold starts within this long: mixes that
    #: save less are not swapped to, as the load wobbles between them
    start_horizon_s: float = 900.0
    #: plan the rate at this share of the SLO capacity (Knative's default target is 70%)
    target_utilization: float = 0.8
    mix: Mix | None = None
    peaks: list[tuple[float, float]] = field(default_factory=list)

    def decide(self, w: Window, current: dict[str, int]) -> dict[str, int]:
        steps = max(1, math.ceil((self.cold_start_s + self.period_s) / self.period_s))
        # the forecast's peak carries its own confidence; the rate observed now is the
        # floor. Either is planned at the target utilisation: the ILP fills its kinds to
        # exactly the rate it is given (a single kind rounds up to whole replicas, a mix
        # tops up with a small chip), so a fleet at 100% of its modelled capacity has no
        # room for a burst beyond the forecast, or for the model's own error. On the
        # Azure code trace (x8) a burst after two idle minutes rose past the history's
        # highest rate, and a mix planned at capacity kept 97.1-98.1% of requests within
        # the SLO (99.7% at 90%, `benchmarks/serve_autoscale.py`)
        peak = max(
            forecast(w.rates[-120:], steps).peak(self.z),
            w.obs.arrivals_per_s,
            1e-3 if w.obs.concurrency > 0 else 0.0,
        ) / max(self.target_utilization, 1e-9)
        # a scale-down waits for the hold window: plan for its highest peak, so the mix
        # (a function of the load) does not swap kinds back and forth as load wobbles
        now = w.obs.t_s
        self.peaks = [(t, p) for t, p in self.peaks if now - t < self.down_window_s]
        self.peaks.append((now, peak))
        peak = max(p for _, p in self.peaks)
        if peak <= 0:
            return {k.name: 0 for k in self.kinds}
        share = w.sizes.shares(now)
        if share is None:  # no request seen yet: keep what runs (the service was sized for it)
            return {k.name: current.get(k.name, 0) for k in self.kinds}
        if len(share) != self.buckets:
            raise ValueError(f"the sizes are counted in {len(share)} buckets, not {self.buckets}")
        # a replica started now is paid through its cold start, serving nothing; that
        # cost is spread over the time a swap has to pay it back (a shorter span would
        # keep a dearer mix running for as long as it carries the load)
        hold_s = max(self.start_horizon_s, self.down_window_s, self.period_s)
        self.mix = cheapest_mix(
            [peak * s for s in share],
            self.kinds,
            max_spot_share=self.max_spot_share,
            running=current,
            max_miss_share=self.max_miss_share,
            start_usd_per_hour={
                k.name: k.usd_per_hour * self.cold_start_s / hold_s for k in self.kinds
            },
        )
        return dict(self.mix.counts)
