"""Scorers of general use (the trace baselines live in `plugins_openb`).

Each returns a raw score per feasible node, higher is better; the framework
normalises and weights them. Table-driven tests show the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from suanli.cluster.state import ClusterState
from suanli.cluster.task import Task
from suanli.sched.framework import CycleState


def _gpu_used_fraction(state: ClusterState, nodes: np.ndarray) -> np.ndarray:
    cap = np.maximum(state.gpu_count[nodes] * 1000, 1)
    return 1.0 - state.milli_free[nodes] / cap


@dataclass
class BinPack:
    """Prefer fuller nodes (Volcano's binpack): mean used share of CPU, memory and devices
    after placing the task, so whole nodes stay free for big jobs."""

    name: str = "binpack"

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        cpu = 1 - (state.cpu_free[nodes] - task.cpu_milli) / np.maximum(state.cpu_cap[nodes], 1)
        mem = 1 - (state.mem_free[nodes] - task.memory_mib) / np.maximum(state.mem_cap[nodes], 1)
        gpu_cap = np.maximum(state.gpu_count[nodes] * 1000, 1)
        gpu = 1 - (state.milli_free[nodes] - task.gpu_request_milli) / gpu_cap
        has_gpu = state.gpu_count[nodes] > 0
        return np.where(has_gpu, (cpu + mem + gpu) / 3, (cpu + mem) / 2)


@dataclass
class Spread:
    """The opposite of bin-packing: prefer emptier nodes (spread load, limit blast radius)."""

    name: str = "spread"

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        return -BinPack().score(state, task, nodes, cycle)


@dataclass
class Topology:
    """Keep a gang together: prefer the node, then the switch, its members already use."""

    name: str = "topology"
    placed: dict[str, list[int]] = field(default_factory=dict)  # job -> nodes used so far

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        used = self.placed.get(task.job) if task.job else None
        if not used:
            return np.zeros(nodes.size)
        used_nodes = np.array(used)
        same_node = np.isin(nodes, used_nodes)
        same_switch = np.isin(state.switch[nodes], state.switch[used_nodes])
        # score = 2 on a node the gang uses, 1 under the same switch, 0 elsewhere
        return same_node * 1.0 + same_switch * 1.0


@dataclass
class PerfAffinity:
    """Score a node by the task's throughput on its chip (from `perf` or a measured table).

    ``throughput[(job_kind_or_name, gpu_type)]`` in any unit; missing pairs score 0.
    """

    name: str = "perf-affinity"
    throughput: dict[tuple[str, str], float] = field(default_factory=dict)

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        key = task.labels.get("workload", task.job or task.name)
        per_type = np.array([self.throughput.get((key, t), 0.0) for t in state.types] + [0.0])
        return per_type[state.gpu_type[nodes]]


@dataclass
class LoadAware:
    """Prefer nodes whose *measured* utilisation is low (not what was requested)."""

    name: str = "load-aware"
    utilization: dict[int, float] = field(default_factory=dict)  # node -> 0..1

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        return -np.array([self.utilization.get(int(n), 0.0) for n in nodes])


def per_work(
    state: ClusterState,
    task: Task,
    nodes: np.ndarray,
    per_kwh: np.ndarray,
    power_w: dict[str, float],
    throughput: dict[tuple[str, str], float],
) -> np.ndarray:
    """``per_kwh`` (a value per site: grams, dollars) x PUE x chip power / chip throughput:
    what one unit of the task's work costs on each node's site and chip."""
    site_factor = (per_kwh * np.array([s.pue for s in state.sites]))[state.site[nodes]]
    watts = np.array([power_w.get(t, 300.0) for t in state.types] + [150.0])
    return site_factor * watts[state.gpu_type[nodes]] / speed_on(state, task, nodes, throughput)


def speed_on(
    state: ClusterState,
    task: Task,
    nodes: np.ndarray,
    throughput: dict[tuple[str, str], float],
) -> np.ndarray:
    """The task's throughput on each node's chip (1 where the table has none; a CPU node,
    type -1, takes the last entry)."""
    key = task.labels.get("workload", task.job or task.name)
    speed = np.array([throughput.get((key, t), 1.0) for t in state.types] + [1.0])
    return np.maximum(speed[state.gpu_type[nodes]], 1e-9)


@dataclass
class EnergyAware:
    """Prefer low-carbon, efficient sites: grams of CO2 per unit of the task's work.

    score = -(site carbon intensity x PUE x chip power) / chip throughput; the chip
    figures come from the catalog (TDP) and the task's throughput table when given.
    """

    name: str = "energy-aware"
    power_w: dict[str, float] = field(default_factory=dict)  # gpu type -> W
    throughput: dict[tuple[str, str], float] = field(default_factory=dict)

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        grams = np.array([s.carbon_g_per_kwh for s in state.sites])
        return -per_work(state, task, nodes, grams, self.power_w, self.throughput)
