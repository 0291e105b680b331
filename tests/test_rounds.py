"""Gavel's round mechanism (sched.rounds) and Gavel's protocol in the simulator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from suanli.sched.gavel import AllocationProblem, max_min_fairness
from suanli.sched.rounds import RoundScheduler
from suanli.sim import gavel_sim
from suanli.sim.gavel_sim import (
    GavelJob,
    gavel_job_stream,
    read_gavel_throughputs,
    simulate_gavel_rounds,
)


def _run_rounds(mech: RoundScheduler, rounds: int) -> dict[object, np.ndarray]:
    """Run whole rounds; time each job got on each type."""
    got: dict[object, np.ndarray] = {k: np.zeros(len(mech.types)) for k in mech.keys}
    for r in range(rounds):
        for key, k in mech.plan(r * mech.round_s).items():
            mech.record(key, k, mech.round_s)
            got[key][k] += mech.round_s
    return got


def test_rounds_realise_the_time_shares_of_the_allocation() -> None:
    # three equal jobs, one device: max-min gives each a third of the time
    mech = RoundScheduler(["a"], [1], max_min_fairness, round_s=60, reset_every_s=0)
    for j in range(3):
        mech.add(j, [1.0], 1)
    got = _run_rounds(mech, 30)
    assert [g[0] / 60 for g in got.values()] == [10, 10, 10]
    assert all(math.isclose(s[0], 1 / 3, rel_tol=1e-6) for s in mech.shares().values())


def test_each_job_gets_the_type_its_share_is_on() -> None:
    # job 0 is 10x faster on "fast"; job 1 equally fast on both: comparative advantage
    mech = RoundScheduler(["fast", "slow"], [1, 1], max_min_fairness, reset_every_s=0)
    mech.add("a", [10.0, 1.0], 1)
    mech.add("b", [1.0, 1.0], 1)
    got = _run_rounds(mech, 20)
    assert got["a"][0] > 0.9 * got["a"].sum()
    assert got["b"][1] > 0.9 * got["b"].sum()


def test_a_gang_goes_only_where_it_fits_whole_and_idle_devices_are_filled() -> None:
    mech = RoundScheduler(["x"], [3], max_min_fairness, reset_every_s=0)
    mech.add("big", [1.0], 2)
    mech.add("big2", [1.0], 2)
    mech.add("small", [1.0], 1)
    for r in range(10):
        plan = mech.plan(r * 360.0)
        assert sum({"big": 2, "big2": 2, "small": 1}[k] for k in plan) <= 3
        # two gangs of 2 never share 3 devices; the single device left is used
        assert len(plan) == 2 and "small" in plan
        for key, k in plan.items():
            mech.record(key, k, 360.0)


def test_the_allocation_is_recomputed_only_after_changes_and_not_too_often() -> None:
    calls = []

    def policy(p: AllocationProblem) -> np.ndarray:
        calls.append(p.shape[0])
        return max_min_fairness(p)

    mech = RoundScheduler(["x"], [2], policy, round_s=360, reset_every_s=1920)
    mech.add(1, [1.0], 1)
    mech.plan(0.0)
    mech.plan(360.0)  # nothing changed: no new solve
    mech.add(2, [1.0], 1)
    plan = mech.plan(720.0)  # changed, but within 1,920 s of the last reset
    assert calls == [1] and set(plan) == {1, 2}  # the newcomer runs on what is left
    mech.plan(1920.0)
    assert calls == [1, 2]


def test_unknown_shape_and_double_add_are_refused() -> None:
    mech = RoundScheduler(["x", "y"], [1, 1], max_min_fairness)
    with pytest.raises(ValueError, match="one throughput per type"):
        mech.add("j", [1.0], 1)
    mech.add("j", [1.0, 1.0], 1)
    with pytest.raises(ValueError, match="already"):
        mech.add("j", [1.0, 1.0], 1)


@pytest.fixture
def table(shared_dir: Path) -> dict[tuple[str, int], dict[str, float]]:
    return read_gavel_throughputs(
        shared_dir / "data" / "gavel_simulation_throughputs.json", complete_only=False
    )


def test_gavel_generator_follows_gavels_recipe(table) -> None:  # type: ignore[no-untyped-def]
    jobs = [j for _, j in zip(range(3000), gavel_job_stream(table, 4.0, seed=0), strict=False)]
    again = [j for _, j in zip(range(50), gavel_job_stream(table, 4.0, seed=0), strict=False)]
    assert jobs[:50] == again and jobs[0].arrival_s == 0.0
    gaps = np.diff([j.arrival_s for j in jobs])
    assert 0.9 * 900 < gaps.mean() < 1.1 * 900  # 4 jobs/h
    assert {j.scale for j in jobs} == {1}
    durations = [j.steps / table[(j.job_type, 1)]["v100"] for j in jobs]
    assert min(durations) >= 60 * 10**1.5 and max(durations) <= 60 * 10**4
    long = sum(d > 60 * 10**3 for d in durations) / len(durations)
    assert 0.15 < long < 0.25  # 20% of jobs from the long range
    multi = [
        j
        for _, j in zip(range(3000), gavel_job_stream(table, 4.0, 0, multi_gpu=True), strict=False)
    ]
    assert {j.scale for j in multi} == {1, 2, 4, 8}
    # the scale factor is drawn for single-GPU workloads too, so the first job
    # (before any redraw of a type that cannot run distributed) is the same
    first = multi[0]
    assert first.steps / table[(first.job_type, first.scale)]["v100"] == pytest.approx(durations[0])


def test_aware_max_min_beats_the_type_blind_one_in_rounds(table) -> None:  # type: ignore[no-untyped-def]
    cap = {"v100": 36, "p100": 36, "k80": 36}
    runs = {
        p: simulate_gavel_rounds(gavel_job_stream(table, 5.6, 0), table, cap, p, window=(200, 300))
        for p in ("gavel-max-min", "gavel-max-min-agnostic")
    }
    aware, blind = runs["gavel-max-min"], runs["gavel-max-min-agnostic"]
    assert len(aware.jct_s) == 100 and aware.lp_solves > 0 and aware.rounds > 100
    assert aware.mean_jct_s < blind.mean_jct_s
    used = aware.busy_device_s
    assert used["v100"] > 0 and used["k80"] > 0


def test_rounds_run_in_bulk_give_the_same_jcts(table, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cap = {"v100": 36, "p100": 36, "k80": 36}
    bulk = simulate_gavel_rounds(
        gavel_job_stream(table, 2.0, 1), table, cap, "gavel-max-min", window=(0, 120)
    )
    monkeypatch.setattr(gavel_sim, "_settled_rounds", lambda *a, **k: 0)
    one_by_one = simulate_gavel_rounds(
        gavel_job_stream(table, 2.0, 1), table, cap, "gavel-max-min", window=(0, 120)
    )
    assert bulk.rounds == one_by_one.rounds and bulk.lp_solves == one_by_one.lp_solves
    assert bulk.jct_s == pytest.approx(one_by_one.jct_s, rel=1e-9)


def test_migration_costs_time(table) -> None:  # type: ignore[no-untyped-def]
    cap = {"v100": 4, "p100": 4, "k80": 4}
    jobs = [j for _, j in zip(range(40), gavel_job_stream(table, 6.0, 2), strict=False)]
    free = simulate_gavel_rounds(jobs, table, cap, "gavel-max-min")
    paid = simulate_gavel_rounds(jobs, table, cap, "gavel-max-min", migration_s=120)
    assert free.migrations > 0 and len(free.jct_s) == len(paid.jct_s) == 40
    assert paid.mean_jct_s > free.mean_jct_s


def test_min_cost_slo_meets_the_deadlines_max_min_misses(table) -> None:  # type: ignore[no-untyped-def]
    cap = {"v100": 8, "p100": 8, "k80": 8}
    jobs = [j for _, j in zip(range(120), gavel_job_stream(table, 1.2, 3, slo=True), strict=False)]
    assert {round(j.deadline_s - j.arrival_s) > 0 for j in jobs} == {True}
    runs = {
        p: simulate_gavel_rounds(jobs, table, cap, p)
        for p in ("gavel-max-min", "gavel-min-cost-slo")
    }
    fair, slo = runs["gavel-max-min"], runs["gavel-min-cost-slo"]
    assert fair.slo_jobs == slo.slo_jobs == 120
    # at this load every deadline can be met, and the SLO policy meets them all
    assert fair.slo_met < slo.slo_met == 120
    assert slo.cost_usd > 0 and fair.cost_usd > 0


def test_a_job_that_fits_nowhere_is_refused(table) -> None:  # type: ignore[no-untyped-def]
    job = GavelJob("ResNet-18 (batch size 16)", 8, 1000.0, 0.0)
    with pytest.raises(Exception, match="fits no type"):
        simulate_gavel_rounds([job], table, {"v100": 4, "p100": 4, "k80": 4}, "gavel-max-min")
