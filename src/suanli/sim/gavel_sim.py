"""Gavel's setting: Poisson job arrivals on a K80/P100/V100 cluster, allocation by LP policies.

The workload follows Gavel's synthetic recipe (OSDI'20, Sec. 7 and
``../shared/data/README.md``): job type uniform over the throughput table;
duration ``60 * 10^U(1.5, 3)`` s for 80% of jobs and ``60 * 10^U(3, 4)`` s for
20%, counted as steps on a V100; scale factor 1/2/4/8 with probability
0.7/0.1/0.15/0.05; Poisson arrivals.

Two executions:

* `simulate_gavel_rounds` follows Gavel's protocol: 6-minute rounds realised by
  the mechanism in `suanli.sched.rounds`, a continuous Poisson stream from
  Gavel's own generator (`gavel_job_stream`, the same draws from the same seeds),
  and the mean JCT over a window of job ids (Gavel used jobs 4000-5000).
* `simulate_gavel` is the fluid relaxation:

Execution is fluid: between events (an arrival or a completion) every job runs
at ``sum_k T[j, k] X[j, k]`` steps/s under the policy's allocation, which is
recomputed at every event. Gavel's round-based mechanism realises such an
allocation over rounds; the fluid form is the allocation it approximates
(stated here, not hidden), and it makes policy comparisons exact and fast.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from suanli.sched.gavel import POLICIES, AllocationProblem, warm_starts
from suanli.sched.rounds import DEFAULT_RESET_EVERY_S, DEFAULT_ROUND_S, RoundScheduler
from suanli.sim.traces import TraceError

TYPES = ("v100", "p100", "k80")
SCALE_P = {1: 0.7, 2: 0.1, 4: 0.15, 8: 0.05}


@dataclass(frozen=True)
class GavelJob:
    job_type: str
    scale: int
    steps: float
    arrival_s: float
    #: when the job should be done (Gavel's SLO: arrival + factor x duration on a V100)
    deadline_s: float = math.inf


#: On-demand list prices per GPU-hour, to price Gavel's cluster (the cost policies and
#: the cost reported). V100: AWS EC2 p3.2xlarge (1x V100 16 GB), us-east-1, $3.06/h;
#: K80: AWS EC2 p2.xlarge (1x K80 GPU), us-east-1, $0.90/h; P100: Google Cloud
#: GPU pricing, NVIDIA P100 on-demand, us-central1, $1.46/GPU-hour (each vendor's
#: pricing page, as listed 2020-2024; Gavel priced its cost policies from the same clouds).
GAVEL_PRICES_USD_PER_HOUR = {"v100": 3.06, "p100": 1.46, "k80": 0.90}


def _gavel_slo_factor(rng: random.Random) -> float:
    """Gavel's SLO factor (``utils.generate_job``): 1.2, 2 or 10 times the V100 duration."""
    r = rng.uniform(0, 1)
    if r < 0.33:
        return 1.2
    if r < 0.67:
        return 2.0
    return 10.0


def read_gavel_throughputs(
    path: Path, *, complete_only: bool = True
) -> dict[tuple[str, int], dict[str, float]]:
    """``gavel_simulation_throughputs.json``: isolated steps/s per (job type, scale) and type.

    Some (job type, scale) pairs have no rate on some type (they did not fit or
    were not measured). ``complete_only`` drops them; otherwise the missing types
    read 0 steps/s (cannot run there), which is what Gavel's generator needs: it
    asks only for a V100 rate.
    """
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
    if complete_only:
        return {k: v for k, v in out.items() if set(v) == set(TYPES)}
    return {k: {t: v.get(t, 0.0) for t in TYPES} for k, v in out.items() if v.get("v100")}


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
    remaining = np.array([j.steps for j in pending])
    thr = np.array([[table[(j.job_type, j.scale)][t] for t in TYPES] for j in pending])
    scale = np.array([j.scale for j in pending], dtype=float)
    with warm_starts():
        return _fluid(pending, thr, scale, cap, remaining, solve, policy)


