"""The serving simulator: the continuous-batching replica, the fleet and router, the mix
ILP, and ``suanli simulate serve`` on a slice of the real Azure trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from suanli.autoscale.capacity import capacity_rps, concurrency_at, slo_batch
from suanli.autoscale.kinds import Kind, make_kinds
from suanli.autoscale.mix import NoMixError, ReplicaKind, SizeBuckets, cheapest_mix
from suanli.autoscale.routing import FULL, Fills, spill
from suanli.autoscale.scalers import Static
from suanli.catalog.loader import get_accelerator, get_model
from suanli.cli import app
from suanli.perf.batching import MIN_TOKEN_BUDGET, TOKEN_BUDGET, StepTime, slo_token_budget
from suanli.perf.system import make_system
from suanli.plan.pool import pool_from_accelerators
from suanli.sim.serving.fleet import Fleet, simulate_serving
from suanli.sim.serving.replica import Replica, Seq
from suanli.sim.serving.setup import held_out, make_setup, run_policy
from suanli.sim.serving.spot import SpotTerms, with_spot_twins
from suanli.sim.serving.trace import TraceFileError, TraceRequest, read_trace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONV = DATA / "azure_llm_inference_2023_conv.csv"


@pytest.fixture(scope="module")
def steps() -> StepTime:
    return StepTime(get_model("llama-3.1-8b"), make_system(get_accelerator("a100-80gb")))


def _run(steps: StepTime, seqs: list[Seq], stretch: bool = True) -> Replica:
    r = Replica("a", steps, start_s=0.0, ready_s=0.0)
    if not stretch:  # every step one at a time: the closed form must agree with it
        r._decode_stretch = lambda t_end: r._step()  # type: ignore[method-assign]
    for s in seqs:
        r.submit(s)
    r.run_until(1e9)
    return r


def test_one_request_alone_costs_a_prefill_then_decode_steps(steps: StepTime) -> None:
    s = Seq(0, 0.0, prompt=512, output=100, asked=100)
    _run(steps, [s])
    assert s.first_s == pytest.approx(steps.step_s(0, 0, 512))
    # each decode step reads one more cached token than the last
    decode = sum(steps.decode_s(1, 512 + k) for k in range(1, 100))
    assert s.done_s - s.first_s == pytest.approx(decode, rel=1e-9)


def test_decode_stretches_equal_steps_and_batching_is_continuous(steps: StepTime) -> None:
    def seqs() -> list[Seq]:
        return [Seq(i, 0.0, 200 + 50 * i, 20 + 37 * i, asked=20 + 37 * i) for i in range(8)]

    fast, slow = seqs(), seqs()
    _run(steps, fast)
    _run(steps, slow, stretch=False)
    for a, b in zip(fast, slow, strict=True):
        assert a.done_s == pytest.approx(b.done_s, rel=1e-9)
        assert a.first_s == pytest.approx(b.first_s, rel=1e-9)
    # the short ones left first; all eight prefilled in the same first step (budget 8192)
    assert [s.rid for s in sorted(fast, key=lambda s: s.done_s)] == list(range(8))
    assert len({s.first_s for s in fast}) == 1


def test_the_token_budget_follows_the_tpot_slo(steps: StepTime) -> None:
    """Sarathi-Serve's rule: the largest power-of-two budget whose step of prompt tokens
    meets the SLO; never under vLLM's floor, never over its default."""
    budgets = [slo_token_budget(steps, slo) for slo in (0.001, 0.05, 0.1, 0.3, 10.0)]
    assert budgets[0] == MIN_TOKEN_BUDGET and budgets[-1] == TOKEN_BUDGET
    assert budgets == sorted(budgets) and len(set(budgets)) >= 3
    for slo, b in zip((0.05, 0.1, 0.3), budgets[1:4], strict=True):
        assert steps.step_s(0, 0.0, b) <= slo < steps.step_s(0, 0.0, 2 * b)


