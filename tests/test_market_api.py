"""The market's API on both databases: who may do and see what, bad input, idempotency;
and the idle-capacity policy on a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from suanli.market import ledger
from suanli.market.controller import MarketConfig, MarketController
from suanli.store import Store
from suanli.store.models import IdlePolicyRow, JobRow, OfferRow
from tests.test_market import T0, node
from tests.test_service import api  # noqa: F401  (the fixture; `store`, both databases, is in conftest)

GPUS = [{"index": i, "accelerator": "a100-80gb"} for i in range(4)]


def test_each_role_sees_and_does_only_what_it_should(api: Any) -> None:  # noqa: F811
    c, who = api
    node = {"cpu_cores": 32, "memory_mib": 256_000, "devices": GPUS}
    assert c.put("/v1/nodes/n1", json=node, headers=who["provider"]).status_code == 200
    offer = {"accelerator": "a100-80gb", "count": 2, "price_usd_per_hour": 2.5, "hours": 10}
    r = c.post(
        "/v1/market/offers", json={**offer, "idempotency_key": "k1"}, headers=who["provider"]
    )
    assert r.status_code == 201, r.text
    oid = r.json()["id"]
    again = c.post(
        "/v1/market/offers", json={**offer, "idempotency_key": "k1"}, headers=who["provider"]
    )
    assert again.status_code == 200 and again.json() == {"id": oid, "duplicate": True}
    assert c.post("/v1/market/offers", json=offer, headers=who["alice"]).status_code == 403
    too_many = c.post("/v1/market/offers", json={**offer, "count": 3}, headers=who["provider"])
    assert too_many.status_code == 409 and "2 free a100-80gb" in too_many.json()["error"]
    bad = c.post(
        "/v1/market/offers", json={**offer, "accelerator": "nope"}, headers=who["provider"]
    )
    assert bad.status_code == 422 and bad.json()["problems"]
    # a listing for buyers: no machines, no owner; the provider sees its units
    (public,) = c.get("/v1/market/offers", headers=who["alice"]).json()
    assert "units" not in public and "provider" not in public and public["free"] == 2
    (own,) = c.get("/v1/market/offers", headers=who["provider"]).json()
    assert len(own["units"]) == 2 and own["provider"] == "dc1"
    # money: only the admin records deposits; an order beyond what alice has is 402
    dep = {"account": "alice", "amount_usd": 10.0, "idempotency_key": "d1"}
    assert c.post("/v1/ledger/deposits", json=dep, headers=who["alice"]).status_code == 403
    assert c.post("/v1/ledger/deposits", json=dep, headers=who["admin"]).status_code == 201
    assert c.post("/v1/ledger/deposits", json=dep, headers=who["admin"]).json()["duplicate"]
    order = {"accelerator": "a100-80gb", "count": 2, "max_price_usd_per_hour": 3, "hours": 1}
    poor = c.post("/v1/market/orders", json={**order, "hours": 2}, headers=who["alice"])
    assert poor.status_code == 402 and "available" in poor.json()["error"]
    r = c.post("/v1/market/orders", json=order, headers=who["alice"])
    assert r.status_code == 201
    mine = r.json()["id"]
    assert c.post("/v1/market/orders", json=order, headers=who["provider"]).status_code == 403
    # another tenant's order, account and invoice are not there for bob
    assert c.get("/v1/market/orders", headers=who["bob"]).json() == []
    assert c.post(f"/v1/market/orders/{mine}/cancel", headers=who["bob"]).status_code == 404
    assert c.get("/v1/ledger", params={"account": "alice"}, headers=who["bob"]).status_code == 404
    assert c.get("/v1/invoices/alice/2026-12", headers=who["bob"]).status_code == 404
    assert c.get("/v1/invoices/alice/2026-13", headers=who["alice"]).status_code == 422
    led = c.get("/v1/ledger", headers=who["alice"]).json()
    assert [a["account"] for a in led["accounts"]] == ["alice"] and "sum_usd" not in led
    assert c.get("/v1/ledger", headers=who["admin"]).json()["sum_usd"] == "0.000000"
    # bob cannot run his job on alice's order
    spec = {"name": "x", "command": "true", "resources": {"accelerator": "a100-80gb"}}
    r = c.post("/v1/jobs", json={"spec": {**spec, "order": mine}}, headers=who["bob"])
    assert r.status_code == 422 and "spec.order" in r.json()["problems"][0]
    # a node in a live offer is not handed to another provider; withdrawn, it is
    move = {"owner": "dc2"}
    assert c.put("/v1/nodes/n1/owner", json=move, headers=who["provider"]).status_code == 403
    assert c.put("/v1/nodes/n1/owner", json=move, headers=who["admin"]).status_code == 409
    assert c.post(f"/v1/market/offers/{oid}/withdraw", headers=who["alice"]).status_code == 404
    assert c.post(f"/v1/market/offers/{oid}/withdraw", headers=who["provider"]).status_code == 200
    assert c.post(f"/v1/market/offers/{oid}/withdraw", headers=who["provider"]).status_code == 409
    assert c.put("/v1/nodes/n1/owner", json=move, headers=who["admin"]).status_code == 200
    assert c.post(f"/v1/market/orders/{mine}/cancel", headers=who["alice"]).json() == {
        "id": mine,
        "state": "cancelled",
    }


def test_idle_devices_are_offered_and_taken_back_when_the_owner_needs_them(
    tmp_path: Path,
) -> None:
    db = Store.sqlite(tmp_path)
    with db.tx() as s:
        node(s, "n1", "prov", 4)
        s.add(IdlePolicyRow(provider="prov", idle_s=600, floor_micro=900_000, notice_s=30, hours=2))
        # one device is busy with the owner's own running job
        s.add(
            JobRow(
                name="own",
                owner="prov",
                spec={"resources": {"cpu": 1}},
                state="running",
                created_at=T0,
                updated_at=T0,
                members=[{"node": "n1", "devices": [3], "rank": 0}],
            )
        )
    mc = MarketController(db, MarketConfig(every_s=0.0))
    mc.reconcile(T0)
    mc.reconcile(T0 + 599)
    with db.tx() as s:
        assert list(s.scalars(select(OfferRow))) == []  # not idle long enough yet
    mc.reconcile(T0 + 601)
    with db.tx() as s:
        (offer,) = s.scalars(select(OfferRow))
        assert offer.auto and offer.mode == "spot" and offer.price_micro == 900_000
        assert sorted(int(str(u["index"])) for u in offer.units) == [0, 1, 2]
        s.add(
            JobRow(name="more", owner="prov", spec={}, state="queued", created_at=T0, updated_at=T0)
        )
    mc.reconcile(T0 + 602)
    with db.tx() as s:
        (offer,) = s.scalars(select(OfferRow))
        assert offer.state == "withdrawn"
        assert ledger.balances(s) == {"prov": 0}  # offered, never sold: no money moved