def _fluid(
    pending: list[GavelJob],
    thr: np.ndarray,
    scale: np.ndarray,
    cap: np.ndarray,
    remaining: np.ndarray,
    solve: Callable[[AllocationProblem], np.ndarray],
    policy: str,
) -> GavelResult:
    active: list[int] = []
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


#: Gavel's job table in its order (``scheduler/job_table.py``): what ``rng.choice``
#: draws from. ``True``: the job type may run on more than one GPU.
GAVEL_JOB_TABLE: tuple[tuple[str, bool], ...] = (
    *((f"ResNet-18 (batch size {b})", True) for b in (16, 32, 64, 128, 256)),
    *((f"ResNet-50 (batch size {b})", True) for b in (16, 32, 64, 128)),
    *((f"Transformer (batch size {b})", True) for b in (16, 32, 64, 128, 256)),
    *((f"LM (batch size {b})", True) for b in (5, 10, 20, 40, 80)),
    *((f"Recommendation (batch size {b})", False) for b in (512, 1024, 2048, 4096, 8192)),
    ("A3C", False),
    ("CycleGAN", False),
)


def _gavel_scale(rng: random.Random) -> int:
    r = rng.uniform(0, 1)
    if 0.7 <= r <= 0.8:
        return 2
    if 0.8 <= r <= 0.95:
        return 4
    if r >= 0.95:
        return 8
    return 1


def _gavel_duration_s(rng: random.Random) -> float:
    if rng.random() >= 0.8:
        return 60 * 10 ** rng.uniform(3, 4)
    return 60 * 10 ** rng.uniform(1.5, 3)


def gavel_job_stream(
    table: dict[tuple[str, int], dict[str, float]],
    jobs_per_hour: float,
    seed: int,
    *,
    multi_gpu: bool = False,
    slo: bool = False,
) -> Iterator[GavelJob]:
    """Gavel's continuous workload, draw for draw (``utils.generate_job``, ``simulate``).

    Jobs come from ``random.Random(seed + 2)`` (scale factor, then duration, then the
    job type, redrawn until it may run distributed), arrivals from
    ``random.Random(seed + 3)`` with exponential gaps, the first job at 0 s. The
    scale factor is drawn even for single-GPU workloads, as Gavel does, so a
    single-GPU stream is Gavel's to the last draw. Steps = duration x V100 rate.
    With ``slo``, each job gets a deadline as Gavel's ``--assign_SLOs`` does: from
    ``random.Random(seed + 6)``, a factor of 1.2, 2 or 10 times its V100 duration.
    """
    job_rng = random.Random(seed + 2)
    gap_rng = random.Random(seed + 3)
    slo_rng = random.Random(seed + 6)
    mean_gap_s = 3600.0 / jobs_per_hour
    t = 0.0
    while True:
        scale = _gavel_scale(job_rng)
        duration = _gavel_duration_s(job_rng)
        if not multi_gpu:
            scale = 1
        while True:
            name, distributed = job_rng.choice(GAVEL_JOB_TABLE)
            if scale == 1 or distributed:
                break
        rates = table.get((name, scale))
        if rates is None:
            raise TraceError(f"Gavel's table has no rates for {name!r} on {scale} GPU(s)")
        deadline = t + _gavel_slo_factor(slo_rng) * duration if slo else math.inf
        yield GavelJob(name, scale, duration * rates["v100"], t, deadline)
        t += -math.log(1.0 - gap_rng.random()) * mean_gap_s


@dataclass
class RoundsResult:
    """What a round-based run measured; JCTs of the job-id window only."""

    policy: str
    window: tuple[int, int]
    jct_s: list[float]
    jobs_simulated: int
    rounds: int
    lp_solves: int
    sim_end_s: float
    wall_s: float
    migrations: int
    busy_device_s: dict[str, float] = field(default_factory=dict)
    #: what the device time of the window's jobs cost at the run's prices
    cost_usd: float = 0.0
    #: jobs of the window that had a deadline, and how many of them finished by it
    slo_jobs: int = 0
    slo_met: int = 0

    @property
    def mean_jct_s(self) -> float:
        return float(np.mean(self.jct_s)) if self.jct_s else math.nan

    @property
    def slo_attainment(self) -> float:
        return self.slo_met / self.slo_jobs if self.slo_jobs else math.nan


