"""Spot replicas for a service: how many the spot order's leases hold, how the desired
count splits between spot and on demand, and what a spot replica costs.

SkyServe's spot policy (Mao et al., "SkyServe: Serving AI Models across Regions and
Clouds with Spot Instances", EuroSys 2025; its ``base_ondemand_fallback_replicas`` and
``dynamic_ondemand_fallback``) on suanli's own market: the spot capacity is what the
service owner's spot order leased, and a reclaim arrives as the lease's notice (the
market controller marks the replica's job with ``preempt_reason``; the jobs controller
sends SIGTERM and gives the notice as grace). A replica under that notice no longer
counts as live, so its on-demand replacement is submitted at the same tick.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from suanli.autoscale.mix import SPOT_SUFFIX, ReplicaKind
from suanli.autoscale.service_spec import SpotSpec
from suanli.jobs.spec import Resources
from suanli.market.book import CPU, units_of
from suanli.market.controller import jobs_by_order
from suanli.store.models import JobRow, LeaseRow, OrderRow


def is_spot(job: JobRow, spot: SpotSpec | None) -> bool:
    return spot is not None and (job.spec or {}).get("order") == spot.order


def leaving(job: JobRow) -> bool:
    """Asked to stop (scaled down, reclaimed with notice, or preempted): it serves out
    its grace but is no longer counted, so its replacement starts now."""
    return bool(job.cancel_requested or job.preempt_reason or job.stop_reason)


def units_per_replica(resources: Resources, accelerator: str) -> int:
    """Units of a lease one replica takes: devices, or whole cores on a CPU lease."""
    if accelerator == CPU:
        return max(1, math.ceil(resources.cpu))
    return max(1, resources.devices)


def live_leases(s: Session, order_id: int) -> list[LeaseRow]:
    """The order's leases that are neither ended nor under a reclaim notice."""
    q = select(LeaseRow).where(LeaseRow.order_id == order_id, LeaseRow.state == "active")
    return list(s.scalars(q))


