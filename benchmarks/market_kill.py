"""SIGKILL the service while the market trades: is every offer, order, lease and cent kept?

    python benchmarks/market_kill.py [--rounds 12] [--seed 0]

`suanli up` (SQLite, local executor) runs with a 1 s spot interval and per-second
billing. A provider (registered GPU nodes) offers on-demand and spot capacity;
two users order on-demand and spot, outbidding each other, and cancel, from a
client thread; between rounds the service is SIGKILLed at a random moment and
restarted at once. Every call answered 201 is remembered. At the end it checks:

- lost: an acknowledged offer, order or deposit missing from the store;
- money: the sum of all balances (must be 0), and every transfer's two legs;
- double booking: a transfer key booked twice (the unique index forbids it; the
  check reads the table);
- leases: one lease per unit at a time, none past its offer, none above its
  buyer's maximum, metered <= leased, charged <= hold.

Prints the figures. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import itertools
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

from suanli.run.local import free_port

sys.path.insert(0, str(Path(__file__).parent))
import kill_restart


def start(data: Path, port: int) -> subprocess.Popen[bytes]:
    return kill_restart.start(data, port, "--spot-interval-s", "1", "--billing", "second")


def traffic(
    url: str,
    toks: dict[str, str],
    stop: threading.Event,
    rng: random.Random,
    acked: dict[str, set[int]],
    deposits: set[str],
) -> None:
    """Offers, orders, cancels and deposits until ``stop``; remembers what was acknowledged."""
    h = {k: {"Authorization": f"Bearer {v}"} for k, v in toks.items()}
    n = 0
    while not stop.is_set():
        n += 1
        try:
            pick = rng.random()
            if pick < 0.25:
                body = {
                    "accelerator": "h100-sxm",
                    "count": rng.randint(1, 2),
                    "price_usd_per_hour": rng.choice([1.0, 2.0, 3.0]),
                    "mode": rng.choice(["on-demand", "spot"]),
                    "hours": 0.02,
                    "notice_s": 1.0,
                    "idempotency_key": f"offer-{rng.random()}",
                }
                r = httpx.post(f"{url}/v1/market/offers", json=body, headers=h["prov"], timeout=5)
                if r.status_code == 201:
                    acked["offer"].add(r.json()["id"])
            elif pick < 0.7:
                who = rng.choice(["u1", "u2"])
                body = {
                    "accelerator": "h100-sxm",
                    "count": rng.randint(1, 2),
                    "max_price_usd_per_hour": rng.choice([1.5, 2.5, 4.0]),
                    "mode": rng.choice(["on-demand", "spot"]),
                    "hours": 0.01,
                    "idempotency_key": f"order-{rng.random()}",
                }
                r = httpx.post(f"{url}/v1/market/orders", json=body, headers=h[who], timeout=5)
                if r.status_code == 201:
                    acked["order"].add(r.json()["id"])
            elif pick < 0.85:
                who = rng.choice(["u1", "u2"])
                mine = httpx.get(f"{url}/v1/market/orders", headers=h[who], timeout=5).json()
                live = [
                    o["id"]
                    for o in mine
                    if o["state"] in ("open", "filled") and o["mode"] != "reserved"
                ]
                if live:
                    httpx.post(
                        f"{url}/v1/market/orders/{rng.choice(live)}/cancel",
                        headers=h[who],
                        timeout=5,
                    )
            else:
                key = f"dep-{n}-{rng.random()}"
                body = {
                    "account": rng.choice(["u1", "u2"]),
                    "amount_usd": 5.0,
                    "idempotency_key": key,
                }
                r = httpx.post(
                    f"{url}/v1/ledger/deposits", json=body, headers=h["admin"], timeout=5
                )
                if r.status_code == 201:
                    deposits.add(key)
        except httpx.HTTPError:
            time.sleep(0.05)  # the service is down between a kill and its restart


def check(db: Path, acked: dict[str, set[int]], deposits: set[str]) -> dict[str, Any]:
    import hashlib

    con = sqlite3.connect(db)
    q = con.execute
    have = {
        "offer": {r[0] for r in q("SELECT id FROM market_offers")},
        "order": {r[0] for r in q("SELECT id FROM market_orders")},
    }
    lost = {k: len(acked[k] - have[k]) for k in acked}
    txns = {r[0] for r in q("SELECT txn FROM ledger_entries")}
    lost["deposit"] = sum(
        1 for k in deposits if "deposit:" + hashlib.sha256(k.encode()).hexdigest() not in txns
    )
    total = q("SELECT COALESCE(SUM(amount_micro), 0) FROM ledger_entries").fetchone()[0]
    unbalanced = q(
        "SELECT COUNT(*) FROM (SELECT txn FROM ledger_entries GROUP BY txn "
        "HAVING SUM(amount_micro) != 0 OR COUNT(*) != 2)"
    ).fetchone()[0]
    doubled = q(
        "SELECT COUNT(*) FROM (SELECT txn, leg FROM ledger_entries GROUP BY txn, leg "
        "HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    leases = q(
        "SELECT l.id, l.units, l.starts_at, l.ends_at, l.price_micro, o.max_price_micro, "
        "f.ends_at, l.used_unit_s, l.hold_micro FROM market_leases l JOIN market_orders o "
        "ON o.id = l.order_id JOIN market_offers f ON f.id = l.offer_id"
    ).fetchall()
    charged = dict(
        q(
            "SELECT ref, SUM(amount_micro) FROM ledger_entries WHERE kind='charge' "
            "AND leg=1 GROUP BY ref"
        ).fetchall()
    )
    import json

    bad = 0
    windows: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for lid, units, start, end, price, top, offer_end, used, hold in leases:
        units = json.loads(units)
        bad += end > offer_end + 1e-6 or price > top or used > len(units) * (end - start) + 1e-6
        bad += charged.get(f"lease:{lid}", 0) > hold
        for u in units:
            windows[(u["node"], u["index"])].append((start, end))
    overlaps = 0
    for spans in windows.values():
        spans.sort()
        overlaps += sum(1 for (_, e), (s, _) in itertools.pairwise(spans) if s < e - 1e-6)
    return {
        "offers acknowledged": len(acked["offer"]),
        "orders acknowledged": len(acked["order"]),
        "deposits acknowledged": len(deposits),
        "leases": len(leases),
        "ledger entries": q("SELECT COUNT(*) FROM ledger_entries").fetchone()[0],
        "lost offers/orders/deposits": f"{lost['offer']}/{lost['order']}/{lost['deposit']}",
        "sum of balances (micro-USD)": total,
        "unbalanced transfers": unbalanced,
        "transfers booked twice": doubled,
        "units leased twice at once": overlaps,
        "leases breaking a term": bad,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    console = Console()
    data = Path(tempfile.mkdtemp(prefix="suanli-market-kill-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    svc = start(data, port)
    admin = (data / "admin.token").read_text().strip()
    ha = {"Authorization": f"Bearer {admin}"}
    toks = {"admin": admin}
    for role, name in (("provider", "prov"), ("user", "u1"), ("user", "u2")):
        r = httpx.post(f"{url}/v1/tokens", json={"role": role, "owner": name}, headers=ha)
        toks[name] = r.json()["token"]
    hp = {"Authorization": f"Bearer {toks['prov']}"}
    for i in range(4):
        body = {
            "cpu_cores": 64,
            "memory_mib": 512_000,
            "devices": [{"index": d, "accelerator": "h100-sxm"} for d in range(8)],
        }
        httpx.put(f"{url}/v1/nodes/gpu-{i}", json=body, headers=hp).raise_for_status()
    acked: dict[str, set[int]] = {"offer": set(), "order": set()}
    deposits: set[str] = set()
    stop = threading.Event()
    client = threading.Thread(target=traffic, args=(url, toks, stop, rng, acked, deposits))
    client.start()
    t0 = time.monotonic()
    with Progress(console=console) as bar:
        task = bar.add_task("kill, restart", total=args.rounds)
        for _ in range(args.rounds):
            time.sleep(rng.uniform(1.0, 4.0))  # let it trade: matches, bills, reclaims
            svc.send_signal(signal.SIGKILL)
            svc.wait()
            svc = start(data, port)
            bar.advance(task)
    time.sleep(3)
    stop.set()
    client.join()
    svc.send_signal(signal.SIGTERM)
    svc.wait(timeout=30)
    figures = check(data / "suanli.db", acked, deposits)
    figures["wall s"] = round(time.monotonic() - t0, 1)
    figures["kills"] = args.rounds
    for k, v in figures.items():
        console.print(f"{k:>32}: {v}")
    ok = (
        figures["lost offers/orders/deposits"] == "0/0/0"
        and figures["sum of balances (micro-USD)"] == 0
    )
    ok = ok and not (figures["unbalanced transfers"] or figures["transfers booked twice"])
    ok = ok and not (figures["units leased twice at once"] or figures["leases breaking a term"])
    console.print("all kept" if ok else "[red]something was lost or broken[/red]")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
