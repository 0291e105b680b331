"""The hardware a workload runs on: chips, how they are wired, what power costs.

A `System` is resolved once from the catalog (chip + link + NIC + topology) so
that the hot estimate functions read plain floats.
"""

from __future__ import annotations

from dataclasses import dataclass

from suanli.catalog.loader import get_topology, interconnects
from suanli.catalog.types import Accelerator
from suanli.errors import InvalidLayoutError
from suanli.units import GBPS_TO_BYTES_PER_S, US

#: Per-hop latency of a collective step between nodes when the NIC's own entry
#: does not say: NCCL over InfiniBand/RoCE is typically ~5 us per ring step.
DEFAULT_NIC_LATENCY_US = 5.0


@dataclass(frozen=True, slots=True)
class System:
    """Plain-float view of a chip in a cluster. Bandwidths are bytes/s per direction."""

    accelerator: Accelerator
    devices_per_node: int
    intra_bw: float  # device-to-device inside a node, per direction
    intra_latency_s: float
    inter_bw: float  # this device's share of the scale-out network, per direction
    inter_latency_s: float
    oversubscription: float  # divides inter_bw for traffic that leaves a leaf switch
    nodes_per_leaf: int
    hops: int
    in_network_reduction: bool
    pue: float
    usd_per_kwh: float
    price_usd_per_hour: float | None


def make_system(
    acc: Accelerator,
    *,
    devices_per_node: int | None = None,
    inter_node_gbps: float | None = None,
    topology: str = "fat-tree-2tier",
    in_network_reduction: bool = False,
    pue: float = 1.3,
    usd_per_kwh: float = 0.10,
    price_usd_per_hour: float | None = None,
) -> System:
    """Resolve a chip's catalog defaults, overridden where the caller knows better.

    ``inter_node_gbps`` is the scale-out bandwidth per device in Gb/s (a DGX H100
    has 400). PUE 1.3 and 0.10 USD/kWh are typical of a modern data center
    (Uptime Institute 2023 survey average PUE 1.58; hyperscale ~1.1-1.2).
    """
    dpn = devices_per_node if devices_per_node is not None else acc.devices_per_node
    if dpn < 1:
        raise InvalidLayoutError(f"--devices-per-node must be >= 1, got {dpn}")
    if pue < 1.0:
        raise InvalidLayoutError(f"--pue must be >= 1 (total facility power / IT power), got {pue}")
    if price_usd_per_hour is not None and price_usd_per_hour < 0:
        raise InvalidLayoutError(f"--price-usd-per-hour must be >= 0, got {price_usd_per_hour}")
    gbps = inter_node_gbps if inter_node_gbps is not None else acc.nic_gbps
    if gbps <= 0:
        raise InvalidLayoutError(f"--inter-node-gbps must be > 0, got {gbps}")
    links = interconnects()
    link = links.get(acc.intra_node_link)
    intra_latency_us = link.latency_us if link is not None else 2.0
    topo = get_topology(topology)
    return System(
        accelerator=acc,
        devices_per_node=dpn,
        intra_bw=acc.intra_node_link_gbs / 2 * 1e9,
        intra_latency_s=intra_latency_us * US,
        inter_bw=gbps * GBPS_TO_BYTES_PER_S,
        inter_latency_s=DEFAULT_NIC_LATENCY_US * US * max(1, topo.hops) / 3,
        oversubscription=topo.oversubscription,
        nodes_per_leaf=topo.nodes_per_leaf,
        hops=topo.hops,
        in_network_reduction=in_network_reduction,
        pue=pue,
        usd_per_kwh=usd_per_kwh,
        price_usd_per_hour=(
            price_usd_per_hour if price_usd_per_hour is not None else acc.price_usd_per_hour
        ),
    )
