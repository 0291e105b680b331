"""Choosing among sites: what a unit of work costs there, and how far the job's data is.

Sites differ in what they charge and where they are. These plugins score (and
one filters) nodes by their site, so that site choice is the one scheduler's
business, the same code live and in the simulator:

* ``power-cost``: dollars per unit of the task's work — the node's price per
  device-hour where it has one (``usd_per_gpu_hour`` label: a cloud's or a
  market's rate), else the site's electricity (price x PUE x chip power) —
  divided by the chip's throughput for the task;
* ``data-locality``: seconds to move the task's data from its region to the
  node's over the WAN table (`suanli.cluster.wan`); none within a region;
* ``site-cost``: the dollars the task will cost on each node, moving its data
  included — (run time on that chip + time to move the data) x the node's rate
  — one figure in one unit, so a long job with little data goes where work is
  cheap and a short job with much data stays by it;
* ``data-region`` (a filter): only the sites in the region of the task's data
  ("nearest site only", the baseline that never moves bytes);
* ``site-wait`` (a filter): the queueing delay. A task may wait for a busy site rather
  than start now on another: it is held when the best site, counting how long the task
  would queue there, costs less than the best node free now. A delay before the start is
  priced as ``site-cost`` prices a data transfer — time at the rate of the devices it
  will run on — so waiting wins when it is cheaper work or an earlier start than moving
  the data. The wait is read from when the running jobs end (``Job.ends_by_s``: the
  simulator knows it, live it is their start plus ``max_runtime_s``, an upper bound);
  a device whose job gives no end is busy for good.

Carbon per unit of work is ``energy-aware`` (`plugins_score`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from suanli.cluster.state import ClusterState
from suanli.cluster.task import Task
from suanli.cluster.wan import Wan
from suanli.sched.framework import WHY, CycleState
from suanli.sched.plugins_fit import RegionConstraint, ResourceFit
from suanli.sched.plugins_score import per_work, speed_on

PRICE_LABEL = "usd_per_gpu_hour"


#: a live job says nothing of how long it runs: its cost is ranked over this much work
HORIZON_S = 3600.0
#: a running job this long past its end is not ending (its site does not carry out the
#: stop): when its devices free is unknown
LATE_S = 60.0


def usd_per_device_hour(
    state: ClusterState, task: Task, nodes: np.ndarray, power_w: dict[str, float]
) -> np.ndarray:
    """Each node's rate: its price label where it has one, else its site's electricity
    for its chip (price x PUE x watts)."""
    usd_per_kwh = np.array([s.usd_per_kwh for s in state.sites])
    power = per_work(state, task, nodes, usd_per_kwh, power_w, {}) / 1000.0  # W -> kW
    labels = [state.specs[n].labels.get(PRICE_LABEL) for n in nodes]
    return np.array([power[i] if p is None else float(p) for i, p in enumerate(labels)])


def move_s(state: ClusterState, task: Task, nodes: np.ndarray, wan: Wan) -> np.ndarray:
    """Seconds for the task's data to reach each node's region (one figure per site)."""
    if task.data_gb <= 0 or not task.data_region:
        return np.zeros(nodes.size)
    per_site = np.array(
        [wan.transfer_s(task.data_gb, task.data_region, s.region) for s in state.sites]
    )
    return per_site[state.site[nodes]]


@dataclass
class PowerCost:
    """Dollars per unit of the task's work (rate / throughput), wherever its data is."""

    name: str = "power-cost"
    power_w: dict[str, float] = field(default_factory=dict)
    throughput: dict[tuple[str, str], float] = field(default_factory=dict)

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        rate = usd_per_device_hour(state, task, nodes, self.power_w)
        return -rate / speed_on(state, task, nodes, self.throughput)


@dataclass
class SiteCost:
    """The task's dollars on each node, the time its data takes to arrive included (the
    devices are held while it does)."""

    name: str = "site-cost"
    power_w: dict[str, float] = field(default_factory=dict)
    throughput: dict[tuple[str, str], float] = field(default_factory=dict)
    wan: Wan = field(default_factory=Wan)

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        return -task_usd(state, task, nodes, self.power_w, self.throughput, self.wan)


def task_usd(
    state: ClusterState,
    task: Task,
    nodes: np.ndarray,
    power_w: dict[str, float],
    throughput: dict[tuple[str, str], float],
    wan: Wan,
    delay_s: np.ndarray | float = 0.0,
) -> np.ndarray:
    """The task's dollars on each node: (delay before it starts + time for its data to
    arrive + its run time there) x the node's rate."""
    rate = usd_per_device_hour(state, task, nodes, power_w)
    if task.work > 0:
        run_s = task.work / speed_on(state, task, nodes, throughput)
    else:
        run_s = np.full(nodes.size, task.duration_s or HORIZON_S)
    return (delay_s + run_s + move_s(state, task, nodes, wan)) / 3600.0 * rate