def test_an_slo_sized_budget_keeps_a_short_answer_within_tpot(steps: StepTime) -> None:
    """A two-token answer decoding when a 7k-token prompt arrives: under vLLM's 8,192 the
    prompt's one chunk holds its second token for the whole step (0.7 s on an A100); a
    budget sized to a 100 ms TPOT spreads the prompt over steps that each meet it."""

    def tpot(budget: int) -> float:
        short = Seq(0, 0.0, prompt=100, output=2, asked=2)
        long = Seq(1, 1e-6, prompt=7000, output=50, asked=50)
        r = Replica("a", steps, start_s=0.0, ready_s=0.0, budget=budget)
        r.submit(short)
        r.run_until(1e-6)  # the short one prefilled and sampled its first token
        r.submit(long)
        r.run_until(1e9)
        return short.done_s - short.first_s

    slo = 0.1
    assert tpot(TOKEN_BUDGET) > slo
    assert tpot(slo_token_budget(steps, slo)) <= slo


def test_a_full_cache_preempts_and_recomputes(
    steps: StepTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StepTime, "kv_capacity_tokens", lambda self: 3000)
    seqs = [Seq(i, 0.0, 600, 400, asked=400) for i in range(4)]  # 4 x 1000 > 3000 tokens
    r = _run(steps, seqs)
    assert sum(s.preemptions for s in seqs) >= 1
    assert all(s.done_s > 0 for s in seqs) and r.used == 0 and not r.running
    assert sorted(s.rid for s in r.finished) == [0, 1, 2, 3]


def test_from_zero_requests_wait_for_the_cold_start_and_overflow_is_refused(
    steps: StepTime,
) -> None:
    kind = Kind("a", steps, 1, 1.79, cold_start_s=40.0)
    trace = [TraceRequest(0.5 * i, 100, 10) for i in range(10)]

    class FromZero:
        name, period_s = "from-zero", 2.0

        def decide(self, w, current):  # type: ignore[no-untyped-def]
            return {"a": 1 if w.obs.concurrency > 0 or current.get("a") else 0}

    res = simulate_serving(
        trace, {"a": kind}, FromZero(), ttft_slo_s=2.0, tpot_slo_s=0.1, buffer_max=6
    )
    assert res.refused == 4  # six buffered while the replica started, the rest refused
    assert res.ttft_p50_s > 35  # the buffered ones waited for the start
    assert res.slo_attainment == 0.0 and res.max_replicas == 1
    # a replica is paid for from the moment it was asked for
    assert res.cost_usd == pytest.approx(res.device_hours * 1.79)
    static = simulate_serving(
        trace, {"a": kind}, Static({"a": 1}), ttft_slo_s=2.0, tpot_slo_s=0.1, initial={"a": 1}
    )
    assert static.slo_attainment == 1.0 and static.refused == 0


def test_forecasting_policies_start_with_the_history_rates(steps: StepTime) -> None:
    """A service that has been running has its past arrival rates: the forecasting
    policies begin from the history's (15 s periods), the others need none."""
    kinds = {"a": Kind("a", steps, 1, 1.79, cold_start_s=40.0)}
    # 1 request/s for the first minute, 3/s for the next, then idle
    trace = [TraceRequest(float(t), 100, 10) for t in range(60)]
    trace += [TraceRequest(60 + i / 3, 100, 10) for i in range(180)]
    trace += [TraceRequest(900.0, 100, 10)]
    pred = make_setup("predictive", kinds, trace, tpot_slo_s=0.1, ttft_slo_s=2.0, history_s=150)
    assert pred.past_rates == pytest.approx([1.0] * 4 + [3.0] * 4 + [0.0, 0.0])
    assert make_setup("static", kinds, trace, tpot_slo_s=0.1, ttft_slo_s=2.0).past_rates == []

    class Seen:
        name, period_s = "seen", 15.0
        first: list[float] | None = None

        def decide(self, w, current):  # type: ignore[no-untyped-def]
            self.first = list(w.rates) if self.first is None else self.first
            return {"a": 1}

    seen = Seen()
    simulate_serving(
        trace, kinds, seen, ttft_slo_s=2.0, tpot_slo_s=0.1, initial={"a": 1},
        past_rates=pred.past_rates,
    )  # fmt: skip
    # the first decision comes at 0, after no period of its own: it measures no rate (a
    # zero there read as an idle service, and the optimizer dropped its fleet for it)
    assert seen.first == pytest.approx(pred.past_rates)


