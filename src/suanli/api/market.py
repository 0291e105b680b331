"""The market's API: /v1/market/... and /v1/ledger, /v1/invoices.

Who sees what: open offers are a public listing (type, region, count, price —
not which machines); a provider sees its own offers in full and the leases and
revenue on them; a user its orders, leases and bills; the admin everything.
The admin also acts for the operator (``system:executor``), the provider of the
executor's own nodes. Every money-moving call takes an idempotency key.

Requests are written as compare-and-set on states; what follows from them (a
lease ended, spot leases reclaimed) is the market controller's to do, in the
loop, so the API and the controller never race on a lease.
"""

import hashlib
import re
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as Path_
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from suanli.catalog.loader import accelerators
from suanli.market import book, ledger
from suanli.market.controller import MarketConfig
from suanli.market.money import to_micro, usd
from suanli.store.db import Store
from suanli.store.models import (
    IdlePolicyRow,
    LeaseRow,
    LedgerEntryRow,
    NodeRow,
    OfferRow,
    OrderRow,
    PriceRow,
    TokenRow,
)

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
INT32 = 2**31 - 1
Id = Annotated[int, Path_(ge=1, le=INT32)]
Mode = Literal["on-demand", "reserved", "spot"]
Price = Annotated[float, Field(ge=0, le=1e6, description="USD per unit-hour")]
Key = Annotated[str | None, Field(default=None, min_length=1, max_length=128)]
ACCOUNT = r"^[A-Za-z0-9][A-Za-z0-9._@:-]*$"


def _accelerator(v: str) -> str:
    v = v.lower()
    if v != book.CPU and v not in accelerators():
        raise HTTPException(422, detail=f"accelerator: unknown {v!r} (see `suanli catalog list`)")
    return v


class OfferBody(BaseModel):
    model_config = STRICT
    accelerator: str = Field(min_length=1, max_length=63)
    count: int = Field(ge=1, le=100_000)
    price_usd_per_hour: Price
    mode: Mode = "on-demand"
    hours: float = Field(gt=0, le=book.MAX_HOURS)
    site: str | None = Field(default=None, max_length=63)
    notice_s: float = Field(default=30.0, ge=0, le=86_400)  # spot: warning before a reclaim
    min_term_hours: float = Field(default=0.0, ge=0, le=book.MAX_HOURS)  # reserved
    provider: str | None = Field(default=None, max_length=64, pattern=ACCOUNT)  # admin only
    idempotency_key: Key = None


class OrderBody(BaseModel):
    model_config = STRICT
    accelerator: str = Field(min_length=1, max_length=63)
    count: int = Field(ge=1, le=100_000)
    max_price_usd_per_hour: Price
    mode: Mode = "on-demand"
    hours: float = Field(gt=0, le=book.MAX_HOURS)
    regions: list[Annotated[str, Field(min_length=1, max_length=63)]] = Field(
        default_factory=list, max_length=64
    )
    ttl_hours: float = Field(default=24.0, gt=0, le=book.MAX_HOURS)  # unfilled: lapses then
    idempotency_key: Key = None


class DepositBody(BaseModel):
    model_config = STRICT
    account: str = Field(min_length=1, max_length=64, pattern=ACCOUNT)
    amount_usd: float = Field(gt=0, le=1e9)
    idempotency_key: str = Field(min_length=1, max_length=128)


class CreditBody(BaseModel):
    model_config = STRICT
    credit_limit_usd: float = Field(ge=0, le=1e9)


class IdlePolicyBody(BaseModel):
    model_config = STRICT
    idle_minutes: float = Field(ge=0, le=525_600)
    floor_usd_per_hour: Price
    notice_s: float = Field(default=30.0, ge=0, le=86_400)
    hours: float = Field(default=1.0, gt=0, le=book.MAX_HOURS)
    provider: str | None = Field(default=None, max_length=64, pattern=ACCOUNT)  # admin only


