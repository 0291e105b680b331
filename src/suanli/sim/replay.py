"""Time-driven replay: arrivals, scheduling sessions, departures, preemption, restarts.

The same `Session` (actions over jobs and queues) and `Framework` as the live
scheduler decide; only the clock and the executor are simulated. Tasks that
share a ``job`` form a gang. After each event a session runs the policy's
actions over the pending jobs. A job evicted by preemption or reclaim gets its
grace period to checkpoint, so it keeps its progress, and is requeued when the
grace ends; its pending departure is cancelled. (The devices pass to the
preemptor at the notice: the victim's grace is modelled as its own delay, not
as the preemptor's — optimistic for the preemptor by at most the grace.)
A task's run time is its trace duration, or — when it carries ``work`` and the
run has a throughput table — its work divided by its throughput on the chip it
landed on. An elastic job (``min_available`` below its members) that starts
with fewer members runs that much longer: its duration or rate is the full
gang's, and data parallelism is taken as linear in members.

With ``rounds`` (the ``rounds`` action of `suanli.sched.round_action`) a session
also runs at every round boundary. A job the rounds move or pause saves its
checkpoint in its grace period and reads it back when it starts again, each
taking the rounds' ``checkpoint_s(job, write)`` of its time.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from suanli.cluster.state import ClusterState, NodeSpec, Site
from suanli.cluster.task import Task
from suanli.cluster.wan import Wan
from suanli.sched.framework import CycleState, Framework, Placement, Statement
from suanli.sched.plugins_fit import ResourceFit
from suanli.sched.policies import PluginContext, PolicyConfig, build
from suanli.sched.round_action import DEFAULT_STORAGE, Rounds, checkpoint_costs
from suanli.sched.round_action import ROUND as BY_ROUND
from suanli.sched.session import Job, Queue, Session

ARRIVE, DEPART, REQUEUE, ROUND = 1, 0, 2, 3


@dataclass
class ReplayResult:
    policy: str
    seed: int
    jct_s: list[float]
    wait_s: list[float]
    makespan_s: float
    utilization: dict[str, float]  # time-averaged allocated share of each device type
    unplaceable: int  # jobs that do not fit even an empty cluster
    decisions: int
    wall_s: float
    gpu_seconds_by_type: dict[str, float] = field(default_factory=dict)
    gpu_seconds_by_site_type: dict[tuple[str, str], float] = field(default_factory=dict)
    preemptions: int = 0
    unfinished: int = 0  # jobs still waiting or running when the events ran out
    moved_gb: float = 0.0  # data moved over the WAN to where jobs ran
    moving_s: float = 0.0  # job-seconds spent waiting for data to arrive (devices held)

    def summary(self) -> dict[str, Any]:
        jct = np.array(self.jct_s) if self.jct_s else np.array([math.nan])
        wait = np.array(self.wait_s) if self.wait_s else np.array([math.nan])
        return {
            "policy": self.policy,
            "seed": self.seed,
            "jct_s": {
                "mean": float(jct.mean()),
                "p50": float(np.percentile(jct, 50)),
                "p99": float(np.percentile(jct, 99)),
            },
            "queueing_delay_s": {"mean": float(wait.mean()), "p99": float(np.percentile(wait, 99))},
            "makespan_s": self.makespan_s,
            "utilization": self.utilization,
            "unplaceable": self.unplaceable,
            "preemptions": self.preemptions,
            "unfinished": self.unfinished,
            "moved_gb": self.moved_gb,
            "decisions": self.decisions,
            "wall_s": self.wall_s,
            "decisions_per_s": self.decisions / self.wall_s if self.wall_s else math.nan,
        }


def jobs_of(tasks: list[Task], ordering: list[str]) -> list[Job]:
    """Group tasks into jobs (gangs by ``task.job``); FIFO ordering ignores priorities."""
    groups: dict[str, list[Task]] = {}
    for t in tasks:
        groups.setdefault(t.job or t.name, []).append(t)
    fifo = "fifo" in ordering
    out = []
    for name, members in groups.items():
        first = min(members, key=lambda t: t.arrival_s)
        out.append(
            Job(
                name=name,
                tasks=members,
                queue=first.queue,
                priority=0 if fifo else max(t.priority for t in members),
                min_available=max(t.min_available for t in members) if len(members) > 1 else 0,
                preemptible=all(t.preemptible for t in members),
                kind=first.kind,
                arrival_s=first.arrival_s,
            )
        )
    return out


def run_replay(
    nodes: list[NodeSpec],
    tasks: list[Task],
    framework: Framework,
    policy: str,
    seed: int = 0,
    *,
    actions: list[str] | None = None,
    ordering: list[str] | None = None,
    queues: list[Queue] | None = None,
    throughput: dict[tuple[str, str], float] | None = None,
    rounds: Rounds | None = None,
    sites: list[Site] | None = None,
    wan: Wan | None = None,
) -> ReplayResult:
    """Replay ``tasks`` on ``nodes`` through sessions running ``actions``.

    A job whose data (``data_region``, ``data_gb``) is in another region than the site
    it starts on waits for it to arrive over ``wan``, holding its devices; the data
    (and its checkpoints) are there from then on."""
    actions = actions or ["enqueue", "allocate", "backfill"]
    ordering = ordering or []
    aging = 0.0 if "fifo" in ordering else 1.0
    state = ClusterState(nodes, sites or ())
    empty = ClusterState(nodes, sites or ())
    wan = wan or Wan()
    data_at: dict[str, str] = {}  # job -> the region its data is in now
    moved_gb = moving_s = 0.0
    fits_empty = ResourceFit()  # can the job run at all, on an empty cluster?
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    jobs = {j.name: j for j in jobs_of(tasks, ordering)}
    names = sorted({j.queue for j in jobs.values()})
    queue_list = queues or [Queue(q) for q in names]
    events: list[tuple[float, int, str, int]] = []  # (time, kind, job, generation)
    for j in jobs.values():
        heapq.heappush(events, (j.arrival_s, ARRIVE, j.name, 0))
    if rounds is not None and jobs:
        heapq.heappush(events, (min(j.arrival_s for j in jobs.values()), ROUND, "", 0))
    restore: dict[str, float] = {}  # a moved job's checkpoint read, paid at its next start
    pending: dict[str, Job] = {}
    running: dict[str, tuple[Job, list[tuple[Task, Placement]]]] = {}
    generation: dict[str, int] = {}
    left: dict[str, float] = {}  # share of each job's work still to do (1.0 at arrival)
    full: dict[str, float] = {}  # the job's full run time on the chips of its current start
    started: dict[str, float] = {}
    first_start: dict[str, float] = {}
    jct: list[float] = []
    wait: list[float] = []
    decisions = unplaceable = preemptions = 0
    busy = np.zeros(len(state.types))
    gpu_sec: dict[str, float] = {}
    site_sec: dict[tuple[str, str], float] = {}
    per_type_cap = np.array(
        [float(state.gpu_cap[state.gpu_type == k].sum()) for k in range(len(state.types))]
    )
    first_t = min((j.arrival_s for j in jobs.values()), default=0.0)
    last_t = first_t

    gpu_nodes = state.gpu_type >= 0
    node_cap = state.gpu_cap.sum(axis=1)

    def used_by_type() -> np.ndarray:
        used = (node_cap - state.milli_free)[gpu_nodes]
        return np.bincount(
            state.gpu_type[gpu_nodes], weights=used, minlength=len(state.types)
        ).astype(float)

    def account(job: Job, binds: list[tuple[Task, Placement]], seconds: float) -> None:
        for task, p in binds:
            typ = state.types[state.gpu_type[p.node]] if state.gpu_type[p.node] >= 0 else ""
            dev_s = seconds * task.gpu_request_milli / 1000
            gpu_sec[typ] = gpu_sec.get(typ, 0.0) + dev_s
            key = (state.sites[state.site[p.node]].name, typ)
            site_sec[key] = site_sec.get(key, 0.0) + dev_s

    def work_left(name: str) -> float:
        """The job's work still to do, in the units of its rate (tokens, or seconds of
        its trace duration at rate 1), now: for the rounds' makespan and finish-time
        fairness, which need it (a live service does not know it)."""
        job = jobs[name]
        share = left.get(name, 1.0)
        if name in running:
            ran = max(0.0, t - started[name] - restore.get(name, 0.0))
            share -= ran / max(full[name], 1e-9)
        work = max((task.work if task.work > 0 else task.duration_s) for task in job.tasks)
        return max(0.0, share) * work

    if rounds is not None:
        rounds.remaining = work_left
    t = first_t
    used_now = used_by_type()
    while events:
        t, kind, name, gen = heapq.heappop(events)
        if kind != ROUND and gen != generation.get(name, 0):
            continue  # a departure cancelled by an eviction
        busy += used_now * (t - last_t)
        last_t = t
        if kind == ROUND:
            assert rounds is not None
            if pending or running or any(e[1] != ROUND for e in events):
                heapq.heappush(events, (t + rounds.config.round_s, ROUND, "", 0))
        elif kind == DEPART:
            job = jobs[name]
            _, binds = running.pop(name)
            restore.pop(name, None)
            for task, p in binds:
                framework.unbind(state, task, p)
            account(job, binds, t - started[name])
            jct.append(t - job.arrival_s)
        elif kind == ARRIVE:
            job = jobs[name]
            if _fits_empty(empty, framework, job, rng, fits_empty):
                pending[name] = job
            else:
                unplaceable += 1
        else:  # REQUEUE after an eviction's grace period
            pending[name] = jobs[name]
        session = Session(
            state,
            framework,
            queue_list,
            list(pending.values()),
            running,
            t,
            aging_per_hour=aging,
            rng=rng,
            rounds=rounds,
        )
        result = session.run(actions)
        decisions += sum(len(j.tasks) for j in pending.values())
        for ev in result.evicted:
            if ev.job not in running:
                continue  # the session never evicts what it bound itself; defensive
            victim = jobs[ev.job]
            binds = running.pop(ev.job)[1]
            ran = max(0.0, t - started[ev.job] - restore.pop(ev.job, 0.0))
            account(victim, binds, t - started[ev.job])
            # it checkpoints in its grace period, so the work done so far is kept
            left[ev.job] = max(0.0, left.get(ev.job, 1.0) - ran / max(full[ev.job], 1e-9))
            if ev.by == BY_ROUND and rounds is not None and rounds.checkpoint_s is not None:
                restore[ev.job] = rounds.checkpoint_s(victim, False)
            generation[ev.job] = generation.get(ev.job, 0) + 1
            heapq.heappush(events, (t + ev.grace_s, REQUEUE, ev.job, generation[ev.job]))
            preemptions += 1
        for jname in sorted({jn for jn, _, _ in result.bound}):
            job = pending.pop(jname)
            binds = session.running[jname][1]
            running[jname] = (job, binds)
            started[jname] = t
            job.started_s = t
            if jname not in first_start:
                first_start[jname] = t
                wait.append(t - job.arrival_s)
            # run time on the chips it got this time (a restart may land on other chips);
            # an elastic job that started with fewer members than it has runs slower in
            # proportion (data parallel, linear in members: its rate is the full gang's)
            full[jname] = max(_duration(task, state, p, throughput) for task, p in binds)
            full[jname] *= len(job.tasks) / max(1, len(binds))
            first_task, first_p = binds[0]
            here = state.sites[state.site[first_p.node]].region
            there = data_at.get(jname, first_task.data_region)
            move_s = wan.transfer_s(first_task.data_gb, there, here)
            if move_s > 0:
                moved_gb += first_task.data_gb
                moving_s += move_s
                restore[jname] = restore.get(jname, 0.0) + move_s
            if first_task.data_region:
                data_at[jname] = here
            done_at = t + restore.get(jname, 0.0) + left.get(jname, 1.0) * full[jname]
            job.ends_by_s = done_at  # the trace's run time: what a site's queue is read from
            heapq.heappush(events, (done_at, DEPART, jname, generation.get(jname, 0)))
        used_now = used_by_type()
    unfinished = len(pending) + len(running)
    span = max(last_t - first_t, 1e-9)
    util = {
        typ: float(busy[k] / (per_type_cap[k] * span)) if per_type_cap[k] else 0.0
        for k, typ in enumerate(state.types)
    }
    return ReplayResult(
        policy,
        seed,
        jct,
        wait,
        span,
        util,
        unplaceable,
        decisions,
        time.perf_counter() - t0,
        gpu_sec,
        site_sec,
        preemptions,
        unfinished,
        moved_gb,
        moving_s,
    )


def replay_policy(
    nodes: list[NodeSpec],
    tasks: list[Task],
    config: PolicyConfig,
    seed: int = 0,
    *,
    throughput: dict[tuple[str, str], float] | None = None,
    storage: str = DEFAULT_STORAGE,
    sites: list[Site] | None = None,
    wan: Wan | None = None,
) -> tuple[ReplayResult, Rounds | None]:
    """`run_replay` under a policy as the live service runs it: its plugins, actions,
    ordering and, when it has them, its rounds (moved jobs' checkpoints on ``storage``)."""
    thr = throughput or {}
    fw = build(config, PluginContext(workload=tasks, throughput=thr, wan=wan or Wan()))
    rounds = None
    if config.rounds is not None:
        types = sorted({n.gpu_type for n in nodes if n.gpu_count})
        rounds = Rounds(types, thr, config.rounds, checkpoint_s=checkpoint_costs(storage))
    res = run_replay(
        nodes,
        tasks,
        fw,
        config.name,
        seed,
        actions=config.actions,
        ordering=config.ordering,
        throughput=thr,
        rounds=rounds,
        sites=sites,
        wan=wan,
    )
    return res, rounds


def _fits_empty(
    empty: ClusterState, framework: Framework, job: Job, rng: np.random.Generator, fit: ResourceFit
) -> bool:
    """Whether the whole job (a gang: all of its members at once) fits an empty cluster."""
    if len(job.tasks) == 1:
        return bool(fit.filter(empty, job.tasks[0], CycleState()).any())
    st = Statement(empty)
    placed = 0
    for task in job.tasks:
        res = framework.place(empty, task, rng)
        if isinstance(res, Placement):
            st.allocate(task, res)
            placed += 1
    st.discard()
    return placed >= job.gang_size


def _duration(
    task: Task, state: ClusterState, p: Placement, throughput: dict[tuple[str, str], float] | None
) -> float:
    if task.work > 0 and throughput:
        typ = state.types[state.gpu_type[p.node]] if state.gpu_type[p.node] >= 0 else ""
        key = task.labels.get("workload", task.name)
        rate = throughput.get((key, typ), 0.0)
        if rate > 0:
            return task.work / rate
    return max(0.0, task.duration_s)