#: Type-blind policies see every type as alike; Gavel shuffles the type order for them.
_TYPE_BLIND = {"gavel-max-min-agnostic"}


def simulate_gavel_rounds(
    jobs: Iterator[GavelJob] | list[GavelJob],
    table: dict[tuple[str, int], dict[str, float]],
    capacity: dict[str, int],
    policy: str,
    *,
    window: tuple[int, int] | None = None,
    round_s: float = DEFAULT_ROUND_S,
    reset_every_s: float = DEFAULT_RESET_EVERY_S,
    migration_s: float = 0.0,
    seed: int = 0,
    price_usd_per_hour: dict[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RoundsResult:
    """Run a Gavel workload in rounds until every job of ``window`` (ids, end exclusive) ends.

    With ``window=None`` every job of a finite list runs to completion. A job that
    changes device type between rounds loses ``migration_s`` of its next round to
    saving and restoring its checkpoint (Gavel's simulator charges nothing: 0 s).
    Devices are priced at ``price_usd_per_hour`` (`GAVEL_PRICES_USD_PER_HOUR` by
    default) for the cost policies and the cost reported.
    """
    t0 = time.perf_counter()
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
    stream = iter(jobs)
    total = len(jobs) if isinstance(jobs, list) else None
    lo, hi = window if window is not None else (0, total or 0)
    if window is None and total is None:
        raise ValueError("an endless job stream needs a window of job ids")
    cap = np.array([capacity.get(t, 0) for t in TYPES], dtype=float)
    prices = GAVEL_PRICES_USD_PER_HOUR if price_usd_per_hour is None else price_usd_per_hour
    price = np.array([prices.get(t, 0.0) for t in TYPES])
    mech = RoundScheduler(
        TYPES,
        cap,
        POLICIES[policy],
        round_s=round_s,
        reset_every_s=reset_every_s,
        shuffle_types=policy in _TYPE_BLIND,
        seed=seed + 5,
        price_usd_per_hour=price,
    )
    arrivals: list[GavelJob] = []
    # per job id, grown as jobs arrive
    rates = np.zeros((1024, len(TYPES)))
    remaining = np.zeros(1024)
    last_type = np.full(1024, -1)
    scale_of = np.zeros(1024, dtype=np.int64)
    spent_usd = np.zeros(1024)
    jct: dict[int, float] = {}
    busy = np.zeros(len(TYPES))
    nxt = next(stream, None)
    now = nxt.arrival_s if nxt is not None else 0.0
    rounds = migrations = window_done = 0

    def remaining_of(keys: list[Hashable]) -> np.ndarray:
        return remaining[np.asarray(keys, dtype=np.int64)]

    while True:
        while nxt is not None and nxt.arrival_s <= now:
            i = len(arrivals)
            if i == len(remaining):
                rates = np.vstack([rates, np.zeros_like(rates)])
                remaining = np.concatenate([remaining, np.zeros_like(remaining)])
                last_type = np.concatenate([last_type, np.full_like(last_type, -1)])
                scale_of = np.concatenate([scale_of, np.zeros_like(scale_of)])
                spent_usd = np.concatenate([spent_usd, np.zeros_like(spent_usd)])
            arrivals.append(nxt)
            rates[i] = [table[(nxt.job_type, nxt.scale)][t] for t in TYPES]
            if not ((rates[i] > 0) & (cap >= nxt.scale)).any():
                raise TraceError(f"job {i} ({nxt.job_type}, {nxt.scale} GPUs) fits no type here")
            remaining[i] = nxt.steps
            scale_of[i] = nxt.scale
            mech.add(
                i, rates[i], nxt.scale, arrival_s=nxt.arrival_s, ident=i, deadline_s=nxt.deadline_s
            )
            nxt = next(stream, None) if total is None or len(arrivals) < total else None
        if window_done >= hi - lo:
            break
        if not len(mech):
            if nxt is None:
                break
            now = nxt.arrival_s
            continue
        rows, ks = mech.plan_rows(now, remaining_steps=remaining_of)
        if not len(rows):
            raise RuntimeError("no job can make progress: capacity too small for every job")
        rounds += 1
        ids = mech.ident[rows]
        thr = rates[ids, ks]
        moved = (last_type[ids] >= 0) & (last_type[ids] != ks)
        migrations += int(moved.sum())
        lost = np.where(moved, min(migration_s, round_s), 0.0)
        last_type[ids] = ks
        steps = np.minimum(remaining[ids], thr * (round_s - lost))
        run_s = lost + steps / thr
        remaining[ids] -= steps
        scales = scale_of[ids]
        np.add.at(busy, ks, run_s * scales)
        spent_usd[ids] += run_s * scales * price[ks] / 3600
        mech.record_rows(rows, ks, run_s)
        for n in np.flatnonzero(remaining[ids] <= 1e-9 * (steps + remaining[ids])).tolist():
            i = int(ids[n])
            if remaining[i] > 1e-9 * arrivals[i].steps:
                continue
            jct[i] = now + float(run_s[n]) - arrivals[i].arrival_s
            window_done += lo <= i < hi
            mech.remove(i)
        now += float(run_s.max())
        bulk = _settled_rounds(mech, remaining[ids], thr * round_s, run_s, round_s, now, nxt)
        while bulk:  # the same plan again and again: run those rounds at once (exact)
            until_reset = mech.next_reset_s()
            run = bulk
            if until_reset < math.inf:
                run = min(bulk, max(0, math.ceil((until_reset - now) / round_s)))
            if run == 0:
                # a reset is due at this round's start: recompute the allocation as
                # plan_rows would; a settled plan does not depend on it
                mech.refresh(now, remaining_steps=remaining_of)
                continue
            remaining[ids] -= run * thr * round_s
            np.add.at(busy, ks, run * round_s * scales)
            spent_usd[ids] += run * round_s * scales * price[ks] / 3600
            mech.record_rows(rows, ks, np.full(len(rows), run * round_s))
            now += run * round_s
            rounds += run
            bulk -= run
        if progress is not None:
            progress(window_done, hi - lo)
    window_jct = [jct[i] for i in range(lo, hi) if i in jct]
    slo = [i for i in range(lo, min(hi, len(arrivals))) if math.isfinite(arrivals[i].deadline_s)]
    met = sum(
        1 for i in slo if i in jct and arrivals[i].arrival_s + jct[i] <= arrivals[i].deadline_s
    )
    return RoundsResult(
        policy,
        (lo, hi),
        window_jct,
        len(arrivals),
        rounds,
        mech.solves,
        now,
        time.perf_counter() - t0,
        migrations,
        {t: float(b) for t, b in zip(TYPES, busy, strict=True)},
        float(spent_usd[lo : min(hi, len(arrivals))].sum()),
        len(slo),
        met,
    )


def _settled_rounds(
    mech: RoundScheduler,
    remaining: np.ndarray,
    steps_per_round: np.ndarray,
    run_s: np.ndarray,
    round_s: float,
    now: float,
    nxt: GavelJob | None,
) -> int:
    """How many more rounds will repeat the one just run, with no job arriving or ending.

    Only when the mechanism says its plan did not depend on priorities
    (`RoundScheduler.settled`) and every job ran the whole round; at low load most
    rounds are like that, and running them one by one cost most of a simulation.
    """
    if not mech.settled or len(run_s) != len(mech) or (run_s < round_s * (1 - 1e-12)).any():
        return 0
    if (remaining <= 0).any():
        return 0
    # rounds each job can still run whole, with steps left over after them
    whole = int(np.min(np.ceil(remaining / steps_per_round))) - 1
    # a round starting at or after an arrival adds that job first (a reset of the
    # allocation in between leaves a settled plan as it is: the caller does it in place)
    if nxt is not None:
        whole = min(whole, max(0, math.ceil((nxt.arrival_s - now) / round_s)))
    return max(0, whole)
