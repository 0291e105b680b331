"""Gavel's setting: Poisson job arrivals on a K80/P100/V100 cluster, allocation by LP policies.

The workload follows Gavel's synthetic recipe (OSDI'20, Sec. 7 and
``../shared/data/README.md``): job type uniform over the throughput table;
duration ``60 * 10^U(1.5, 3)`` s for 80% of jobs and ``60 * 10^U(3, 4)`` s for
20%, counted as steps on a V100; scale factor 1/2/4/8 with probability
0.7/0.1/0.15/0.05; Poisson arrivals.

Execution is fluid: between events (an arrival or a completion) every job runs
at ``sum_k T[j, k] X[j, k]`` steps/s under the policy's allocation, which is
recomputed at every event. Gavel's round-based mechanism realises such an
allocation over rounds; the fluid form is the allocation it approximates
(stated here, not hidden), and it makes policy comparisons exact and fast.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from suanli.sched.gavel import POLICIES, AllocationProblem
from suanli.sim.traces import TraceError

TYPES = ("v100", "p100", "k80")
SCALE_P = {1: 0.7, 2: 0.1, 4: 0.15, 8: 0.05}


@dataclass(frozen=True)
class GavelJob:
    job_type: str
    scale: int
    steps: float
    arrival_s: float


def read_gavel_throughputs(path: Path) -> dict[tuple[str, int], dict[str, float]]:
    """``gavel_simulation_throughputs.json``: isolated steps/s per (job type, scale) and type."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TraceError(f"{path}: cannot read Gavel throughputs ({exc})") from exc
    out: dict[tuple[str, int], dict[str, float]] = {}
    for gpu in TYPES:
        for key, val in data[gpu].items():
            name, scale = key.strip("()").rsplit(",", 1)
            job = (name.strip().strip("'"), int(scale))
            iso = val.get("null") if isinstance(val, dict) else None
            if iso:
                out.setdefault(job, {})[gpu] = float(iso)
    return {k: v for k, v in out.items() if set(v) == set(TYPES)}


def synthetic_jobs(
    table: dict[tuple[str, int], dict[str, float]], n: int, jobs_per_hour: float, seed: int
) -> list[GavelJob]:
    """Gavel's synthetic workload (module docstring)."""
    rng = np.random.default_rng(seed)
    by_scale: dict[int, list[str]] = {}
    for name, scale in table:
        by_scale.setdefault(scale, []).append(name)
    scales = sorted(s for s in SCALE_P if s in by_scale)
    probs = np.array([SCALE_P[s] for s in scales])
    probs /= probs.sum()
    t = 0.0
    jobs = []
    for _ in range(n):
        t += rng.exponential(3600.0 / jobs_per_hour)
        scale = int(rng.choice(scales, p=probs))
        name = str(rng.choice(sorted(by_scale[scale])))
        lo, hi = (1.5, 3.0) if rng.random() < 0.8 else (3.0, 4.0)
        duration = 60 * 10 ** rng.uniform(lo, hi)
        steps = duration * table[(name, scale)]["v100"]
        jobs.append(GavelJob(name, scale, steps, t))
    return jobs


@dataclass
class GavelResult:
    policy: str
    jct_s: list[float]
    makespan_s: float
    lp_solves: int

    @property
    def mean_jct_s(self) -> float:
        return float(np.mean(self.jct_s)) if self.jct_s else math.nan


def simulate_gavel(
    jobs: list[GavelJob],
    table: dict[tuple[str, int], dict[str, float]],
    capacity: dict[str, int],
    policy: str,
) -> GavelResult:
    """Run ``jobs`` to completion under ``policy`` (fluid execution, see module docstring)."""
    solve = POLICIES[policy]
    cap = np.array([capacity[t] for t in TYPES], dtype=float)
    pending = sorted(jobs, key=lambda j: j.arrival_s)
    active: list[int] = []
    remaining = np.array([j.steps for j in pending])
    thr = np.array([[table[(j.job_type, j.scale)][t] for t in TYPES] for j in pending])
    scale = np.array([j.scale for j in pending], dtype=float)
    done = np.full(len(pending), math.nan)
    now, nxt, solves = 0.0, 0, 0
    rates = np.zeros(0)
    while nxt < len(pending) or active:
        if active:
            idx = np.array(active)
            prob = AllocationProblem(
                throughput=thr[idx],
                scale=scale[idx],
                capacity=cap,
                remaining_steps=remaining[idx],
                elapsed_s=now - np.array([pending[i].arrival_s for i in active]),
                price_usd_per_hour=np.ones(len(TYPES)),
            )
            x = solve(prob)
            solves += 1
            rates = np.maximum((x * thr[idx]).sum(axis=1), 0.0)
        t_arrive = pending[nxt].arrival_s if nxt < len(pending) else math.inf
        t_finish = math.inf
        if active:
            with np.errstate(divide="ignore"):
                left = np.where(rates > 0, remaining[np.array(active)] / rates, math.inf)
            t_finish = now + float(left.min())
        t_next = min(t_arrive, t_finish)
        if math.isinf(t_next):
            raise RuntimeError("no job can make progress: capacity too small for a job")
        if active:
            remaining[np.array(active)] -= rates * (t_next - now)
        now = t_next
        still = []
        for i in active:
            if remaining[i] <= 1e-6 * pending[i].steps:
                done[i] = now
            else:
                still.append(i)
        active = still
        while nxt < len(pending) and pending[nxt].arrival_s <= now + 1e-9:
            active.append(nxt)
            nxt += 1
    jct = [float(done[i] - pending[i].arrival_s) for i in range(len(pending))]
    return GavelResult(policy, jct, float(np.nanmax(done)), solves)