def test_the_optimizer_starts_with_the_history_sizes(steps: StepTime) -> None:
    """The optimizer plans for the sizes of the last 30 minutes, the history's among
    them: its first decision knows the long requests the history had, though the
    replay's first minutes are short ones."""
    kinds = {"a": Kind("a", steps, 1, 1.79, cold_start_s=40.0)}
    b = SizeBuckets()
    trace = [TraceRequest(float(t), 3000, 300) for t in range(0, 120, 2)]  # the history
    trace += [TraceRequest(120 + t, 100, 10) for t in range(120)]
    setup = make_setup("optimizer", kinds, trace, tpot_slo_s=0.1, ttft_slo_s=2.0, history_s=120)
    assert len(setup.past_sizes) == 60 and all(r.arrival_s < 0 for r in setup.past_sizes)

    class Seen:
        name, period_s = "seen", 15.0

        def __init__(self) -> None:
            self.shares: list[list[float] | None] = []

        def decide(self, w, current):  # type: ignore[no-untyped-def]
            self.shares.append(w.sizes.shares(w.obs.t_s))
            return {"a": 1}

    seen = Seen()
    simulate_serving(
        held_out(trace, 120), kinds, seen, ttft_slo_s=2.0, tpot_slo_s=0.1, initial={"a": 1},
        past_rates=setup.past_rates, past_sizes=setup.past_sizes,
    )  # fmt: skip
    first, last = seen.shares[0], seen.shares[-1]
    assert first is not None and first[b.of(3000, 300)] == pytest.approx(1.0)
    # near two minutes on, over 100 short requests beside the history's 60 long ones
    assert last is not None and 60 / 181 < last[b.of(3000, 300)] < 60 / 160


def test_a_policy_is_scored_on_what_follows_its_history(steps: StepTime) -> None:
    """What a policy learned from is not what it is scored on: the requests after the
    history, from time 0; the history is at most the trace's first half."""
    kinds = {"a": Kind("a", steps, 1, 1.79, cold_start_s=40.0)}
    trace = [TraceRequest(10.0 * i, 100, 10) for i in range(100)]  # 0 .. 990 s
    _, res = run_policy("static", kinds, trace, ttft_slo_s=2.0, tpot_slo_s=0.1, history_s=300)
    assert res.requests == 70  # 300 .. 990 s
    _, short = run_policy("static", kinds, trace, ttft_slo_s=2.0, tpot_slo_s=0.1, history_s=600)
    assert short.requests == 50  # from 495 s, half of the last arrival
    assert [r.arrival_s for r in held_out(trace, 300)[:2]] == [0.0, 10.0]


