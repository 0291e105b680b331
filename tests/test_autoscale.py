"""The autoscalers as tables: observed load in, desired replicas out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from suanli.autoscale.hpa import HpaSpec, hpa
from suanli.autoscale.kpa import KpaSpec, KpaState, kpa
from suanli.autoscale.mix import ReplicaKind, SizeBuckets
from suanli.autoscale.predictive import PredictiveSpec, forecast, horizon_rises, predictive
from suanli.autoscale.scalers import Optimizer, Window
from suanli.autoscale.signals import Observation, Targets
from suanli.autoscale.sizes import SizeHistory

SPEC = HpaSpec(Targets(concurrency=4, kv_use=0.8, tokens_per_s=500), 1, 20)


@pytest.mark.parametrize(
    ("obs", "current", "history", "desired", "why"),
    [
        # ceil(ready x metric / target): 3 replicas carrying 24 requests want 6
        (Observation(0, ready=3, running=24), 3, [], 6, "concurrency"),
        # within the 10% tolerance: hold (4.2 / 4 = 1.05)
        (Observation(0, ready=5, running=21), 5, [], 5, "concurrency"),
        # the largest over signals: KV use 0.96 / 0.8 x 5 = 6, tokens 5000 / 500 = 10
        (
            Observation(0, ready=5, running=20, kv_use=0.96, tokens_per_s=5000),
            5,
            [],
            10,
            "tokens_per_s",
        ),
        # replicas still starting are out of the averages, in the current count: hold at 6
        (Observation(0, ready=3, starting=3, running=24), 6, [], 6, "concurrency"),
        # a scale-down waits for the largest recommendation of the last 300 s
        (Observation(400, ready=6, running=4), 6, [(50, 6), (350, 4)], 4, "concurrency"),
        (Observation(400, ready=6, running=4), 6, [(50, 6)], 1, "concurrency"),
        # bounded by min and max
        (Observation(0, ready=10, running=400), 10, [], 20, "concurrency"),
        # a scale-up adds at most 4 replicas or doubles per period, whichever is more: a
        # queue that piled up while replicas started does not ask for ten times the load
        (Observation(0, ready=2, waiting=80), 2, [], 6, "concurrency"),
        (Observation(0, ready=6, waiting=200), 6, [], 12, "concurrency"),
        (Observation(0, ready=2, running=0), 2, [], 1, "concurrency"),
        # from zero: any load asks for one replica
        (Observation(0, ready=0, waiting=3), 0, [], 1, "activation"),
    ],
)
def test_hpa(
    obs: Observation, current: int, history: list[tuple[float, int]], desired: int, why: str
) -> None:
    d = hpa(SPEC, obs, current, history)
    assert (d.desired, d.why) == (desired, why)


def test_hpa_at_zero_load_reaches_the_minimum_once_the_window_passed() -> None:
    spec = HpaSpec(Targets(concurrency=4), min_replicas=0, max_replicas=8, down_window_s=60)
    history: list[tuple[float, int]] = []
    current = 8
    for t in range(0, 200, 15):
        d = hpa(spec, Observation(t, ready=current, running=0), current, history)
        history.append((t, d.recommendation))
        current = d.desired
    assert current == 0


def test_targets_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one target"):
        Targets()
    with pytest.raises(ValueError, match="must be > 0"):
        Targets(concurrency=0)


KSPEC = KpaSpec(target_concurrency=10, min_replicas=0, max_replicas=50)


def _run_kpa(load: list[tuple[float, float]], ready: int) -> list[int]:
    """Feed one-second samples; decide every 2 s; replicas become ready at once."""
    state, out, samples = KpaState(), [], []
    for t, c in load:
        samples.append((t, c))
        if t % 2 == 0:
            ready, state = kpa(KSPEC, samples, t, ready, state)
            out.append(ready)
    return out


def test_kpa_stable_mode_follows_the_minute_average() -> None:
    # 35 requests in flight steadily: 35 / (10 x 0.7) = 5 replicas
    out = _run_kpa([(t, 35.0) for t in range(120)], ready=5)
    assert set(out) == {5}


def test_kpa_panics_on_a_burst_and_holds_until_a_calm_window() -> None:
    calm = [(t, 7.0) for t in range(60)]  # one replica's worth
    burst = [(t, 70.0) for t in range(60, 70)]  # ten times that, for ten seconds
    after = [(t, 7.0) for t in range(70, 200)]
    out = _run_kpa(calm + burst + after, ready=1)
    ts = [t for t, _ in calm + burst + after if t % 2 == 0]
    at = dict(zip(ts, out, strict=True))
    assert at[58] == 1
    assert at[66] >= 8  # the panic window saw the burst within seconds
    # the threshold was last crossed at 62 (3 ready, 6+ wanted): no scale-down for 60 s
    assert min(v for t, v in at.items() if 66 <= t < 122) >= at[66]
    assert at[122] < at[66] and at[124] <= at[122] / 2 + 1  # then down, at most halving
    assert at[198] == 1  # back to the stable count


def test_kpa_scales_to_zero_after_the_grace_period_and_back() -> None:
    load = [(t, 5.0) for t in range(30)] + [(t, 0.0) for t in range(30, 200)]
    out = _run_kpa(load, ready=1)
    ts = [t for t, _ in load if t % 2 == 0]
    at = dict(zip(ts, out, strict=True))
    assert at[28] == 1 and at[100] == 1  # the minute average still sees the load
    zero = min(t for t, v in at.items() if v == 0)
    last_load_leaves_window = 30 + 60
    assert last_load_leaves_window + KSPEC.scale_to_zero_grace_s <= zero < 200
    # and a request wakes it: a sample with load asks for a replica from zero
    d, _ = kpa(KSPEC, [(300.0, 1.0)], 300.0, 0, KpaState())
    assert d == 1


def test_forecast_follows_a_trend_and_a_flat_series() -> None:
    ramp = np.arange(60, dtype=float) * 0.5 + 3
    f = forecast(ramp, 4)
    assert f.mean[0] == pytest.approx(33.0, abs=1.0) and f.mean[-1] > f.mean[0]
    flat = forecast([2.0] * 20, 3)
    assert list(flat.mean) == [2.0, 2.0, 2.0] and flat.sigma == 0.0
    assert list(forecast([], 2).mean) == [0.0, 0.0]


def test_horizon_rises_are_the_rise_within_the_next_steps() -> None:
    y = np.array([0.0, 0, 10, 40, 30, 0, 0])
    # from each step, the highest of the next two less the step itself, floored at 0
    assert list(horizon_rises(y, 2)) == [10.0, 40.0, 30.0, 0.0, 0.0]
    assert horizon_rises(y[:2], 2).size == 0  # no whole horizon yet


def test_forecast_peak_keeps_room_for_bursts_the_history_showed() -> None:
    # idle minutes between bursts to ~90/s that rise within two 15 s steps, as the
    # Azure code trace does: from idle, plan for a burst, not for the idle mean
    bursty = ([0.0] * 12 + [30.0, 85.0, 90.0, 60.0, 20.0]) * 4 + [0.0] * 6
    f = forecast(bursty, 4)
    assert f.upper(2.33).max() < 60  # the smooth model's bound reads idleness
    assert 80 <= f.peak(2.33) <= 90  # the rise seen within a horizon, not past the peak
    # a slow series keeps little room: its rises within a horizon are small
    slow = list(40 + 3 * np.sin(np.arange(80) / 6))
    g = forecast(slow, 4)
    assert g.peak(2.33) < 50
    # the confidence matters: bursts of different heights, the 95% rise below the 99%
    varied: list[float] = []
    for h in (30, 50, 70, 90, 40, 60, 80, 20):
        varied += [0.0] * 8 + [0.4 * h, h, 0.7 * h, 0.3 * h]
    v = forecast([*varied, 0.0, 0.0], 4)
    assert v.peak(1.64) < v.peak(2.33) <= 90


def test_the_predictive_floor_scales_up_at_the_hpas_rate() -> None:
    """A queue that piled up while replicas started asks the HPA floor for 50; it gets
    the HPA's step (2 -> 6), while the forecast, not limited, may ask for more."""
    reactive = HpaSpec(Targets(concurrency=8), min_replicas=1, max_replicas=64)
    spec = PredictiveSpec(capacity_rps=100.0, cold_start_s=30, period_s=15, reactive=reactive)
    queued = Observation(600, ready=2, waiting=400, arrivals_per_s=5)
    assert predictive(spec, [5.0] * 40, queued, 2, []).desired == 6
    ahead = PredictiveSpec(capacity_rps=1.0, cold_start_s=30, period_s=15, reactive=reactive)
    assert predictive(ahead, [20.0] * 40, queued, 2, []).desired == 20


