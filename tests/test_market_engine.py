"""The market's matching rules hold on random books (Hypothesis), plus targeted examples.

Posted prices (`match_posted`): no buyer pays above its maximum, no seller below its
posted price, all or nothing and within one region, no unit sold twice, no lease
outlives its offer or is shorter than its term, modes, regions and types respected,
cheapest (then oldest) offer first, the region of the lowest marginal price, oldest
order first, and no order is left waiting while the supply left over in one region
could have filled it.

Spot (`clear_spot`): one price per market, between every sold floor and every accepted
maximum, raised only by bids served nowhere; no unit sold twice, every accepted bid gets
exactly its units in one market, holders not accepted are exactly the outbid, holders
keep their own offer when it is among the units sold, the cheapest units are the ones
sold, price-time priority among bids.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import defaultdict
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from suanli.market.engine import MODES, Ask, Bid, Fill, SpotResult, clear_spot, match_posted

NOW = 1_000_000.0
TYPES = ("h100", "cpu")
REGIONS = ("east", "west")
REGION_SETS: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset({"east"}),
    frozenset({"west"}),
    frozenset({"east", "west"}),
)
# prices: a few on purpose, so that equal prices (and equal maxima) are common, asks
# mostly cheap and bids mostly dear, so that trades happen; None stands for any price,
# drawn from 0..50_000_000
ASK_PRICES = [0, 1, 1, 2_000_000, 2_000_000, 2_500_000, 50_000_000, None]
BID_PRICES = [0, 1, 2_000_000, 2_000_000, 2_500_000, 2_500_000, 50_000_000, None]
ANY_PRICE = st.integers(0, 50_000_000)
CREATED_AT = [0.0, 1.0, 2.0, 3.0]  # few values: ties in time are common
DURATIONS = [3600.0, 1.0, 1800.0, 7200.0, 86_400.0]

# examples per property (~0.5 s each at 200); SUANLI_MARKET_EXAMPLES=5000 for a long hunt
EXAMPLES = int(os.environ.get("SUANLI_MARKET_EXAMPLES", "200"))
PROPS = settings(max_examples=EXAMPLES, deadline=None)


@dataclass
class Book:
    asks: list[Ask]
    bids: list[Bid]


def ask(
    id: int,
    price: int,
    units: int = 1,
    *,
    accelerator: str = "h100",
    region: str = "east",
    mode: str = "on-demand",
    starts_at: float = NOW - 3600,
    ends_at: float = NOW + 86_400,
    created_at: float = 0.0,
    min_duration_s: float = 0.0,
) -> Ask:
    return Ask(
        id, accelerator, region, mode, price, units, starts_at, ends_at, created_at, min_duration_s
    )


def bid(
    id: int,
    max_price: int,
    units: int = 1,
    *,
    accelerator: str = "h100",
    regions: frozenset[str] = frozenset(),
    mode: str = "on-demand",
    duration_s: float = 3600.0,
    created_at: float = 0.0,
    holds: dict[int, int] | None = None,
) -> Bid:
    return Bid(
        id, accelerator, regions, mode, max_price, units, duration_s, created_at, dict(holds or {})
    )


# Strategies are built once, and each ask's (and bid's) discrete fields are one draw
# from their product: Hypothesis spends ~60 µs per choice, so fewer choices keep 200
# examples per property fast. Hypothesis draws small indices far more often, so the
# leading factors (and the first value of each) are those whose bias is harmless: an
# early creation time (ties), an offer open now.
ASK_FIELDS = st.tuples(
    ANY_PRICE,
    st.sampled_from(
        list(
            itertools.product(
                CREATED_AT,
                [-7200.0, -1.0, 0.0, 1.0],  # starts_at - now: some not yet open
                [1e6, 86_400.0, 7200.0, 3600.0, 1800.0, 1.0, 0.0],  # ends_at - now
                [1, 1, 2, 2, 3, 4, 6, 8],  # units: scarce, so that bids compete
                TYPES,
                REGIONS,
                MODES,
                ASK_PRICES,
            )
        )
    ),
)
BID_FIELDS = st.tuples(
    ANY_PRICE,
    st.sampled_from(
        list(
            itertools.product(
                CREATED_AT,
                DURATIONS,
                REGION_SETS,
                range(1, 9),  # units
                TYPES,
                MODES,
                [False, True],  # a spot bid: whether it holds units
                [False, False, True],  # a twin of the bid before, but for its time
                BID_PRICES,
            )
        )
    ),
)
ASK_LISTS = st.lists(ASK_FIELDS, max_size=12)
BID_LISTS = st.lists(BID_FIELDS, max_size=16)
UP_TO = [st.integers(0, k) for k in range(9)]
MIN_TERMS = st.sampled_from([0.0, 1800.0, 7200.0, 86_400.0])  # a reserved offer's shortest term
# 0: a wide book; 1: narrow; 2, 3, 4: narrow, every ask and bid of MODES[0], [1], [2]
NARROW = st.sampled_from([4, 0, 1, 2, 3, 4, 1])


def market(a: Ask) -> tuple[str, str]:
    return (a.accelerator, a.region)


@st.composite
def books(draw: st.DrawFn) -> Book:
    """A random book: asks of every mode (some not live now, reserved ones with a
    shortest term), bids of every mode.

    Spot bids may hold units on live or dead spot asks of their own (type, region);
    what they hold sums to their units, and no ask has more held than it has units.
    A third of the bids are twins of the one before but for their time (and holds).
    Two books in three are narrow (the asks of one type and one region, the bids of that
    type), and half of those of one mode too, so that orders compete for the same units.
    """
    narrow = draw(NARROW)
    one_mode = MODES[narrow - 2] if narrow >= 2 else None
    asks = []
    for i, (raw, (created, start, end, units, acc, region, mode, price)) in enumerate(
        draw(ASK_LISTS)
    ):
        mode = one_mode or mode
        asks.append(
            ask(
                100 + i,
                raw if price is None else price,
                units,
                accelerator=TYPES[0] if narrow else acc,
                region=REGIONS[0] if narrow else region,
                mode=mode,
                starts_at=NOW + start,
                ends_at=NOW + end,
                created_at=created,
                min_duration_s=draw(MIN_TERMS) if mode == "reserved" else 0.0,
            )
        )
    free = {a.id: a.units for a in asks if a.mode == "spot"}  # units not yet held
    bids: list[Bid] = []
    for i, (raw, (created, duration, regions, units, acc, mode, holder, twin, price)) in enumerate(
        draw(BID_LISTS)
    ):
        if twin and bids:  # the same order placed at another time: time priority decides
            b = bids[-1]
            bids.append(dataclasses.replace(b, id=i + 1, created_at=created, holds={}))
            continue
        holds: dict[int, int] = {}
        mode = one_mode or mode
        if mode == "spot" and holder:
            markets = sorted({market(a) for a in asks if free.get(a.id, 0)})
            if markets:
                key = markets[draw(UP_TO[len(markets) - 1])]
                mine = [a.id for a in asks if free.get(a.id, 0) and market(a) == key]
                acc = key[0]
                for aid in mine:
                    n = draw(UP_TO[min(free[aid], 8 - sum(holds.values()))])
                    if n:
                        holds[aid] = n
                if not holds:  # hold at least one unit
                    holds[mine[0]] = 1
                for aid, n in holds.items():
                    free[aid] -= n
                units = sum(holds.values())
        bids.append(
            bid(
                i + 1,
                raw if price is None else price,
                units,
                accelerator=TYPES[0] if narrow else acc,
                regions=regions,
                mode=mode,
                duration_s=duration,
                created_at=created,
                holds=holds,
            )
        )
    return Book(asks, bids)


def copies(asks: list[Ask]) -> list[Ask]:
    return [dataclasses.replace(a) for a in asks]


def live(a: Ask) -> bool:
    return a.units > 0 and a.starts_at <= NOW < a.ends_at


def posted_eligible(b: Bid, a: Ask) -> bool:
    """Whether posted-price order ``b`` would accept ask ``a`` (ignoring its units)."""
    return (
        a.mode == b.mode
        and a.accelerator == b.accelerator
        and (not b.regions or a.region in b.regions)
        and a.price_micro <= b.max_price_micro
        and a.starts_at <= NOW < a.ends_at
        and a.ends_at >= NOW + b.duration_s
        and b.duration_s >= a.min_duration_s
    )


def run_posted(book: Book) -> tuple[dict[int, Ask], dict[int, Ask], list[Fill]]:
    """(asks before, asks after, fills) for one round of match_posted on a copy of the book."""
    after = copies(book.asks)
    fills = match_posted(after, book.bids, NOW)
    return {a.id: a for a in book.asks}, {a.id: a for a in after}, fills


def by_bid(fills: list[Fill]) -> dict[int, list[Fill]]:
    out: dict[int, list[Fill]] = defaultdict(list)
    for f in fills:
        out[f.bid].append(f)
    return out


def sold_per_ask(fills: list[Fill]) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for f in fills:
        out[f.ask] += f.units
    return out


# ---------------------------------------------------------------- posted prices


@PROPS
@given(books())
def test_posted_prices_within_limits(book: Book) -> None:
    """No buyer pays above its maximum; every fill costs exactly the ask's posted price."""
    before, _, fills = run_posted(book)
    bids = {b.id: b for b in book.bids}
    for f in fills:
        assert f.price_micro <= bids[f.bid].max_price_micro
        assert f.price_micro == before[f.ask].price_micro


