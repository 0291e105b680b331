"""Leases as capacity the scheduler honours.

A leased unit belongs to its buyer's order for the lease's window: nobody else's
job is placed on it, and the order's jobs (spec ``order: N``) are placed only on
the units of its active leases. So the loop blocks every unfinished lease's
units, with their share of the node's CPU and memory, in the cluster it
schedules everyone else on, and schedules each order's jobs in a small cluster
of just its units, mapped back to the real nodes and device indexes.

A device lease carries the node's cores and memory in proportion (a quarter of
the devices, a quarter of the cores), as a cloud instance slice does; a CPU
lease (type ``cpu``) is cores, with memory in proportion.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from suanli.cluster.state import ClusterState, NodeSpec, Site
from suanli.market.book import CPU
from suanli.run.executor import NODE_LABEL, NodeInfo
from suanli.sched.framework import Placement
from suanli.store.models import LeaseRow


@dataclass
class OrderCapacity:
    order: int
    accelerator: str
    region: str
    #: units of active leases (new jobs may start there), by node
    units: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: units of active and closing leases (nobody else may use them), by node
    blocked: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    states: list[str] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return any(self.units.values())


def load(s: Session) -> dict[int, OrderCapacity]:
    """The capacity of every order with an unfinished lease."""
    out: dict[int, OrderCapacity] = {}
    for lease in s.scalars(select(LeaseRow).where(LeaseRow.state != "ended")):
        cap = out.setdefault(
            lease.order_id, OrderCapacity(lease.order_id, lease.accelerator, lease.region)
        )
        cap.states.append(lease.state)
        for u in lease.units:
            node, idx = str(u["node"]), int(str(u["index"]))
            cap.blocked[node].append(idx)
            if lease.state == "active":
                cap.units[node].append(idx)
    return out


def share(info: NodeInfo, accelerator: str, n: int) -> tuple[int, int]:
    """CPU-milli and memory MiB that go with ``n`` units of a node."""
    if accelerator == CPU:
        return n * 1000, info.memory_mib * n // max(1, info.cpu_cores)
    total = max(1, len(info.devices))
    return info.cpu_cores * 1000 * n // total, info.memory_mib * n // total


def block(
    state: ClusterState, index: dict[str, int], nodes: list[NodeInfo], caps: list[OrderCapacity]
) -> None:
    """Take every leased unit (and its share of the node) out of ``state``."""
    for cap in caps:
        for node, idxs in cap.blocked.items():
            i = index.get(node)
            if i is None:
                continue  # the node left: nothing to block
            cpu, mem = share(nodes[i], cap.accelerator, len(idxs))
            cpu = min(cpu, int(state.cpu_free[i]))
            mem = min(mem, int(state.mem_free[i]))
            gpus = []
            if cap.accelerator != CPU:  # what is free of each (an unhealthy one is held)
                gpus = [(d, int(state.gpu_free[i, d])) for d in idxs if d < state.max_gpus]
                gpus = [(d, m) for d, m in gpus if m]
            state.allocate(i, cpu, mem, gpus)


@dataclass
class LeaseCluster:
    """One order's units as a cluster of their own, and the way back to the real one."""

    state: ClusterState
    real_node: list[int]  # local node -> index among the loop's nodes
    real_device: list[list[int]]  # local node -> local device -> real device index

    def to_real(self, p: Placement) -> Placement:
        devs = self.real_device[p.node]
        return Placement(self.real_node[p.node], tuple((devs[d], m) for d, m in p.gpus))

    def to_local(self, node: int, devices: tuple[int, ...]) -> tuple[int, list[int]] | None:
        """A real member's node and devices in this cluster (None: not on these units)."""
        if node not in self.real_node:
            return None
        local = self.real_node.index(node)
        devs = self.real_device[local]
        if any(d not in devs for d in devices):
            return None
        return local, [devs.index(d) for d in devices]


def lease_cluster(
    cap: OrderCapacity,
    index: dict[str, int],
    nodes: list[NodeInfo],
    sites: dict[str, Site],
) -> LeaseCluster | None:
    specs, real_node, real_device = [], [], []
    used_sites: dict[str, Site] = {}
    for node, idxs in sorted(cap.units.items()):
        i = index.get(node)
        if i is None or not idxs:
            continue
        info = nodes[i]
        cpu, mem = share(info, cap.accelerator, len(idxs))
        site = sites.get(node) or Site("default", cap.region)
        used_sites[site.name] = site
        devices = [] if cap.accelerator == CPU else sorted(idxs)
        specs.append(
            NodeSpec(
                node,
                cpu,
                mem,
                len(devices),
                cap.accelerator if devices else "",
                site=site.name,
                labels={**info.labels, NODE_LABEL: node},
            )
        )
        real_node.append(i)
        real_device.append(devices)
    if not specs:
        return None
    return LeaseCluster(ClusterState(specs, list(used_sites.values())), real_node, real_device)
