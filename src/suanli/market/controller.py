"""The market controller: matches, clears, bills, meters, reclaims — idempotently, each tick.

One of the service's controllers (see DESIGN.md, "The service as controllers"):
``reconcile(now)`` reads offers, orders and leases from the store and acts on
what is due, each step one transaction, so a crash between steps loses nothing
and a step done twice books nothing twice (ledger transfers are keyed by what
they pay for: ``lease:7:bill:<from>``). The clock is an argument, so tests
drive it.

Leases go ``active`` -> ``closing`` (its end reached, or reclaimed with the
site's notice: the buyer's jobs on it get SIGTERM and the notice as grace) ->
``ended`` (its end passed and no job of the order still holds its units). The
units of an ``ended`` lease are for sale again.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from suanli.market import book, engine, ledger
from suanli.market.book import Unit, units_of
from suanli.market.money import cost_micro, fee_of, usd
from suanli.store.db import Store
from suanli.store.models import (
    IdlePolicyRow,
    JobRow,
    LeaseRow,
    NodeRow,
    OfferRow,
    OrderRow,
    PriceRow,
    held_devices,
)

log = logging.getLogger("suanli.market")
GRANULARITY_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


@dataclass(frozen=True)
class MarketConfig:
    fee_ppm: int = 50_000  # the platform's share of every charge, parts per million (5%)
    granularity_s: float = 1.0  # billing unit: a started unit is billed whole
    bill_every_s: float = 60.0  # how often running leases are booked (and at their end)
    spot_interval_s: float = 60.0  # spot call auctions this often
    end_grace_s: float = 10.0  # SIGTERM before SIGKILL when a lease runs out
    #: the loop ticks every 0.2 s; the market need not read its tables that often
    every_s: float = 1.0

    def view(self) -> dict[str, Any]:
        return {
            "fee_share": self.fee_ppm / 1e6,
            "billing_granularity_s": self.granularity_s,
            "spot_interval_s": self.spot_interval_s,
        }


def jobs_by_order(s: Session) -> dict[int, list[JobRow]]:
    """Running jobs that run on an order's leases."""
    out: dict[int, list[JobRow]] = defaultdict(list)
    for row in s.scalars(select(JobRow).where(JobRow.state == "running")):
        order = (row.spec or {}).get("order")
        if isinstance(order, int):
            out[order].append(row)
    return out


def units_in_use(lease: LeaseRow, jobs: list[JobRow]) -> int:
    """How many of the lease's units the buyer's running jobs hold now."""
    mine = units_of(lease)
    nodes = {u.node for u in mine}
    if lease.accelerator == book.CPU:
        per_node: dict[str, float] = defaultdict(float)
        for row in jobs:
            res: Any = (row.spec or {}).get("resources") or {}
            cpu = float(res.get("cpu", 1.0))
            for m in row.members or []:
                if m.get("node") in nodes:
                    per_node[str(m["node"])] += cpu
        have = defaultdict(int, {n: sum(1 for u in mine if u.node == n) for n in nodes})
        return sum(min(have[n], math.ceil(c)) for n, c in per_node.items())
    held = {Unit(node, d) for node, d in held_devices(row.members for row in jobs)}
    return len(held & set(mine))