@PROPS
@given(books())
def test_posted_all_or_nothing(book: Book) -> None:
    """A filled order gets exactly its units (summed over asks); none is partly filled."""
    _, _, fills = run_posted(book)
    bids = {b.id: b for b in book.bids}
    for bid_id, fs in by_bid(fills).items():
        assert sum(f.units for f in fs) == bids[bid_id].units
        assert all(f.units > 0 for f in fs)
        assert len({f.ask for f in fs}) == len(fs)  # one fill per (bid, ask)


@PROPS
@given(books())
def test_posted_no_unit_sold_twice(book: Book) -> None:
    """No ask sells more than it had, and its ``units`` go down by exactly what it sold."""
    before, after, fills = run_posted(book)
    sold = sold_per_ask(fills)
    for aid, a in before.items():
        assert sold.get(aid, 0) <= a.units
        assert after[aid].units == a.units - sold.get(aid, 0)


@PROPS
@given(books())
def test_posted_lease_never_outlives_offer(book: Book) -> None:
    """A fill ends at now + the order's duration, never after its ask's end; the ask is live
    and the order is at least the ask's shortest term."""
    before, _, fills = run_posted(book)
    bids = {b.id: b for b in book.bids}
    for f in fills:
        a = before[f.ask]
        assert f.ends_at == NOW + bids[f.bid].duration_s
        assert f.ends_at <= a.ends_at
        assert a.starts_at <= NOW < a.ends_at
        assert bids[f.bid].duration_s >= a.min_duration_s  # a reserved offer's term is kept


