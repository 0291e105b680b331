"""``suanli market ...``, ``suanli ledger`` and ``suanli invoice``: clients of /v1/market."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import typer

from suanli.cli.output import console, print_json, table
from suanli.cli.service_cmd import Json, _call

market_app = typer.Typer(help="The compute market: offers, orders, leases.", no_args_is_help=True)
ledger_app = typer.Typer(help="Balances, deposits and credit limits.", invoke_without_command=True)

Mode = Annotated[str, typer.Option("--mode", help="on-demand, reserved or spot.")]
Key = Annotated[
    str | None,
    typer.Option("--idempotency-key", help="Send again with the same key: booked once."),
]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


@market_app.command("offer")
def offer_cmd(
    accelerator: Annotated[str, typer.Option("--accelerator", help="A catalog chip, or cpu.")],
    count: Annotated[int, typer.Option("--count", help="Devices (cores for cpu).")],
    price: Annotated[
        float, typer.Option("--price-usd-per-hour", help="Per unit-hour; the floor for spot.")
    ],
    hours: Annotated[float, typer.Option("--hours", help="How long the offer stands.")],
    mode: Mode = "on-demand",
    site: Annotated[str | None, typer.Option("--site")] = None,
    notice_s: Annotated[
        float, typer.Option("--notice-s", help="Spot: warning before reclaim.")
    ] = 30.0,
    min_term_hours: Annotated[float, typer.Option("--min-term-hours", help="Reserved.")] = 0.0,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Admin: offer for this provider.")
    ] = None,
    key: Key = None,
    json_out: Json = False,
) -> None:
    """Offer devices you own (provider; the admin offers the operator's nodes)."""
    body: dict[str, Any] = {
        "accelerator": accelerator,
        "count": count,
        "price_usd_per_hour": price,
        "mode": mode,
        "hours": hours,
        "site": site,
        "notice_s": notice_s,
        "min_term_hours": min_term_hours,
        "idempotency_key": key or str(uuid.uuid4()),
    }
    if provider:
        body["provider"] = provider
    out = _call("POST", "/v1/market/offers", json=body)
    if json_out:
        print_json({"id": out["id"]})
    else:
        console.print(f"offer {out['id']}: {count} {accelerator} in {out.get('region')}")


@market_app.command("order")
def order_cmd(
    accelerator: Annotated[str, typer.Option("--accelerator", help="A catalog chip, or cpu.")],
    count: Annotated[int, typer.Option("--count")],
    max_price: Annotated[float, typer.Option("--max-price-usd-per-hour")],
    hours: Annotated[float, typer.Option("--hours", help="How long you need it.")],
    mode: Mode = "on-demand",
    region: Annotated[
        list[str] | None, typer.Option("--region", help="Allowed region (repeat); any if none.")
    ] = None,
    ttl_hours: Annotated[float, typer.Option("--ttl-hours", help="Lapses if unfilled.")] = 24.0,
    key: Key = None,
    json_out: Json = False,
) -> None:
    """Order capacity (user). Jobs run on it with `order: ID` in their spec."""
    body = {
        "accelerator": accelerator,
        "count": count,
        "max_price_usd_per_hour": max_price,
        "mode": mode,
        "hours": hours,
        "regions": region or [],
        "ttl_hours": ttl_hours,
        "idempotency_key": key or str(uuid.uuid4()),
    }
    out = _call("POST", "/v1/market/orders", json=body)
    if json_out:
        print_json({"id": out["id"]})
    else:
        console.print(f"order {out['id']}: {count} {accelerator}, {mode}, for {hours:g} h")


@market_app.command("offers")
def offers_cmd(
    all_: Annotated[bool, typer.Option("--all", help="Closed ones too.")] = False,
    json_out: Json = False,
) -> None:
    """Open offers (yours in full; others' as a listing)."""
    rows = _call("GET", "/v1/market/offers", params={"all": all_})
    if json_out:
        print_json(rows)
        return
    table(
        "offers",
        ["id", "accelerator", "region", "mode", "USD/unit-h", "free / count", "until", "state"],
        [
            [
                r["id"],
                r["accelerator"],
                r["region"],
                r["mode"],
                r["price_usd_per_hour"],
                f"{r['free']} / {r['count']}",
                _when(r["ends_at"]),
                r["state"],
            ]
            for r in rows
        ],
    )


@market_app.command("orders")
def orders_cmd(json_out: Json = False) -> None:
    """Your orders (all for an admin)."""
    rows = _call("GET", "/v1/market/orders")
    if json_out:
        print_json(rows)
        return
    table(
        "orders",
        ["id", "buyer", "accelerator", "count", "mode", "max USD/unit-h", "hours", "state"],
        [
            [
                r["id"],
                r["buyer"],
                r["accelerator"],
                r["count"],
                r["mode"],
                r["max_price_usd_per_hour"],
                f"{r['hours']:g}",
                r["state"],
            ]
            for r in rows
        ],
    )


@market_app.command("leases")
def leases_cmd(json_out: Json = False) -> None:
    """Leases you hold or granted (all for an admin): leased vs used, charged so far."""
    rows = _call("GET", "/v1/market/leases")
    if json_out:
        print_json(rows)
        return
    table(
        "leases",
        [
            "id",
            "order",
            "buyer",
            "provider",
            "units",
            "mode",
            "USD/unit-h",
            "until",
            "state",
            "used / leased unit-s",
            "charged USD",
        ],
        [
            [
                r["id"],
                r["order"],
                r["buyer"],
                r["provider"],
                f"{len(r['units'])}x {r['accelerator']}",
                r["mode"],
                r["price_usd_per_hour"],
                _when(r["ends_at"]),
                r["state"] + (f" ({r['end_reason']})" if r["end_reason"] else ""),
                f"{r['used_unit_s']:.0f} / {r['leased_unit_s']:.0f}",
                r["charged_usd"],
            ]
            for r in rows
        ],
    )


@market_app.command("book")
def book_cmd(
    accelerator: Annotated[str | None, typer.Option("--accelerator")] = None,
    json_out: Json = False,
) -> None:
    """The order book: asks and bids by price level, per type, region and mode."""
    rows = _call(
        "GET", "/v1/market/book", params={"accelerator": accelerator} if accelerator else {}
    )
    if json_out:
        print_json(rows)
        return
    lines = []
    for m in rows:
        asks = ", ".join(f"{a['units']} @ {a['price_usd_per_hour']}" for a in m["asks"]) or "-"
        bids = ", ".join(f"{b['units']} @ {b['price_usd_per_hour']}" for b in m["bids"]) or "-"
        lines.append([m["accelerator"], m["region"], m["mode"], asks, bids])
    table(
        "order book (units @ USD/unit-h)", ["accelerator", "region", "mode", "asks", "bids"], lines
    )


@market_app.command("cancel")
def cancel_cmd(
    what: Annotated[str, typer.Argument(help="order or offer")],
    ident: Annotated[int, typer.Argument(help="Its id.")],
    json_out: Json = False,
) -> None:
    """Cancel an order (its leases end now, billed to here) or withdraw an offer."""
    if what not in ("order", "offer"):
        raise typer.BadParameter("say `order ID` or `offer ID`")
    path = (
        f"/v1/market/orders/{ident}/cancel"
        if what == "order"
        else f"/v1/market/offers/{ident}/withdraw"
    )
    out = _call("POST", path)
    print_json(out) if json_out else console.print(f"{what} {ident}: {out['state']}")


@ledger_app.callback()
def ledger_cmd(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Option("--account")] = None,
    json_out: Json = False,
) -> None:
    """Balances (the admin sees every account); subcommands record deposits and credit."""
    if ctx.invoked_subcommand is not None:
        return
    out = _call("GET", "/v1/ledger", params={"account": account} if account else {})
    if json_out:
        print_json(out)
        return
    table(
        f"ledger ({out['entries']} entries)",
        ["account", "balance USD", "credit limit USD", "available USD"],
        [
            [a["account"], a["balance_usd"], a["credit_limit_usd"], a["available_usd"]]
            for a in out["accounts"]
        ],
    )
    if "sum_usd" in out:
        console.print(f"sum of all balances: {out['sum_usd']} USD")