def spot_slots(
    leases: list[LeaseRow], resources: Resources, others: list[JobRow] | None = None
) -> int:
    """How many replicas the leases hold, node by node (a replica never spans nodes),
    less what ``others`` (the owner's other running jobs on the same order) hold there.

    A node's units are pooled over the order's leases before ``others`` are taken away:
    a job on the order may use any of them, and two leases on one node must not each
    lose what the job holds (that counted its devices twice)."""
    used: Counter[str] = Counter()
    for job in others or []:
        res = (job.spec or {}).get("resources") or {}
        for m in job.members or []:
            devices = m.get("devices")
            devices = devices if isinstance(devices, list) else []
            cores = math.ceil(float(res.get("cpu", 1.0))) if isinstance(res, dict) else 1
            used[str(m.get("node"))] += len(devices) if devices else cores
    if not leases:
        return 0
    # one order, one accelerator: every lease of it takes the same units per replica
    need = units_per_replica(resources, leases[0].accelerator)
    per_node = Counter(u.node for lease in leases for u in set(units_of(lease)))
    return sum(max(0, n - used[node]) // need for node, n in per_node.items())


def order_jobs_elsewhere(s: Session, order_id: int, service: str) -> list[JobRow]:
    """The owner's running jobs on the order that are not this service's replicas."""
    return [j for j in jobs_by_order(s).get(order_id, []) if j.service != service]


@dataclass(frozen=True, slots=True)
class Split:
    spot: int
    on_demand: int


def split(desired: int, spot: SpotSpec, slots: int) -> Split:
    """Spot replicas where the order's leases hold them, the rest on demand (with
    ``fallback``) or waiting for spot (without); ``base_ondemand`` always on demand."""
    base = min(spot.base_ondemand, desired)
    want_spot = desired - base
    on_spot = min(want_spot, slots) if spot.fallback else want_spot
    return Split(on_spot, desired - on_spot)


def spot_price_per_replica(leases: list[LeaseRow], resources: Resources) -> float | None:
    """What a replica on the order's leases may cost per hour: the dearest live lease's
    price for its units (None: no lease)."""
    return max((replica_usd(lease, resources) for lease in leases), default=None)


def replica_usd(lease: LeaseRow, resources: Resources) -> float:
    """One replica's hourly price on a lease: its price per unit-hour times the units the
    replica takes."""
    return lease.price_micro * units_per_replica(resources, lease.accelerator) / 1e6


def lease_price_per_hour(s: Session, job: JobRow, resources: Resources) -> float | None:
    """What a spot replica costs per hour: its lease's price per unit-hour times the units
    it takes (None: no lease of its order holds the nodes it runs on)."""
    order_id = (job.spec or {}).get("order")
    if not isinstance(order_id, int):
        return None
    nodes = {str(m.get("node")) for m in job.members or []}
    q = select(LeaseRow).where(LeaseRow.order_id == order_id, LeaseRow.state != "ended")
    for lease in s.scalars(q):
        if nodes & {u.node for u in units_of(lease)}:
            return replica_usd(lease, resources)
    return None


def order_problem(s: Session, spot: SpotSpec, resources: Resources, owner: str) -> str | None:
    """Why the spot order cannot carry this service's replicas (None: it can)."""
    order = s.get(OrderRow, spot.order)
    if order is None or order.buyer != owner:
        return f"spot.order: no market order {spot.order} of yours (see `suanli market orders`)"
    if order.mode != "spot":
        return (
            f"spot.order: market order {spot.order} is {order.mode}, not spot: place one "
            "with `suanli market order --mode spot`"
        )
    if order.state not in ("open", "filled"):
        return f"spot.order: market order {spot.order} is {order.state}: place a new one"
    if order.accelerator == CPU:
        if resources.accelerator != CPU:
            return (
                f"spot.order: market order {spot.order} buys cores: give the replicas "
                "resources.accelerator: cpu"
            )
        return None
    chips = resources.accelerators or ([resources.accelerator] if resources.accelerator else [])
    if chips and order.accelerator not in chips:
        return (
            f"spot.order: market order {spot.order} buys {order.accelerator}, which the "
            f"replicas' resources do not allow ({', '.join(chips)})"
        )
    return None


@dataclass(frozen=True, slots=True)
class SpotCapacity:
    """A service's spot order as one controller tick sees it, read from the store once:
    what is wrong with it, its chip (when the order is the owner's), how many of the
    service's replicas its live leases hold, and what one costs there."""

    spot: SpotSpec
    problem: str | None
    chip: str | None
    slots: int
    usd_per_replica: float | None

    def note(self, chips: Collection[str] | None = None) -> str:
        """What the service's status says of the order: an order cancelled or lapsed
        since the spec was accepted leases nothing again; ``chips``: the chips a mix can
        run, an order of another chip is not used."""
        if self.problem:
            return self.problem + (
                "; its spot replicas run on demand (fallback)"
                if self.spot.fallback
                else "; its spot replicas cannot start (no fallback)"
            )
        if chips is not None and self.chip is not None and self.chip not in chips:
            return (
                f"spot.order: market order {self.spot.order} buys {self.chip}, which "
                "cannot hold the model: its leases are not used"
            )
        return ""

    def twin(self, kinds: Sequence[ReplicaKind]) -> ReplicaKind | None:
        """The order's chip on its live leases as a kind for the chip-mix ILP: the chip's
        capacity, the dearest lease's price, as many replicas as the leases hold (None:
        an order that cannot carry the service, no lease, or a chip the mix cannot run)."""
        kind = next((k for k in kinds if k.name == self.chip), None)
        if self.problem or kind is None or self.usd_per_replica is None or self.slots <= 0:
            return None
        return replace(
            kind,
            name=kind.name + SPOT_SUFFIX,
            usd_per_hour=self.usd_per_replica,
            available=self.slots,
            spot=True,
        )


def spot_capacity(
    s: Session, spot: SpotSpec, resources: Resources, owner: str, service: str
) -> SpotCapacity:
    order = s.get(OrderRow, spot.order)
    leases = live_leases(s, spot.order)
    return SpotCapacity(
        spot,
        order_problem(s, spot, resources, owner),
        order.accelerator if order is not None and order.buyer == owner else None,
        spot_slots(leases, resources, order_jobs_elsewhere(s, spot.order, service)),
        spot_price_per_replica(leases, resources),
    )