@PROPS
@given(books())
def test_posted_modes_regions_types(book: Book) -> None:
    """On-demand orders buy only on-demand offers, reserved only reserved, spot nothing;
    every fill is of the order's type and in a region it allows; an order is filled within
    one region."""
    before, _, fills = run_posted(book)
    bids = {b.id: b for b in book.bids}
    for f in fills:
        b, a = bids[f.bid], before[f.ask]
        assert b.mode != "spot" and a.mode != "spot"
        assert a.mode == b.mode
        assert a.accelerator == b.accelerator
        assert not b.regions or a.region in b.regions
    for fs in by_bid(fills).values():
        assert len({before[f.ask].region for f in fs}) == 1  # a gang does not span regions


def rank(a: Ask) -> tuple[int, float, int]:
    """An ask's place in the queue of offers: cheapest, then oldest, then lowest id."""
    return (a.price_micro, a.created_at, a.id)


@PROPS
@given(books())
def test_posted_cheapest_then_oldest_offer_first(book: Book) -> None:
    """Price priority: a filled order took nothing dearer (by price, then age, then id) than
    an ask it accepts, in the region it was filled in, that still has free units after the
    round.

    Units only ever go down, so such an ask had at least those units free when the order
    was matched, and the order, walking the cheapest first, would have taken them.
    """
    before, after, fills = run_posted(book)
    bids = {b.id: b for b in book.bids}
    for bid_id, fs in by_bid(fills).items():
        b = bids[bid_id]
        dearest = max(rank(before[f.ask]) for f in fs)
        region = before[fs[0].ask].region
        for aid, a in before.items():
            if posted_eligible(b, a) and a.region == region and after[aid].units > 0:
                assert rank(a) >= dearest, (b, a, fs)


