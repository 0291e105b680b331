"""Time-driven replay: arrivals, placements, departures, a pending queue.

The same `Framework` as the live scheduler places each task; only the clock
and the executor are simulated. Events are processed in time order; after
each event the pending queue is tried in order (priority, then arrival; a
task's priority grows with its wait — aging — so nothing starves), each task
once per cycle, so a large task at the head does not block smaller ones
behind it (backfill). A task's run time is its trace duration, or — when it
carries ``work`` and the run has a throughput table — its work divided by its
throughput on the chip it landed on, which is how a chip-aware policy pays off.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from suanli.cluster.state import ClusterState, NodeSpec
from suanli.cluster.task import Task
from suanli.sched.framework import Framework, Placement

AGING_PER_HOUR = 1.0  # priority points a waiting task gains per hour


@dataclass
class ReplayResult:
    policy: str
    seed: int
    jct_s: list[float]
    wait_s: list[float]
    makespan_s: float
    utilization: dict[str, float]  # time-averaged allocated share of each device type
    unplaceable: int  # tasks that do not fit even an empty cluster
    decisions: int
    wall_s: float
    gpu_seconds_by_type: dict[str, float] = field(default_factory=dict)
    gpu_seconds_by_site_type: dict[tuple[str, str], float] = field(default_factory=dict)

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
            "decisions": self.decisions,
            "wall_s": self.wall_s,
            "decisions_per_s": self.decisions / self.wall_s if self.wall_s else math.nan,
        }


def run_replay(
    nodes: list[NodeSpec],
    tasks: list[Task],
    framework: Framework,
    policy: str,
    seed: int = 0,
    *,
    throughput: dict[tuple[str, str], float] | None = None,
    max_tries_per_cycle: int = 256,
) -> ReplayResult:
    """Replay ``tasks`` (by ``arrival_s``) on ``nodes``; see the module docstring."""
    state = ClusterState(nodes)
    empty = ClusterState(nodes)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    order = sorted(range(len(tasks)), key=lambda i: (tasks[i].arrival_s, i))
    events: list[tuple[float, int, int]] = []  # (time, kind 0=departure 1=arrival, task)
    for i in order:
        heapq.heappush(events, (tasks[i].arrival_s, 1, i))
    pending: list[int] = []
    running: dict[int, Placement] = {}
    start: dict[int, float] = {}
    jct: list[float] = []
    wait: list[float] = []
    decisions = unplaceable = 0
    busy = np.zeros(len(state.types))  # device-seconds allocated, per type
    gpu_sec: dict[str, float] = {}
    site_sec: dict[tuple[str, str], float] = {}
    last_t = 0.0
    per_type_cap = np.array(
        [float(state.gpu_cap[state.gpu_type == k].sum()) for k in range(len(state.types))]
    )
    first_t = tasks[order[0]].arrival_s if tasks else 0.0

    def used_by_type() -> np.ndarray:
        used = state.gpu_cap - state.gpu_free
        return np.array([float(used[state.gpu_type == k].sum()) for k in range(len(state.types))])

    used_now = used_by_type()
    while events:
        t, kind, i = heapq.heappop(events)
        busy += used_now * (t - last_t)
        last_t = t
        if kind == 0:
            p = running.pop(i)
            framework.unbind(state, tasks[i], p)
            jct.append(t - tasks[i].arrival_s)
        else:
            if isinstance(framework.place(empty, tasks[i], rng), Placement):
                pending.append(i)
            else:
                unplaceable += 1
        # one scheduling cycle over the pending queue (aging priority, then arrival)
        pending.sort(
            key=lambda j: (
                -(tasks[j].priority + AGING_PER_HOUR * (t - tasks[j].arrival_s) / 3600),
                tasks[j].arrival_s,
                j,
            )
        )
        still: list[int] = []
        for n, j in enumerate(pending):
            if n >= max_tries_per_cycle:
                still.extend(pending[n:])
                break
            decisions += 1
            res = framework.place(state, tasks[j], rng)
            if not isinstance(res, Placement):
                still.append(j)
                continue
            framework.bind(state, tasks[j], res)
            running[j] = res
            start[j] = t
            wait.append(t - tasks[j].arrival_s)
            dur = _duration(tasks[j], state, res, throughput)
            gtype = state.types[state.gpu_type[res.node]] if state.gpu_type[res.node] >= 0 else ""
            dev_s = dur * tasks[j].gpu_request_milli / 1000
            gpu_sec[gtype] = gpu_sec.get(gtype, 0.0) + dev_s
            key = (state.sites[state.site[res.node]].name, gtype)
            site_sec[key] = site_sec.get(key, 0.0) + dev_s
            heapq.heappush(events, (t + dur, 0, j))
        pending = still
        used_now = used_by_type()
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
    )


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
