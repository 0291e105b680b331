"""Scale ahead of the burst: forecast arrivals over the next replica start time and
provision for the forecast's upper bound now, because a replica asked for when the
burst lands serves only after its cold start (minutes for a 70B model).

The forecast is Holt's linear exponential smoothing with a damped trend (statsmodels),
refitted on the recent arrival rates at every decision; its upper bound adds ``z``
standard deviations of the one-step residuals. A seasonal model needs several
seasons of history, which an hour of trace does not have; with a day of history the
same function takes ``season_steps``.

A one-step residual says nothing of how fast bursty traffic rises: the Azure code
trace goes from idle to 90 requests/s within 30 s, faster than a replica starts, and
a smooth model reads the idle minutes between its bursts as a forecast of idleness.
So the peak planned for is also the current rate plus the rise the history showed
within one horizon (its quantile at the same confidence as ``z``), though not above
the history's own peak: a service whose bursts come faster than its cold start keeps
the capacity for the next one, and one whose load moves slowly keeps none.

The reactive HPA recommendation is a floor: a forecast that misses a burst still
scales on what is observed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from suanli.autoscale.hpa import Decision, HpaSpec, recommend, stabilise, up_limit
from suanli.autoscale.signals import Observation, clamp

MIN_FIT_POINTS = 8  # fewer than this and the last rate is the forecast
MAX_RISE = 1.25


@dataclass(frozen=True, slots=True)
class PredictiveSpec:
    capacity_rps: float  # requests/s one replica serves within the SLO
    cold_start_s: float
    period_s: float  # seconds between decisions (and between rate samples)
    reactive: HpaSpec  # the floor; its min/max replicas bound the answer
    z: float = 2.33  # one-sided 99% of a normal residual
    down_window_s: float = 60.0  # the forecast already looks ahead: a short hold suffices
    season_steps: int | None = None


@dataclass(frozen=True, slots=True)
class Forecast:
    mean: np.ndarray  # requests/s for each of the next steps
    sigma: float  # one-step residual standard deviation
    last: float = 0.0  # the latest rate
    #: for each past step, how far the rate rose above it within the next ``len(mean)``
    rises: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ceiling: float = 0.0  # the history's highest rate

    def upper(self, z: float) -> np.ndarray:
        return np.maximum(self.mean + z * self.sigma, 0.0)

    def peak(self, z: float) -> float:
        """The rate to provision for over the horizon: the model's upper bound, or the
        latest rate plus the history's rise within a horizon at the same confidence
        (not above the history's peak), whichever is higher."""
        top = float(self.upper(z).max())
        if self.rises.size == 0:
            return top
        rise = float(np.quantile(self.rises, NormalDist().cdf(z)))
        return max(top, min(self.last + rise, self.ceiling))


def horizon_rises(y: np.ndarray, steps: int) -> np.ndarray:
    """``max(y[j+1 .. j+steps]) - y[j]`` for each ``j`` with a whole horizon after it,
    floored at 0: how much the rate rose within one horizon from each past step."""
    if len(y) <= steps:
        return np.zeros(0)
    ahead = np.lib.stride_tricks.sliding_window_view(y[1:], steps).max(axis=1)
    return np.asarray(np.maximum(ahead - y[: len(ahead)], 0.0), dtype=float)


def forecast(rates: Sequence[float], steps: int, season_steps: int | None = None) -> Forecast:
    """The next ``steps`` arrival rates from the past ones (equally spaced)."""
    y = np.asarray(rates, dtype=float)
    last = float(y[-1]) if len(y) else 0.0
    ceiling = float(y.max()) if len(y) else 0.0
    rises = horizon_rises(y, steps)
    if len(y) < MIN_FIT_POINTS or float(np.ptp(y)) == 0.0:
        sigma = float(np.std(y)) if len(y) > 1 else 0.0
        return Forecast(np.full(steps, last), sigma, last, rises, ceiling)
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    seasonal = season_steps is not None and len(y) >= 2 * season_steps
    with warnings.catch_warnings():  # a short noisy series may not converge: still usable
        warnings.simplefilter("ignore")
        fit = ExponentialSmoothing(
            y,
            trend="add",
            damped_trend=True,
            seasonal="add" if seasonal else None,
            seasonal_periods=season_steps if seasonal else None,
            initialization_method="estimated",
        ).fit()
        mean = np.asarray(fit.forecast(steps), dtype=float)
    # a trend fitted on a burst's rising edge extrapolates to many times any rate seen;
    # no forecast goes past the history's highest rate by more than MAX_RISE
    mean = np.clip(mean, 0.0, MAX_RISE * float(y.max()))
    resid = y - np.asarray(fit.fittedvalues, dtype=float)
    return Forecast(mean, float(np.std(resid)), last, rises, ceiling)


def predictive(
    spec: PredictiveSpec,
    rates: Sequence[float],
    obs: Observation,
    current: int,
    history: Sequence[tuple[float, int]],
) -> Decision:
    """Desired replicas: enough for the forecast's peak over the coming start time and
    one period (`Forecast.peak`), never below the reactive recommendation."""
    steps = max(1, math.ceil((spec.cold_start_s + spec.period_s) / spec.period_s))
    peak = forecast(rates, steps, spec.season_steps).peak(spec.z)
    ahead = math.ceil(peak / spec.capacity_rps - 1e-9)
    reactive, why = recommend(spec.reactive, obs)
    # the floor is an HPA: it scales up at the HPA's rate (the forecast is not limited)
    reactive = min(reactive, up_limit(spec.reactive, current))
    rec = max(ahead, reactive)
    why = "forecast" if ahead >= reactive else why
    rec = clamp(rec, spec.reactive.min_replicas, spec.reactive.max_replicas)
    desired = stabilise(rec, current, obs.t_s, history, 0.0, spec.down_window_s)
    return Decision(desired, rec, why)