@PROPS
@given(books())
def test_posted_region_of_lowest_marginal_price(book: Book) -> None:
    """A filled order went to the region whose cheapest offers covered it first: in every
    other region, the free units (after the round) of the asks it accepts that rank before
    the dearest ask it took are fewer than it wants."""
    before, after, fills = run_posted(book)
    bids = {b.id: b for b in book.bids}
    for bid_id, fs in by_bid(fills).items():
        b = bids[bid_id]
        dearest = max(rank(before[f.ask]) for f in fs)
        region = before[fs[0].ask].region
        for other in REGIONS:
            if other != region:
                left = sum(
                    after[aid].units
                    for aid, a in before.items()
                    if posted_eligible(b, a) and a.region == other and rank(a) < dearest
                )
                assert left < b.units, (b, other, fs)


@PROPS
@given(books())
def test_posted_no_missed_trade(book: Book) -> None:
    """An order left unfilled could not be filled from the supply left over either: in each
    region, the free units, after the round, of the asks it accepts are fewer than it wants."""
    _, after, fills = run_posted(book)
    filled = {f.bid for f in fills}
    for b in book.bids:
        if b.mode == "spot" or b.id in filled:
            continue
        for region in REGIONS:
            left = sum(
                a.units for a in after.values() if posted_eligible(b, a) and a.region == region
            )
            assert left < b.units, (b, region)


def dominates(b1: Bid, b2: Bid) -> bool:
    """Whether ``b1`` accepts every ask ``b2`` accepts and wants no more units than ``b2``
    (the same duration: a shorter one might be below some offer's term)."""
    return (
        b1.mode == b2.mode
        and b1.accelerator == b2.accelerator
        and b1.max_price_micro >= b2.max_price_micro
        and b1.units <= b2.units
        and b1.duration_s == b2.duration_s
        and (not b1.regions or (bool(b2.regions) and b2.regions <= b1.regions))
    )


@PROPS
@given(books())
def test_posted_time_priority(book: Book) -> None:
    """Time priority: if a younger order was filled, every older order that accepts all it
    accepts and wants no more units was filled too (ties in time: the lower id is older)."""
    _, _, fills = run_posted(book)
    filled = {f.bid for f in fills}
    for b2 in book.bids:
        if b2.id not in filled:
            continue
        for b1 in book.bids:
            if (
                b1.mode != "spot"
                and (b1.created_at, b1.id) < (b2.created_at, b2.id)
                and dominates(b1, b2)
            ):
                assert b1.id in filled, (b1, b2)


def test_posted_older_order_wins_the_last_unit() -> None:
    """Time priority, by example: one unit, two equal orders; the older gets it, whatever the
    order they are passed in and whatever their ids."""
    for bids in (
        [bid(1, 5, created_at=20.0), bid(2, 5, created_at=10.0)],
        [bid(2, 5, created_at=10.0), bid(1, 5, created_at=20.0)],
    ):
        fills = match_posted([ask(100, 3)], bids, NOW)
        assert fills == [Fill(2, 100, 1, 3, NOW + 3600)]
    # same time: the lower id goes first
    fills = match_posted([ask(100, 3)], [bid(8, 5, created_at=1.0), bid(7, 5, created_at=1.0)], NOW)
    assert [f.bid for f in fills] == [7]


def test_posted_fills_cheapest_then_oldest_across_offers() -> None:
    """By example: an order spans offers cheapest first, then oldest at equal price; it pays
    each offer's own price; a dearer offer and a too-short one are left alone."""
    asks = [
        ask(100, 4, 2),
        ask(101, 3, 1, created_at=5.0),
        ask(102, 3, 1, created_at=1.0),
        ask(103, 1, 8, ends_at=NOW + 60),  # ends before the lease would
        ask(104, 9, 8),  # above the maximum
    ]
    fills = match_posted(asks, [bid(1, 5, 3)], NOW)
    assert fills == [
        Fill(1, 102, 1, 3, NOW + 3600),
        Fill(1, 101, 1, 3, NOW + 3600),
        Fill(1, 100, 1, 4, NOW + 3600),
    ]
    assert [a.units for a in asks] == [1, 0, 0, 8, 8]


