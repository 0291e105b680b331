"""The replica groups a service's controller converges: replicas of one kind (a chip,
spot or on demand) and how many of it are wanted. A single-chip service has one group,
or two with a spot order (on its leases where they hold them, on demand otherwise); a
chip mix has one per chip, the spot order's chip split the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from suanli.autoscale.mix import SPOT_SUFFIX
from suanli.autoscale.service_spec import ServiceSpec
from suanli.service.mix import chip_of, chip_price
from suanli.service.spot import SpotCapacity, is_spot, split
from suanli.store.models import JobRow


@dataclass(frozen=True)
class Group:
    """Replicas of one kind (a chip, spot or on demand) and how many of it are wanted."""

    jobs: list[JobRow]
    want: int
    why: str  # said on a replica stopped as surplus
    usd_per_hour: float  # one replica's
    order: int | None = None  # on this market order's leases
    chip: str | None = None  # on this chip only


def mix_groups(spec: ServiceSpec, live: list[JobRow], want: dict[str, int]) -> list[Group]:
    """A chip-mix service's replicas, chip by chip (a chip no longer wanted included)."""
    return [
        Group(
            [j for j in live if chip_of(j) == chip],
            want.get(chip, 0),
            f"the mix wants {want.get(chip, 0)} on {chip}",
            chip_price(chip, spec.resources.devices),
            chip=chip,
        )
        for chip in sorted(set(want) | {chip_of(j) for j in live})
    ]


def spot_groups(
    cap: SpotCapacity,
    live: list[JobRow],
    desired: int,
    price: float,
    chip: str | None = None,
    spot_cap: int | None = None,
    spot_price: float | None = None,
) -> list[Group]:
    """``desired`` replicas (of ``chip``, in a mix) on the spot order's leases where
    they hold them, at most ``spot_cap`` (what the ILP chose), the rest on demand
    (SkyServe's fallback; `suanli.service.spot`). A spot replica is priced at
    ``spot_price`` where given (a mix's budget counts leases at their price), else at
    ``price``."""
    want = split(desired, cap.spot, cap.slots)
    spot = want.spot if spot_cap is None else min(want.spot, spot_cap)
    on_spot = [j for j in live if is_spot(j, cap.spot)]
    on_demand = [j for j in live if not is_spot(j, cap.spot)]
    why = f"{spot} spot replicas wanted (the order's live leases hold {cap.slots})"
    spot_usd = price if spot_price is None else spot_price
    od = desired - spot
    return [
        Group(on_spot, spot, why, spot_usd, order=cap.spot.order, chip=chip),
        Group(on_demand, od, f"{od} on-demand replicas wanted", price, chip=chip),
    ]


def with_spot(groups: list[Group], cap: SpotCapacity, want: Mapping[str, int]) -> list[Group]:
    """A chip mix's groups (``want`` by kind: a spot twin counted with its chip), the
    order's chip split as a single-chip service's replicas are: on its leases as many as
    the ILP put on the twin (with no twin in the plan yet, as many as the leases hold),
    the rest on demand. A reclaim falls back to on-demand replicas of the same chip at
    the next tick, within the notice, not at the optimizer's next period."""
    out: list[Group] = []
    for g in groups:
        if g.chip is not None and g.chip == cap.chip:
            spot_cap = want.get(g.chip + SPOT_SUFFIX)
            out += spot_groups(
                cap, g.jobs, g.want, g.usd_per_hour, g.chip, spot_cap, cap.usd_per_replica
            )
        else:
            out.append(g)
    return out
