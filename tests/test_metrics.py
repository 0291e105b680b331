"""``GET /metrics`` and the service log: a real app, a real loop, real processes.

The scrape is parsed with prometheus_client's own parser; the log is read with
caplog. Nothing waits on a timer: the loop is ticked until jobs reach a state.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from suanli.api import create_app
from suanli.api.metrics import REASONS, Metrics, placement_reason
from suanli.jobs.spec import parse_job_spec
from suanli.run.executor import ExecutorUnavailable
from suanli.run.local import LocalExecutor
from suanli.service import loop as loop_module
from suanli.service.logs import JsonFormatter
from suanli.service.loop import Loop
from suanli.store import Store
from suanli.store.models import JobRow, PriceRow
from tests.helpers import A100, reap, run_until

PY = sys.executable
OWNER = "quokka-tenant"  # neither this owner nor a job name may appear in a scrape
A100_1 = {"accelerator": "a100-80gb", "devices": 1}


def submit(store: Store, name: str, spec: dict[str, Any]) -> int:
    full = parse_job_spec({"name": name, **spec}).model_dump()
    with store.tx() as s:
        return store.add_job(s, full, OWNER).id


def scrape(client: TestClient) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    """The text, and each sample's value by sample name and sorted labels."""
    r = client.get("/metrics")  # no token: Prometheus scrapes without one
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return r.text, samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return float(samples[name][tuple(sorted(labels.items()))])


@pytest.fixture()
def rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store.sqlite(tmp_path)
    metrics = Metrics(store)
    ex = LocalExecutor(tmp_path / "logs", A100)
    loop = Loop(store, ex, tick_s=0.05, grace_s=2.0, metrics=metrics)
    client = TestClient(create_app(store, metrics=metrics))
    yield store, loop, client
    reap(ex)