def test_posted_all_or_nothing_waits() -> None:
    """By example: an order larger than the supply it accepts takes nothing; a smaller,
    younger one behind it is filled."""
    asks = [ask(100, 1, 3)]
    fills = match_posted(asks, [bid(1, 5, 4, created_at=0.0), bid(2, 5, 2, created_at=1.0)], NOW)
    assert fills == [Fill(2, 100, 2, 1, NOW + 3600)]
    assert asks[0].units == 1


def test_posted_reserved_term() -> None:
    """By example: a reserved offer with a shortest term of a day takes no order for less;
    a shorter order goes to an offer without a term, though it is dearer."""
    asks = [
        ask(100, 1, 4, mode="reserved", min_duration_s=86_400.0),
        ask(101, 2, 4, mode="reserved"),
    ]
    short = bid(1, 5, 2, mode="reserved", duration_s=3600.0)
    long = bid(2, 5, 2, mode="reserved", duration_s=86_400.0, created_at=1.0)
    fills = match_posted(asks, [short, long], NOW)
    assert fills == [Fill(1, 101, 2, 2, NOW + 3600), Fill(2, 100, 2, 1, NOW + 86_400)]


# ---------------------------------------------------------------- spot


def run_spot(book: Book) -> tuple[SpotResult, dict[int, Ask], dict[int, Bid]]:
    asks = copies(book.asks)
    res = clear_spot(asks, book.bids, NOW)
    assert [(a.id, a.units) for a in asks] == [(a.id, a.units) for a in book.asks]  # untouched
    return res, {a.id: a for a in book.asks}, {b.id: b for b in book.bids}


@PROPS
@given(books())
def test_spot_uniform_price_within_limits(book: Book) -> None:
    """Every fill in a market pays that market's one clearing price, which is at most every
    accepted bid's maximum and at least the floor of every ask that sold."""
    res, asks, bids = run_spot(book)
    for f in res.fills:
        key = market(asks[f.ask])
        assert res.prices[key] is not None
        assert f.price_micro == res.prices[key]
        assert f.price_micro <= bids[f.bid].max_price_micro
        assert f.price_micro >= asks[f.ask].price_micro
    for key, price in res.prices.items():
        if price is None:
            assert res.volume[key] == 0
            assert not any(market(asks[f.ask]) == key for f in res.fills)


@PROPS
@given(books())
def test_spot_price_is_a_floor_or_a_rejected_maximum(book: Book) -> None:
    """The clearing price is the floor of the dearest unit sold, or (raised with unmet
    demand) the maximum of a spot bid of that type that was served nowhere: a bid served
    in another market does not raise this one's price."""
    res, asks, bids = run_spot(book)
    accepted = {f.bid: market(asks[f.ask]) for f in res.fills}
    for key, price in res.prices.items():
        if price is None:
            continue
        floors = {asks[f.ask].price_micro for f in res.fills if market(asks[f.ask]) == key}
        rejected = {
            b.max_price_micro
            for b in bids.values()
            if b.mode == "spot" and b.accelerator == key[0] and b.id not in accepted
        }
        assert price == max(floors) or (price in rejected and price > max(floors))


@PROPS
@given(books())
def test_spot_exact_units_one_market(book: Book) -> None:
    """Each accepted bid gets exactly its units, all in one market of its type (one it
    allows, unless it holds units: then in the market of what it holds); only spot bids
    and live spot asks trade."""
    res, asks, bids = run_spot(book)
    for bid_id, fs in by_bid(res.fills).items():
        b = bids[bid_id]
        assert b.mode == "spot"
        assert sum(f.units for f in fs) == b.units
        assert all(f.units > 0 for f in fs)
        keys = {market(asks[f.ask]) for f in fs}
        assert len(keys) == 1
        (key,) = keys
        assert key[0] == b.accelerator
        if b.holds:
            assert {market(asks[i]) for i in b.holds} == {key}
        else:
            assert not b.regions or key[1] in b.regions
        for f in fs:
            assert asks[f.ask].mode == "spot" and live(asks[f.ask])


