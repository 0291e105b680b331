"""The market controller on a real store with a fake clock: matching, billing, reclaim,
credit, idempotency — and its invariants under random sequences (Hypothesis)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import select

from suanli.market import book, ledger
from suanli.market.controller import MarketConfig, MarketController
from suanli.market.money import to_micro
from suanli.store import Store
from suanli.store.models import JobRow, LeaseRow, LedgerEntryRow, NodeRow, OfferRow, OrderRow

T0 = 1_800_000_000.0
CFG = MarketConfig(
    fee_ppm=50_000, granularity_s=1.0, bill_every_s=60.0, spot_interval_s=60.0, every_s=0.0
)


def node(s: Any, name: str, owner: str, n: int = 4, acc: str = "a100-80gb") -> None:
    devices = [
        {"index": i, "accelerator": acc, "memory_mib": 81920, "healthy": True} for i in range(n)
    ]
    s.add(
        NodeRow(
            name=name,
            owner=owner,
            site=None,
            executor="agent",
            cpu_cores=32,
            memory_mib=256_000,
            devices=devices,
            labels={},
            heartbeat_at=T0,
        )
    )


def deposit(store: Store, account: str, amount_usd: float, key: str) -> None:
    with store.tx() as s:
        ledger.transfer(s, key, ledger.DEPOSITS, account, to_micro(amount_usd), "deposit", "d", T0)


def market(tmp_path: Path) -> tuple[Store, MarketController]:
    store = Store.sqlite(tmp_path)
    with store.tx() as s:
        node(s, "n1", "prov")
        node(s, "n2", "prov")
    return store, MarketController(store, CFG)


def entries(store: Store) -> int:
    with store.tx() as s:
        return len(list(s.scalars(select(LedgerEntryRow))))


def test_on_demand_lease_is_billed_what_was_quoted_and_the_ledger_balances(
    tmp_path: Path,
) -> None:
    store, mc = market(tmp_path)
    deposit(store, "alice", 100, "dep-1")
    with store.tx() as s:
        book.create_offer(s, "prov", "a100-80gb", 4, to_micro(2.0), "on-demand", 10, now=T0)
        book.create_offer(s, "prov", "a100-80gb", 2, to_micro(1.5), "on-demand", 10, now=T0)
        order = book.create_order(
            s, "alice", "a100-80gb", 3, to_micro(3.0), "on-demand", 1.0, [], 1.0, now=T0
        ).id
    mc.reconcile(T0)
    with store.tx() as s:
        leases = list(s.scalars(select(LeaseRow).order_by(LeaseRow.price_micro)))
        # cheapest first: both cheap units, then one of the dearer offer
        assert [(len(x.units), x.price_micro) for x in leases] == [(2, 1_500_000), (1, 2_000_000)]
        assert s.get(OrderRow, order).state == "filled"  # type: ignore[union-attr]
    mc.reconcile(T0)  # the same instant again books nothing twice
    mc.reconcile(T0 + 1800)
    mc.reconcile(T0 + 1800)
    mc.reconcile(T0 + 3600)  # the term ends: closing, then ended (no job holds it)
    mc.reconcile(T0 + 3601)
    with store.tx() as s:
        assert {x.state for x in s.scalars(select(LeaseRow))} == {"ended"}
        bal = ledger.balances(s)
    quoted = to_micro(2 * 1.5 + 1 * 2.0)  # per hour, for one hour
    assert bal["alice"] == to_micro(100) - quoted
    assert bal[ledger.PLATFORM] == quoted * 5 // 100
    assert bal["prov"] == quoted - bal[ledger.PLATFORM]
    assert sum(bal.values()) == 0


def test_orders_beyond_the_buyers_credit_are_refused(tmp_path: Path) -> None:
    store, _ = market(tmp_path)
    deposit(store, "bob", 5, "dep-b")
    with store.tx() as s, pytest.raises(ledger.CreditError, match="available"):
        book.create_order(s, "bob", "a100-80gb", 4, to_micro(2.0), "on-demand", 1, [], 1, now=T0)
    with store.tx() as s:
        ledger.ensure_account(s, "bob").credit_limit_micro = to_micro(10)
    with store.tx() as s:  # 5 USD plus 10 of credit covers the 8 it may cost
        book.create_order(s, "bob", "a100-80gb", 4, to_micro(2.0), "on-demand", 1, [], 1, now=T0)


def test_a_device_is_offered_once_and_no_more_than_the_provider_owns(tmp_path: Path) -> None:
    store, _ = market(tmp_path)
    with store.tx() as s:
        book.create_offer(s, "prov", "a100-80gb", 6, 1, "on-demand", 1, now=T0)
    with store.tx() as s, pytest.raises(book.MarketError, match="2 free a100-80gb"):
        book.create_offer(s, "prov", "a100-80gb", 3, 1, "spot", 1, now=T0)
    with store.tx() as s, pytest.raises(book.MarketError, match="0 free"):
        book.create_offer(s, "mallory", "a100-80gb", 1, 1, "spot", 1, now=T0)


def test_spot_is_reclaimed_when_outbid_with_the_offers_notice(tmp_path: Path) -> None:
    store, mc = market(tmp_path)
    for who in ("alice", "bob"):
        deposit(store, who, 1000, f"dep-{who}")
    with store.tx() as s:
        book.create_offer(
            s, "prov", "a100-80gb", 2, to_micro(1.0), "spot", 10, notice_s=120, now=T0
        )
        low = book.create_order(s, "alice", "a100-80gb", 2, to_micro(2.0), "spot", 5, [], 1, now=T0)
        low_id = low.id
    mc.reconcile(T0)
    with store.tx() as s:
        (lease,) = s.scalars(select(LeaseRow))
        assert lease.price_micro == to_micro(1.0)  # no competition: the floor
        # alice's job runs on both leased devices
        s.add(
            JobRow(
                name="train",
                owner="alice",
                spec={"order": low_id, "resources": {"cpu": 1}},
                state="running",
                created_at=T0,
                updated_at=T0,
                members=[{"node": lease.units[0]["node"], "devices": [0, 1], "rank": 0}],
            )
        )
        book.create_order(s, "bob", "a100-80gb", 2, to_micro(5.0), "spot", 1, [], 1, now=T0 + 30)
    mc.reconcile(T0 + 60)  # the next auction: bob outbids alice
    with store.tx() as s:
        old = s.get(LeaseRow, lease.id)
        assert old is not None and old.state == "closing" and "outbid" in (old.end_reason or "")
        assert old.ends_at == T0 + 60 + 120  # the offer's notice
        job = s.scalar(select(JobRow))
        assert job is not None and job.preempt_reason and job.preempt_grace_s == 120
        assert s.get(OrderRow, low_id).state == "open"  # type: ignore[union-attr]
        # bob's lease waits for the units alice still holds through her notice
        assert len(list(s.scalars(select(LeaseRow)))) == 1
        job.state = "preempted"  # the jobs controller stopped it
    mc.reconcile(T0 + 181)
    mc.reconcile(T0 + 181)
    with store.tx() as s:
        leases = list(s.scalars(select(LeaseRow).order_by(LeaseRow.id)))
        assert [x.state for x in leases] == ["ended", "active"]
        assert leases[1].buyer == "bob"
        # one uniform price, between the floor and bob's maximum, raised by alice's bid
        assert leases[1].price_micro == to_micro(2.0)
        assert sum(ledger.balances(s).values()) == 0


def test_a_cancelled_order_ends_its_lease_and_is_billed_to_then(tmp_path: Path) -> None:
    store, mc = market(tmp_path)
    deposit(store, "alice", 100, "dep")
    with store.tx() as s:
        book.create_offer(s, "prov", "a100-80gb", 1, to_micro(3.6), "on-demand", 10, now=T0)
        oid = book.create_order(
            s, "alice", "a100-80gb", 1, to_micro(4.0), "on-demand", 5, [], 1, now=T0
        ).id
    mc.reconcile(T0)
    with store.tx() as s:
        s.get(OrderRow, oid).state = "cancelling"  # type: ignore[union-attr]  # as the API does
    mc.reconcile(T0 + 100)
    mc.reconcile(T0 + 100)
    with store.tx() as s:
        assert s.get(OrderRow, oid).state == "cancelled"  # type: ignore[union-attr]
        assert ledger.balance(s, "alice") == to_micro(100) - to_micro(3.6) * 100 // 3600


# --- invariants under random sequences ------------------------------------------------------
ACCS = ("a100-80gb", "h100-sxm")


class MarketMachine(RuleBasedStateMachine):
    """Random offers, orders, cancels, withdrawals, jobs and clock advances; after each step
    the money, lease and metering invariants hold."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.store = Store(f"sqlite:///{self.dir}/m.db")
        self.mc = MarketController(
            self.store,
            MarketConfig(
                fee_ppm=70_000, granularity_s=60.0, bill_every_s=60, spot_interval_s=30, every_s=0
            ),
        )
        self.now = T0
        self.n = 0

    @initialize()
    def inventory(self) -> None:
        with self.store.tx() as s:
            node(s, "a1", "p1", 8, "a100-80gb")
            node(s, "a2", "p2", 2, "a100-80gb")
            node(s, "h1", "p1", 8, "h100-sxm")
        for who, usd in (("u1", 50), ("u2", 20)):
            deposit(self.store, who, usd, f"init-{who}")
        with self.store.tx() as s:
            ledger.ensure_account(s, "u2").credit_limit_micro = to_micro(15)

    @rule(
        prov=st.sampled_from(["p1", "p2"]),
        acc=st.sampled_from(ACCS),
        count=st.integers(1, 2),
        price=st.integers(1, 6),
        mode=st.sampled_from(["on-demand", "reserved", "spot"]),
        hours=st.sampled_from([0.05, 0.5, 2.0]),
    )
    def offer(self, prov: str, acc: str, count: int, price: int, mode: str, hours: float) -> None:
        try:
            with self.store.tx() as s:
                book.create_offer(
                    s, prov, acc, count, to_micro(price), mode, hours, notice_s=20, now=self.now
                )
        except book.MarketError:
            pass

    @rule(
        buyer=st.sampled_from(["u1", "u2"]),
        acc=st.sampled_from(ACCS),
        count=st.integers(1, 3),
        price=st.integers(1, 8),
        mode=st.sampled_from(["on-demand", "reserved", "spot"]),
        hours=st.sampled_from([0.02, 0.25, 1.0]),
    )
    def order(self, buyer: str, acc: str, count: int, price: int, mode: str, hours: float) -> None:
        try:
            with self.store.tx() as s:
                book.create_order(
                    s, buyer, acc, count, to_micro(price), mode, hours, [], 60.0, now=self.now
                )
        except ledger.CreditError:
            pass

    @rule(
        acc=st.sampled_from(ACCS),
        mode=st.sampled_from(["on-demand", "reserved", "spot"]),
        ask=st.integers(1, 4),
        extra=st.integers(0, 4),
        buyer=st.sampled_from(["u1", "u2"]),
    )
    def crossing(self, acc: str, mode: str, ask: int, extra: int, buyer: str) -> None:
        """An offer and an order that can trade (random ones seldom meet)."""
        self.offer("p1", acc, 2, ask, mode, 2.0)
        self.order(buyer, acc, 1, ask + extra, mode, 0.25)
        self.advance(31.0)

    @rule(acc=st.sampled_from(ACCS), price=st.integers(2, 9), buyer=st.sampled_from(["u1", "u2"]))
    def spot_bid(self, acc: str, price: int, buyer: str) -> None:
        """A spot bid against what spot leases hold: outbids them when higher."""
        self.order(buyer, acc, 2, price, "spot", 0.25)
        self.advance(31.0)

    @rule(pick=st.integers(0, 50))
    def cancel(self, pick: int) -> None:
        with self.store.tx() as s:
            rows = [r for r in s.scalars(select(OrderRow)) if r.state in ("open", "filled")]
            if rows:
                r = rows[pick % len(rows)]
                if r.mode != "reserved" or r.state == "open":
                    r.state = "cancelled" if r.state == "open" else "cancelling"

    @rule(pick=st.integers(0, 50))
    def withdraw(self, pick: int) -> None:
        with self.store.tx() as s:
            rows = [o for o in s.scalars(select(OfferRow)) if o.state == "open"]
            if rows:
                rows[pick % len(rows)].state = "withdrawing"

    @rule(pick=st.integers(0, 50))
    def start_job(self, pick: int) -> None:
        with self.store.tx() as s:
            rows = [x for x in s.scalars(select(LeaseRow)) if x.state == "active"]
            if rows:
                lease = rows[pick % len(rows)]
                u = lease.units[0]
                self.n += 1
                s.add(
                    JobRow(
                        name=f"j{self.n}",
                        owner=lease.buyer,
                        spec={"order": lease.order_id, "resources": {"cpu": 1}},
                        state="running",
                        created_at=self.now,
                        updated_at=self.now,
                        members=[{"node": u["node"], "devices": [u["index"]], "rank": 0}],
                    )
                )

    @rule()
    def jobs_obey(self) -> None:
        """The jobs controller: a job asked to stop for its lease stops."""
        with self.store.tx() as s:
            for row in s.scalars(select(JobRow).where(JobRow.state == "running")):
                if row.preempt_reason:
                    row.state = "preempted"

    @rule(dt=st.sampled_from([1.0, 29.0, 61.0, 600.0, 4000.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.mc.reconcile(self.now)

    @invariant()
    def money_is_conserved_and_within_credit(self) -> None:
        with self.store.tx() as s:
            bal = ledger.balances(s)
            assert sum(bal.values()) == 0
            for name, b in bal.items():
                if name not in ledger.HOUSE and not name.startswith("p"):
                    assert b >= -ledger.ensure_account(s, name).credit_limit_micro, (name, b)

    @invariant()
    def no_unit_is_leased_twice_and_leases_keep_their_terms(self) -> None:
        with self.store.tx() as s:
            leases = list(s.scalars(select(LeaseRow)))
            offers = {o.id: o for o in s.scalars(select(OfferRow))}
            orders = {o.id: o for o in s.scalars(select(OrderRow))}
            spent = ledger.charged(s, [x.id for x in leases])
        windows: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for x in leases:
            assert x.ends_at <= offers[x.offer_id].ends_at + 1e-6  # never outlives its offer
            assert x.price_micro <= orders[x.order_id].max_price_micro  # never above the max
            assert x.price_micro >= offers[x.offer_id].price_micro  # never below the ask
            assert x.used_unit_s <= len(x.units) * (x.ends_at - x.starts_at) + 1e-6
            assert spent[x.id] <= x.hold_micro
            for u in x.units:
                windows.setdefault((str(u["node"]), int(str(u["index"]))), []).append(
                    (x.starts_at, x.ends_at)
                )
        for spans in windows.values():
            spans.sort()
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert start >= end - 1e-6  # one lease at a time per unit

    def teardown(self) -> None:
        self.store.engine.dispose()


MarketMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_market_invariants = MarketMachine.TestCase


def test_money_helpers_are_exact() -> None:
    from suanli.market.money import MoneyError, cost_micro, usd

    assert to_micro("0.1") + to_micro("0.2") == to_micro("0.3")
    assert usd(-1_500_000) == "-1.500000" and usd(7) == "0.000007"
    assert cost_micro(to_micro(2.0), 3, 1800) == to_micro(3.0)
    for bad in ("nan", "-1", "1e20", "two"):
        with pytest.raises(MoneyError):
            to_micro(bad)


# --- the engine's cases the market simulation found -------------------------------------
def _ask(i: int, region: str, floor: int, units: int, created: float = 0.0) -> Any:
    from suanli.market.engine import Ask

    return Ask(i, "h100-sxm", region, "spot", floor, units, 0.0, 1e9, created)


def _bid(i: int, top: int, units: int, regions: tuple[str, ...] = (), **kw: Any) -> Any:
    from suanli.market.engine import Bid

    mode = kw.pop("mode", "spot")
    return Bid(i, "h100-sxm", frozenset(regions), mode, top, units, 3600.0, float(i), **kw)


def test_a_holder_is_not_moved_between_equally_priced_offers() -> None:
    from suanli.market.engine import clear_spot

    r = clear_spot(
        [_ask(1, "a", 100, 8), _ask(2, "a", 100, 8, 1.0)], [_bid(10, 300, 4, holds={2: 4})], 0
    )
    assert r.moved == [] and [(f.ask, f.units) for f in r.fills] == [(2, 4)]


def test_a_bid_served_elsewhere_does_not_raise_a_price() -> None:
    from suanli.market.engine import clear_spot

    r = clear_spot(
        [_ask(1, "a", 100, 1), _ask(2, "b", 100, 1)], [_bid(10, 500, 1), _bid(11, 300, 1)], 0
    )
    assert r.prices == {("h100-sxm", "a"): 100, ("h100-sxm", "b"): 100}


def test_a_newcomer_takes_spare_units_before_outbidding_a_holder() -> None:
    from suanli.market.engine import clear_spot

    asks = [_ask(1, "a", 100, 1), _ask(2, "b", 100, 1)]
    r = clear_spot(asks, [_bid(10, 300, 1, holds={1: 1}), _bid(11, 500, 1)], 0)
    assert r.outbid == [] and {(f.bid, f.ask) for f in r.fills} == {(10, 1), (11, 2)}
    # with no spare unit anywhere, the higher bid does outbid the holder
    r = clear_spot([_ask(1, "a", 100, 1)], [_bid(10, 300, 1, holds={1: 1}), _bid(11, 500, 1)], 0)
    assert r.outbid == [10] and r.prices[("h100-sxm", "a")] == 300


def test_an_order_is_filled_within_one_region() -> None:
    from suanli.market.engine import Ask, match_posted

    asks = [
        Ask(1, "h100-sxm", "a", "on-demand", 100, 2, 0, 1e9, 0),
        Ask(2, "h100-sxm", "b", "on-demand", 120, 2, 0, 1e9, 0),
        Ask(3, "h100-sxm", "b", "on-demand", 130, 2, 0, 1e9, 0),
    ]
    fills = match_posted(asks, [_bid(10, 200, 3, mode="on-demand")], 0)
    assert sorted((f.ask, f.units) for f in fills) == [
        (2, 2),
        (3, 1),
    ]  # b covers it; a alone cannot
