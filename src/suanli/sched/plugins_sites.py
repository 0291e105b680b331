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
  ("nearest site only", the baseline that never moves bytes).

Carbon per unit of work is ``energy-aware`` (`plugins_score`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from suanli.cluster.state import ClusterState
from suanli.cluster.task import Task
from suanli.cluster.wan import Wan
from suanli.sched.framework import CycleState
from suanli.sched.plugins_score import per_work, speed_on

PRICE_LABEL = "usd_per_gpu_hour"


#: a live job says nothing of how long it runs: its cost is ranked over this much work
HORIZON_S = 3600.0


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
        rate = usd_per_device_hour(state, task, nodes, self.power_w)
        if task.work > 0:
            run_s = task.work / speed_on(state, task, nodes, self.throughput)
        else:
            run_s = np.full(nodes.size, task.duration_s or HORIZON_S)
        return -(run_s + move_s(state, task, nodes, self.wan)) / 3600.0 * rate


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
