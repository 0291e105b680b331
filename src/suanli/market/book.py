"""Offers and orders: what providers put up and buyers ask for, checked before it is stored.

An offer names concrete units: devices of its type (or CPU core slots, for the
``cpu`` type) on nodes its provider owns, in one region, none of them in another
live offer or unfinished lease. Nodes belong to an owner whatever runs them
(the local executor, Ray, a provider's registered machines), so every kind of
node is sold the same way; the executor's own nodes belong to the operator
(``system:executor``), for whom the admin offers them.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from suanli.errors import SuanliError
from suanli.market import ledger
from suanli.market.money import cost_micro
from suanli.store.models import SYSTEM_OWNER, LeaseRow, NodeRow, OfferRow, OrderRow, SiteRow

OPERATOR = SYSTEM_OWNER  # the platform operator, provider of the executor's nodes
DEFAULT_REGION = "default"  # the region of a node placed in no site
CPU = "cpu"
DEFAULT_ORDER_TTL_S = 24 * 3600.0  # an order not filled in a day lapses unless told otherwise
MAX_HOURS = 24 * 366.0


class MarketError(SuanliError, ValueError):
    """An offer or order the market cannot take; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Unit:
    node: str
    index: int  # a device index, or a CPU core slot


def node_regions(s: Session) -> dict[str, tuple[str | None, str]]:
    """node -> (site, region); a node in no site is in region ``default``."""
    regions = {r.name: r.region for r in s.scalars(select(SiteRow))}
    return {
        n.name: (n.site, regions.get(n.site or "", DEFAULT_REGION))
        for n in s.scalars(select(NodeRow))
    }


def units_of(row: OfferRow | LeaseRow) -> list[Unit]:
    return [Unit(str(u["node"]), int(str(u["index"]))) for u in row.units]


def leased_units(s: Session) -> dict[int, set[Unit]]:
    """Per offer: its units in leases not yet ended (the rest are free to sell)."""
    out: dict[int, set[Unit]] = defaultdict(set)
    for lease in s.scalars(select(LeaseRow).where(LeaseRow.state != "ended")):
        out[lease.offer_id].update(units_of(lease))
    return out


def taken_units(s: Session, now: float, until: float) -> set[Unit]:
    """Units in a live offer overlapping [now, until), or in a lease not yet ended."""
    out: set[Unit] = set()
    for o in s.scalars(
        select(OfferRow).where(
            OfferRow.state == "open", OfferRow.ends_at > now, OfferRow.starts_at < until
        )
    ):
        out.update(units_of(o))
    for units in leased_units(s).values():
        out |= units
    return out


def owned_units(s: Session, owner: str, accelerator: str) -> dict[str, list[Unit]]:
    """The owner's healthy units of a type, by node."""
    out: dict[str, list[Unit]] = {}
    for n in s.scalars(select(NodeRow).where(NodeRow.owner == owner).order_by(NodeRow.name)):
        if accelerator == CPU:  # the cores of machines without accelerators: a GPU
            # server's cores go with its devices, to whoever leases them
            if not n.devices:
                out[n.name] = [Unit(n.name, i) for i in range(n.cpu_cores)]
        else:
            out[n.name] = [
                Unit(n.name, int(str(d["index"])))
                for d in n.devices
                if d.get("accelerator") == accelerator and d.get("healthy", True)
            ]
    return out


def pick_units(
    s: Session,
    owner: str,
    accelerator: str,
    count: int,
    site: str | None,
    now: float,
    until: float,
) -> tuple[list[Unit], str]:
    """``count`` free units of the owner's, all in one region (fullest nodes first, so a
    buyer's gang lands on few machines); and that region."""
    where = node_regions(s)
    taken = taken_units(s, now, until)
    by_region: dict[str, list[list[Unit]]] = defaultdict(list)
    for node, units in owned_units(s, owner, accelerator).items():
        node_site, region = where[node]
        if site is not None and node_site != site:
            continue
        free = [u for u in units if u not in taken]
        if free:
            by_region[region].append(free)
    for region in sorted(by_region, key=lambda r: -sum(map(len, by_region[r]))):
        nodes = sorted(by_region[region], key=len, reverse=True)
        if sum(map(len, nodes)) >= count:
            chosen = [u for free in nodes for u in free][:count]
            return chosen, region
    have = max((sum(map(len, v)) for v in by_region.values()), default=0)
    where_txt = f" at site {site}" if site else " in any one region"
    raise MarketError(
        f"{owner} has {have} free {accelerator} unit(s){where_txt} (not in another live "
        f"offer or lease), {count} asked for; offer fewer, or wait for leases to end"
    )


def create_offer(
    s: Session,
    provider: str,
    accelerator: str,
    count: int,
    price_micro: int,
    mode: str,
    hours: float,
    site: str | None = None,
    notice_s: float = 0.0,
    min_term_hours: float = 0.0,
    now: float | None = None,
    auto: bool = False,
    key: str | None = None,
    chosen: tuple[list[Unit], str] | None = None,
) -> OfferRow:
    """Store an offer of ``count`` free units (or exactly ``chosen``: units and region)."""
    now = time.time() if now is None else now
    if site is not None and s.get(SiteRow, site) is None:
        raise MarketError(f"no site {site!r} (see `suanli sites`)", 422)
    ends = now + hours * 3600
    units, region = chosen or pick_units(s, provider, accelerator, count, site, now, ends)
    row = OfferRow(
        provider=provider,
        accelerator=accelerator,
        region=region,
        site=site,
        mode=mode,
        price_micro=price_micro,
        units=[{"node": u.node, "index": u.index} for u in units],
        starts_at=now,
        ends_at=ends,
        min_term_s=min_term_hours * 3600,
        notice_s=notice_s,
        state="open",
        auto=auto,
        idempotency_key=key,
        created_at=now,
    )
    ledger.ensure_account(s, provider, now)
    s.add(row)
    s.flush()
    return row


def worst_cost_micro(price_micro: int, units: int, seconds: float, granularity_s: float) -> int:
    """The most ``units`` for ``seconds`` can cost: whole billing granules at the price."""
    billed = math.ceil(seconds / granularity_s - 1e-9) * granularity_s
    return cost_micro(price_micro, units, billed)


def create_order(
    s: Session,
    buyer: str,
    accelerator: str,
    count: int,
    max_price_micro: int,
    mode: str,
    hours: float,
    regions: list[str],
    granularity_s: float,
    ttl_s: float = DEFAULT_ORDER_TTL_S,
    workload: dict[str, object] | None = None,
    now: float | None = None,
    key: str | None = None,
) -> OrderRow:
    """Store an order; refused if the buyer could not pay for it at its maximum price."""
    now = time.time() if now is None else now
    worst = worst_cost_micro(max_price_micro, count, hours * 3600, granularity_s)
    ledger.require(s, buyer, worst, f"order of {count} {accelerator} for {hours:g} h")
    row = OrderRow(
        buyer=buyer,
        accelerator=accelerator,
        count=count,
        regions=sorted(set(regions)),
        duration_s=hours * 3600,
        remaining_s=hours * 3600,
        max_price_micro=max_price_micro,
        mode=mode,
        state="open",
        expires_at=now + ttl_s,
        workload=workload,
        idempotency_key=key,
        created_at=now,
    )
    s.add(row)
    s.flush()
    return row