class OwnerBody(BaseModel):
    model_config = STRICT
    owner: str = Field(min_length=1, max_length=64, pattern=ACCOUNT)


def offer_view(o: OfferRow, full: bool, free: int) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": o.id,
        "accelerator": o.accelerator,
        "region": o.region,
        "mode": o.mode,
        "price_usd_per_hour": usd(o.price_micro),
        "count": len(o.units),
        "free": free,
        "starts_at": o.starts_at,
        "ends_at": o.ends_at,
        "notice_s": o.notice_s,
        "min_term_hours": o.min_term_s / 3600,
        "state": o.state,
    }
    if full:
        view.update(provider=o.provider, site=o.site, units=o.units, auto=o.auto)
    return view


def order_view(r: OrderRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "buyer": r.buyer,
        "accelerator": r.accelerator,
        "count": r.count,
        "regions": r.regions,
        "mode": r.mode,
        "max_price_usd_per_hour": usd(r.max_price_micro),
        "hours": r.duration_s / 3600,
        "remaining_hours": r.remaining_s / 3600,
        "state": r.state,
        "expires_at": r.expires_at,
        "created_at": r.created_at,
    }


def lease_view(r: LeaseRow, charged_micro: int) -> dict[str, Any]:
    return {
        "id": r.id,
        "order": r.order_id,
        "offer": r.offer_id,
        "buyer": r.buyer,
        "provider": r.provider,
        "accelerator": r.accelerator,
        "region": r.region,
        "mode": r.mode,
        "units": r.units,
        "price_usd_per_hour": usd(r.price_micro),
        "starts_at": r.starts_at,
        "ends_at": r.ends_at,
        "state": r.state,
        "end_reason": r.end_reason,
        "leased_unit_s": round(len(r.units) * (r.ends_at - r.starts_at), 3),
        "used_unit_s": round(r.used_unit_s, 3),
        "charged_usd": usd(charged_micro),
        "hold_usd": usd(r.hold_micro),
    }


def owner_key(who: TokenRow, key: str | None) -> str | None:
    """An idempotency key as stored: per owner (one tenant's key never matches another's)
    and of a fixed length whatever the owner and key (the columns hold 128)."""
    if key is None:
        return None
    return "sha256:" + hashlib.sha256(f"{who.owner}:{key}".encode()).hexdigest()


def free_units(s: Session, offers: list[OfferRow]) -> dict[int, int]:
    leased = book.leased_units(s)
    return {o.id: len(o.units) - len(leased.get(o.id, ())) for o in offers}


