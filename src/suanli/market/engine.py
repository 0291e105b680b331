"""Matching supply and demand: the rules of the market, as pure functions.

The service's market controller and the market simulator call the same code;
neither the database nor the clock is read here.

**Asks** are the free capacity of offers: units (devices, or CPU cores for the
``cpu`` type) of one accelerator type in one region, at a price per unit-hour.
**Bids** are orders: a type, a count, the regions allowed, a duration and a
maximum price per unit-hour.

The rules (docs/market.md states them for users):

* **On-demand and reserved: posted prices, price-time priority.** Orders are
  taken oldest first (ties by id). Each is filled, all or nothing, from the
  cheapest offers of its mode that it accepts (price at most its maximum, region
  allowed, window covering its whole duration, reserved: at least the offer's
  term), cheapest first, then oldest offer first. A lease costs the offer's
  posted price, so what was quoted is what is billed. An order that cannot be
  filled whole waits for the next round.
* **Spot: a uniform-price call auction per (type, region) at each interval.**
  Every spot order, new or already holding a lease, bids its maximum for its
  count; every spot offer asks its floor for its units. Bids are taken highest
  first (ties: oldest), each accepted while the cheapest units still unsold
  have floors at most its maximum. A holder competes in its own market; a new
  bid goes to the first region it allows with units no holder still needs, and
  only failing that competes for held units. The price is the floor of the
  dearest unit sold, raised to the highest maximum among bids rejected there
  (and served nowhere) while that stays at or below every accepted bid's
  maximum, so it rises with unmet demand. Every accepted bid pays that one
  price; at equal floors holders keep their units; a lease that loses its
  place is reclaimed with the site's notice.
* An order is filled within one region.

Properties (tests/test_market_engine.py checks each on random books): no buyer
pays above its maximum, no seller is paid below its price or floor, no unit is
sold twice, no lease outlives its offer, ties go to the earlier order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MODES = ("on-demand", "reserved", "spot")


@dataclass(slots=True)
class Ask:
    """An offer's capacity that is for sale now."""

    id: int
    accelerator: str
    region: str
    mode: str
    price_micro: int  # per unit-hour: the posted price, or the spot floor
    units: int  # free units (spot: free plus those its spot leases hold)
    starts_at: float
    ends_at: float
    created_at: float
    min_duration_s: float = 0.0  # reserved: the shortest term the provider accepts


@dataclass(slots=True)
class Bid:
    """An order (or a spot lease's standing order) wanting capacity."""

    id: int
    accelerator: str
    regions: frozenset[str]  # empty: any region
    mode: str
    max_price_micro: int  # per unit-hour
    units: int
    duration_s: float
    created_at: float
    #: spot: units this bid holds now, by ask id (empty for a new bid)
    holds: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fill:
    bid: int
    ask: int
    units: int
    price_micro: int  # per unit-hour
    ends_at: float  # the lease's end: the bid's duration, never past the offer's window


@dataclass
class SpotResult:
    #: per (type, region) market with spot units for sale: the clearing price (None: no sale)
    prices: dict[tuple[str, str], int | None]
    fills: list[Fill]  # every accepted bid's units this interval, by ask
    #: bids that held units and were not accepted (outbid): reclaimed with notice
    outbid: list[int]
    #: accepted bids whose units moved to another offer (their old ones sold above clearing)
    moved: list[int]
    #: units sold per market
    volume: dict[tuple[str, str], int]


def _order(b: Bid) -> tuple[float, int]:
    return (b.created_at, b.id)


def _accepts(b: Bid, a: Ask) -> bool:
    return (not b.regions or a.region in b.regions) and a.accelerator == b.accelerator


def match_posted(asks: Sequence[Ask], bids: Iterable[Bid], now: float) -> list[Fill]:
    """Fill on-demand and reserved orders at posted prices; ``asks``' units are taken.

    Asks are indexed by (type, mode) and sorted by (price, age) once, so each bid
    walks only the offers it could buy from, and stops at the first too dear. An
    order is filled within one region (a gang does not span regions): the first
    region whose cheapest offers cover it, which is the one with the lowest
    marginal price.
    """
    book: dict[tuple[str, str], list[Ask]] = defaultdict(list)
    for a in asks:
        if a.mode != "spot" and a.units > 0 and a.starts_at <= now < a.ends_at:
            book[(a.accelerator, a.mode)].append(a)
    for lst in book.values():
        lst.sort(key=lambda a: (a.price_micro, a.created_at, a.id))
    fills: list[Fill] = []
    for b in sorted((b for b in bids if b.mode != "spot"), key=_order):
        end = now + b.duration_s
        take: dict[str, list[tuple[Ask, int]]] = defaultdict(list)
        need: dict[str, int] = {}
        done: str | None = None
        for a in book.get((b.accelerator, b.mode), ()):
            if a.price_micro > b.max_price_micro:
                break
            if a.units <= 0 or a.ends_at < end or (b.regions and a.region not in b.regions):
                continue
            if b.duration_s < a.min_duration_s:
                continue
            n = min(need.setdefault(a.region, b.units), a.units)
            take[a.region].append((a, n))
            need[a.region] -= n
            if need[a.region] == 0:
                done = a.region
                break
        if done is None:
            continue  # all or nothing: it waits for more supply
        for a, n in take[done]:
            a.units -= n
            fills.append(Fill(b.id, a.id, n, a.price_micro, end))
    return fills


