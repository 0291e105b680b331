"""Filters: does the task fit on the node at all?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from suanli.cluster.state import NO_REPLICAS_LABEL, SHARES_LABEL, ClusterState
from suanli.cluster.task import MILLI, Task
from suanli.sched.framework import CycleState


@dataclass
class ResourceFit:
    """CPU, memory and devices: enough whole free devices, or one device with the share free.

    Also the device constraints of the request: allowed types (``gpu_spec``),
    vendor and minimum device memory (resolved against the catalog by type name).
    """

    name: str = "resource-fit"
    type_vendor: dict[str, str] | None = None
    type_memory_gb: dict[str, float] | None = None

    def filter(self, state: ClusterState, task: Task, cycle: CycleState) -> np.ndarray:
        ok = (state.cpu_free >= task.cpu_milli) & (state.mem_free >= task.memory_mib)
        if task.num_gpu == 0:
            return ok
        if task.shares_gpu:
            fits = state.gpu_free >= task.gpu_milli
            if task.gpu_mem_mib:
                fits &= (state.gpu_mem_cap == 0) | (state.gpu_mem_free >= task.gpu_mem_mib)
            ok &= fits.any(axis=1)
        else:
            ok &= state.full_free >= task.num_gpu
        if task.gpu_spec:
            ok &= state.type_mask(task.gpu_spec)
        if task.vendor and self.type_vendor:
            allowed = frozenset(t for t, v in self.type_vendor.items() if v == task.vendor)
            ok &= state.type_mask(allowed) if allowed else False
        if task.min_gpu_memory_gb and self.type_memory_gb:
            allowed = frozenset(
                t for t, m in self.type_memory_gb.items() if m >= task.min_gpu_memory_gb
            )
            ok &= state.type_mask(allowed) if allowed else False
        return ok


@dataclass
class RegionConstraint:
    """Data that must not leave its region: only nodes whose site is in ``task.regions``."""

    name: str = "region"

    def filter(self, state: ClusterState, task: Task, cycle: CycleState) -> np.ndarray:
        if not task.regions:
            return np.ones(state.num_nodes, dtype=bool)
        ok_sites = [i for i, s in enumerate(state.sites) if s.region in task.regions]
        return np.isin(state.site, ok_sites)


@dataclass
class NodeSelector:
    """Kubernetes' ``nodeSelector``: only nodes carrying every label the task asks for."""

    name: str = "node-selector"

    def filter(self, state: ClusterState, task: Task, cycle: CycleState) -> np.ndarray:
        want = task.node_selector
        special = task.kind == "serve" or 0 < task.gpu_milli < MILLI
        if not want and not special:
            return np.ones(state.num_nodes, dtype=bool)
        return np.array(
            [label_refusal(task, spec.labels) is None for spec in state.specs], dtype=bool
        )


def label_refusal(task: Task, labels: dict[str, str]) -> str | None:
    """Why a node with ``labels`` may not take ``task`` (None: it may). It must carry
    every label the task's selector asks for; a service replica needs a node where the
    router can reach it, a share of a device a node whose devices can be shared. The
    filter and `suanli.sched.explain` both ask here, so they cannot disagree."""
    if task.kind == "serve" and labels.get(NO_REPLICAS_LABEL) == "true":
        return "cannot be reached by the router (a Kubernetes pod listens on its own network)"
    if 0 < task.gpu_milli < MILLI and labels.get(SHARES_LABEL) == "none":
        return "cannot share a device (a Kubernetes node without HAMi)"
    if any(labels.get(k) != v for k, v in task.node_selector.items()):
        return "do not match the node selector"
    return None


def _share_fits(state: ClusterState, task: Task, node: int) -> np.ndarray:
    """Devices of ``node`` with room for the share: milli, and memory where it is tracked."""
    fits = state.gpu_free[node] >= task.gpu_milli
    if task.gpu_mem_mib:
        fits &= (state.gpu_mem_cap[node] == 0) | (state.gpu_mem_free[node] >= task.gpu_mem_mib)
    return fits


@dataclass
class BestFitGpu:
    """Device picker: a share goes to the fullest device it fits on (keeps whole devices free);
    whole devices are taken lowest index first."""

    name: str = "best-fit-gpu"

    def pick(
        self,
        state: ClusterState,
        task: Task,
        node: int,
        cycle: CycleState,
        rng: np.random.Generator,
    ) -> tuple[tuple[int, int], ...]:
        if task.num_gpu == 0:
            return ()
        free = state.gpu_free[node]
        if task.shares_gpu:
            fits = np.flatnonzero(_share_fits(state, task, node))
            g = int(fits[np.argmin(free[fits])])  # argmin: lowest index among equals
            return ((g, task.gpu_milli),)
        whole = np.flatnonzero(free == MILLI)[: task.num_gpu]
        return tuple((int(g), MILLI) for g in whole)


@dataclass
class RandomGpu:
    """Device picker: a share goes to a random device it fits on; whole devices lowest first."""

    name: str = "random-gpu"

    def pick(
        self,
        state: ClusterState,
        task: Task,
        node: int,
        cycle: CycleState,
        rng: np.random.Generator,
    ) -> tuple[tuple[int, int], ...]:
        if task.shares_gpu:
            fits = np.flatnonzero(_share_fits(state, task, node))
            return ((int(rng.choice(fits)), task.gpu_milli),)
        return BestFitGpu().pick(state, task, node, cycle, rng)