@PROPS
@given(books())
def test_spot_no_unit_sold_twice_and_volume(book: Book) -> None:
    """No ask sells more than its units; ``volume`` per market is the units sold there."""
    res, asks, _ = run_spot(book)
    for aid, n in sold_per_ask(res.fills).items():
        assert n <= asks[aid].units
    vol: dict[tuple[str, str], int] = defaultdict(int)
    for f in res.fills:
        vol[market(asks[f.ask])] += f.units
    assert {k: v for k, v in res.volume.items() if v} == dict(vol)
    assert set(res.volume) == set(res.prices)
    # a market is reported for every (type, region) with a live spot ask
    assert set(res.prices) == {market(a) for a in asks.values() if a.mode == "spot" and live(a)}


@PROPS
@given(books())
def test_spot_lease_never_outlives_offer(book: Book) -> None:
    """A spot lease ends at now + the bid's duration or at its offer's end, whichever is
    first."""
    res, asks, bids = run_spot(book)
    for f in res.fills:
        assert f.ends_at <= asks[f.ask].ends_at
        assert f.ends_at == min(NOW + bids[f.bid].duration_s, asks[f.ask].ends_at)


@PROPS
@given(books())
def test_spot_outbid_and_moved(book: Book) -> None:
    """The bids that held units and are not in the fills are exactly ``outbid``; an accepted
    holder keeps exactly what it held unless it is listed in ``moved``."""
    res, _, bids = run_spot(book)
    fb = by_bid(res.fills)
    holders = {b.id for b in bids.values() if b.mode == "spot" and b.holds}
    assert sorted(res.outbid) == sorted(holders - set(fb))
    assert len(res.outbid) == len(set(res.outbid))
    assert set(res.moved) <= holders & set(fb)
    for bid_id in holders & set(fb):
        got = {f.ask: f.units for f in fb[bid_id]}
        assert (got == bids[bid_id].holds) == (bid_id not in res.moved)


@PROPS
@given(books())
def test_spot_cheapest_units_sold(book: Book) -> None:
    """The units sold in a market are its cheapest: an ask left with unsold units has a
    floor at least that of every ask that sold (at equal floors, which sell is the
    holders' business, see test_spot_holder_keeps_its_own_ask)."""
    res, asks, _ = run_spot(book)
    sold = sold_per_ask(res.fills)
    for key in res.prices:
        mine = [a for a in asks.values() if a.mode == "spot" and live(a) and market(a) == key]
        dearest_sold = max((a.price_micro for a in mine if sold.get(a.id)), default=None)
        if dearest_sold is None:
            continue
        for a in mine:
            if sold.get(a.id, 0) < a.units:
                assert a.price_micro >= dearest_sold, (a, dearest_sold)


@PROPS
@given(books())
def test_spot_holders_keep_at_equal_floors(book: Book) -> None:
    """At equal floors holders keep their units: if an accepted holder was moved although
    none of what it held is dearer than the dearest unit sold, then every offer that sold
    units at that floor is one that accepted holders hold (they crowded each other out;
    no free offer took its place for being older)."""
    res, asks, bids = run_spot(book)
    sold = sold_per_ask(res.fills)
    accepted = set(by_bid(res.fills))
    mine: dict[int, int] = defaultdict(int)
    for b in bids.values():
        if b.mode == "spot" and b.id in accepted:
            for i, n in b.holds.items():
                mine[i] += n
    for bid_id in res.moved:
        held = [asks[i] for i in bids[bid_id].holds]
        key = market(held[0])
        top = max(a.price_micro for a in asks.values() if sold.get(a.id) and market(a) == key)
        if all(a.price_micro <= top for a in held):
            for a in asks.values():
                if sold.get(a.id) and market(a) == key and a.price_micro == top:
                    assert mine[a.id] > 0, (bids[bid_id], a)


@PROPS
@given(books())
def test_spot_priority(book: Book) -> None:
    """Price-time priority: if a bid was accepted in a market, every new bid ahead of it
    (higher maximum, or equal and older) of its type that allows that market and wants no
    more units was accepted too (in that market or one tried before)."""
    res, asks, bids = run_spot(book)
    where = {f.bid: market(asks[f.ask]) for f in res.fills}
    for b2_id, key in where.items():
        b2 = bids[b2_id]
        for b1 in bids.values():
            if (
                b1.mode == "spot"
                and not b1.holds
                and b1.accelerator == b2.accelerator
                and (not b1.regions or key[1] in b1.regions)
                and b1.units <= b2.units
                and (-b1.max_price_micro, b1.created_at, b1.id)
                < (-b2.max_price_micro, b2.created_at, b2.id)
            ):
                assert b1.id in where, (b1, b2)


