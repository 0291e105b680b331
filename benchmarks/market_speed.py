"""Market matching throughput on one core: posted-price rounds and spot auctions.

    python benchmarks/market_speed.py [--orders 100000] [--offers 4000] [--seed 0]

Target (issue: market): >= 5,000 orders matched per second. The engine
(`suanli.market.engine`) is single-threaded pure Python, so this pins itself to
one core and measures one matching round at a time:

* `match_posted` over a book of ``--orders`` open on-demand and reserved orders
  and ``--offers`` offers (six accelerator types, four regions, every mode),
  all derived from ``--seed``. "Orders matched" counts every order the round
  considers, filled or left waiting, since each must be walked against the
  offers it could buy from; fills are counted separately. Demand is well above
  supply, as in a busy market, so most orders wait: the slow case, since an
  order that cannot be filled walks every offer it accepts.
* `clear_spot` over a book of ``--spot-bids`` spot bids (a tenth of them
  standing leases that hold units) against the same offers' spot capacity.

Prints one row per measurement (the median of ``--repeat`` rounds, each on a
fresh copy of the offers) and the ratio to the target. Always exits 0: this
reports, it does not gate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from suanli.market.engine import Ask, Bid, clear_spot, match_posted
from suanli.market.money import MICRO

T = TypeVar("T")
TARGET_PER_S = 5000
NOW = 1_800_000_000.0  # a fixed "now" (2027): nothing here reads the clock
HOUR = 3600.0
DAY = 24 * HOUR

# type: (list price in dollars per unit-hour, units per offer to pick from, units per order)
TYPES: dict[str, tuple[float, list[int], list[int]]] = {
    "h100": (2.50, [1, 2, 4, 8, 8, 8], [1, 1, 1, 2, 2, 4, 8]),
    "h200": (3.50, [4, 8, 8, 8], [1, 1, 2, 4, 8]),
    "a100-80gb": (1.60, [1, 2, 4, 8, 8], [1, 1, 1, 2, 4, 8]),
    "l40s": (0.90, [1, 2, 4, 4, 8], [1, 1, 1, 2, 4]),
    "mi300x": (2.80, [8, 8], [1, 2, 4, 8]),
    "cpu": (0.04, [16, 32, 64, 96, 128, 192], [1, 2, 4, 8, 16, 32, 64]),
}
TYPE_WEIGHTS = [30, 10, 20, 15, 5, 20]  # share of offers and orders, by TYPES' order
REGIONS = ["us-east", "us-west", "eu-west", "ap-south"]


def offers(n: int, rng: random.Random) -> list[Ask]:
    """``n`` offers: half on-demand, a quarter reserved (some with a shortest term), a
    quarter spot."""
    names = list(TYPES)
    out = []
    for i in range(n):
        acc = rng.choices(names, TYPE_WEIGHTS)[0]
        base, sizes, _ = TYPES[acc]
        mode = rng.choices(["on-demand", "reserved", "spot"], [50, 25, 25])[0]
        # spot floors sit below list price; posted prices scatter around it
        factor = rng.uniform(0.3, 0.9) if mode == "spot" else rng.uniform(0.8, 1.3)
        starts = NOW - rng.uniform(0, 30 * DAY)
        out.append(
            Ask(
                id=i + 1,
                accelerator=acc,
                region=rng.choice(REGIONS),
                mode=mode,
                price_micro=round(base * factor * MICRO),
                units=rng.choice(sizes),
                starts_at=starts,
                ends_at=NOW + rng.uniform(HOUR, 90 * DAY),
                created_at=starts - rng.uniform(0, DAY),
                # reserved: the shortest term the provider accepts
                min_duration_s=rng.choice([0.0, 7 * DAY, 30 * DAY]) if mode == "reserved" else 0.0,
            )
        )
    return out


def _regions(rng: random.Random) -> frozenset[str]:
    r = rng.random()
    if r < 0.4:
        return frozenset()  # any region
    return frozenset(rng.sample(REGIONS, 1 if r < 0.85 else 2))


def orders(n: int, rng: random.Random, modes: list[str], weights: list[int]) -> list[Bid]:
    names = list(TYPES)
    out = []
    for i in range(n):
        acc = rng.choices(names, TYPE_WEIGHTS)[0]
        base, _, wants = TYPES[acc]
        mode = rng.choices(modes, weights)[0]
        if mode == "reserved":
            duration = rng.choice([7 * DAY, 30 * DAY])
        else:
            duration = rng.choice([HOUR, 4 * HOUR, DAY, 7 * DAY])
        out.append(
            Bid(
                id=i + 1,
                accelerator=acc,
                regions=_regions(rng),
                mode=mode,
                max_price_micro=round(base * rng.uniform(0.5, 1.5) * MICRO),
                units=rng.choice(wants),
                duration_s=duration,
                created_at=NOW - rng.uniform(0, DAY),
            )
        )
    return out


def with_holds(bids: list[Bid], asks: list[Ask], share: float, rng: random.Random) -> None:
    """Make about ``share`` of the spot ``bids`` standing leases, each holding all its units
    on one live spot offer of its type with room for them (its region then is the offer's)."""
    room = {
        a.id: a.units
        for a in asks
        if a.mode == "spot" and a.starts_at <= NOW < a.ends_at and a.units > 0
    }
    by_type: dict[str, list[Ask]] = {}
    for a in asks:
        if a.id in room:
            by_type.setdefault(a.accelerator, []).append(a)
    for b in bids:
        if rng.random() >= share or b.accelerator not in by_type:
            continue
        a = rng.choice(by_type[b.accelerator])
        if room[a.id] >= b.units:
            room[a.id] -= b.units
            b.holds = {a.id: b.units}
            b.regions = frozenset({a.region})


def timed(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Median wall time of ``repeat`` calls (at least one), and the last call's result."""
    walls = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=100_000, help="open on-demand/reserved orders")
    ap.add_argument("--offers", type=int, default=4000, help="offers, every mode")
    ap.add_argument("--spot-bids", type=int, default=100_000, help="spot bids for clear_spot")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="rounds per figure (median)")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    rng = random.Random(args.seed)
    asks = offers(args.offers, rng)
    book = orders(args.orders, rng, ["on-demand", "reserved"], [70, 30])
    spot = orders(args.spot_bids, rng, ["spot"], [1])
    with_holds(spot, asks, 0.1, rng)

    posted_units = sum(a.units for a in asks if a.mode != "spot")
    spot_units = sum(a.units for a in asks if a.mode == "spot")
    print(
        f"book (seed {args.seed}): {len(asks):,} offers over {len(TYPES)} types x "
        f"{len(REGIONS)} regions ({posted_units:,} posted units, {spot_units:,} spot units); "
        f"{len(book):,} on-demand/reserved orders wanting {sum(b.units for b in book):,} units; "
        f"{len(spot):,} spot bids ({sum(1 for b in spot if b.holds):,} holding units)"
    )
    print("one core, single-threaded pure Python; median of", args.repeat, "rounds\n")

    posted_wall, posted = timed(
        lambda: match_posted([dataclasses.replace(a) for a in asks], book, NOW), args.repeat
    )
    copy_wall, _ = timed(lambda: [dataclasses.replace(a) for a in asks], args.repeat)
    posted_wall -= copy_wall  # the copy of the offers is not the engine's work
    filled = len({f.bid for f in posted})
    spot_wall, res = timed(lambda: clear_spot(asks, spot, NOW), args.repeat)
    spot_fills = res.fills
    accepted = len({f.bid for f in spot_fills})

    rate = len(book) / posted_wall
    rows = [
        ("match_posted", "orders matched", len(book), posted_wall),
        ("match_posted", f"fills ({filled:,} orders filled)", len(posted), posted_wall),
        ("clear_spot", "bids cleared", len(spot), spot_wall),
        ("clear_spot", f"fills ({accepted:,} bids accepted)", len(spot_fills), spot_wall),
    ]
    print(f"{'call':13s} {'counted':32s} {'count':>9s} {'wall s':>8s} {'per s':>11s}")
    for call, what, n, wall in rows:
        print(f"{call:13s} {what:32s} {n:9,d} {wall:8.3f} {n / wall:11,.0f}")
    print(
        f"\nmatch_posted: {rate:,.0f} orders matched/s = {rate / TARGET_PER_S:.1f}x the "
        f"{TARGET_PER_S:,}/s target ({'met' if rate >= TARGET_PER_S else 'NOT met'})"
    )
    spot_rate = len(spot) / spot_wall
    print(
        f"clear_spot:   {spot_rate:,.0f} bids cleared/s = {spot_rate / TARGET_PER_S:.1f}x the "
        f"same {TARGET_PER_S:,}/s figure"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