@dataclass
class _Market:
    key: tuple[str, str]
    sellers: list[Ask]
    floors: list[int]  # the floor of every unit for sale, cheapest first
    pending_held: int  # units holders of this market not yet considered hold
    sold: int = 0
    accepted: list[Bid] = field(default_factory=list)
    rejected_max: list[tuple[int, int]] = field(default_factory=list)  # (bid, max)

    def fits(self, b: Bid, reserve: int = 0) -> bool:
        n = self.sold + b.units
        return n + reserve <= len(self.floors) and self.floors[n - 1] <= b.max_price_micro


def clear_spot(asks: Sequence[Ask], bids: Iterable[Bid], now: float) -> SpotResult:
    """One spot interval: a uniform-price call auction per (type, region).

    Bids are taken highest first across all markets. A holder is tried in its own
    market only, so a standing lease is not moved across regions by chance. A new
    bid that allows several regions goes, in name order, to the first market with
    unsold units no holder of it still needs; only when there is none does it
    compete for held units (and so outbid a lower holder). A rejected bid raises a
    market's price only if it was served nowhere.
    """
    markets: dict[tuple[str, str], _Market] = {}
    region_of: dict[int, tuple[str, str]] = {}
    by_key: dict[tuple[str, str], list[Ask]] = defaultdict(list)
    for a in asks:
        if a.mode == "spot" and a.units > 0 and a.starts_at <= now < a.ends_at:
            by_key[(a.accelerator, a.region)].append(a)
            region_of[a.id] = (a.accelerator, a.region)
    spot_bids = sorted(
        (b for b in bids if b.mode == "spot"), key=lambda b: (-b.max_price_micro, *_order(b))
    )
    held: dict[tuple[str, str], int] = defaultdict(int)
    home: dict[int, tuple[str, str] | None] = {}
    for b in spot_bids:
        if b.holds:
            where = {region_of.get(i) for i in b.holds}
            home[b.id] = where.pop() if len(where) == 1 else None
            if home[b.id] is not None:
                held[home[b.id]] += b.units  # type: ignore[index]
    for key, lst in by_key.items():
        sellers = sorted(lst, key=lambda a: (a.price_micro, a.created_at, a.id))
        floors = [a.price_micro for a in sellers for _ in range(a.units)]
        markets[key] = _Market(key, sellers, floors, held[key])
    accepted_ids: set[int] = set()
    for b in spot_bids:
        if b.holds:
            m = markets.get(home[b.id]) if home[b.id] else None  # type: ignore[arg-type]
            if m is None:
                continue  # its offer is gone: taken back
            m.pending_held -= b.units
            chosen = m if m.fits(b) else None
            tried = [m]
        else:
            tried = [
                markets[k]
                for k in sorted(markets)
                if k[0] == b.accelerator and (not b.regions or k[1] in b.regions)
            ]
            chosen = next((m for m in tried if m.fits(b, m.pending_held)), None)
            chosen = chosen or next((m for m in tried if m.fits(b)), None)
        if chosen is None:
            for m in tried:
                m.rejected_max.append((b.id, b.max_price_micro))
            continue
        chosen.accepted.append(b)
        chosen.sold += b.units
        accepted_ids.add(b.id)
    prices: dict[tuple[str, str], int | None] = {}
    volume: dict[tuple[str, str], int] = {}
    fills: list[Fill] = []
    moved: list[int] = []
    for key in sorted(markets):
        m = markets[key]
        volume[key] = m.sold
        if not m.accepted:
            prices[key] = None
            continue
        lowest = min(b.max_price_micro for b in m.accepted)
        bump = [x for i, x in m.rejected_max if i not in accepted_ids and x <= lowest]
        price = max([m.floors[m.sold - 1], *bump])
        prices[key] = price
        fills += _assign(m, price, now, moved)
    outbid = [b.id for b in spot_bids if b.holds and b.id not in accepted_ids]
    return SpotResult(prices, fills, outbid, moved, volume)


def _assign(m: _Market, price: int, now: float, moved: list[int]) -> list[Fill]:
    """The ``m.sold`` cheapest units, by offer — at equal floors, those accepted holders
    already hold first, so nobody is moved for nothing — given to holders where they sit,
    then to newcomers."""
    mine: dict[int, int] = defaultdict(int)
    for b in m.accepted:
        for i, n in b.holds.items():
            mine[i] += n
    order = sorted(m.sellers, key=lambda a: (a.price_micro, -mine[a.id], a.created_at, a.id))
    quota: dict[int, int] = {}
    left = m.sold
    for a in order:
        n = min(left, a.units)
        if n:
            quota[a.id] = n
            left -= n
    end_of = {a.id: a.ends_at for a in m.sellers}
    fills: list[Fill] = []
    newcomers = []
    for b in sorted(m.accepted, key=_order):
        kept = {i: min(n, quota.get(i, 0)) for i, n in b.holds.items()}
        if b.holds and sum(kept.values()) == b.units:
            for i, n in kept.items():
                if n:
                    quota[i] -= n
                    fills.append(Fill(b.id, i, n, price, min(now + b.duration_s, end_of[i])))
        else:
            if b.holds:
                moved.append(b.id)
            newcomers.append(b)
    for b in newcomers:
        need = b.units
        for a in order:
            n = min(need, quota.get(a.id, 0))
            if n:
                quota[a.id] -= n
                need -= n
                fills.append(Fill(b.id, a.id, n, price, min(now + b.duration_s, a.ends_at)))
            if not need:
                break
    return fills