def period_bounds(period: str) -> tuple[float, float]:
    """``YYYY-MM`` or ``YYYY-MM-DD`` (UTC) as [start, end) UNIX seconds."""
    m = re.fullmatch(r"(\d{4})-(\d{2})(?:-(\d{2}))?", period)
    if not m:
        raise HTTPException(422, detail=f"period: {period!r}; give YYYY-MM or YYYY-MM-DD (UTC)")
    y, mo, d = int(m.group(1)), int(m.group(2)), m.group(3)
    try:
        if d is None:
            start = datetime(y, mo, 1, tzinfo=UTC)
            end = datetime(y + mo // 12, mo % 12 + 1, 1, tzinfo=UTC)
        else:
            start = datetime(y, mo, int(d), tzinfo=UTC)
            end = datetime.fromtimestamp(start.timestamp() + 86_400, UTC)
    except ValueError as exc:
        raise HTTPException(422, detail=f"period: {exc}") from exc
    return start.timestamp(), end.timestamp()


def add_market_routes(
    app: FastAPI, store: Store, caller: Callable[..., TokenRow], config: MarketConfig
) -> None:
    from fastapi import Depends

    Caller = Annotated[TokenRow, Depends(caller)]

    def seller(who: TokenRow, provider: str | None) -> str:
        if who.role == "user":
            raise HTTPException(
                403, detail="users buy (market order); selling needs a provider token"
            )
        if provider is not None and who.role != "admin":
            raise HTTPException(403, detail="provider: only an admin offers for another provider")
        return provider or (book.OPERATOR if who.role == "admin" else who.owner)

    def once(model: type[OfferRow] | type[OrderRow], key: str | None) -> JSONResponse | None:
        if key is None:
            return None
        with store.tx() as s:
            old: Any = s.scalar(select(model).where(model.idempotency_key == key))
        return None if old is None else JSONResponse({"id": old.id, "duplicate": True}, 200)

    @app.get("/v1/market")
    def market_summary(who: Caller) -> dict[str, Any]:
        """The market's terms (fee, billing granularity, spot interval) and what is open."""
        with store.tx() as s:
            count = {
                name: int(s.scalar(select(func.count()).select_from(m).where(m.state == st)) or 0)
                for name, m, st in (
                    ("open_offers", OfferRow, "open"),
                    ("open_orders", OrderRow, "open"),
                    ("active_leases", LeaseRow, "active"),
                )
            }
        return {**config.view(), **count}

    @app.post("/v1/market/offers", status_code=201)
    def post_offer(body: OfferBody, who: Caller) -> JSONResponse:
        provider = seller(who, body.provider)
        acc = _accelerator(body.accelerator)
        key = owner_key(who, body.idempotency_key)
        if (dup := once(OfferRow, key)) is not None:
            return dup
        try:
            with store.tx() as s:
                row = book.create_offer(
                    s,
                    provider,
                    acc,
                    body.count,
                    to_micro(body.price_usd_per_hour),
                    body.mode,
                    body.hours,
                    site=body.site,
                    notice_s=body.notice_s if body.mode == "spot" else 0.0,
                    min_term_hours=body.min_term_hours if body.mode == "reserved" else 0.0,
                    key=key,
                )
                return JSONResponse({"id": row.id, "region": row.region}, 201)
        except book.MarketError as exc:
            raise HTTPException(exc.status, detail=str(exc)) from exc
        except IntegrityError:
            if (dup := once(OfferRow, key)) is not None:
                return dup
            raise

    @app.get("/v1/market/offers")
    def list_offers(
        who: Caller, all: Annotated[bool, Query(description="closed ones too")] = False
    ) -> list[dict[str, Any]]:
        with store.tx() as s:
            q = select(OfferRow).order_by(OfferRow.id)
            rows = list(s.scalars(q if all else q.where(OfferRow.state == "open")))
            mine = [r for r in rows if who.role == "admin" or r.provider == who.owner]
            public = [r for r in rows if r.state == "open" and r not in mine]
            free = free_units(s, rows)
            return [offer_view(r, True, free[r.id]) for r in mine] + [
                offer_view(r, False, free[r.id]) for r in public
            ]

    @app.post("/v1/market/offers/{offer_id}/withdraw")
    def withdraw(offer_id: Id, who: Caller) -> dict[str, Any]:
        """No new sales; spot leases on it are reclaimed with its notice, others run on."""
        with store.tx() as s:
            row = s.get(OfferRow, offer_id)
            if row is None or (who.role != "admin" and row.provider != who.owner):
                raise HTTPException(404, detail=f"no offer {offer_id} of yours")
            done = s.execute(
                update(OfferRow)
                .where(OfferRow.id == offer_id, OfferRow.state == "open")
                .values(state="withdrawing"),
                execution_options={"synchronize_session": False},
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                raise HTTPException(409, detail=f"offer {offer_id} is {row.state}, not open")
        return {"id": offer_id, "state": "withdrawing"}

    @app.post("/v1/market/orders", status_code=201)
    def post_order(body: OrderBody, who: Caller) -> JSONResponse:
        if who.role == "provider":
            raise HTTPException(403, detail="providers sell; buying needs a user token")
        acc = _accelerator(body.accelerator)
        key = owner_key(who, body.idempotency_key)
        if (dup := once(OrderRow, key)) is not None:
            return dup
        try:
            with store.tx() as s:
                row = book.create_order(
                    s,
                    who.owner,
                    acc,
                    body.count,
                    to_micro(body.max_price_usd_per_hour),
                    body.mode,
                    body.hours,
                    body.regions,
                    config.granularity_s,
                    ttl_s=body.ttl_hours * 3600,
                    key=key,
                )
                return JSONResponse({"id": row.id}, 201)
        except ledger.CreditError as exc:
            raise HTTPException(402, detail=str(exc)) from exc
        except IntegrityError:
            if (dup := once(OrderRow, key)) is not None:
                return dup
            raise

    @app.get("/v1/market/orders")
    def list_orders(who: Caller) -> list[dict[str, Any]]:
        with store.tx() as s:
            q = select(OrderRow).order_by(OrderRow.id)
            if who.role != "admin":
                q = q.where(OrderRow.buyer == who.owner)
            return [order_view(r) for r in s.scalars(q)]

    @app.post("/v1/market/orders/{order_id}/cancel")
    def cancel_order(order_id: Id, who: Caller) -> dict[str, Any]:
        """An open order is cancelled; a filled one ends its on-demand or spot leases now
        (billed to here); a reserved lease is a commitment and runs to its end."""
        sync = {"synchronize_session": False}
        with store.tx() as s:
            row = s.get(OrderRow, order_id)
            if row is None or (who.role != "admin" and row.buyer != who.owner):
                raise HTTPException(404, detail=f"no order {order_id} of yours")
            if row.mode == "reserved" and row.state == "filled":
                raise HTTPException(
                    409, detail=f"order {order_id} holds a reserved term: it runs to its end"
                )
            for src, dst in (("open", "cancelled"), ("filled", "cancelling")):
                done = s.execute(
                    update(OrderRow)
                    .where(OrderRow.id == order_id, OrderRow.state == src)
                    .values(state=dst),
                    execution_options=sync,
                )
                if done.rowcount:  # type: ignore[attr-defined]
                    return {"id": order_id, "state": dst}
            raise HTTPException(409, detail=f"order {order_id} is {row.state}")

    @app.get("/v1/market/leases")
    def list_leases(who: Caller) -> list[dict[str, Any]]:
        with store.tx() as s:
            q = select(LeaseRow).order_by(LeaseRow.id)
            if who.role != "admin":
                q = q.where((LeaseRow.buyer == who.owner) | (LeaseRow.provider == who.owner))
            rows = list(s.scalars(q))
            spent = ledger.charged(s, [r.id for r in rows])
            return [lease_view(r, spent[r.id]) for r in rows]

    @app.get("/v1/market/book")
    def order_book(
        who: Caller, accelerator: Annotated[str | None, Query(max_length=63)] = None
    ) -> list[dict[str, Any]]:
        """Per (type, region, mode): asks and bids by price level — counts, no names."""
        with store.tx() as s:
            offers = list(s.scalars(select(OfferRow).where(OfferRow.state == "open")))
            free = free_units(s, offers)
            orders = list(s.scalars(select(OrderRow).where(OrderRow.state == "open")))
        levels: dict[tuple[str, str, str], dict[str, dict[int, int]]] = defaultdict(
            lambda: {"asks": defaultdict(int), "bids": defaultdict(int)}
        )
        for o in offers:
            if free[o.id] > 0:
                levels[(o.accelerator, o.region, o.mode)]["asks"][o.price_micro] += free[o.id]
        for r in orders:
            for region in r.regions or ["*"]:
                levels[(r.accelerator, region, r.mode)]["bids"][r.max_price_micro] += r.count
        return [
            {
                "accelerator": acc,
                "region": region,
                "mode": mode,
                "asks": [
                    {"price_usd_per_hour": usd(p), "units": n}
                    for p, n in sorted(lv["asks"].items())
                ],
                "bids": [
                    {"price_usd_per_hour": usd(p), "units": n}
                    for p, n in sorted(lv["bids"].items(), reverse=True)
                ],
            }
            for (acc, region, mode), lv in sorted(levels.items())
            if accelerator is None or acc == accelerator.lower()
        ]

    @app.get("/v1/market/prices")
    def prices(
        who: Caller,
        accelerator: Annotated[str | None, Query(max_length=63)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
    ) -> list[dict[str, Any]]:
        """Spot clearing prices, newest first."""
        with store.tx() as s:
            q = select(PriceRow).order_by(PriceRow.id.desc()).limit(limit)
            if accelerator:
                q = q.where(PriceRow.accelerator == accelerator.lower())
            return [
                {
                    "accelerator": r.accelerator,
                    "region": r.region,
                    "price_usd_per_hour": None if r.price_micro is None else usd(r.price_micro),
                    "units": r.volume,
                    "at": r.at,
                }
                for r in s.scalars(q)
            ]

    @app.put("/v1/market/idle-policy")
    def put_idle_policy(body: IdlePolicyBody, who: Caller) -> dict[str, Any]:
        """Offer devices idle longer than ``idle_minutes`` as spot at a floor, and withdraw
        them when the owner's own jobs wait."""
        provider = seller(who, body.provider)
        with store.tx() as s:
            row = s.get(IdlePolicyRow, provider) or IdlePolicyRow(provider=provider)
            row.idle_s, row.floor_micro = body.idle_minutes * 60, to_micro(body.floor_usd_per_hour)
            row.notice_s, row.hours = body.notice_s, body.hours
            s.add(row)
        return {**body.model_dump(), "provider": provider}

    @app.delete("/v1/market/idle-policy")
    def delete_idle_policy(
        who: Caller, provider: Annotated[str | None, Query(max_length=64)] = None
    ) -> dict[str, Any]:
        name = seller(who, provider)
        with store.tx() as s:
            row = s.get(IdlePolicyRow, name)
            if row is None:
                raise HTTPException(404, detail=f"no idle policy for {name}")
            s.delete(row)
        return {"deleted": name}

    @app.put("/v1/nodes/{name}/owner")
    def hand_over(
        name: Annotated[str, Path_(max_length=63)], body: OwnerBody, who: Caller
    ) -> dict[str, Any]:
        """The admin hands a node (the executor's too) to a provider, who may then sell it."""
        if who.role != "admin":
            raise HTTPException(403, detail="only an admin hands nodes to providers")
        with store.tx() as s:
            row = s.get(NodeRow, name)
            if row is None:
                raise HTTPException(404, detail=f"no node {name}")
            now = time.time()
            if any(u.node == name for u in book.taken_units(s, now, now + 1)):
                raise HTTPException(
                    409, detail=f"node {name} is in a live offer or lease; withdraw it first"
                )
            row.owner = body.owner
            return {"name": name, "owner": row.owner}

    # --- the ledger ------------------------------------------------------------------------
    def account_of(who: TokenRow, account: str | None) -> str:
        if account is None:
            return who.owner
        if who.role != "admin" and account != who.owner:
            raise HTTPException(404, detail=f"no account {account} of yours")
        return account

    @app.get("/v1/ledger")
    def get_ledger(
        who: Caller, account: Annotated[str | None, Query(max_length=64)] = None
    ) -> dict[str, Any]:
        """Balances (sums of entries), credit limits and what is free to commit."""
        with store.tx() as s:
            if who.role == "admin" and account is None:
                names = sorted(ledger.balances(s))
            else:
                names = [account_of(who, account)]
            bal = ledger.balances(s, names)
            accounts = []
            for name in names:
                acct = ledger.ensure_account(s, name)
                accounts.append(
                    {
                        "account": name,
                        "balance_usd": usd(bal[name]),
                        "credit_limit_usd": usd(acct.credit_limit_micro),
                        "available_usd": usd(ledger.available(s, name)),
                    }
                )
            q = select(func.count()).select_from(LedgerEntryRow)
            if not (who.role == "admin" and account is None):
                q = q.where(LedgerEntryRow.account.in_(names))
            entries = int(s.scalar(q) or 0)
            total = sum(bal.values()) if who.role == "admin" and account is None else None
        out: dict[str, Any] = {"accounts": accounts, "entries": entries}
        if total is not None:
            out["sum_usd"] = usd(total)  # always 0: money is conserved
        return out

    @app.get("/v1/ledger/entries")
    def ledger_entries(
        who: Caller,
        account: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
    ) -> list[dict[str, Any]]:
        name = account_of(who, account)
        with store.tx() as s:
            q = (
                select(LedgerEntryRow)
                .where(LedgerEntryRow.account == name)
                .order_by(LedgerEntryRow.id.desc())
                .limit(limit)
            )
            return [
                {
                    "id": e.id,
                    "txn": e.txn,
                    "account": e.account,
                    "amount_usd": usd(e.amount_micro),
                    "kind": e.kind,
                    "ref": e.ref,
                    "memo": e.memo,
                    "at": e.at,
                }
                for e in s.scalars(q)
            ]

    @app.post("/v1/ledger/deposits", status_code=201)
    def deposit(body: DepositBody, who: Caller) -> dict[str, Any]:
        """Money paid in from outside (the admin records it); booked once per key."""
        if who.role != "admin":
            raise HTTPException(403, detail="only an admin records deposits")
        amount = to_micro(body.amount_usd)
        txn = "deposit:" + hashlib.sha256(body.idempotency_key.encode()).hexdigest()
        try:
            with store.tx() as s:
                booked = ledger.transfer(
                    s, txn, ledger.DEPOSITS, body.account, amount, "deposit", "deposit", time.time()
                )
        except IntegrityError:
            booked = False
        return {"account": body.account, "amount_usd": usd(amount), "duplicate": not booked}

    @app.put("/v1/ledger/accounts/{name}/credit")
    def set_credit(
        name: Annotated[str, Path_(max_length=64, pattern=ACCOUNT)], body: CreditBody, who: Caller
    ) -> dict[str, Any]:
        if who.role != "admin":
            raise HTTPException(403, detail="only an admin sets credit limits")
        with store.tx() as s:
            row = ledger.ensure_account(s, name)
            row.credit_limit_micro = to_micro(body.credit_limit_usd)
            return {"account": name, "credit_limit_usd": usd(row.credit_limit_micro)}

    @app.get("/v1/invoices/{account}/{period}")
    def invoice(
        account: Annotated[str, Path_(max_length=64)],
        period: Annotated[str, Path_(max_length=10)],
        who: Caller,
    ) -> dict[str, Any]:
        """An account's entries in a period (UTC month or day), by what they were for, with
        the opening and closing balance."""
        name = account_of(who, account)
        start, end = period_bounds(period)
        with store.tx() as s:
            before = s.scalar(
                select(func.sum(LedgerEntryRow.amount_micro)).where(
                    LedgerEntryRow.account == name, LedgerEntryRow.at < start
                )
            )
            rows = list(
                s.scalars(
                    select(LedgerEntryRow)
                    .where(
                        LedgerEntryRow.account == name,
                        LedgerEntryRow.at >= start,
                        LedgerEntryRow.at < end,
                    )
                    .order_by(LedgerEntryRow.id)
                )
            )
        lines: dict[tuple[str, str], int] = defaultdict(int)
        for e in rows:
            lines[(e.ref, e.kind)] += e.amount_micro
        opening = int(before or 0)
        total = sum(e.amount_micro for e in rows)
        return {
            "account": name,
            "period": period,
            "opening_balance_usd": usd(opening),
            "lines": [
                {"ref": ref, "kind": kind, "amount_usd": usd(v)}
                for (ref, kind), v in sorted(lines.items())
            ],
            "total_usd": usd(total),
            "closing_balance_usd": usd(opening + total),
        }
