"""A chip-mix service live: the services controller runs the same Mélange optimizer as
the simulator (perf's capacities per chip, HiGHS) on the sizes the router saw, pins
each replica to a chip, applies a pin, the bounds and the budget in the mix's
proportions, swaps chips making before breaking, and the router draws a chip per
request size from the mix's shares, spilling over from a full chip. Against a store
and a fake clock: no chip of the catalog is on this machine, so replicas are jobs the
test moves as the jobs controller would."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from suanli.api.app import create_app
from suanli.api.router import request_size
from suanli.autoscale.kinds import chip_fills
from suanli.autoscale.scalers import Optimizer
from suanli.autoscale.service_spec import ServiceSpec, SpotSpec
from suanli.service.mix import chip_of, on_chips, rescale, within_budget
from suanli.service.replicas import BUCKETS, ReplicaBook
from suanli.service.services import ServicesController, make_scaler, replica_price
from suanli.store.db import Store
from suanli.store.models import JobRow, LeaseRow, OrderRow, ServiceRow
from tests.helpers import replicas_step

CHIPS = ["a10", "a100-80gb"]
#: a long document's (prompt, output) tokens: with short chats beside it, a load the
#: cheapest fleet serves with both chips (at 6,000/500 it became all A100s once perf ran
#: GEMMs at each chip's published achievable rate: the A10's is the table's median)
DOC = (3000, 300)


def _spec(**over: object) -> ServiceSpec:
    spec = {
        "name": "mix",
        "model": "llama-3.1-8b",
        "replicas": {"min": 0, "max": 12},
        "resources": {"accelerators": CHIPS, "devices": 1, "cpu": 1, "memory_gb": 4},
        "autoscaler": {"policy": "optimizer", "period_s": 3600},
        "slo": {"ttft_s": 2.0, "tpot_s": 0.1},
    }
    spec.update(over)
    return ServiceSpec.model_validate(spec)


def test_rescale_and_budget_keep_the_mix() -> None:
    assert rescale({"a": 2, "b": 1}, 6, "a") == {"a": 4, "b": 2}
    assert rescale({"a": 2, "b": 1}, 2, "a") in ({"a": 1, "b": 1}, {"a": 2, "b": 0})
    assert sum(rescale({"a": 3, "b": 3, "c": 1}, 4, "a").values()) == 4
    assert rescale({"a": 0, "b": 0}, 1, "b") == {"a": 0, "b": 1}
    price = {"a": 1.0, "b": 3.0}
    assert within_budget({"a": 2, "b": 2}, price, 5.0) == {"a": 2, "b": 1}
    assert within_budget({"a": 2, "b": 2}, price, 100.0) == {"a": 2, "b": 2}


def test_the_spec_says_what_the_optimizer_needs() -> None:
    with pytest.raises(ValidationError, match=r"list them in resources\.accelerators"):
        _spec(resources={"accelerator": "cpu", "cpu": 1, "memory_gb": 1})
    with pytest.raises(ValidationError, match=r"list them in resources\.accelerators"):
        _spec(resources={"cpu": 1, "memory_gb": 1})
    assert _spec(spot={"order": 1}).spot is not None  # a mix may run its order's chip on spot
    with pytest.raises(ValidationError, match=r"resources\.devices \(1\) must equal tp \(2\)"):
        _spec(tp=2)
    with pytest.raises(ValidationError, match=r"greater than or equal to 0\.5"):
        _spec(slo={"attainment": 0.2})
    # the SLO's attainment is the optimizer's miss budget
    loose = make_scaler(_spec(slo={"ttft_s": 2.0, "tpot_s": 0.1, "attainment": 0.995}))
    assert isinstance(loose, Optimizer) and loose.max_miss_share == pytest.approx(0.005)
    assert all(k.best_effort_rps for k in loose.kinds)
    strict = make_scaler(_spec())
    assert isinstance(strict, Optimizer) and strict.max_miss_share == 0.0


def test_request_sizes_the_router_guesses() -> None:
    assert request_size({"prompt": "x" * 400, "max_tokens": 50}) == (100, 50)
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 80}]}]}
    assert request_size(chat) == (20, 16)
    assert request_size({"messages": 7, "prompt": [1, 2], "max_tokens": "many"}) == (1, 16)


@dataclass
class _Running:
    """A chip-mix service under a controller, and what the jobs controller would do."""

    ctl: ServicesController
    book: ReplicaBook
    ready: set[int]
    members: list[dict[str, object]] | None = None

    def tick(self, t: float) -> list[JobRow]:
        self.ctl.reconcile(t)
        jobs = replicas_step(self.ctl.store, self.book, "mix", self.ready, self.members)
        return [j for j in jobs if j.state in ("queued", "running") and not j.cancel_requested]


def _running_mix(
    store: Store, spec: ServiceSpec, members: list[dict[str, object]] | None = None
) -> _Running:
    """``spec`` as the service "mix" of ann's, under a controller whose router saw 40
    requests/s over the last minute: short chats and long documents (1,000 answered)."""
    with store.tx() as s:
        s.add(
            ServiceRow(name="mix", owner="ann", spec=spec.model_dump(), created_at=0, updated_at=0)
        )
    book = ReplicaBook()
    run = _Running(ServicesController(store, book), book, set(), members)
    traffic = book.traffic_of("mix")
    for i in range(2400):
        traffic.arrived(i / 40)
    for prompt, output in [(100, 50)] * 800 + [DOC] * 200:
        traffic.sized(59.0, prompt, output)
    return run


def test_a_chip_mix_service_follows_the_optimizer(tmp_path: Path) -> None:
    store = Store.sqlite(tmp_path)
    store.migrate()
    spec = _spec()
    run = _running_mix(store, spec)
    ctl, book, ready, tick = run.ctl, run.book, run.ready, run.tick
    traffic = book.traffic_of("mix")
    live = tick(60.0)
    opt = ctl._state["mix"].scaler
    assert isinstance(opt, Optimizer) and opt.mix is not None
    planned = {c: n for c, n in opt.mix.counts.items() if n}
    assert set(planned) == set(CHIPS) and sum(planned.values()) <= 12, planned  # a real mix
    assert Counter(chip_of(j) for j in live) == Counter(planned)
    for j in live:  # each replica on one chip
        assert j.spec["resources"]["accelerator"] in CHIPS
        assert not j.spec["resources"].get("accelerators")
    assert traffic.shares is not None and len(traffic.shares) == BUCKETS.count
    ready.update(j.id for j in live)
    tick(61.0)

    # a restarted controller and router plan from the sizes the store kept (with none,
    # the optimizer keeps what runs and plans no mix)
    with store.tx() as s:
        row = s.get(ServiceRow, "mix")
        assert row is not None and row.observed is not None
        assert sum(sum(c.values()) for c in row.observed["sizes"]["bins"].values()) == 1000
    book2 = ReplicaBook()
    ctl2 = ServicesController(store, book2)
    for i in range(2400):
        book2.traffic_of("mix").arrived(i / 40)
    ctl2.reconcile(62.0)
    assert book2.traffic_of("mix").sizes().counts(62.0) == traffic.sizes().counts(62.0)
    again = ctl2._state["mix"].scaler
    assert isinstance(again, Optimizer) and again.mix is not None
    assert {c for c, n in again.mix.counts.items() if n} == set(CHIPS)

    # the router draws a chip per size from the mix's shares
    for size in ((100, 50), DOC):
        share = traffic.shares[BUCKETS.of(*size)]
        for _ in range(20):
            rep = book.pick("mix", set(), size)
            assert rep is not None and share.get(rep.chip, 0) > 0
            book.release(rep, failed=False, size=size)

    # requests held fill a chip's replicas to their SLO batch; the mix draws a share of
    # this size to the A10s, and holding half again what fills them at that share puts
    # more there than their batch: the rest spill over to the A100s, which have room
    # (the simulator's rule)
    size = (100, 50)
    b = BUCKETS.of(*size)
    batches = chip_fills(spec.model, tuple(CHIPS), spec.tp, 2.0, 0.1, spec.engine).batches
    a10_batch = batches["a10"][b]
    share = traffic.shares[b]["a10"]
    replicas = book.of("mix")
    n_a10 = sum(r.chip == "a10" for r in replicas)
    n_held = int(1.5 * a10_batch * n_a10 / share)
    assert 0.1 < share < 0.9 and n_held <= sum(r.batches[b] for r in replicas)
    held = [book.pick("mix", set(), size) for _ in range(n_held)]
    a10 = [r for r in book.of("mix") if r.chip == "a10"]
    assert a10 and all(r.batches[b] == a10_batch for r in a10)
    assert sum(r.inflight for r in a10) == a10_batch * len(a10)
    assert all(r.fill <= 1 + 1e-9 for r in book.of("mix"))
    # each request's weight leaves as it came: one back from a full A10, then half
    one = next(r for r in held if r is not None and r.chip == "a10")
    book.release(one, failed=False, size=size)
    assert one.fill == pytest.approx((a10_batch - 1) / a10_batch)
    held.remove(one)
    a100 = next(r for r in book.of("mix") if r.chip == "a100-80gb" and r.inflight >= 2)
    before, n = a100.fill, a100.inflight
    for _ in range(n // 2):
        held.remove(a100)
        book.release(a100, failed=False, size=size)
    assert a100.fill == pytest.approx(before * (n - n // 2) / n)
    for rep in held:
        assert rep is not None
        book.release(rep, failed=False, size=size)
    assert all(r.fill == 0 and r.inflight == 0 for r in book.of("mix"))

    # a person pins 2: the mix's proportions, 2 replicas
    with store.tx() as s:
        row = s.get(ServiceRow, "mix")
        assert row is not None
        row.pinned = 2
    tick(62.0)
    live = tick(63.0)
    assert len(live) == 2 and {chip_of(j) for j in live} <= set(planned)

    # the mix swaps chips (to the one with fewer replicas, none or one of the two): the
    # new replicas start, the old serve until they are ready
    old = {j.id for j in live}
    other = min(CHIPS, key=lambda c: sum(chip_of(j) == c for j in live))
    with store.tx() as s:
        row = s.get(ServiceRow, "mix")
        assert row is not None
        row.pinned = None
    ctl._state["mix"].mix_want = {other: 2}
    live = tick(64.0)
    assert old <= {j.id for j in live} and sum(chip_of(j) == other for j in live) == 2
    ready.update(j.id for j in live)
    tick(65.0)
    live = tick(66.0)
    assert {chip_of(j) for j in live} == {other} and len(live) == 2

    # a budget below the mix drops the dearest replicas first
    h100 = spec.model_copy(update={"budget_usd_per_hour": 1.0})
    with store.tx() as s:
        row = s.get(ServiceRow, "mix")
        assert row is not None
        row.spec = h100.model_dump()
    ctl.reconcile(70.0)  # a fresh scaler for the changed spec
    ctl._state["mix"].mix_want = {"a10": 1, "a100-80gb": 1}
    live = tick(71.0)
    with store.tx() as s:
        row = s.get(ServiceRow, "mix")
        assert row is not None and row.desired == 1  # a10 alone fits $1/h


def test_the_api_refuses_a_mix_the_chips_cannot_serve(tmp_path: Path) -> None:
    store = Store.sqlite(tmp_path)
    store.migrate()
    token = store.create_token("user", "ann")
    api = TestClient(create_app(store))
    api.headers["Authorization"] = f"Bearer {token}"
    big = _spec(model="llama-3-70b", resources={"accelerators": ["a10"], "memory_gb": 4})
    bad = api.post("/v1/services", json=big.model_dump())
    assert bad.status_code == 422
    assert "autoscaler.policy optimizer" in bad.json()["problems"][0]
    assert "llama-3-70b" in bad.json()["problems"][0]
    # a valid spot order of the chip does not let the mix past the same check
    with store.tx() as s:
        order = _spot_order(s, "a10", 1, 50_000)
    spot = big.model_copy(update={"spot": SpotSpec(order=order)})
    worse = api.post("/v1/services", json=spot.model_dump())
    assert worse.status_code == 422 and "llama-3-70b" in worse.json()["problems"][0]
    ok = api.post("/v1/services", json=_spec().model_dump())
    assert ok.status_code == 201, ok.text
    assert api.get("/v1/services").json()[0]["policy"] == "optimizer"
    # the size counts the controller keeps for a restart are not part of the answer
    with store.tx() as s:
        row = s.scalars(select(ServiceRow)).one()
        row.observed = {"ready": 1, "sizes": {"bin_s": 60.0, "buckets": 72, "bins": {}}}
    assert api.get("/v1/services").json()[0]["observed"] == {"ready": 1}


def test_a_load_beyond_max_runs_max_and_says_so(tmp_path: Path) -> None:
    """More load than ``replicas.max`` can serve: the ILP has no answer; the service runs
    its max on the strongest chip and says why, and nothing else is held up."""
    store = Store.sqlite(tmp_path)
    store.migrate()
    with store.tx() as s:
        for name in ("busy", "calm"):
            spec = _spec(name=name, replicas={"min": 0, "max": 1})
            s.add(ServiceRow(name=name, owner="ann", spec=spec.model_dump(), created_at=0,
                             updated_at=0))  # fmt: skip
    book = ReplicaBook()
    ctl = ServicesController(store, book)
    traffic = book.traffic_of("busy")
    for i in range(24_000):  # 400 requests/s
        traffic.arrived(i / 400)
    for _ in range(100):
        traffic.sized(59.0, 6000, 500)
    ctl.reconcile(60.0)
    with store.tx() as s:
        busy, calm = s.get(ServiceRow, "busy"), s.get(ServiceRow, "calm")
        assert busy is not None and calm is not None
        assert busy.desired == 1 and "exceeds what replicas.max serve" in (busy.status or "")
        assert calm.status is not None and "controller error" not in calm.status
        jobs = list(s.query(JobRow).filter(JobRow.service == "busy"))
        assert [chip_of(j) for j in jobs] == ["a100-80gb"]


def _spot_order(s: Any, chip: str, devices: int, usd_micro_per_device_hour: int) -> int:
    """A spot order of ann's for ``chip``, filled: a live lease of ``devices`` devices on
    node g at this price. Its id."""
    order = OrderRow(buyer="ann", accelerator=chip, count=devices, regions=[], duration_s=3600,
                     remaining_s=3600, max_price_micro=9_000_000, mode="spot", state="filled",
                     expires_at=1e9, created_at=0)  # fmt: skip
    s.add(order)
    s.flush()
    units = [{"node": "g", "index": i} for i in range(devices)]
    s.add(LeaseRow(order_id=order.id, offer_id=1, buyer="ann", provider="op", accelerator=chip,
                   region="east", mode="spot", price_micro=usd_micro_per_device_hour,
                   units=units, starts_at=0, ends_at=1e9, state="active", billed_until=0,
                   hold_micro=0, metered_at=0))  # fmt: skip
    return int(order.id)


def test_a_mix_weighs_its_spot_orders_leases_and_falls_back_on_demand(tmp_path: Path) -> None:
    """The spot order's chip on its leases is a kind of its own for the ILP, at the
    lease's price and as many replicas as the leases hold: the ILP takes them before
    on-demand replicas of the chip. They run on the leases (and cost the lease's
    price); when the leases are reclaimed, their places go on demand, on the same chip,
    at the next tick (within the notice), not at the optimizer's next period, and the
    other chip is left as it was."""
    chip = "a100-80gb"
    store = Store.sqlite(tmp_path)
    store.migrate()
    with store.tx() as s:
        oid = _spot_order(s, chip, 2, 300_000)
    spec = _spec(spot={"order": oid})
    run = _running_mix(store, spec, [{"node": "g", "devices": [0]}])
    ctl, ready, tick = run.ctl, run.ready, run.tick
    live = tick(60.0)
    opt = ctl._state["mix"].scaler
    assert isinstance(opt, Optimizer) and opt.mix is not None
    by_kind = {k: n for k, n in opt.mix.counts.items() if n}
    assert by_kind.get(f"{chip}:spot") == 2 and by_kind.get(chip, 0) >= 1, by_kind
    planned = on_chips(by_kind)
    assert planned[chip] == by_kind[chip] + 2
    assert Counter(chip_of(j) for j in live) == Counter(planned)
    on_spot = [j for j in live if j.spec.get("order") == oid]
    assert len(on_spot) == 2 and all(chip_of(j) == chip for j in on_spot)
    # the router draws a chip's share of a size for its spot and on-demand replicas alike
    shares = run.book.traffic_of("mix").shares
    assert shares is not None and all(":spot" not in c for b in shares for c in b)
    ready.update(j.id for j in live)
    tick(61.0)
    with store.tx() as s:
        spot_job = s.get(JobRow, on_spot[0].id)
        assert spot_job is not None
        assert replica_price(s, spec, spot_job) == pytest.approx(0.30)  # the lease's price

    with store.tx() as s:
        s.query(LeaseRow).one().state = "closing"
        for j in on_spot:
            job = s.get(JobRow, j.id)
            assert job is not None
            job.preempt_reason, job.preempt_grace_s = "lease: outbid", 120.0
    live = tick(62.0)
    ours = [j for j in live if chip_of(j) == chip and not j.preempt_reason]
    assert len(ours) == planned[chip] and all(j.spec.get("order") is None for j in ours)
    others = Counter(chip_of(j) for j in live if chip_of(j) != chip)
    assert others == Counter({c: n for c, n in planned.items() if c != chip})


def test_a_mix_leaves_spot_leases_dearer_than_on_demand_unused(tmp_path: Path) -> None:
    """The ILP weighs the leases' price: spot dearer than the chip on demand is not
    chosen, and no replica runs on the leases."""
    store = Store.sqlite(tmp_path)
    store.migrate()
    with store.tx() as s:
        oid = _spot_order(s, "a100-80gb", 2, 5_000_000)  # $5 per device-hour
    run = _running_mix(store, _spec(spot={"order": oid}), [{"node": "g", "devices": [0]}])
    live = run.tick(60.0)
    opt = run.ctl._state["mix"].scaler
    assert isinstance(opt, Optimizer) and opt.mix is not None
    assert opt.mix.counts.get("a100-80gb:spot") == 0
    assert live and not [j for j in live if j.spec.get("order") == oid]