def test_static_mix_provisions_the_cheapest_mix_for_the_known_peak() -> None:
    """Mélange's own setting: short chats and long documents at 40 requests/s, known in
    advance; the mix of A10s and A100s for that load is provisioned once, ready from the
    start, and paid for all along."""
    kinds = make_kinds("llama-3.1-8b", pool_from_accelerators(["a10", "a100-80gb"], 1))
    trace = [TraceRequest(i / 40, *((6000, 500) if i % 5 == 0 else (100, 50))) for i in range(4800)]
    setup = make_setup("static-mix", kinds, trace, tpot_slo_s=0.1, ttft_slo_s=2.0)
    assert isinstance(setup.scaler, Static) and setup.scaler.mix is not None
    assert set(setup.initial) == {"a10", "a100-80gb"} and all(setup.initial.values())
    assert setup.initial == {k: n for k, n in setup.scaler.mix.counts.items() if n}
    # the router draws from the mix: long documents go where the mix sends them
    fleet = Fleet(setup.kinds, 10, tpot_slo_s=0.1, ttft_slo_s=2.0)
    for k, n in setup.initial.items():
        for _ in range(n):
            fleet._start(k, 0.0, ready_s=0.0)
    fleet.follow(setup.scaler)
    docs = [Seq(i, 0.0, 6000, 500, asked=500) for i in range(4)]
    for seq in docs:
        fleet.route(seq, 0.0)
    b = SizeBuckets().of(6000, 500)
    assert {s.kind for s in docs} == {k for k, v in setup.scaler.mix.shares.items() if v[b] > 0}
    assert {s.kind for s in docs} == {"a100-80gb"}  # the A10 prefills 6k tokens too slowly
    _, res = run_policy("static-mix", kinds, trace, ttft_slo_s=2.0, tpot_slo_s=0.1)
    assert res.refused == 0 and res.max_replicas == sum(setup.initial.values())
    assert res.cost_usd == pytest.approx(
        sum(kinds[k].usd_per_hour * n for k, n in setup.initial.items())
        * res.timeline[-1][0] / 3600, rel=0.01
    )  # fmt: skip


def test_capacity_and_concurrency(steps: StepTime) -> None:
    tight, loose = capacity_rps(steps, 1000, 200, 0.02), capacity_rps(steps, 1000, 200, 0.1)
    assert 0 < tight < loose
    assert capacity_rps(steps, 10**7, 10, 0.1) == 0.0  # does not fit in the cache
    assert capacity_rps(steps, 8000, 200, 0.1, ttft_slo_s=0.01) == 0.0  # prefill too long
    assert concurrency_at(steps, 1000, 200, 0.5 * loose) < concurrency_at(steps, 1000, 200, loose)


def test_the_mix_ilp_beats_every_single_kind_when_sizes_differ() -> None:
    small = ReplicaKind("small", 1.0, (10.0, 0.0))  # cheap, short requests only
    big = ReplicaKind("big", 4.0, (20.0, 5.0))
    mix = cheapest_mix([30.0, 10.0], [small, big])
    assert mix.counts == {"small": 3, "big": 2} and mix.usd_per_hour == 11.0
    only_big = cheapest_mix([30.0, 10.0], [big])
    assert only_big.usd_per_hour > mix.usd_per_hour  # 30/20 + 10/5 = 3.5 -> 4 replicas
    with pytest.raises(NoMixError, match="meets the SLO on none of small"):
        cheapest_mix([0.0, 1.0], [small])
    spot = ReplicaKind("spot", 0.3, (10.0, 5.0), spot=True)
    capped = cheapest_mix([30.0, 10.0], [small, big, spot], max_spot_share=0.5)
    served_on_spot = sum(r * x for r, x in zip([30.0, 10.0], capped.shares["spot"], strict=True))
    assert served_on_spot <= 20.0 + 1e-6
    b = SizeBuckets()
    assert b.of(100, 10) == 0 and b.of(20000, 5000) == b.count - 1