@dataclass
class SiteWait:
    """Hold a task for a busy site when queueing there costs less than starting now
    elsewhere (module docstring). A share of a device is counted free when the whole
    device is (an upper bound on its wait); a gang's members never wait (they are
    placed one by one within one site, and a held member would only roll the gang
    back)."""

    name: str = "site-wait"
    power_w: dict[str, float] = field(default_factory=dict)
    throughput: dict[tuple[str, str], float] = field(default_factory=dict)
    wan: Wan = field(default_factory=Wan)
    #: the policy's other filters (`policies.build` sets them): a site is waited for only
    #: where they let the task run (its region, node selector, the data's region)
    others: Sequence[Any] = ()
    #: waiting must save more than this share: the estimates are not finer than that
    margin: float = 0.05
    _now_s: float = 0.0
    _ends: np.ndarray | None = None  # [node, k]: busy devices' expected ends, ascending
    _gang: set[str] = field(default_factory=set)  # names of the tasks of gangs
    _specs: Sequence[Any] | None = None  # the cluster `begin` saw (its copies share it)
    _empty: ClusterState | None = None

    def begin(
        self, state: ClusterState, pending: Sequence[Any], running: dict[str, Any], now_s: float
    ) -> None:
        self._now_s = now_s
        self._gang = {t.name for job in pending if len(job.tasks) > 1 for t in job.tasks}
        self._specs = state.specs
        end = np.full(state.gpu_free.shape, -math.inf)
        for job, binds in running.values():
            # no end said, or one long past (a stop the site has not carried out: it is
            # away): the devices free at some unknown time, never as far as waiting goes;
            # an end just past is a stop being carried out (the next tick's kill)
            late = job.ends_by_s is None or job.ends_by_s < now_s - LATE_S
            ends_by = math.inf if late else job.ends_by_s
            for _, p in binds:
                for d, _milli in p.gpus:
                    end[p.node, d] = max(end[p.node, d], ends_by)
        busy = state.gpu_free < state.gpu_cap
        # a free device is counted as free (full_free); a busy one no running job
        # accounts for (a market's blocked units) frees never
        end = np.where(busy & (end > -math.inf), end, math.inf)
        self._ends = np.sort(end, axis=1)
        if self._empty is None or self._empty.specs != state.specs:
            self._empty = ClusterState(state.specs, state.sites)

    def filter(self, state: ClusterState, task: Task, cycle: CycleState) -> np.ndarray:
        everywhere = np.ones(state.num_nodes, dtype=bool)
        if (
            self._ends is None
            or self._empty is None
            or state.specs is not self._specs  # another cluster (an empty one, a lease's)
            or task.num_gpu == 0
            or task.min_available > 1
            or task.name in self._gang
        ):
            return everywhere
        others = self.others or (ResourceFit(), RegionConstraint())
        ever = np.ones(state.num_nodes, dtype=bool)
        now_all = np.ones(state.num_nodes, dtype=bool)
        for f in others:
            ever &= f.filter(self._empty, task, cycle)
            now_all &= f.filter(state, task, cycle)
        nodes = np.flatnonzero(ever)
        now = now_all[nodes]
        if nodes.size == 0 or not now.any() or now.all():
            return everywhere  # it waits anyway, or nothing is busy that it could wait for
        delay = self._delay_s(state, task, nodes, now)
        usd = task_usd(state, task, nodes, self.power_w, self.throughput, self.wan, delay)
        best_now = float(usd[now].min())
        later = np.flatnonzero(~now & np.isfinite(delay))
        if later.size == 0:
            return everywhere
        best = later[np.argmin(usd[later])]
        if usd[best] >= best_now * (1 - self.margin):
            return everywhere
        site = state.sites[state.site[nodes[best]]]
        cycle[WHY] = (
            f"waiting for site {site.name} ({site.region}), where a node frees in about "
            f"{delay[best]:.0f} s: ${usd[best]:.2f} there against ${best_now:.2f} to start "
            "now elsewhere (the data's transfer and the wait counted at the devices' rate)"
        )
        return np.zeros(state.num_nodes, dtype=bool)

    def _delay_s(
        self, state: ClusterState, task: Task, nodes: np.ndarray, now: np.ndarray
    ) -> np.ndarray:
        """Seconds until each node has the task's devices free: when the running job
        whose end frees the last device it needs ends (inf: never known to)."""
        assert self._ends is not None
        if task.shares_gpu:  # a device to itself frees when all its tenants end (a bound)
            need = np.where(state.full_free[nodes] > 0, 0, 1)
        else:
            need = task.num_gpu - state.full_free[nodes]  # devices still to free
        k = np.clip(need - 1, 0, self._ends.shape[1] - 1)
        at = self._ends[nodes, k]
        delay = np.where(need > self._ends.shape[1], math.inf, at - self._now_s)
        # the devices are free but CPU or memory is not: when it frees is not tracked
        delay = np.where(need <= 0, math.inf, np.maximum(delay, 0.0))
        return np.where(now, 0.0, delay)


@dataclass
class DataLocality:
    name: str = "data-locality"
    wan: Wan = field(default_factory=Wan)

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        return -move_s(state, task, nodes, self.wan)


@dataclass
class DataRegion:
    name: str = "data-region"

    def filter(self, state: ClusterState, task: Task, cycle: CycleState) -> np.ndarray:
        if not task.data_region:
            return np.ones(state.num_nodes, dtype=bool)
        near = [i for i, s in enumerate(state.sites) if s.region == task.data_region]
        return np.isin(state.site, near)