@ledger_app.command("deposit")
def deposit_cmd(
    account: Annotated[str, typer.Argument()],
    amount: Annotated[float, typer.Argument(help="USD")],
    key: Key = None,
    json_out: Json = False,
) -> None:
    """Record money paid in to an account (admin)."""
    body = {"account": account, "amount_usd": amount, "idempotency_key": key or str(uuid.uuid4())}
    out = _call("POST", "/v1/ledger/deposits", json=body)
    print_json(out) if json_out else console.print(f"{account}: +{out['amount_usd']} USD")


@ledger_app.command("credit")
def credit_cmd(
    account: Annotated[str, typer.Argument()],
    limit: Annotated[float, typer.Argument(help="USD the account may owe")],
    json_out: Json = False,
) -> None:
    """Set an account's credit limit (admin)."""
    out = _call("PUT", f"/v1/ledger/accounts/{account}/credit", json={"credit_limit_usd": limit})
    print_json(out) if json_out else console.print(
        f"{account}: credit limit {out['credit_limit_usd']} USD"
    )


def invoice_cmd(
    account: Annotated[str, typer.Argument()],
    period: Annotated[str, typer.Argument(help="YYYY-MM or YYYY-MM-DD (UTC)")],
    json_out: Json = False,
) -> None:
    """An account's invoice for a month or day: lines by lease, opening and closing balance."""
    out = _call("GET", f"/v1/invoices/{account}/{period}")
    if json_out:
        print_json(out)
        return
    console.print(f"invoice: {out['account']}, {out['period']}")
    console.print(f"opening balance {out['opening_balance_usd']} USD")
    table(
        "lines",
        ["for", "kind", "USD"],
        [[x["ref"], x["kind"], x["amount_usd"]] for x in out["lines"]],
    )
    console.print(f"total {out['total_usd']} USD; closing balance {out['closing_balance_usd']} USD")