def test_predictive_scales_ahead_of_a_ramp_that_reactive_would_meet_late() -> None:
    reactive = HpaSpec(Targets(concurrency=8), min_replicas=1, max_replicas=40)
    spec = PredictiveSpec(capacity_rps=1.0, cold_start_s=120, period_s=15, reactive=reactive)
    rates = list(np.linspace(2, 10, 40))  # 2 -> 10 requests/s over ten minutes, still rising
    obs = Observation(600, ready=10, running=60, arrivals_per_s=10)
    d = predictive(spec, rates, obs, 10, [])
    # reactive alone: 60 in flight / 8 = 8; the ramp reaches ~12/s within the cold start
    assert d.why == "forecast" and d.desired >= 12
    # a fall is followed down once its short hold passed
    falling = list(np.linspace(10, 1, 40))
    quiet = Observation(900, ready=12, running=4, arrivals_per_s=1)
    d2 = predictive(spec, falling, quiet, 12, [(800, 12)])
    assert d2.desired < 12


ONE_BUCKET = SizeBuckets(prompt_edges=(1,), output_edges=(1,))


def _one_bucket_sizes(t_s: float, n: int = 1) -> SizeHistory:
    h = SizeHistory(ONE_BUCKET)
    h.add(t_s, 100, 10, n)
    return h


