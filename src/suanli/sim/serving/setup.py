"""From names to a serving simulation: replica kinds from the catalog (or a pool file),
each kind's capacity at the SLO, and the autoscaler configured the way an operator
would configure it from the service's recent past.

Every autoscaler sizes itself from the same history, the first ``history_s`` of the
trace: its size distribution gives a replica's capacity, its busiest minute the fleet
that is running (ready) when the trace starts, and its arrival rates the past that the
forecasting policies (predictive, optimizer) start from, as a service that has been
running has them in its metrics store. Without that past a forecast meets the first
burst knowing nothing of bursts. Each policy is then scored on the rest of the trace
only (`run_policy`). ``static`` provisions for the trace's peak minute: the usual
baseline, which knows the peak in advance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from suanli.autoscale.capacity import (
    concurrency_at,
    mix_capacity_rps,
)
from suanli.autoscale.hpa import HpaSpec
from suanli.autoscale.kinds import Kind, bucket_table, mix_optimizer, replica_kinds
from suanli.autoscale.kpa import KPA_TARGET_UTILIZATION, KpaSpec
from suanli.autoscale.mix import SizeBuckets, cheapest_mix
from suanli.autoscale.predictive import PredictiveSpec
from suanli.autoscale.scalers import Hpa, Kpa, Predictive, Scaler, Static
from suanli.autoscale.signals import Targets
from suanli.errors import UsageError
from suanli.sim.serving.fleet import ServeResult, simulate_serving
from suanli.sim.serving.spot import SpotTerms, with_spot_twins
from suanli.sim.serving.trace import TraceRequest

AUTOSCALERS = ("static", "static-mix", "hpa", "kpa", "predictive", "optimizer")


@dataclass(frozen=True)
class Setup:
    kinds: dict[str, Kind]
    scaler: Scaler
    initial: dict[str, int]
    capacity_rps: dict[str, float]  # per replica of each kind, for the history's sizes
    best_single: str  # the kind with the lowest cost per request served
    past_rates: list[float]  # arrivals/s per decision period over the history
    #: the history's requests, timed from its end (negative): the sizes a service that
    #: has been running has seen
    past_sizes: list[TraceRequest]


def _rates(trace: Sequence[TraceRequest], span_s: float, period_s: float) -> list[float]:
    """Arrivals per second in each whole ``period_s`` of the first ``span_s``."""
    counts = [0] * int(span_s // period_s)
    for r in trace:
        if 0 <= r.arrival_s < len(counts) * period_s:
            counts[int(r.arrival_s // period_s)] += 1
    return [n / period_s for n in counts]


def _shares(sizes: Sequence[TraceRequest], buckets: SizeBuckets) -> list[float]:
    share = [0.0] * buckets.count
    for r in sizes:
        share[buckets.of(r.prompt, r.output)] += 1.0 / len(sizes)
    return share


def _per_minute(trace: Sequence[TraceRequest]) -> list[float]:
    """Arrivals per second in each minute of the trace."""
    counts: dict[int, int] = {}
    for r in trace:
        counts[int(r.arrival_s // 60)] = counts.get(int(r.arrival_s // 60), 0) + 1
    return [n / 60.0 for n in counts.values()] or [0.0]


def history_of(trace: Sequence[TraceRequest], history_s: float) -> float:
    """The history a replay of ``trace`` takes: ``history_s``, at most its first half."""
    return min(history_s, trace[-1].arrival_s / 2) if trace else history_s


def held_out(trace: Sequence[TraceRequest], history_s: float) -> list[TraceRequest]:
    """The requests after the history, from time 0 (`run_policy`)."""
    return [
        TraceRequest(r.arrival_s - history_s, r.prompt, r.output)
        for r in trace
        if r.arrival_s >= history_s
    ]


def make_setup(
    autoscaler: str,
    kinds: dict[str, Kind],
    trace: Sequence[TraceRequest],
    *,
    tpot_slo_s: float,
    ttft_slo_s: float,
    history_s: float = 600.0,
    min_replicas: int = 0,
    max_replicas: int = 64,
    utilization: float = 0.7,
    spot: SpotTerms | None = None,
    max_miss_share: float = 0.0,
    forecast_z: float = 2.33,
) -> Setup:
    """``utilization``: the share of a replica's SLO capacity the reactive policies aim
    to run it at (their concurrency target, and the predictive policy's floor), and the
    optimizer's headroom over the rate it plans. ``forecast_z``: the confidence of
    the predictive and optimizer policies' forecast peak, in normal standard deviations
    (2.33: 99%).
    ``spot``: the optimizer may also choose each chip's spot twin. ``max_miss_share``:
    the optimizer and static-mix may plan that share of requests outside the SLO
    (`cheapest_mix`). ``static`` and ``static-mix`` know the whole trace's busiest
    minute, and provision for it once, from the history's request sizes: on the best
    single kind, or the cheapest mix of kinds (Mélange's evaluation, a fixed fleet for
    a known load)."""
    if autoscaler not in AUTOSCALERS:
        raise UsageError(f"--autoscaler {autoscaler!r}: one of {', '.join(AUTOSCALERS)}")
    if spot is not None and autoscaler != "optimizer":
        raise UsageError(
            "spot replicas are chosen by the optimizer (--autoscaler optimizer): the "
            "single-kind policies scale on-demand replicas"
        )
    if not 0 < utilization <= 1:
        raise UsageError(f"--utilization must be in (0, 1], got {utilization}")
    buckets = SizeBuckets()
    past = [r for r in trace if r.arrival_s < history_s] or list(trace[:100])
    share = _shares(past, buckets)
    mix = [(*buckets.representative(b), s) for b, s in enumerate(share) if s > 0]
    cap = {k: mix_capacity_rps(kind.steps, mix, tpot_slo_s) for k, kind in kinds.items()}
    usable = {k: c for k, c in cap.items() if c > 0}
    if not usable:
        raise UsageError(
            f"no replica kind meets a TPOT of {tpot_slo_s * 1e3:.0f} ms for this trace's "
            "requests: relax --tpot-slo-s, raise --tp, or allow a faster chip"
        )
    best = min(usable, key=lambda k: kinds[k].usd_per_hour / usable[k])
    c = usable[best]
    # the service has been running: every policy starts with what its history's busiest
    # minute needed on the best single kind, ready
    start = {best: max(1, math.ceil(max(_per_minute(past)) / c))}
    # what one replica carries at ``utilization`` of its SLO capacity, for the mean
    # request: the HPA's concurrency target, and the KPA's after its own 70%
    mean_in = sum(r.prompt for r in past) / len(past)
    mean_out = sum(r.output for r in past) / len(past)
    steps = kinds[best].steps
    conc = max(1.0, concurrency_at(steps, mean_in, mean_out, utilization * c))
    # the KPA aims at 70% of its target: given conc / 0.7 it aims where the HPA does
    kpa_target = conc / KPA_TARGET_UTILIZATION
    reactive = HpaSpec(Targets(concurrency=conc), max(1, min_replicas), max_replicas)
    seeded = [(0.0, start[best])]  # the service ran at this size before the trace starts
    scaler: Scaler
    if autoscaler == "static":
        start = {best: max(1, math.ceil(max(_per_minute(trace)) / c))}
        scaler = Static(start)
    elif autoscaler == "hpa":
        scaler = Hpa(best, reactive, history=list(seeded))
    elif autoscaler == "kpa":
        scaler = Kpa(best, KpaSpec(kpa_target, min_replicas, max_replicas))
    elif autoscaler == "predictive":
        spec = PredictiveSpec(c, kinds[best].cold_start_s, 15.0, reactive, z=forecast_z)
        scaler = Predictive(best, spec, history=list(seeded))
    elif autoscaler == "static-mix":
        # Mélange's setting: the trace's busiest minute known, the cheapest mix for it
        # and the history's sizes provisioned once, at its SLO capacity (as static is)
        table = bucket_table(kinds, buckets, tpot_slo_s, ttft_slo_s)
        rk = replica_kinds(kinds, table, max_replicas, buckets, with_best_effort=max_miss_share > 0)
        peak = max(_per_minute(trace))
        fixed = cheapest_mix([peak * s for s in share], rk, max_miss_share=max_miss_share)
        start = {k: n for k, n in fixed.counts.items() if n}
        scaler = Static(start, name="static-mix", mix=fixed)
    else:
        table = bucket_table(kinds, buckets, tpot_slo_s, ttft_slo_s)
        if spot is not None:  # each chip's spot twin serves what the chip serves
            kinds = with_spot_twins(kinds, spot)
            for k, kind in kinds.items():
                if kind.on_demand is not None:
                    table[k], cap[k] = table[kind.on_demand], cap[kind.on_demand]
        scaler = mix_optimizer(
            kinds,
            table,
            utilization=utilization,
            max_replicas=max_replicas,
            max_spot_share=spot.max_share if spot is not None else 1.0,
            buckets=buckets,
            max_miss_share=max_miss_share,
            z=forecast_z,
        )
    period = scaler.period_s
    rates = _rates(trace, history_s, period) if math.isfinite(period) else []
    sizes = [
        TraceRequest(r.arrival_s - history_s, r.prompt, r.output)
        for r in trace
        if r.arrival_s < history_s
    ]
    return Setup(kinds, scaler, start, cap, best, rates, sizes)


def run_policy(
    autoscaler: str,
    kinds: dict[str, Kind],
    trace: Sequence[TraceRequest],
    *,
    ttft_slo_s: float,
    tpot_slo_s: float,
    utilization: float = 0.7,
    max_replicas: int = 64,
    spot: SpotTerms | None = None,
    max_miss_share: float = 0.0,
    forecast_z: float = 2.33,
    history_s: float = 600.0,
    progress: Callable[[float], None] | None = None,
    spill_over: bool = True,
) -> tuple[Setup, ServeResult]:
    """Set a policy up from the trace's first ``history_s`` and replay what follows under
    it (a trace no longer than that: its first half is the history). What a policy
    learned from is never what it is scored on: a forecast fitted on the minutes it is
    then asked to serve knows their bursts before they come. ``spill_over``: see
    `suanli.sim.serving.fleet.Fleet`."""
    history_s = history_of(trace, history_s)
    replay = held_out(trace, history_s)
    setup = make_setup(
        autoscaler,
        kinds,
        trace,
        tpot_slo_s=tpot_slo_s,
        ttft_slo_s=ttft_slo_s,
        history_s=history_s,
        max_replicas=max_replicas,
        utilization=utilization,
        spot=spot,
        max_miss_share=max_miss_share,
        forecast_z=forecast_z,
    )
    res = simulate_serving(
        replay,
        setup.kinds,
        setup.scaler,
        ttft_slo_s=ttft_slo_s,
        tpot_slo_s=tpot_slo_s,
        initial=setup.initial,
        spot=spot,
        progress=progress,
        past_rates=setup.past_rates,
        past_sizes=setup.past_sizes,
        spill_over=spill_over,
    )
    return setup, res