# --- orders by workload: plan over what the market offers now ------------------------------
def market_pool() -> tuple[list[Any], list[str]]:
    """The open on-demand and reserved offers with free units, as a planner's pool (one entry
    per type, region, mode and price); and what was left out, with why."""
    from suanli.calibration.profile import resolve_accelerator
    from suanli.errors import UnknownNameError
    from suanli.perf.system import make_system
    from suanli.plan.pool import PoolEntry

    free: dict[tuple[str, str, str, str], int] = {}
    skipped: list[str] = []
    for o in _call("GET", "/v1/market/offers"):
        if o["state"] != "open" or not o["free"]:
            continue
        if o["mode"] == "spot":
            skipped.append(f"offer {o['id']}: spot can be reclaimed, so no deadline holds on it")
            continue
        key = (o["accelerator"], o["region"], o["mode"], o["price_usd_per_hour"])
        free[key] = free.get(key, 0) + int(o["free"])
    pool = []
    for (acc, region, mode, price), count in sorted(free.items()):
        try:
            chip = resolve_accelerator(acc)
        except UnknownNameError:
            skipped.append(f"{count} {acc} in {region}: no performance model for it")
            continue
        name = f"{acc}/{region}/{mode}@{float(price):g}"
        system = make_system(chip, price_usd_per_hour=float(price))
        pool.append(PoolEntry(name, system, count, region=region))
    return pool, skipped


def order_best(options: list[dict[str, Any]], hours_of: Any, json_out: bool) -> None:
    """Order the best single-type option at its offer's price, in its region."""
    best = next((o for o in options if not o.get("stages") and "/" in str(o["pool"])), None)
    if best is None:
        raise typer.BadParameter("no single-type option to order; order by hand")
    acc, region, rest = str(best["pool"]).split("/", 2)
    mode, price = rest.split("@")
    hours = max(0.01, round(hours_of(best) * 1.1, 3))  # 10% to spare over the prediction
    body = {
        "accelerator": acc,
        "count": int(best["num_devices"]),
        "max_price_usd_per_hour": float(price),
        "mode": mode,
        "hours": hours,
        "regions": [region],
        "idempotency_key": str(uuid.uuid4()),
    }
    out = _call("POST", "/v1/market/orders", json=body)
    if not json_out:
        console.print(
            f"ordered {body['count']} {acc} in {region} ({mode}, {price} USD/unit-h) for "
            f"{hours:g} h: order {out['id']}; run on it with `order: {out['id']}` in the spec"
        )