def test_the_optimizer_plans_the_forecast_and_the_observed_rate_with_headroom() -> None:
    """The ILP fills its kinds to exactly the rate it is given: whichever rate is
    planned, the forecast's peak or the rate seen now, it is planned at the target
    utilisation. Replicas of 10 requests/s."""
    kind = ReplicaKind("a", 1.0, (10.0,))

    def plan(history: list[float], now_rps: float, utilization: float = 0.5) -> int:
        opt = Optimizer([kind], 1, cold_start_s=30.0, target_utilization=utilization)
        w = Window(Observation(900.0, ready=1, running=1, arrivals_per_s=now_rps))
        w.rates, w.sizes = history, _one_bucket_sizes(890.0)
        return opt.decide(w, {"a": 1})["a"]

    # a steady 30/s at 50%: 60 -> 6
    assert plan([30.0] * 40, 30.0) == 6
    # a steady 30/s that has just dropped to 10/s: the forecast still says 30 -> 6
    assert plan([30.0] * 40, 10.0) == 6
    # a rate seen now above the forecast: the floor, at 50% -> 8
    assert plan([30.0] * 40, 40.0) == 8
    # at 100% the plan is the rate: 3
    assert plan([30.0] * 40, 10.0, utilization=1.0) == 3


def test_the_optimizer_scales_to_zero_and_wakes_with_the_sizes_it_knew() -> None:
    """No load and no forecast: nothing. Load after an hour of idleness plans for the
    sizes of the last traffic (a live router learns a size only once it answers, and a
    service woken from zero would plan no mix until then); load with no size ever seen
    keeps what runs."""
    kind = ReplicaKind("a", 1.0, (10.0,))
    opt = Optimizer([kind], 1, cold_start_s=30.0, target_utilization=1.0)
    idle = Window(Observation(4000.0, ready=2), rates=[0.0] * 40, sizes=_one_bucket_sizes(10.0))
    assert opt.decide(idle, {"a": 2}) == {"a": 0}
    woken = Window(
        Observation(4000.0, ready=0, running=3, arrivals_per_s=25.0),
        rates=[25.0] * 40,
        sizes=_one_bucket_sizes(10.0),  # an hour old
    )
    assert opt.decide(woken, {"a": 0}) == {"a": 3}
    unknown = Window(Observation(4000.0, ready=2, running=3), rates=[25.0] * 40)
    assert opt.decide(unknown, {"a": 2}) == {"a": 2}


def test_size_history_counts_its_window_and_the_last_traffic_after_idleness() -> None:
    h = SizeHistory(window_s=600.0, bin_s=60.0)
    b = SizeBuckets()
    h.add(0.0, 100, 50, 3)  # minute 0
    h.add(300.0, 6000, 500)  # minute 5
    assert h.shares(-1.0) is None  # nothing before the first request
    shares = h.shares(300.0)
    assert shares is not None
    assert shares[b.of(100, 50)] == pytest.approx(0.75)
    assert shares[b.of(6000, 500)] == pytest.approx(0.25)
    # at 11 minutes minute 0 is out of the window, minute 5 in it
    assert h.counts(660.0)[b.of(100, 50)] == 0
    assert h.counts(660.0)[b.of(6000, 500)] == 1
    # an hour on, nothing in the window: the last ten minutes of traffic are counted
    assert h.counts(3600.0) == h.counts(300.0)
    h.add(3600.0, 100, 50)  # traffic again: the window is its own, the old bins dropped
    assert h.counts(3600.0)[b.of(6000, 500)] == 0 and sorted(h.bins) == [60]


def test_size_history_survives_the_store_and_what_is_malformed_there() -> None:
    h = SizeHistory(window_s=600.0, bin_s=60.0)
    h.add(0.0, 100, 50, 3)
    h.add(300.0, 6000, 500)
    kept = json.loads(json.dumps(h.to_json(300.0)))  # as the store gives it back
    again = SizeHistory(window_s=600.0, bin_s=60.0)
    again.load(kept, 300.0)
    assert again.counts(300.0) == h.counts(300.0)
    future = SizeHistory(window_s=600.0, bin_s=60.0)
    future.load(kept, 100.0)  # minute 5 is after now: not a count this code wrote
    assert future.counts(300.0) == SizeHistory(bins={0: h.bins[0]}).counts(300.0)
    for bad in (
        None,
        [],
        {**kept, "bin_s": 30.0},
        {**kept, "buckets": 7},  # another grid
        {**kept, "bins": ["x"]},
        {**kept, "bins": "x"},
        {**kept, "bins": {"x": {"1": 1}, "2": 5, "3": {"1": 1e400}}},
        {**kept, "bins": {"1": {"1": -4, "999": 1, "2": 10**12}}},
    ):
        fresh = SizeHistory(window_s=600.0, bin_s=60.0)
        fresh.load(bad, 700.0)
        assert fresh.shares(700.0) is None, bad