def test_a_miss_budget_lets_a_rare_size_miss_the_slo_on_a_cheap_kind() -> None:
    """One request in 300 is of a size only the big kind serves within the SLO. Planning
    every request within it puts a big replica in the fleet ($6/h); a budget of 1% lets
    that size go to a small replica one at a time ($4/h), and says what share misses; a
    budget below that share buys nothing."""
    small = ReplicaKind("small", 1.0, (10.0, 0.0), best_effort_rps=(12.0, 1.0))
    big = ReplicaKind("big", 4.0, (20.0, 5.0), best_effort_rps=(25.0, 6.0))
    rates = [30.0, 0.1]
    assert cheapest_mix(rates, [small, big]).usd_per_hour == 6.0
    loose = cheapest_mix(rates, [small, big], max_miss_share=0.01)
    assert loose.counts == {"small": 4, "big": 0} and loose.usd_per_hour == 4.0
    assert loose.missed_share == pytest.approx(0.1 / 30.1)
    assert cheapest_mix(rates, [small, big], max_miss_share=0.001).usd_per_hour == 6.0
    # the small kind alone: refused without a budget, enough with one
    with pytest.raises(NoMixError, match="meets the SLO on none of small"):
        cheapest_mix(rates, [small])
    assert cheapest_mix(rates, [small], max_miss_share=0.01).counts == {"small": 4}
    with pytest.raises(NoMixError, match=r"at most 0.10% of requests outside the SLO"):
        cheapest_mix(rates, [small], max_miss_share=0.001)


def test_a_re_solved_mix_swaps_kinds_only_when_it_pays_for_the_starts() -> None:
    """Four big replicas run ($16/h); the mix from scratch is three small and two big
    ($11/h). A start costs a share ``f`` of a replica's price (the optimizer's cold
    start over its hold): at f = 0.5 the whole swap pays, at 2 only one small replica
    does, at 4 none, and what runs is kept."""
    small = ReplicaKind("small", 1.0, (10.0, 0.0))
    big = ReplicaKind("big", 4.0, (20.0, 5.0))
    rates, kinds = [30.0, 10.0], [small, big]

    def solve(f: float, running: dict[str, int], load: list[float] = rates) -> dict[str, int]:
        starts = {k.name: f * k.usd_per_hour for k in kinds}
        return cheapest_mix(load, kinds, running=running, start_usd_per_hour=starts).counts

    assert solve(0.5, {"big": 4}) == {"small": 3, "big": 2}
    assert solve(2.0, {"big": 4}) == {"small": 1, "big": 3}
    assert solve(4.0, {"big": 4}) == {"small": 0, "big": 4}
    # from nothing every replica is a start, at its price's share: the cheapest mix
    assert solve(4.0, {}) == {"small": 3, "big": 2}
    # more load than what runs serves: the added replicas are chosen on their merits
    assert solve(4.0, {"small": 3, "big": 2}, [60.0, 10.0]) == {"small": 6, "big": 2}


def test_spill_over_rule() -> None:
    """The drawn chip keeps a request while it has room; a full one passes it to the
    chip with room that would be least full, among those serving the size within the
    SLO; with none, the drawn chip queues it."""
    serves = {"a": True, "b": True, "c": False}
    assert spill("a", {"a": 1.0, "b": 0.1}, serves) == "a"  # exactly full still fits
    assert spill("a", {"a": 1.2, "b": 0.9, "c": 0.1}, serves) == "b"  # c misses the SLO
    assert spill("a", {"a": 1.2, "b": 1.1}, serves) == "a"
    assert spill("a", {"b": 0.5}, serves) == "b"  # no replica of a is ready
    f = Fills({"a": [4, 0]})
    assert f.weight("a", 0) == 0.25 and f.weight("a", 1) == FULL and f.weight("z", 0) == FULL
    assert f.serves("a", 0) and not f.serves("a", 1) and not f.serves("z", 0)


