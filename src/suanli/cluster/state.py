"""Free/used state of a cluster, as arrays so that schedulers can score every node at once.

Per node: CPU and memory capacity/free, the accelerator type of its devices,
its site and switch, and per device the free GPU-milli (1000 = a whole free
device). ``full_free`` (devices entirely free) and ``milli_free`` (sum) are
kept up to date incrementally by `allocate`/`release`, the only mutators.
A node's devices are of one type (as in the traces; a server mixes no chips).

Why arrays: a scheduling decision scores thousands of nodes; numpy does that
in microseconds where a loop over node objects takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from suanli.cluster.task import MILLI
from suanli.errors import SuanliError

#: "true" on a node where a service replica cannot be reached at the node's address (a
#: Kubernetes pod listens on its own network, not its node's): the scheduler places no
#: ``kind: serve`` job there
NO_REPLICAS_LABEL = "suanli.io/no-replicas"
#: "none" on a node whose devices cannot be shared (a Kubernetes node without HAMi: a pod
#: asking for a share gets a whole device there): the scheduler places no share there
SHARES_LABEL = "suanli.io/gpu-shares"


class ClusterError(SuanliError, ValueError):
    """A cluster description that cannot be a cluster (empty, negative capacities)."""


@dataclass(frozen=True)
class Site:
    """A place with power: its region, PUE, grid carbon intensity and electricity price."""

    name: str
    region: str = ""
    pue: float = 1.3
    carbon_g_per_kwh: float = 450.0  # world average grid intensity (IEA 2023: ~460 g/kWh)
    usd_per_kwh: float = 0.10


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpu_milli: int
    memory_mib: int
    gpu_count: int = 0
    gpu_type: str = ""
    site: str = "default"
    switch: str = "s0"
    labels: dict[str, str] = field(default_factory=dict)
    #: memory of each device, for memory-sliced sharing (HAMi vGPU, Ascend vNPU); 0 = untracked
    gpu_memory_mib: int = 0


class ClusterState:
    """The cluster's capacity and what is free on it (see module docstring)."""

    def __init__(self, nodes: Sequence[NodeSpec], sites: Sequence[Site] = ()) -> None:
        if not nodes:
            raise ClusterError("a cluster needs at least one node; the node list is empty")
        bad = [n.name for n in nodes if n.gpu_count < 0 or n.cpu_milli < 0 or n.memory_mib < 0]
        if bad:
            raise ClusterError(f"negative capacity on node(s) {', '.join(bad[:5])}")
        self.specs = list(nodes)
        self.names = [n.name for n in nodes]
        self.index = {n: i for i, n in enumerate(self.names)}
        n = len(nodes)
        self.sites = list(sites) or [Site("default")]
        site_ix = {s.name: i for i, s in enumerate(self.sites)}
        for spec in nodes:
            if spec.site not in site_ix:
                site_ix[spec.site] = len(self.sites)
                self.sites.append(Site(spec.site))
        self.types: list[str] = sorted({s.gpu_type for s in nodes if s.gpu_count})
        type_ix = {t: i for i, t in enumerate(self.types)}
        switches = sorted({s.switch for s in nodes})
        sw_ix = {s: i for i, s in enumerate(switches)}
        self.switches = switches
        self.max_gpus = max(1, max(s.gpu_count for s in nodes))
        self.cpu_cap = np.array([s.cpu_milli for s in nodes], dtype=np.int64)
        self.mem_cap = np.array([s.memory_mib for s in nodes], dtype=np.int64)
        self.gpu_count = np.array([s.gpu_count for s in nodes], dtype=np.int64)
        self.gpu_type = np.array(
            [type_ix[s.gpu_type] if s.gpu_count else -1 for s in nodes], dtype=np.int64
        )
        self.site = np.array([site_ix[s.site] for s in nodes], dtype=np.int64)
        self.switch = np.array([sw_ix[s.switch] for s in nodes], dtype=np.int64)
        cols = np.arange(self.max_gpus)
        self.gpu_exists = cols[None, :] < self.gpu_count[:, None]
        self.gpu_cap = np.where(self.gpu_exists, MILLI, 0).astype(np.int64)
        self.cpu_free = self.cpu_cap.copy()
        self.mem_free = self.mem_cap.copy()
        self.gpu_free = self.gpu_cap.copy()
        self.gpu_mem_cap = np.where(
            self.gpu_exists, np.array([s.gpu_memory_mib for s in nodes])[:, None], 0
        ).astype(np.int64)
        self.gpu_mem_free = self.gpu_mem_cap.copy()
        self.full_free = self.gpu_count.copy()
        self.milli_free = self.gpu_cap.sum(axis=1)
        self.version = np.zeros(n, dtype=np.int64)  # bumps on every change to a node
        self.total_gpu_milli = int(self.gpu_cap.sum())

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    def type_mask(self, allowed: frozenset[str]) -> np.ndarray:
        """Nodes whose device type is one of ``allowed`` (all GPU nodes when empty)."""
        if not allowed:
            return self.gpu_count > 0
        ids = [i for i, t in enumerate(self.types) if t in allowed]
        return np.isin(self.gpu_type, ids)

    def _device_mem(self, node: int, g: int, milli: int, gpu_mem: int) -> int:
        """Device memory a grant takes: all of it for a whole device, else what was asked."""
        return int(self.gpu_mem_cap[node, g]) if milli == MILLI else gpu_mem

    def allocate(
        self, node: int, cpu: int, mem: int, gpus: Sequence[tuple[int, int]], gpu_mem: int = 0
    ) -> None:
        """Take ``cpu``, ``mem`` and (device index, milli) shares on ``node``; a share also
        takes ``gpu_mem`` MiB of its device's memory where device memory is tracked."""
        self.cpu_free[node] -= cpu
        self.mem_free[node] -= mem
        for g, milli in gpus:
            if self.gpu_mem_cap[node, g]:
                self.gpu_mem_free[node, g] -= self._device_mem(node, g, milli, gpu_mem)
                if self.gpu_mem_free[node, g] < 0:
                    raise ValueError(f"device memory over-allocated on {self.names[node]} {g}")
            before = self.gpu_free[node, g]
            after = before - milli
            if after < 0 or self.cpu_free[node] < 0 or self.mem_free[node] < 0:
                raise ValueError(f"over-allocation on {self.names[node]} device {g}")
            self.gpu_free[node, g] = after
            self.milli_free[node] -= milli
            if before == MILLI:
                self.full_free[node] -= 1
        self.version[node] += 1

    def release(
        self, node: int, cpu: int, mem: int, gpus: Sequence[tuple[int, int]], gpu_mem: int = 0
    ) -> None:
        """Give back what `allocate` took."""
        self.cpu_free[node] += cpu
        self.mem_free[node] += mem
        for g, milli in gpus:
            if self.gpu_mem_cap[node, g]:
                self.gpu_mem_free[node, g] += self._device_mem(node, g, milli, gpu_mem)
            after = self.gpu_free[node, g] + milli
            if after > MILLI:
                raise ValueError(f"over-release on {self.names[node]} device {g}")
            self.gpu_free[node, g] = after
            self.milli_free[node] += milli
            if after == MILLI:
                self.full_free[node] += 1
        self.version[node] += 1

    def allocated_gpu_milli(self) -> int:
        return self.total_gpu_milli - int(self.milli_free.sum())

    def copy(self) -> ClusterState:
        """An independent copy of the free state (capacity arrays are shared, read-only)."""
        new = object.__new__(ClusterState)
        new.__dict__.update(self.__dict__)
        for name in (
            "cpu_free",
            "mem_free",
            "gpu_free",
            "gpu_mem_free",
            "full_free",
            "milli_free",
            "version",
        ):
            setattr(new, name, getattr(self, name).copy())
        return new