def test_a_scrape_counts_jobs_queues_devices_and_what_the_loop_did(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop, client = rig
    ok = submit(store, "zebra-ok", {"command": [PY, "-c", "print(1)"], "resources": A100_1})
    bad = submit(
        store,
        "zebra-bad",
        {"command": [PY, "-c", "raise SystemExit(3)"], "resources": A100_1, "retries": 0},
    )
    assert run_until(loop, store, ok, {"succeeded"}).exit_code == 0
    assert run_until(loop, store, bad, {"failed"}).exit_code == 3
    held = submit(
        store,
        "zebra-holds",
        {"command": [PY, "-c", "import time; time.sleep(600)"], "resources": A100_1},
    )
    run_until(loop, store, held, {"running"})
    big = {"command": [PY, "-c", "print(1)"], "resources": {**A100_1, "devices": 4}}
    never = submit(store, "zebra-too-big", big)
    loop.tick()
    assert [e.kind for e in store.events(never)] == ["submitted", "unschedulable"]

    token = store.create_token("admin", "admin")
    assert client.get(f"/v1/jobs/{ok}", headers={"Authorization": f"Bearer {token}"}).is_success
    assert client.get("/no/such/page").status_code == 404
    text, samples = scrape(client)

    # what the store holds, read at scrape time
    assert value(samples, "suanli_jobs", state="succeeded") == 1
    assert value(samples, "suanli_jobs", state="failed") == 1
    assert value(samples, "suanli_jobs", state="running") == 1
    assert value(samples, "suanli_jobs", state="queued") == 1
    assert value(samples, "suanli_jobs", state="cancelled") == 0
    assert value(samples, "suanli_queue_pending_jobs", queue="default") == 1
    assert value(samples, "suanli_devices", chip="a100-80gb", state="allocated") == 1
    assert value(samples, "suanli_devices", chip="a100-80gb", state="free") == 1
    assert value(samples, "suanli_devices", chip="a100-80gb", state="unhealthy") == 0
    # what the loop counted
    assert value(samples, "suanli_job_starts_total", executor="local") == 3
    assert value(samples, "suanli_job_failures_total", executor="local") == 1
    assert value(samples, "suanli_placement_failures_total", reason="devices") == 1
    assert {dict(k)["reason"] for k in samples["suanli_placement_failures_total"]} == set(REASONS)
    assert value(samples, "suanli_schedule_cycle_seconds_count") >= 3
    # the API, by route template: never the raw path
    routes = {dict(k)["route"] for k in samples["suanli_api_request_seconds_count"]}
    assert "/v1/jobs/{job_id}" in routes and "<unmatched>" in routes
    assert not any(re.search(r"/\d+(/|$)", r) or "no/such" in r for r in routes)
    assert (
        value(
            samples,
            "suanli_api_request_seconds_count",
            method="GET",
            route="/v1/jobs/{job_id}",
            status="200",
        )
        == 1
    )
    # aggregates only: no job name, no owner
    assert "zebra" not in text and OWNER not in text
    assert all(name.startswith("suanli_") for name in samples if not name.startswith("python_")), (
        sorted(samples)
    )


def test_store_series_are_right_for_a_fresh_app_over_an_old_store(rig, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Gauges come from the store, so an app started after the jobs ran (a restart) has them."""
    store, loop, _ = rig
    jid = submit(store, "zebra", {"command": [PY, "-c", "print(1)"], "resources": A100_1})
    run_until(loop, store, jid, {"succeeded"})
    _, samples = scrape(TestClient(create_app(Store.sqlite(tmp_path))))  # a second app
    assert value(samples, "suanli_jobs", state="succeeded") == 1
    assert value(samples, "suanli_devices", chip="a100-80gb", state="free") == 2
    assert "suanli_job_starts_total" not in samples  # counters are the loop's, not the store's


@pytest.mark.parametrize(
    ("why", "label"),
    [
        ("unknown queue 'x'", "unknown_queue"),
        ("queue research quota exhausted", "quota"),
        ("queue a at its deserved share", "fair_share"),
        ("gang: 1 of 4 members fit; 0/2 nodes are available: 2 have 1 of 2 a100 free", "gang"),
        ("waiting for its turn: the next scheduling round is at 30 s", "round"),
        ("waiting for a lease of market order 4", "lease"),
        ("0/3 nodes are available: 3 not in region cn-east", "region"),
        ("0/1 nodes are available: 1 does not match the node selector", "node_selector"),
        ("0/2 nodes are available: 2 have 1 of 4 CPU cores free", "cpu"),
        ("0/1 nodes are available: 1 has 2 of 8 GiB of memory free", "memory"),
        ("0/1 nodes are available: 1 has 0 h100-80gb", "devices"),
        ("0/1 nodes are available: 1 has no a100 with 0.5 of a device free", "devices"),
        ("0/1 nodes are available: 1 has 1 of 2 a100-80gb free", "devices"),
        ("waiting behind jobs of its queue and priority", "priority"),
        ("something new the scheduler says", "other"),
    ],
)
def test_a_reason_is_counted_under_a_fixed_label(why: str, label: str) -> None:
    assert placement_reason(why) == label and label in REASONS


def test_each_transition_is_one_log_line(rig, caplog) -> None:  # type: ignore[no-untyped-def]
    store, loop, _ = rig
    caplog.set_level(logging.INFO, logger="suanli.loop")
    jid = submit(store, "zebra", {"command": [PY, "-c", "print(1)"], "resources": A100_1})
    run_until(loop, store, jid, {"succeeded"})
    moves = [r for r in caplog.records if getattr(r, "job", None) == jid]
    assert [(r.__dict__["from"], r.__dict__["to"]) for r in moves] == [
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    started, ended = moves
    assert started.queue == "default" and started.node  # type: ignore[attr-defined]
    assert f"job {jid} queued→running (queue default, node " in started.getMessage()
    assert ended.reason == "exit [0]"  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(ended))
    assert line["msg"] == ended.getMessage() and line["level"] == "info"
    assert (line["job"], line["from"], line["to"], line["queue"]) == (
        jid,
        "running",
        "succeeded",
        "default",
    )
    assert "zebra" not in caplog.text  # the log names jobs by id


class Away(LocalExecutor):
    """An executor whose cluster does not answer while ``away`` is set."""

    away = False

    def nodes(self):  # type: ignore[no-untyped-def]
        if self.away:
            raise ConnectionError("Ray's dashboard at 127.0.0.1:8265 refused the connection")
        return super().nodes()


def test_an_outage_is_logged_when_it_starts_counted_and_logged_when_it_ends(  # type: ignore[no-untyped-def]
    tmp_path, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(loop_module, "NODE_REFRESH_S", -1.0)  # ask for nodes at every tick
    ex = Away(tmp_path / "logs", A100)
    ex.name = "ray"
    loop = Loop(Store.sqlite(tmp_path), ex, tick_s=0.05)
    clock = [1000.0]
    loop.outage.clock = lambda: clock[0]
    caplog.set_level(logging.INFO, logger="suanli")
    assert loop.safe_tick()
    ex.away = True
    ticks = 120
    for _ in range(ticks):
        assert not loop.safe_tick()
        clock[0] += 0.4  # 48 s of ticks
    ex.away = False
    assert loop.safe_tick() and loop.safe_tick()
    said = [r for r in caplog.records if r.name == "suanli.loop"]
    assert not any(r.exc_info for r in said), "no traceback for an outage"
    begun = [r.getMessage() for r in said if "unavailable:" in r.getMessage()]
    counts = [r.getMessage() for r in said if "still unavailable" in r.getMessage()]
    ended = [r.getMessage() for r in said if " back after " in r.getMessage()]
    assert len(begun) == 1 and begun[0].startswith("executor ray unavailable: ConnectionError")
    assert 1 <= len(counts) <= ticks // loop.outage.every
    assert ended == [f"executor ray back after 48 s, {ticks} failed attempts"]
    assert len(said) == len(begun) + len(counts) + len(ended)


class StartsRefused(LocalExecutor):
    """Lists its nodes, but refuses the next ``refusals`` starts as an absent cluster."""

    refusals = 0

    def start(self, launch):  # type: ignore[no-untyped-def]
        if self.refusals:
            self.refusals -= 1
            raise ExecutorUnavailable("Ray's dashboard answers 503")
        return super().start(launch)


def test_refused_starts_are_one_outage_while_the_node_list_answers(  # type: ignore[no-untyped-def]
    tmp_path, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(loop_module, "NODE_REFRESH_S", -1.0)  # the node list answers each tick
    store = Store.sqlite(tmp_path)
    ex = StartsRefused(tmp_path / "logs", A100)
    ex.refusals = 5
    loop = Loop(store, ex, tick_s=0.05)
    caplog.set_level(logging.INFO, logger="suanli.loop")
    try:
        jid = submit(store, "zebra", {"command": [PY, "-c", "print(1)"], "resources": A100_1})
        while ex.refusals:
            assert loop.safe_tick()
            with store.tx() as s:
                row = s.get(JobRow, jid)
                assert row is not None and row.state == "queued"
                row.not_before = None  # skip the wait
        assert run_until(loop, store, jid, {"succeeded"}).exit_code == 0
    finally:
        reap(ex)
    said = [r.getMessage() for r in caplog.records if "executor local" in r.getMessage()]
    assert said[0] == "executor local unavailable: Ray's dashboard answers 503"
    assert len(said) == 2 and said[1].endswith(" 5 failed attempts")
    requeued = [r for r in caplog.records if getattr(r, "to", None) == "queued"]
    assert len(requeued) == 5 and all(r.__dict__["from"] == "running" for r in requeued)


def test_a_tick_that_keeps_failing_logs_its_traceback_once(rig, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _, loop, _ = rig
    caplog.set_level(logging.INFO, logger="suanli.loop")

    def broken() -> None:
        raise RuntimeError("database is away")

    monkeypatch.setattr(loop, "tick", broken)
    for _ in range(20):
        assert not loop.safe_tick()
    monkeypatch.undo()
    assert loop.safe_tick()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    assert any("succeed again" in r.getMessage() for r in caplog.records)


def test_store_series_read_the_same_on_sqlite_and_postgresql(store: Store) -> None:
    # the queue is read from inside each job's JSON spec: a query both databases must run
    for i, queue in enumerate(("default", "research", "research")):
        submit(store, f"j{i}", {"command": [PY, "-c", "pass"], "queue": queue})
    _, samples = scrape(TestClient(create_app(store, metrics=Metrics(store))))
    assert value(samples, "suanli_queue_pending_jobs", queue="research") == 2
    assert value(samples, "suanli_queue_pending_jobs", queue="default") == 1
    assert value(samples, "suanli_jobs", state="queued") == 3


def test_the_market_and_services_are_exported_without_names(store: Store) -> None:
    c = TestClient(create_app(store))
    auth = {
        who: {"Authorization": f"Bearer {store.create_token(role, who)}"}
        for who, role in (("admin", "admin"), ("dc1", "provider"), ("alice", "user"))
    }
    gpus = [{"index": i, "accelerator": "a100-80gb"} for i in range(4)]
    node = {"cpu_cores": 32, "memory_mib": 256_000, "devices": gpus}
    assert c.put("/v1/nodes/n1", json=node, headers=auth["dc1"]).status_code == 200
    offer = {"accelerator": "a100-80gb", "count": 2, "price_usd_per_hour": 2.5, "hours": 10}
    assert c.post("/v1/market/offers", json=offer, headers=auth["dc1"]).status_code == 201
    dep = {"account": "alice", "amount_usd": 100.0, "idempotency_key": "d1"}
    assert c.post("/v1/ledger/deposits", json=dep, headers=auth["admin"]).status_code == 201
    low = {"accelerator": "a100-80gb", "count": 1, "max_price_usd_per_hour": 1, "hours": 1}
    assert c.post("/v1/market/orders", json=low, headers=auth["alice"]).status_code == 201
    with store.tx() as s:  # what the spot auction writes when it clears
        s.add(PriceRow(accelerator="a100-80gb", region="default", price_micro=1_750_000,
                       volume=2, at=1.0))  # fmt: skip
        s.add(
            PriceRow(accelerator="a100-80gb", region="default", price_micro=None, volume=0, at=2.0)
        )  # fmt: skip  (no sale: the last price stands)
    text = c.get("/metrics").text
    assert 'suanli_market_open_offers{chip="a100-80gb",mode="on-demand"} 1.0' in text
    assert 'suanli_market_open_orders{chip="a100-80gb",mode="on-demand"} 1.0' in text
    assert 'suanli_market_spot_price_usd_per_hour{chip="a100-80gb",region="default"} 1.75' in text
    assert "suanli_services 0.0" in text and 'suanli_service_replicas{state="running"} 0.0' in text
    assert "alice" not in text and "dc1" not in text and "n1" not in text