def test_a_full_chip_spills_over_to_one_with_room(steps: StepTime) -> None:
    """The mix sends every short request to chip a. Once a's replica holds its SLO batch
    the next goes to b, whose replica has room; without spill-over it queues on a. A
    finished request gives its share of the batch back."""
    kinds = {n: Kind(n, steps, 1, 1.0, cold_start_s=30.0) for n in ("a", "b")}

    def fleet(spill_over: bool) -> Fleet:
        f = Fleet(kinds, 10, tpot_slo_s=0.1, ttft_slo_s=2.0, spill_over=spill_over)
        f.route_shares = [[("a", 1.0), ("b", 0.0)]] * f.buckets.count
        for n in kinds:
            f._start(n, 0.0, ready_s=0.0)
        return f

    b = SizeBuckets().of(100, 20)
    batch = slo_batch(steps, *SizeBuckets().representative(b), 0.1, 2.0)
    assert 1 < batch < 256
    on = fleet(True)
    for i in range(batch + 3):
        on.route(Seq(i, 0.0, 100, 20, asked=20), 0.0)
    a, bb = on.replicas
    assert a.outstanding == batch and bb.outstanding == 3
    assert a.fill == pytest.approx(1.0) and bb.fill == pytest.approx(3 / batch)
    off = fleet(False)
    for i in range(batch + 3):
        off.route(Seq(i, 0.0, 100, 20, asked=20), 0.0)
    assert [r.outstanding for r in off.replicas] == [batch + 3, 0]
    for r in on.replicas:
        r.run_until(1e6)
    assert all(r.fill == pytest.approx(0.0) and not r.outstanding for r in on.replicas)


def test_trace_reader_says_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("when,tokens\n1,2\n")
    with pytest.raises(TraceFileError, match="no column TIMESTAMP or arrival_s"):
        read_trace(bad)
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,x,5\n")
    with pytest.raises(TraceFileError, match=r"t.csv:3: cannot read this request"):
        read_trace(bad)
    good = tmp_path / "g.csv"
    good.write_text("arrival_s,prompt_tokens,output_tokens\n10,10,5\n12,20,0\n")
    reqs = read_trace(good, rate_scale=3)
    assert len(reqs) == 6 and reqs[0].arrival_s >= 0 and min(r.output for r in reqs) == 1


