"""Spot replicas with on-demand fallback: the services controller against a store with
real market rows and a fake clock (the split, a reclaim replaced within its notice, the
return to spot once a spot replica is ready), and the whole path for real: `suanli up`
with its market, a service whose spot lease is outbid, and an endpoint that keeps
answering from the on-demand replica started within the notice."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from suanli.autoscale.service_spec import ServiceSpec, SpotSpec
from suanli.jobs.spec import Resources
from suanli.run.local import free_port
from suanli.service.replicas import ReplicaBook
from suanli.service.services import ServicesController, replica_price
from suanli.service.spot import split, spot_slots
from suanli.store.db import Store
from suanli.store.models import JobRow, LeaseRow, OfferRow, OrderRow, ServiceRow
from tests.helpers import (
    cli,
    cpu_order,
    replicas_step,
    start_service,
    stop_service,
    tiny_service,
    until,
)


def _units(*cores: tuple[str, int]) -> list[dict[str, object]]:
    return [{"node": n, "index": i} for n, i in cores]


def _lease(order: int, units: list[dict[str, object]], state: str = "active") -> LeaseRow:
    return LeaseRow(
        order_id=order,
        offer_id=1,
        buyer="ann",
        provider="op",
        accelerator="cpu",
        region="east",
        mode="spot",
        price_micro=100_000,  # $0.10 per core-hour
        units=units,
        starts_at=0,
        ends_at=1e9,
        state=state,
        billed_until=0,
        hold_micro=0,
        metered_at=0,
    )


def test_the_split_and_the_slots() -> None:
    spot = SpotSpec(order=1, base_ondemand=1)
    assert split(4, spot, 2) == split(4, spot, 2)
    assert (split(4, spot, 2).spot, split(4, spot, 2).on_demand) == (2, 2)
    assert (split(4, spot, 9).spot, split(4, spot, 9).on_demand) == (3, 1)
    assert (split(0, spot, 9).spot, split(0, spot, 9).on_demand) == (0, 0)
    waits = SpotSpec(order=1, base_ondemand=1, fallback=False)  # no fallback: wait for spot
    assert (split(4, waits, 0).spot, split(4, waits, 0).on_demand) == (3, 1)
    # node by node: three cores on one node and one on another hold one 2-core replica + 0
    lease = _lease(1, _units(("a", 0), ("a", 1), ("a", 2), ("b", 0)))
    assert spot_slots([lease], Resources(accelerator="cpu", cpu=2, memory_gb=1)) == 1
    assert spot_slots([lease], Resources(accelerator="cpu", cpu=0.5, memory_gb=1)) == 4
    # the owner's other job on the order holds two of node a's cores: one replica fewer
    other = JobRow(spec={"order": 1, "resources": {"cpu": 2}}, members=[{"node": "a"}])
    assert spot_slots([lease], Resources(accelerator="cpu", cpu=0.5, memory_gb=1), [other]) == 2
    # two leases on one node: a job holding one device there costs one slot, not two
    first = _lease(2, _units(("g", 0), ("g", 1)))
    second = _lease(2, _units(("g", 2), ("g", 3)))
    first.accelerator = second.accelerator = "a100-80gb"
    holder = JobRow(spec={"order": 2}, members=[{"node": "g", "devices": [0]}])
    one = Resources(accelerator="a100-80gb", devices=1, memory_gb=1)
    assert spot_slots([first, second], one, [holder]) == 3
    assert spot_slots([first, second], one) == 4
    with pytest.raises(ValidationError):
        SpotSpec(order=0)


def test_a_reclaimed_spot_replica_falls_back_to_on_demand_and_back(tmp_path: Path) -> None:
    store = Store.sqlite(tmp_path)
    store.migrate()
    with store.tx() as s:
        s.add(
            OfferRow(
                provider="op",
                accelerator="cpu",
                region="east",
                mode="spot",
                price_micro=50_000,
                units=_units(("n1", 0), ("n1", 1)),
                starts_at=0,
                ends_at=1e9,
                notice_s=30,
                created_at=0,
            )
        )
        order = OrderRow(
            buyer="ann",
            accelerator="cpu",
            count=2,
            regions=[],
            duration_s=3600,
            remaining_s=3600,
            max_price_micro=200_000,
            mode="spot",
            state="filled",
            expires_at=1e9,
            created_at=0,
        )
        s.add(order)
        s.flush()
        oid = order.id
        s.add(_lease(oid, _units(("n1", 0))))
        spec = ServiceSpec.model_validate(
            {
                "name": "chat",
                "model": "tiny-llama-40m",
                "replicas": {"min": 2, "max": 3},
                "resources": {"accelerator": "cpu", "cpu": 1, "memory_gb": 1},
                "autoscaler": {"policy": "static"},
                "spot": {"order": oid, "base_ondemand": 1},
            }
        )
        s.add(
            ServiceRow(name="chat", owner="ann", spec=spec.model_dump(), created_at=0, updated_at=0)
        )
    book = ReplicaBook()
    ctl = ServicesController(store, book)
    ready: set[int] = set()

    def tick(t: float) -> list[JobRow]:
        ctl.reconcile(t)
        return replicas_step(store, book, "chat", ready, [{"node": "n1"}])

    def live(jobs: list[JobRow]) -> tuple[list[int], list[int]]:
        on = [j for j in jobs if j.state in ("queued", "running") and not j.cancel_requested]
        return (
            [j.id for j in on if j.spec.get("order") == oid],
            [j.id for j in on if j.spec.get("order") is None],
        )

    jobs = tick(0)
    spot_ids, od_ids = live(jobs)
    assert len(spot_ids) == 1 and len(od_ids) == 1  # base_ondemand 1, the lease holds 1
    ready.update(spot_ids + od_ids)
    tick(1)
    with store.tx() as s:
        job = s.get(JobRow, spot_ids[0])
        assert job is not None
        assert replica_price(s, spec, job) == pytest.approx(0.10)  # the lease's price

    # the lease is reclaimed (outbid): the market marks it closing and the replica's job
    # with its notice; the very next tick submits an on-demand replacement
    with store.tx() as s:
        lease = s.query(LeaseRow).one()
        lease.state, lease.end_reason = "closing", "spot outbid at clearing"
        victim = s.get(JobRow, spot_ids[0])
        assert victim is not None
        victim.preempt_reason, victim.preempt_grace_s = "lease 1: outbid", 30.0
    jobs = tick(2)
    spot_now, od_now = live(jobs)
    assert len(od_now) == 2 and od_ids[0] in od_now
    fallback = next(j for j in od_now if j not in od_ids)
    with store.tx() as s:
        victim = s.get(JobRow, spot_ids[0])
        assert victim is not None and not victim.cancel_requested  # its notice runs on
    assert any("(on demand)" in e.message for e in store.events(fallback))
    # the jobs controller requeues the reclaimed job; with no spot capacity it is surplus
    with store.tx() as s:
        victim = s.get(JobRow, spot_ids[0])
        assert victim is not None
        victim.state, victim.preempt_reason, victim.members = "queued", None, []
    ready.add(fallback)  # the fallback has started meanwhile
    tick(3)
    with store.tx() as s:
        assert s.get(JobRow, spot_ids[0]).state == "cancelled"  # type: ignore[union-attr]

    # the order wins a lease again: a spot replica starts; the fallback waits for it
    with store.tx() as s:
        s.add(_lease(oid, _units(("n1", 1))))
    jobs = tick(4)
    spot_now, od_now = live(jobs)
    assert len(spot_now) == 1 and len(od_now) == 2
    jobs = tick(5)  # started, not yet answering: both on-demand replicas stay
    assert len(live(jobs)[1]) == 2
    ready.update(spot_now)
    tick(6)
    jobs = tick(7)
    spot_now, od_now = live(jobs)
    assert len(spot_now) == 1 and len(od_now) == 1  # one on demand drained
    with store.tx() as s:
        drained = [j for j in s.query(JobRow) if j.cancel_requested]
        assert drained and all(j.spec.get("order") is None for j in drained)
        assert s.get(ServiceRow, "chat").cost_usd > 0  # type: ignore[union-attr]

    # the owner cancels the order: the service says so where its owner looks
    with store.tx() as s:
        s.get(OrderRow, oid).state = "cancelled"  # type: ignore[union-attr]
    tick(8)
    with store.tx() as s:
        status = str(s.get(ServiceRow, "chat").status)  # type: ignore[union-attr]
    assert f"market order {oid} is cancelled" in status, status
    assert "spot replicas run on demand (fallback)" in status, status


def test_a_live_service_outbid_on_spot_keeps_answering_on_demand(tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    svc = start_service(tmp_path, port, "--spot-interval-s", "1", "--billing", "second")
    try:
        with contextlib.ExitStack() as stack:
            _live(stack, openai, url, tmp_path)
    finally:
        stop_service(svc)
        subprocess.run(["pkill", "-9", "-f", "--", f"--model {tmp_path}/tiny.json"], check=False)


def _live(stack: contextlib.ExitStack, openai: Any, url: str, tmp: Path) -> None:
    admin = {
        **os.environ,
        "SUANLI_URL": url,
        "SUANLI_TOKEN": (tmp / "admin.token").read_text().strip(),
    }
    users = {}
    for name in ("alice", "bob"):
        tok = cli(admin, "token", "create", "--role", "user", "--owner", name, "--json")
        users[name] = {**os.environ, "SUANLI_URL": url, "SUANLI_TOKEN": tok["token"]}
        cli(admin, "ledger", "deposit", name, "10", "--idempotency-key", f"d-{name}", "--json")
    alice = stack.enter_context(
        httpx.Client(
            base_url=url,
            headers={"Authorization": "Bearer " + users["alice"]["SUANLI_TOKEN"]},
            timeout=60,
        )
    )
    offer = [
        *("market", "offer", "--accelerator", "cpu", "--count", "1", "--mode", "spot"),
        *("--price-usd-per-hour", "0.1", "--notice-s", "20", "--hours", "1", "--json"),
    ]
    cli(admin, *offer)
    low = cpu_order(users["alice"], "0.2", "0.5", mode="spot")
    on_demand = cpu_order(users["alice"], "1", "0.5")
    spec = tiny_service(tmp, router={"buffer": 32, "wait_s": 120})
    # a spot order that is not spot, or not yours, or of another chip: said, not stored
    bad = alice.post("/v1/services", json={**spec, "spot": {"order": on_demand["id"]}})
    assert bad.status_code == 422 and "not spot" in bad.json()["problems"][0]
    bad = alice.post("/v1/services", json={**spec, "spot": {"order": 999}})
    assert bad.status_code == 422 and "no market order 999 of yours" in bad.text
    gpu = {**spec["resources"], "accelerator": "a100-80gb"}
    bad = alice.post("/v1/services", json={**spec, "resources": gpu, "spot": {"order": low["id"]}})
    assert bad.status_code == 422
    assert alice.get("/v1/services").json() == []

    until(
        "a spot lease",
        lambda: [
            x
            for x in alice.get("/v1/market/leases").json()
            if x["order"] == low["id"] and x["state"] == "active"
        ],
    )
    made = alice.post("/v1/services", json={**spec, "spot": {"order": low["id"]}})
    assert made.status_code == 201, made.text
    client = openai.OpenAI(
        base_url=f"{url}/s/chat/v1",
        api_key=users["alice"]["SUANLI_TOKEN"],
        max_retries=0,
        timeout=120,
    )
    r = client.completions.create(model="chat", prompt="hello", max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4
    view = alice.get("/v1/services/chat").json()
    assert [(x["capacity"], x["ready"]) for x in view["replicas"]] == [("spot", True)]
    spot_job = view["replicas"][0]["job"]

    # bob outbids alice: her lease is reclaimed with a 20 s notice
    cpu_order(users["bob"], "1", "0.01", mode="spot")
    until(
        "the reclaim",
        lambda: any(
            e["kind"] == "reclaim" for e in alice.get(f"/v1/jobs/{spot_job}").json()["events"]
        ),
    )
    fallback = until(
        "an on-demand replica",
        lambda: [
            x
            for x in alice.get("/v1/services/chat").json()["replicas"]
            if x["capacity"] == "on-demand"
        ],
    )[0]["job"]
    reclaim_at = next(
        e["at"]
        for e in alice.get(f"/v1/jobs/{spot_job}").json()["events"]
        if e["kind"] == "reclaim"
    )
    started_at = next(
        e["at"]
        for e in alice.get(f"/v1/jobs/{fallback}").json()["events"]
        if e["kind"] == "replica"
    )
    assert 0 <= started_at - reclaim_at < 20  # within the notice
    # the endpoint keeps answering: the router holds requests until the fallback is ready
    for i in range(3):
        r = client.completions.create(model="chat", prompt=f"again {i}", max_tokens=4)
        assert r.usage.completion_tokens == 4
    until(
        "the fallback ready and the spot replica gone",
        lambda: (
            [(x["capacity"], x["ready"]) for x in alice.get("/v1/services/chat").json()["replicas"]]
            == [("on-demand", True)]
        ),
        timeout=120,
    )
    shown = cli(users["alice"], "service", "chat")
    assert "on-demand" in shown and f"market order {low['id']}" in shown
