"""Gavel-style LP policies on tiny matrices with known optima, and the fluid simulator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from suanli.sched.gavel import (
    AllocationProblem,
    PolicyError,
    cost_normalized_throughput,
    max_min_agnostic,
    max_min_fairness,
    max_throughput,
    min_cost_slo,
    min_makespan,
)
from suanli.sim.gavel_sim import read_gavel_throughputs, simulate_gavel, synthetic_jobs

# job 0 is 10x faster on type 1; job 1 runs equally on both; one device of each type
P = AllocationProblem(
    throughput=np.array([[1.0, 10.0], [1.0, 1.0]]),
    scale=np.array([1, 1]),
    capacity=np.array([1, 1]),
    remaining_steps=np.array([100.0, 100.0]),
    price_usd_per_hour=np.array([1.0, 3.0]),
)


def thr(x: np.ndarray) -> list[float]:
    return [round(v, 6) for v in (x * P.throughput).sum(axis=1)]


def test_max_throughput_gives_each_job_its_best_type() -> None:
    # optimum: job 0 on type 1 (10), job 1 on type 0 (1): normalised sum 1 + 1 = 2
    assert thr(max_throughput(P)) == [10.0, 1.0]


def test_heterogeneity_aware_max_min_beats_the_agnostic_one() -> None:
    aware = thr(max_min_fairness(P))
    blind = thr(max_min_agnostic(P))
    # the agnostic policy spreads each job's time over both types in proportion to
    # capacity: job 0 gets 0.5*1 + 0.5*10 = 5.5, job 1 gets 1
    assert blind == [5.5, 1.0]
    assert aware[0] > blind[0] and aware[1] >= blind[1]


def test_min_makespan_finishes_together_when_possible() -> None:
    x = min_makespan(P)
    rates = (x * P.throughput).sum(axis=1)
    # both can run at full speed at once (10 and 1): makespan = 100 s, set by job 1
    assert max(P.remaining_steps / rates) == pytest.approx(100.0)


def test_cost_normalised_throughput_prefers_cheap_useful_capacity() -> None:
    x = cost_normalized_throughput(P)
    # normalised throughput per dollar: job 1 on type 0 gives 1 per $1 — the best ratio
    assert x[1, 0] == pytest.approx(1.0)
    assert (x.sum(axis=1) <= 1 + 1e-9).all()


def test_min_cost_slo_meets_deadlines_on_the_cheapest_types_that_do() -> None:
    # one device of each type at $1 and $3; job 0 needs 50 steps in 10 s: 5 steps/s is
    # more than the $1 type gives it (1), so it must use the $3 type at least half the time
    p = AllocationProblem(
        throughput=np.array([[1.0, 10.0], [1.0, 1.0]]),
        scale=np.array([1, 1]),
        capacity=np.array([1, 1]),
        remaining_steps=np.array([50.0, 100.0]),
        price_usd_per_hour=np.array([1.0, 3.0]),
        deadline_left_s=np.array([10.0, np.inf]),
    )
    x = min_cost_slo(p)
    rates = (x * p.throughput).sum(axis=1)
    assert rates[0] >= 5.0 - 1e-6  # the deadline holds
    assert x[1, 0] == pytest.approx(1.0)  # the job without one runs where it is cheapest
    # without the deadline: work per dollar, normalised by each job's best rate, is
    # job 0: 0.1/$1 or 1/$3; job 1: 1/$1 or 1/$3; the optimum 1/3 + 1 puts each on one type
    relaxed = min_cost_slo(replace(p, deadline_left_s=None))
    assert relaxed == pytest.approx(np.array([[0.0, 1.0], [1.0, 0.0]]), abs=1e-9)
    assert relaxed == pytest.approx(cost_normalized_throughput(p), abs=1e-9)


def test_min_cost_slo_shares_what_there_is_when_deadlines_cannot_all_hold() -> None:
    # two jobs each need the one fast device all the time: each gets the same
    # fraction of its need instead of one getting everything
    p = AllocationProblem(
        throughput=np.array([[10.0], [10.0]]),
        scale=np.array([1, 1]),
        capacity=np.array([1]),
        remaining_steps=np.array([100.0, 100.0]),
        price_usd_per_hour=np.array([2.0]),
        deadline_left_s=np.array([10.0, 10.0]),
    )
    rates = (min_cost_slo(p) * p.throughput).sum(axis=1)
    assert rates == pytest.approx([5.0, 5.0])
    # a deadline already missed asks for full speed, which is what is left
    late = replace(p, deadline_left_s=np.array([-5.0, np.inf]))
    assert (min_cost_slo(late) * p.throughput).sum(axis=1)[0] == pytest.approx(10.0)
    with pytest.raises(PolicyError, match="price"):
        min_cost_slo(replace(p, price_usd_per_hour=None))


def test_capacity_and_time_constraints_hold() -> None:
    rng = np.random.default_rng(1)
    p = AllocationProblem(
        throughput=rng.uniform(0.5, 5, (6, 3)),
        scale=np.array([1, 2, 1, 4, 1, 2]),
        capacity=np.array([2, 3, 4]),
    )
    for policy in (max_min_fairness, max_min_agnostic, max_throughput):
        x = policy(p)
        assert (x >= -1e-9).all() and (x.sum(axis=1) <= 1 + 1e-6).all()
        assert ((p.scale[:, None] * x).sum(axis=0) <= p.capacity + 1e-6).all()


def test_fluid_simulation_on_the_real_gavel_table(shared_dir) -> None:  # type: ignore[no-untyped-def]
    table = read_gavel_throughputs(shared_dir / "data" / "gavel_simulation_throughputs.json")
    assert len(table) > 50 and ("ResNet-50 (batch size 64)", 1) in table
    jobs = synthetic_jobs(table, 30, 6.0, seed=0)
    cap = {"v100": 4, "p100": 4, "k80": 4}
    aware = simulate_gavel(jobs, table, cap, "gavel-max-min")
    blind = simulate_gavel(jobs, table, cap, "gavel-max-min-agnostic")
    assert len(aware.jct_s) == 30 and all(j > 0 for j in aware.jct_s)
    assert aware.mean_jct_s < blind.mean_jct_s
    # determinism for a fixed seed
    again = simulate_gavel(synthetic_jobs(table, 30, 6.0, seed=0), table, cap, "gavel-max-min")
    assert again.jct_s == aware.jct_s