def test_simulate_serve_refuses_a_plan_attainment_out_of_range(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n1,10,5\n")
    args = ["simulate", "serve", "--trace", str(trace), "--model", "llama-3.1-8b"]
    res = CliRunner().invoke(app, [*args, "--plan-attainment", "0.2"])
    assert res.exit_code == 2 and "--plan-attainment must be in [0.5, 1], got 0.2" in res.output


@pytest.mark.skipif(not CONV.is_file(), reason=f"the Azure trace is not at {CONV}")
def test_simulate_serve_on_the_azure_trace(tmp_path: Path) -> None:
    png = tmp_path / "serve.png"
    args = [
        "simulate",
        "serve",
        "--trace",
        str(CONV),
        "--duration-s",
        "900",
        "--json",
        "--accelerator",
        "a100-80gb",
        "--accelerator",
        "h100-sxm",
    ]
    runs = {}
    for scaler in ("static", "hpa", "optimizer"):
        extra = ["--plot", str(png)] if scaler == "hpa" else []
        res = CliRunner().invoke(app, [*args, "--autoscaler", scaler, *extra])
        assert res.exit_code == 0, res.output
        runs[scaler] = json.loads(res.output)
    for r in runs.values():
        assert r["requests"] > 3000 and 0 <= r["slo_attainment"] <= 1
        assert r["device_hours"] > 0 and r["cost_usd"] > 0 and r["max_replicas"] >= 1
    assert runs["static"]["best_single"] in ("a100-80gb", "h100-sxm")
    assert png.stat().st_size > 10_000
    bad = CliRunner().invoke(app, [*args, "--autoscaler", "magic"])
    assert bad.exit_code == 2 and "one of static, static-mix, hpa, kpa" in bad.output


def test_a_reclaimed_spot_replica_falls_back_to_on_demand_within_its_notice(
    steps: StepTime,
) -> None:
    terms = SpotTerms(0.35, reclaims_per_hour=1e9, notice_s=20.0, unavailable_s=1e9)
    kinds = with_spot_twins({"a": Kind("a", steps, 1, 2.0, cold_start_s=10.0)}, terms)
    assert kinds["a:spot"].usd_per_hour == pytest.approx(0.7)
    # routed as a mix's router routes (every size to the spot kind), filling replicas
    fleet = Fleet(kinds, buffer_max=100, spot=terms, tpot_slo_s=0.1, ttft_slo_s=2.0)
    fleet.route_shares = [[("a:spot", 1.0), ("a", 0.0)]] * fleet.buckets.count
    spot = Replica("a:spot", steps, start_s=0.0, ready_s=0.0)
    fleet.replicas.append(spot)
    seqs = [Seq(i, 0.0, 2000, 4000, asked=4000) for i in range(3)]
    for s in seqs:
        fleet.route(s, 0.0)
    w = fleet.fills.weight("a", fleet.buckets.of(2000, 4000))
    assert w == fleet.fills.weight("a:spot", fleet.buckets.of(2000, 4000)) > 0
    assert spot.fill == pytest.approx(3 * w)
    spot.run_until(1.0)
    fleet.reclaim(1.0, 2.0)  # certain at this rate
    assert fleet.reclaims == 1 and spot.draining and spot.reclaim_end_s == 21.0
    fallback = [r for r in fleet.replicas if r.kind == "a"]
    assert len(fallback) == 1 and fallback[0].start_s == 1.0  # started at the reclaim
    # the autoscaler still wants one spot replica: it runs on demand while spot is gone
    fleet.scale_to({"a:spot": 1}, 2.0)
    assert fleet.counts() == {"a": 1, "a:spot": 0}
    for t in (11.0, 21.0):
        for r in fleet.replicas:
            r.run_until(t)
        fleet.reap(t)
    # the notice ran out with the long requests unfinished: sent to the fallback, as a
    # preemption leaves them (what they generated joins their prompt)
    assert spot not in fleet.replicas and spot.stop_s == 21.0
    assert all(s.kind == "a" and s.preemptions == 1 and s.done_s < 0 for s in seqs)
    # their weights moved with them, for their sizes now
    now_w = sum(fleet.fills.weight("a", fleet.buckets.of(s.prompt, s.asked)) for s in seqs)
    assert spot.fill == 0 and fallback[0].fill == pytest.approx(now_w) and now_w != 3 * w
    fallback[0].run_until(1e6)
    assert all(s.done_s > 21.0 for s in seqs) and fallback[0].fill == 0


def test_spot_runs_through_the_simulator_and_its_cli() -> None:
    if not CONV.exists():
        pytest.skip(f"the Azure trace is not at {CONV} (../shared/data)")
    args = [
        *("simulate", "serve", "--trace", str(CONV), "--duration-s", "600", "--json"),
        *("--accelerator", "a100-80gb", "--accelerator", "h100-sxm"),
    ]
    base = CliRunner().invoke(app, [*args, "--autoscaler", "optimizer"])
    spot = CliRunner().invoke(
        app,
        [
            *args,
            *("--autoscaler", "optimizer", "--spot-price-ratio", "0.35"),
            *("--spot-reclaims-per-hour", "30", "--spot-notice-s", "30"),
        ],
    )
    assert base.exit_code == 0 and spot.exit_code == 0, spot.output
    b, s = json.loads(base.output), json.loads(spot.output)
    assert b["reclaims"] == 0 and b["spot_device_hours"] == 0
    assert s["reclaims"] > 0 and 0 < s["spot_device_hours"] < s["device_hours"]
    assert {"a100-80gb:spot", "h100-sxm:spot"} <= set(s["kinds"])
    assert s["cost_usd"] < b["cost_usd"] and s["refused"] == 0
    bad = CliRunner().invoke(app, [*args, "--autoscaler", "hpa", "--spot-price-ratio", "0.3"])
    assert bad.exit_code == 2 and "chosen by the optimizer" in bad.output
    bad = CliRunner().invoke(app, [*args, "--autoscaler", "optimizer", "--spot-price-ratio", "1.5"])
    assert bad.exit_code == 2 and "--spot-price-ratio must be in (0, 1]" in bad.output