class MarketController:
    name = "market"

    def __init__(self, store: Store, config: MarketConfig | None = None) -> None:
        self.store = store
        self.cfg = config or MarketConfig()
        with store.tx() as s:  # a restart does not clear twice in one interval
            self.last_clear = float(s.scalar(select(func.max(PriceRow.at))) or 0.0)
        self.idle_since: dict[Unit, float] = {}
        self._ran_at = -math.inf

    def reconcile(self, now: float) -> None:
        if now - self._ran_at < self.cfg.every_s:
            return
        self._ran_at = now
        for step in (self._requests, self._lapse, self._close, self._match_posted):
            with self.store.tx() as s:
                step(s, now)
        if now - self.last_clear >= self.cfg.spot_interval_s:
            with self.store.tx() as s:  # the clearing interval is one transaction
                self._clear_spot(s, now)
            self.last_clear = now
        for step in (self._bill_all, self._meter, self._idle):
            with self.store.tx() as s:
                step(s, now)

    # --- what the API asked for ----------------------------------------------------------
    def _requests(self, s: Session, now: float) -> None:
        """Withdrawals and cancels the API recorded: acted on here, so only this controller
        changes leases."""
        for o in s.scalars(select(OfferRow).where(OfferRow.state == "withdrawing")):
            self.withdraw(s, o, "withdrawn by the provider", now)
        for r in s.scalars(select(OrderRow).where(OrderRow.state == "cancelling")):
            for lease in s.scalars(
                select(LeaseRow).where(LeaseRow.order_id == r.id, LeaseRow.state == "active")
            ):
                self.end_early(s, lease, "cancelled by the buyer", now)
            r.state = "cancelled"

    # --- offers and orders that lapse --------------------------------------------------
    def _lapse(self, s: Session, now: float) -> None:
        for o in s.scalars(select(OfferRow).where(OfferRow.state == "open")):
            if o.ends_at <= now:
                o.state = "expired"
        for r in s.scalars(select(OrderRow).where(OrderRow.state == "open")):
            if r.expires_at <= now:
                r.state = "expired"

    # --- leases that end ---------------------------------------------------------------
    def _close(self, s: Session, now: float) -> None:
        jobs = jobs_by_order(s)
        for lease in s.scalars(select(LeaseRow).where(LeaseRow.state.in_(("active", "closing")))):
            if lease.state == "active" and lease.ends_at <= now:
                lease.state, lease.end_reason = "closing", lease.end_reason or "its term ended"
            if lease.state != "closing":
                continue
            mine = jobs.get(lease.order_id, [])
            if lease.ends_at <= now:
                self._stop_jobs(s, lease, mine, self.cfg.end_grace_s)
            if lease.ends_at <= now and units_in_use(lease, mine) == 0:
                self._bill(s, lease, lease.ends_at, final=True)
                self._meter_one(lease, mine, now)
                lease.state = "ended"

    def _stop_jobs(self, s: Session, lease: LeaseRow, jobs: list[JobRow], grace_s: float) -> None:
        """Ask the jobs controller to stop the order's jobs on this lease (once)."""
        nodes = {u.node for u in units_of(lease)}
        for row in jobs:
            on_it = any(m.get("node") in nodes for m in row.members or [])
            if on_it and not row.preempt_reason and not row.stop_reason:
                row.preempt_reason = f"lease {lease.id}: {lease.end_reason}"[:128]
                row.preempt_grace_s = grace_s
                self.store.event(
                    s, row.id, "reclaim", f"{row.preempt_reason}; SIGTERM, {grace_s:g} s grace"
                )

    def reclaim(
        self,
        s: Session,
        lease: LeaseRow,
        reason: str,
        now: float,
        jobs: dict[int, list[JobRow]],
    ) -> None:
        """End a spot lease with its offer's notice: jobs get SIGTERM and the notice as grace.

        ``jobs``: `jobs_by_order`, read once by the caller for all the leases it reclaims."""
        if lease.state != "active":
            return
        offer = s.get(OfferRow, lease.offer_id)
        notice = offer.notice_s if offer else 0.0
        lease.state, lease.end_reason = "closing", reason[:128]
        lease.ends_at = min(lease.ends_at, now + notice)
        self._stop_jobs(s, lease, jobs.get(lease.order_id, []), notice)
        order = s.get(OrderRow, lease.order_id)
        if order is not None and order.mode == "spot" and order.state == "filled":
            held = lease.ends_at - lease.starts_at
            order.remaining_s = max(0.0, order.remaining_s - held)
            # a spot order bids again for what is left of its time (a persistent request)
            order.state = "open" if order.remaining_s > 1.0 and order.expires_at > now else "filled"

    def end_early(self, s: Session, lease: LeaseRow, reason: str, now: float) -> None:
        """The buyer let an on-demand or spot lease go before its end."""
        if lease.state == "active":
            lease.ends_at = min(lease.ends_at, now)
            lease.state, lease.end_reason = "closing", reason[:128]

    # --- matching ------------------------------------------------------------------------
    def _affordable(self, s: Session, orders: list[OrderRow]) -> list[OrderRow]:
        """Orders whose buyers can still pay for them at their maximum (oldest first)."""
        left: dict[str, int] = {}
        out = []
        for r in sorted(orders, key=lambda r: (r.created_at, r.id)):
            if r.buyer not in left:
                left[r.buyer] = ledger.available(s, r.buyer)
            worst = book.worst_cost_micro(
                r.max_price_micro, r.count, r.remaining_s, self.cfg.granularity_s
            )
            if worst <= left[r.buyer]:
                left[r.buyer] -= worst
                out.append(r)
        return out

    def _ask(self, o: OfferRow, free: int) -> engine.Ask:
        return engine.Ask(
            o.id,
            o.accelerator,
            o.region,
            o.mode,
            o.price_micro,
            free,
            o.starts_at,
            o.ends_at,
            o.created_at,
            o.min_term_s,
        )

    def _bid(self, r: OrderRow, duration_s: float, holds: dict[int, int]) -> engine.Bid:
        return engine.Bid(
            r.id,
            r.accelerator,
            frozenset(r.regions),
            r.mode,
            r.max_price_micro,
            r.count,
            duration_s,
            r.created_at,
            holds,
        )

    def _match_posted(self, s: Session, now: float) -> None:
        offers = {
            o.id: o
            for o in s.scalars(
                select(OfferRow).where(OfferRow.state == "open", OfferRow.mode != "spot")
            )
        }
        orders = list(
            s.scalars(select(OrderRow).where(OrderRow.state == "open", OrderRow.mode != "spot"))
        )
        if not offers or not orders:
            return
        in_use = book.leased_units(s)
        asks = [self._ask(o, len(set(units_of(o)) - in_use[o.id])) for o in offers.values()]
        bids = [self._bid(r, r.remaining_s, {}) for r in self._affordable(s, orders)]
        by_id = {r.id: r for r in orders}
        for f in engine.match_posted(asks, bids, now):
            self._lease(s, by_id[f.bid], offers[f.ask], f, in_use, now)

    def _lease(
        self,
        s: Session,
        order: OrderRow,
        offer: OfferRow,
        fill: engine.Fill,
        in_use: dict[int, set[Unit]],
        now: float,
    ) -> LeaseRow | None:
        free = [u for u in units_of(offer) if u not in in_use[offer.id]][: fill.units]
        if len(free) < fill.units:
            # spot units sold at this auction whose last holder is still in its notice:
            # the order stays open, and bids again once they are free
            return None
        # compare-and-set: an order the API cancelled since it was read is not filled
        claimed = s.execute(
            update(OrderRow)
            .where(OrderRow.id == order.id, OrderRow.state == "open")
            .values(state="filled"),
            execution_options={"synchronize_session": False},
        )
        if not claimed.rowcount and order.state != "filled":  # type: ignore[attr-defined]
            return None
        order.state = "filled"
        in_use[offer.id].update(free)
        duration = fill.ends_at - now
        if order.mode == "reserved":
            hold = cost_micro(fill.price_micro, fill.units, duration)
        else:
            hold = book.worst_cost_micro(
                order.max_price_micro if order.mode == "spot" else fill.price_micro,
                fill.units,
                duration,
                self.cfg.granularity_s,
            )
        lease = LeaseRow(
            order_id=order.id,
            offer_id=offer.id,
            buyer=order.buyer,
            provider=offer.provider,
            accelerator=offer.accelerator,
            region=offer.region,
            mode=order.mode,
            price_micro=fill.price_micro,
            units=[{"node": u.node, "index": u.index} for u in free],
            starts_at=now,
            ends_at=fill.ends_at,
            state="active",
            billed_until=now,
            hold_micro=hold,
            used_unit_s=0.0,
            metered_at=now,
        )
        s.add(lease)
        s.flush()
        if order.mode == "reserved":  # a commitment: the whole term, booked at the start
            self._charge(s, lease, hold, f"lease:{lease.id}:reserved", now, "reserved term")
            lease.billed_until = lease.ends_at
        return lease

    def _clear_spot(self, s: Session, now: float) -> None:
        offers = {
            o.id: o
            for o in s.scalars(
                select(OfferRow).where(OfferRow.state == "open", OfferRow.mode == "spot")
            )
        }
        closing: dict[int, set[Unit]] = defaultdict(set)
        holders: dict[int, list[LeaseRow]] = defaultdict(list)
        for lease in s.scalars(
            select(LeaseRow).where(LeaseRow.state != "ended", LeaseRow.mode == "spot")
        ):
            if lease.state == "active":
                holders[lease.order_id].append(lease)
            else:
                closing[lease.offer_id].update(units_of(lease))
        asks = [self._ask(o, len(set(units_of(o)) - closing[o.id])) for o in offers.values()]
        open_orders = list(
            s.scalars(select(OrderRow).where(OrderRow.state == "open", OrderRow.mode == "spot"))
        )
        bids = [self._bid(r, r.remaining_s, {}) for r in self._affordable(s, open_orders)]
        orders = {r.id: r for r in open_orders}
        for order_id, leases in holders.items():
            order = s.get(OrderRow, order_id)
            assert order is not None
            orders[order_id] = order
            holds: dict[int, int] = defaultdict(int)
            for lease in leases:
                holds[lease.offer_id] += len(lease.units)
            bids.append(self._bid(order, max(x.ends_at for x in leases) - now, dict(holds)))
        if not asks and not bids:
            return
        result = engine.clear_spot(asks, bids, now)
        for (acc, region), price in result.prices.items():
            s.add(
                PriceRow(
                    accelerator=acc,
                    region=region,
                    price_micro=price,
                    volume=result.volume.get((acc, region), 0),
                    at=now,
                )
            )
        lost = set(result.outbid) | set(result.moved)
        jobs = jobs_by_order(s) if lost else {}
        for order_id in lost:
            for lease in holders.get(order_id, []):
                why = "outbid" if order_id in result.outbid else "moved off an offer above price"
                self.reclaim(s, lease, f"spot {why} at clearing", now, jobs)
        in_use = book.leased_units(s)
        newcomers: dict[int, list[engine.Fill]] = defaultdict(list)
        for f in result.fills:
            if f.bid in holders and f.bid not in lost:
                for lease in holders[f.bid]:
                    if lease.offer_id == f.ask and lease.price_micro != f.price_micro:
                        self._bill(s, lease, now, final=True)  # so far, at the price it had
                        lease.price_micro = f.price_micro
            elif f.bid not in holders:
                newcomers[f.bid].append(f)
        for bid, fills in newcomers.items():
            # all or nothing: units sold whose last holder is still in its notice are not
            # free yet, and then the order waits whole for the next auction
            free = {f.ask: set(units_of(offers[f.ask])) - in_use[f.ask] for f in fills}
            if all(len(free[f.ask]) >= f.units for f in fills):
                for f in fills:
                    self._lease(s, orders[bid], offers[f.ask], f, in_use, now)

    # --- money ---------------------------------------------------------------------------
    def _charge(
        self, s: Session, lease: LeaseRow, amount: int, txn: str, now: float, memo: str
    ) -> None:
        ref = f"lease:{lease.id}"
        if ledger.transfer(s, txn, lease.buyer, lease.provider, amount, "charge", ref, now, memo):
            fee = fee_of(amount, self.cfg.fee_ppm)
            ledger.transfer(
                s, txn + ":fee", lease.provider, ledger.PLATFORM, fee, "fee", ref, now, memo
            )

    def _bill(self, s: Session, lease: LeaseRow, upto: float, final: bool = False) -> None:
        """Book the lease from ``billed_until`` to ``upto`` (whole billing units started)."""
        if lease.mode == "reserved":
            return
        g = self.cfg.granularity_s
        elapsed = min(upto, lease.ends_at) - lease.starts_at
        if elapsed <= 0:
            return
        target = min(lease.starts_at + math.ceil(elapsed / g - 1e-9) * g, lease.ends_at)
        if target <= lease.billed_until:
            return
        if not final and target - lease.billed_until < self.cfg.bill_every_s:
            return
        amount = cost_micro(lease.price_micro, len(lease.units), target - lease.billed_until)
        spent = ledger.charged(s, [lease.id])[lease.id]
        amount = min(amount, max(0, lease.hold_micro - spent))  # rounding never passes the hold
        memo = (
            f"{len(lease.units)} x {lease.accelerator} {target - lease.billed_until:.0f} s "
            f"at {usd(lease.price_micro)} USD/unit-h"
        )
        txn = f"lease:{lease.id}:bill:{lease.billed_until!r}"
        self._charge(s, lease, amount, txn, upto, memo)
        lease.billed_until = target

    def _bill_all(self, s: Session, now: float) -> None:
        for lease in s.scalars(select(LeaseRow).where(LeaseRow.state.in_(("active", "closing")))):
            self._bill(s, lease, now)

    # --- metering ------------------------------------------------------------------------
    def _meter_one(self, lease: LeaseRow, jobs: list[JobRow], now: float) -> None:
        upto = min(now, lease.ends_at)
        if upto > lease.metered_at:
            lease.used_unit_s += (upto - lease.metered_at) * units_in_use(lease, jobs)
            lease.metered_at = upto

    def _meter(self, s: Session, now: float) -> None:
        jobs = jobs_by_order(s)
        for lease in s.scalars(select(LeaseRow).where(LeaseRow.state.in_(("active", "closing")))):
            self._meter_one(lease, jobs.get(lease.order_id, []), now)

    # --- selling idle capacity -----------------------------------------------------------
    def _idle(self, s: Session, now: float) -> None:
        policies = list(s.scalars(select(IdlePolicyRow)))
        if not policies:
            self.idle_since.clear()
            return
        running = list(s.scalars(select(JobRow).where(JobRow.state == "running")))
        queued = list(s.scalars(select(JobRow).where(JobRow.state == "queued")))
        busy: set[Unit] = set(book.taken_units(s, now, now + 1))
        busy |= {Unit(node, d) for node, d in held_devices(row.members for row in running)}
        busy_nodes = {str(m.get("node")) for row in running for m in row.members or []}
        where = book.node_regions(s)
        for pol in policies:
            wants = [r for r in queued if r.owner == pol.provider and not r.spec.get("order")]
            if wants:  # the owner's own jobs need capacity back: withdraw what was auto-offered
                self._withdraw_auto(s, pol.provider, now)
                continue
            groups: dict[tuple[str, str], list[Unit]] = defaultdict(list)
            for node in s.scalars(select(NodeRow).where(NodeRow.owner == pol.provider)):
                if node.devices:
                    kinds = [(str(d["accelerator"]), int(str(d["index"]))) for d in node.devices]
                else:
                    kinds = [(book.CPU, i) for i in range(node.cpu_cores)]
                for acc, idx in kinds:
                    u = Unit(node.name, idx)
                    idle = u not in busy and not (acc == book.CPU and node.name in busy_nodes)
                    if not idle:
                        self.idle_since.pop(u, None)
                        continue
                    since = self.idle_since.setdefault(u, now)
                    if now - since >= pol.idle_s:
                        groups[(acc, where[node.name][1])].append(u)
            for (acc, region), units in groups.items():
                offer = book.create_offer(
                    s,
                    pol.provider,
                    acc,
                    len(units),
                    pol.floor_micro,
                    "spot",
                    pol.hours,
                    notice_s=pol.notice_s,
                    now=now,
                    auto=True,
                    chosen=(units, region),
                )
                log.info(
                    "offered %d idle %s of %s as spot (offer %d)",
                    len(units),
                    acc,
                    pol.provider,
                    offer.id,
                )

    def _withdraw_auto(self, s: Session, provider: str, now: float) -> None:
        for o in s.scalars(
            select(OfferRow).where(
                OfferRow.provider == provider, OfferRow.auto, OfferRow.state == "open"
            )
        ):
            self.withdraw(s, o, "the owner's own jobs need it back", now)

    def withdraw(self, s: Session, offer: OfferRow, reason: str, now: float) -> None:
        """No new sales; spot leases on it are reclaimed with its notice, others run on."""
        offer.state = "withdrawn"
        spot = s.scalars(
            select(LeaseRow).where(
                LeaseRow.offer_id == offer.id, LeaseRow.state == "active", LeaseRow.mode == "spot"
            )
        ).all()
        jobs = jobs_by_order(s) if spot else {}
        for lease in spot:
            self.reclaim(s, lease, f"taken back by the provider: {reason}", now, jobs)