def spot_ask(id: int, floor: int, units: int = 1, **kw: object) -> Ask:
    return ask(id, floor, units, mode="spot", **kw)  # type: ignore[arg-type]


def spot_bid(id: int, max_price: int, units: int = 1, **kw: object) -> Bid:
    return bid(id, max_price, units, mode="spot", **kw)  # type: ignore[arg-type]


def test_spot_tie_goes_to_the_older_bid() -> None:
    """By example: one unit, two equal bids; the older wins, and since the younger's equal
    maximum is unmet demand the price rises to that maximum."""
    res = clear_spot(
        [spot_ask(100, 1)],
        [spot_bid(1, 5, created_at=20.0), spot_bid(2, 5, created_at=10.0)],
        NOW,
    )
    assert res.fills == [Fill(2, 100, 1, 5, NOW + 3600)]
    assert res.prices == {("h100", "east"): 5}
    assert res.volume == {("h100", "east"): 1}
    assert res.outbid == [] and res.moved == []


def test_spot_price_rises_with_unmet_demand() -> None:
    """By example: 2 units at floor 1; bids of 5, 4 and 3 for one unit each. The 5 and the 4
    are accepted; the rejected 3 is at or below both, so the price is 3 (not the floor 1)."""
    res = clear_spot(
        [spot_ask(100, 1, 2)],
        [spot_bid(1, 5), spot_bid(2, 4), spot_bid(3, 3)],
        NOW,
    )
    assert res.prices == {("h100", "east"): 3}
    assert sorted((f.bid, f.units, f.price_micro) for f in res.fills) == [(1, 1, 3), (2, 1, 3)]
    # without unmet demand the price is the floor of the dearest unit sold
    res = clear_spot([spot_ask(100, 1, 2)], [spot_bid(1, 5), spot_bid(2, 4)], NOW)
    assert res.prices == {("h100", "east"): 1}


def test_spot_holder_keeps_its_own_ask() -> None:
    """By example: a holder still accepted keeps its own offer when that offer is among the
    cheapest units sold, though an equally cheap, older offer comes first and the holder is
    the oldest bid (a plain oldest-first allocation would move it); the newcomer gets the
    other offer. Alone, it keeps its offer too, though only one of the two sells."""
    asks = [spot_ask(100, 1, 1, created_at=0.0), spot_ask(101, 1, 1, created_at=5.0)]
    res = clear_spot(
        asks,
        [spot_bid(1, 9, created_at=0.0, holds={101: 1}), spot_bid(2, 9, created_at=3.0)],
        NOW,
    )
    assert sorted((f.bid, f.ask) for f in res.fills) == [(1, 101), (2, 100)]
    assert res.moved == [] and res.outbid == []
    # one unit sold of two equal ones: the holder's, though the other is older
    res = clear_spot(asks, [spot_bid(1, 9, holds={101: 1})], NOW)
    assert res.fills == [Fill(1, 101, 1, 1, NOW + 3600)] and res.moved == []
    # its offer dearer than the units sold: the holder is moved to the cheap one
    asks = [spot_ask(100, 1, 1), spot_ask(101, 7, 1)]
    res = clear_spot(asks, [spot_bid(2, 9, holds={101: 1})], NOW)
    assert res.fills == [Fill(2, 100, 1, 1, NOW + 3600)]
    assert res.moved == [2] and res.outbid == []


def test_spot_holder_outbid() -> None:
    """By example: a holder outbid by a new, higher bid loses its unit and is listed."""
    res = clear_spot(
        [spot_ask(100, 1, 1)],
        [spot_bid(1, 2, holds={100: 1}), spot_bid(2, 8, created_at=9.0)],
        NOW,
    )
    assert res.fills == [Fill(2, 100, 1, 2, NOW + 3600)]
    assert res.outbid == [1]
