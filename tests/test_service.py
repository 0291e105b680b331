"""The service: API rules (auth, tenants, bad input, idempotency) and a real `suanli up`.

The end-to-end test starts the real service as a subprocess, runs real jobs,
SIGKILLs the service mid-run and restarts it: nothing stored is lost, and the
running job is re-attached and finishes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from suanli.api import create_app
from suanli.store import Base, Store
from suanli.store.models import NodeRow
from tests.helpers import start_service, stop_service, suanli, wait_state

HELLO = {
    "name": "hello",
    "command": ["python3", "-c", "print('hello')"],
    "resources": {"accelerator": "cpu", "devices": 1},
}


@pytest.fixture()
def api(store: Store):  # type: ignore[no-untyped-def]
    admin = store.create_token("admin", "admin")
    alice = store.create_token("user", "alice")
    bob = store.create_token("user", "bob")
    prov = store.create_token("provider", "dc1")
    client = TestClient(create_app(store))

    def as_(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    return client, {
        "admin": as_(admin),
        "alice": as_(alice),
        "bob": as_(bob),
        "provider": as_(prov),
    }


def head() -> str | None:
    """The newest migration's revision, as the scripts say (each new one moves it)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import suanli.store.db as db

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    return ScriptDirectory.from_config(cfg).get_current_head()


def test_schema_comes_from_migrations_that_match_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert store.revision() == head() == "0011"  # the newest migration was applied
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []
    store.migrate()  # idempotent: a restart upgrades nothing
    assert store.revision() == head()


def test_upgrade_keeps_a_running_job_attached(tmp_path: Path) -> None:
    """A database from before gangs (0002) keeps its running job's process as member 0."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    import suanli.store.db as db

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    engine = create_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.execute(
            text(
                "INSERT INTO jobs (id, name, owner, spec, state, attempts, created_at, updated_at,"
                " pid, start_time, stdout_path, stderr_path, devices, cancel_requested)"
                " VALUES (7, 'old', 'alice', '{}', 'running', 1, 0, 0, 4242, 12.5, '/l/7.out',"
                " '/l/7.err', '0,1', 0)"
            )
        )
    engine.dispose()
    store = Store(url)
    assert store.revision() == head()
    with store.tx() as s:
        from suanli.store.models import JobRow

        row = s.get(JobRow, 7)
        assert row is not None and row.state == "running"
        assert row.members == [
            {
                "job_id": "7",
                "pid": 4242,
                "start_time": 12.5,
                "stdout": "/l/7.out",
                "stderr": "/l/7.err",
                "node": "local",
                "rank": 0,
                "devices": [0, 1],
            }
        ]


def test_upgrade_hands_what_the_service_made_to_its_own_owner(tmp_path: Path) -> None:
    """0004 -> 0005: executor nodes and calibration jobs once owned by the literal "admin"
    move to ``system:executor``; a provider's node and a user's job keep their owners."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    import suanli.store.db as db
    from suanli.store.models import SYSTEM_OWNER, JobRow, NodeRow

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    engine = create_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        for name, owner, executor in (("local", "admin", "local"), ("n9", "admin", "agent")):
            conn.execute(
                text(
                    "INSERT INTO nodes (name, owner, executor, cpu_cores, memory_mib, devices,"
                    f" labels, heartbeat_at) VALUES ('{name}', '{owner}', '{executor}', 1, 1,"
                    " '[]', '{}', 0)"
                )
            )
        for jid, name in ((1, "calibrate-local"), (2, "calibrate-mine")):
            owner = "admin" if jid == 1 else "alice"
            conn.execute(
                text(
                    "INSERT INTO jobs (id, name, owner, spec, state, attempts, created_at,"
                    f" updated_at, cancel_requested) VALUES ({jid}, '{name}', '{owner}', '{{}}',"
                    " 'succeeded', 1, 0, 0, 0)"
                )
            )
    engine.dispose()
    store = Store(url)
    with store.tx() as s:
        assert s.get(NodeRow, "local").owner == SYSTEM_OWNER  # type: ignore[union-attr]
        assert s.get(NodeRow, "n9").owner == "admin"  # type: ignore[union-attr]
        assert s.get(JobRow, 1).owner == SYSTEM_OWNER  # type: ignore[union-attr]
        assert s.get(JobRow, 2).owner == "alice"  # type: ignore[union-attr]
        assert s.get(JobRow, 1).not_before is None  # type: ignore[union-attr]


def test_queues_are_admin_managed_and_checked_at_submit(api) -> None:  # type: ignore[no-untyped-def]
    client, who = api
    q = {"name": "research", "weight": 2, "quota_milli": {"*": 4000}}
    assert client.put("/v1/queues/research", json=q, headers=who["alice"]).status_code == 403
    assert client.put("/v1/queues/research", json=q, headers=who["admin"]).status_code == 200
    assert (
        client.put("/v1/queues/x", json={**q, "weight": 0}, headers=who["admin"]).status_code == 422
    )
    listed = {r["name"]: r for r in client.get("/v1/queues", headers=who["alice"]).json()}
    assert listed["research"]["quota_milli"] == {"*": 4000}
    assert listed["default"]["quota_milli"] == {}  # implicit, listed all the same
    ok = client.post(
        "/v1/jobs", json={"spec": {**HELLO, "queue": "research"}}, headers=who["alice"]
    )
    assert ok.status_code == 201
    bad = client.post("/v1/jobs", json={"spec": {**HELLO, "queue": "nope"}}, headers=who["alice"])
    assert bad.status_code == 422 and "queue: no queue 'nope'" in bad.json()["problems"][0]


def test_tokens_are_required_and_checked(api) -> None:  # type: ignore[no-untyped-def]
    client, who = api
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert (
        client.post(
            "/v1/tokens", json={"role": "user", "owner": "x"}, headers=who["alice"]
        ).status_code
        == 403
    )
    made = client.post("/v1/tokens", json={"role": "user", "owner": "carol"}, headers=who["admin"])
    assert made.status_code == 201 and made.json()["token"].startswith("sl_")


def test_bad_input_is_4xx_with_fields_named(api) -> None:  # type: ignore[no-untyped-def]
    client, who = api
    r = client.post(
        "/v1/jobs", json={"spec": {"name": "x", "resources": {"devices": 0}}}, headers=who["alice"]
    )
    assert r.status_code == 422
    assert "spec.command: Field required" in r.json()["problems"]
    r = client.post("/v1/jobs", json={"nospec": 1}, headers=who["alice"])
    assert r.status_code == 422 and r.json()["problems"]
    r = client.post("/v1/tokens", json={"role": "god", "owner": "x"}, headers=who["admin"])
    assert r.status_code == 422
    assert client.get("/v1/jobs", headers=who["alice"]).json() == []  # nothing stored


def _local_node(store: Store, cores: int = 2, memory_mib: int = 8192) -> None:
    """The node an executor reported (what the loop's node sync stores)."""
    with store.tx() as s:
        s.add(
            NodeRow(
                name="local",
                owner="system:executor",
                executor="local",
                cpu_cores=cores,
                memory_mib=memory_mib,
                devices=[],
                labels={},
                heartbeat_at=time.time(),
            )
        )


def test_hostile_input_is_a_4xx_naming_what_was_wrong(api, store: Store) -> None:  # type: ignore[no-untyped-def]
    """Each of these once stalled, bloated or crashed the service (a 500, an OverflowError
    every tick, 52 MB job listings); now each is refused at the door with the field named,
    and nothing is stored."""
    client, who = api
    _local_node(store)
    alice = who["alice"]

    def submit(spec: dict[str, Any], **kw: Any) -> Any:
        return client.post(
            "/v1/jobs", json={"spec": {"name": "x", "command": "true", **spec}, **kw}, headers=alice
        )

    for spec, field in (
        ({"resources": {"accelerator": "cpu", "cpu": 1e308}}, "spec.resources.cpu"),
        ({"gang": 200000}, "spec.gang"),
        ({"replicas": 2}, "spec.replicas"),
        ({"owner": "bob"}, "spec.owner"),
        ({"env": {"BIG": "x" * 40000}}, "spec.env"),
        ({"env": {"LD_PRELOAD": "/x.so"}}, "spec.env"),
        ({"preemptible": 0}, "spec.preemptible"),
        ({"priority": 2**40}, "spec.priority"),
    ):
        r = submit(spec)
        assert r.status_code == 422, (spec, r.text)
        assert r.json()["problems"][0].startswith(field), r.json()
    r = submit({"resources": {"accelerator": "cpu", "fraction": 0.5, "devices": 2}})
    assert r.status_code == 422 and r.json()["problems"] == [
        "spec: resources.fraction: a share is of one device; set devices: 1"
    ]
    # a job no node could ever host is refused, naming the largest there is
    r = submit({"resources": {"accelerator": "h100-sxm", "devices": 1000}})
    assert r.status_code == 422 and "has 0 h100-sxm" in r.json()["problems"][0]
    assert "the largest is local (2 CPU cores, 8 GiB, no devices)" in r.json()["problems"][0]
    r = submit({"resources": {"accelerator": "cpu", "cpu": 64}})
    assert r.status_code == 422 and "has 2 of 64 CPU cores" in r.json()["problems"][0]
    r = submit({"gang": 3, "resources": {"accelerator": "cpu", "cpu": 1}})
    assert r.status_code == 422 and "holds at most 2" in r.json()["problems"][0]
    # numbers are finite: JSON's Infinity is refused, not stored as null
    raw = '{"spec": {"name": "x", "command": "true", "max_runtime_s": Infinity}}'
    r = client.post("/v1/jobs", content=raw, headers={**alice, "content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.text
    r = client.put(
        "/v1/queues/q",
        content='{"weight": Infinity}',
        headers={**who["admin"], "content-type": "application/json"},
    )
    assert r.status_code == 422
    # no surprising coercion
    assert (
        client.put("/v1/queues/q", json={"reclaimable": 0}, headers=who["admin"]).status_code == 422
    )
    site = {"region": "r", "pue": True}
    assert client.put("/v1/sites/s1", json=site, headers=who["provider"]).status_code == 422
    # NULs anywhere: path, query, body, an idempotency key
    assert client.get("/v1/jobs?state=a%00b", headers=alice).status_code == 422
    r = client.put("/v1/sites/s1", json={"region": "a\x00b"}, headers=who["provider"])
    assert r.status_code == 422 and r.json()["problems"] == ["NUL characters are not allowed"]
    assert submit({}, idempotency_key="k\x00").status_code == 422
    # ids beyond what the database holds are a 422, not a 500
    for jid in (2**31, 2**63, -1):
        assert client.get(f"/v1/jobs/{jid}", headers=alice).status_code == 422
    # bodies past the cap are 413, whatever their content
    r = submit({"env": {"BIG": "x" * (2 << 20)}})
    assert r.status_code == 413 and r.json()["error"].startswith("request body over")
    # a wrong method says which are allowed on that path
    r = client.post("/v1/nodes/n1", headers=who["provider"])
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"PUT", "DELETE"}
    assert client.get("/v1/jobs", headers=alice).json() == []  # nothing was stored
    # a queue's name comes from its path; the body may repeat it, not contradict it
    assert (
        client.put("/v1/queues/research", json={"weight": 2}, headers=who["admin"]).status_code
        == 200
    )
    r = client.put("/v1/queues/research", json={"name": "other"}, headers=who["admin"])
    assert r.status_code == 422
    # the longest key an owner may send is stored (it was once a 500 on PostgreSQL: the
    # owner's name made it longer than its column), and still deduplicates
    first = submit({}, idempotency_key="k" * 128)
    again = submit({}, idempotency_key="k" * 128)
    assert first.status_code == 201 and again.json() == {
        "id": first.json()["id"],
        "duplicate": True,
    }


def test_tokens_are_listed_without_secrets_and_revoked(api) -> None:  # type: ignore[no-untyped-def]
    client, who = api
    mine = client.get("/v1/tokens", headers=who["alice"]).json()
    assert [t["owner"] for t in mine] == ["alice"] and "token" not in mine[0]
    every = client.get("/v1/tokens", headers=who["admin"]).json()
    assert {t["owner"] for t in every} == {"admin", "alice", "bob", "dc1"}
    bobs = next(t["id"] for t in every if t["owner"] == "bob")
    assert client.delete(f"/v1/tokens/{bobs}", headers=who["alice"]).status_code == 404
    assert client.delete(f"/v1/tokens/{bobs}", headers=who["bob"]).json() == {"revoked": bobs}
    assert client.get("/v1/jobs", headers=who["bob"]).status_code == 401  # gone at once
    admins = [t["id"] for t in every if t["role"] == "admin"]
    r = client.delete(f"/v1/tokens/{admins[0]}", headers=who["admin"])
    assert r.status_code == 409 and "last admin token" in r.json()["error"]


def test_tenants_cannot_see_or_touch_each_others_jobs(api) -> None:  # type: ignore[no-untyped-def]
    client, who = api
    jid = client.post("/v1/jobs", json={"spec": HELLO}, headers=who["alice"]).json()["id"]
    for path, method in (
        (f"/v1/jobs/{jid}", "get"),
        (f"/v1/jobs/{jid}/logs", "get"),
        (f"/v1/jobs/{jid}/cancel", "post"),
    ):
        assert getattr(client, method)(path, headers=who["bob"]).status_code == 404
        assert getattr(client, method)(path, headers=who["alice"]).status_code == 200
    assert client.get("/v1/jobs", headers=who["bob"]).json() == []
    assert len(client.get("/v1/jobs", headers=who["admin"]).json()) == 1
    assert client.post("/v1/jobs", json={"spec": HELLO}, headers=who["provider"]).status_code == 403


def test_providers_manage_only_their_own_sites_and_nodes(api) -> None:  # type: ignore[no-untyped-def]
    client, who = api
    dc2 = {
        "Authorization": "Bearer "
        + client.post(
            "/v1/tokens", json={"role": "provider", "owner": "dc2"}, headers=who["admin"]
        ).json()["token"]
    }
    site = {"region": "cn-east", "pue": 1.25, "carbon_g_per_kwh": 520, "power_price_per_kwh": 0.09}
    assert client.put("/v1/sites/sh1", json=site, headers=who["alice"]).status_code == 403
    made = client.put("/v1/sites/sh1", json=site, headers=who["provider"])
    assert made.status_code == 200 and made.json()["owner"] == "dc1"
    node = {
        "site": "sh1",
        "cpu_cores": 64,
        "memory_mib": 512 * 1024,
        "devices": [{"index": i, "accelerator": "ascend-910b"} for i in range(8)],
        "labels": {"rack": "r1"},
    }
    r = client.put("/v1/nodes/sh1-n1", json=node, headers=who["provider"])
    assert r.status_code == 200 and r.json()["devices"][0]["memory_mib"] == 61035  # 64 GB
    # another provider can neither change them nor hang a node on the site
    assert client.put("/v1/sites/sh1", json=site, headers=dc2).status_code == 403
    assert client.put("/v1/nodes/sh1-n1", json=node, headers=dc2).status_code == 403
    assert client.put("/v1/nodes/dc2-n1", json=node, headers=dc2).status_code == 403
    assert client.delete("/v1/nodes/sh1-n1", headers=dc2).status_code == 403
    beat = client.post("/v1/nodes/sh1-n1/heartbeat", json={"unhealthy": [3]}, headers=dc2)
    assert beat.status_code == 403
    # users read the inventory, never write it
    assert client.put("/v1/nodes/u1", json=node, headers=who["alice"]).status_code == 403
    listed = client.get("/v1/nodes", headers=who["alice"]).json()
    assert [n["name"] for n in listed] == ["sh1-n1"] and listed[0]["executor"] == "agent"
    # the owner reports health; a bad index is named, not a 500
    ok = client.post("/v1/nodes/sh1-n1/heartbeat", json={"unhealthy": [3]}, headers=who["provider"])
    assert [d["healthy"] for d in ok.json()["devices"]].count(False) == 1
    bad = client.post(
        "/v1/nodes/sh1-n1/heartbeat", json={"unhealthy": [99]}, headers=who["provider"]
    )
    assert bad.status_code == 422 and "unhealthy" in bad.json()["error"]
    # bad input names the field; nothing is stored
    wrong = {
        **node,
        "devices": [{"index": 0, "accelerator": "h900"}, {"index": 0, "accelerator": "t4"}],
    }
    r = client.put("/v1/nodes/sh1-n2", json=wrong, headers=who["provider"])
    assert r.status_code == 422
    assert any(p.startswith("devices.0.accelerator: ") for p in r.json()["problems"])
    r = client.put("/v1/nodes/sh1-n2", json={**node, "site": "nowhere"}, headers=who["provider"])
    assert r.status_code == 422 and "nowhere" in r.json()["error"]
    assert client.put("/v1/nodes/Bad_Name", json=node, headers=who["provider"]).status_code == 422
    assert len(client.get("/v1/nodes", headers=who["admin"]).json()) == 1
    # a node moves between its owner's sites only
    move = "/v1/nodes/sh1-n1/site"
    assert client.put(move, json={"site": None}, headers=dc2).status_code == 403
    assert client.put(move, json={"site": "nowhere"}, headers=who["provider"]).status_code == 422
    assert client.put(move, json={"site": None}, headers=who["provider"]).json()["site"] is None
    assert client.put(move, json={"site": "sh1"}, headers=who["provider"]).json()["site"] == "sh1"
    # a site with nodes is not deleted from under them; the admin may manage anything
    assert client.delete("/v1/sites/sh1", headers=who["provider"]).status_code == 409
    assert client.delete("/v1/nodes/sh1-n1", headers=who["admin"]).status_code == 200
    assert client.delete("/v1/sites/sh1", headers=who["provider"]).status_code == 200
    assert client.get("/v1/sites", headers=who["alice"]).json() == []


def test_idempotency_keys_make_retries_safe(api) -> None:  # type: ignore[no-untyped-def]
    client, who = api
    first = client.post(
        "/v1/jobs", json={"spec": HELLO, "idempotency_key": "k1"}, headers=who["alice"]
    )
    again = client.post(
        "/v1/jobs", json={"spec": HELLO, "idempotency_key": "k1"}, headers=who["alice"]
    )
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {"id": first.json()["id"], "duplicate": True}
    # the same key from another tenant is another job
    other = client.post(
        "/v1/jobs", json={"spec": HELLO, "idempotency_key": "k1"}, headers=who["bob"]
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_suanli_up_runs_jobs_and_survives_a_sigkill(tmp_path: Path) -> None:
    port = free_port()
    # a job below waits for this file (in a directory its own account can search: jobs do
    # not run as root); the finally writes it too, so nothing waits on after a failure
    shared = Path(tempfile.mkdtemp(prefix="suanli-go-"))
    shared.chmod(0o755)
    go = shared / "go"
    svc = start_service(tmp_path, port)
    token = (tmp_path / "admin.token").read_text().strip()
    assert oct((tmp_path / "admin.token").stat().st_mode & 0o777) == "0o600"
    c = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    try:
        hello = c.post("/v1/jobs", json={"spec": HELLO}).json()["id"]
        done = wait_state(c, hello, {"succeeded", "failed"})
        assert done["state"] == "succeeded" and done["exit_code"] == 0
        assert c.get(f"/v1/jobs/{hello}/logs").text == "hello\n"
        assert c.get(f"/v1/jobs/{hello}/logs", params={"tail_bytes": 3}).text == "lo\n"
        fail = {**HELLO, "name": "boom", "command": "exit 3", "retries": 1}
        bid = c.post("/v1/jobs", json={"spec": fail}).json()["id"]
        boom = wait_state(c, bid, {"failed"})
        assert boom["exit_code"] == 3 and boom["attempts"] == 2  # retried once
        # the job waits for a file the test writes once the restarted service has
        # re-attached it: however slow the machine, it is alive across the restart
        wait_for_go = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)"
        slow = {
            **HELLO,
            "name": "slow",
            "command": ["python3", "-c", wait_for_go + "\nprint('done')"],
        }
        sid = c.post("/v1/jobs", json={"spec": slow}).json()["id"]
        # "running" is written when the job is claimed, before its process starts; the
        # "started" event comes with the stored handle, which a restart re-attaches by (a
        # kill between the two is the orphan case: tests/test_loop_faults.py)
        end = time.monotonic() + 60
        while not any(e["kind"] == "started" for e in c.get(f"/v1/jobs/{sid}").json()["events"]):
            assert time.monotonic() < end, c.get(f"/v1/jobs/{sid}").json()
            time.sleep(0.05)
        queued = c.post("/v1/jobs", json={"spec": {**HELLO, "name": "later"}}).json()["id"]
        svc.send_signal(signal.SIGKILL)  # the service dies; the job process does not
        svc.wait()
        svc = start_service(tmp_path, port)
        end = time.monotonic() + 60
        while not any(e["kind"] == "reattached" for e in c.get(f"/v1/jobs/{sid}").json()["events"]):
            assert time.monotonic() < end, c.get(f"/v1/jobs/{sid}").json()
            time.sleep(0.1)
        go.touch()
        row = wait_state(c, sid, {"succeeded", "failed"}, timeout=60)
        assert row["state"] == "succeeded", row["events"]
        assert any(e["kind"] == "reattached" for e in row["events"])
        assert c.get(f"/v1/jobs/{sid}/logs").text == "done\n"
        assert wait_state(c, queued, {"succeeded"})["exit_code"] == 0
        # cancel: SIGTERM, the job ends within its grace
        long = {
            **HELLO,
            "name": "long",
            "command": ["python3", "-c", "import time; time.sleep(60)"],
        }
        lid = c.post("/v1/jobs", json={"spec": long}).json()["id"]
        wait_state(c, lid, {"running"})
        assert c.post(f"/v1/jobs/{lid}/cancel").json()["cancel_requested"]
        assert wait_state(c, lid, {"cancelled"})["exit_code"] == -15
    finally:
        go.touch()  # the job waiting for it ends however the test went
        c.close()
        stop_service(svc)
    assert svc.returncode in (0, -signal.SIGTERM)
    assert not os.path.exists(tmp_path / "nonexistent")


def _cancel_while_the_loop_moves_the_job(store: Store, api: Any, moves: Any) -> tuple[Any, int]:
    """POST a cancel for a running job while ``moves(statement, set_state)`` runs after
    each of the API's statements; ``set_state`` commits from another connection, as the
    loop would. Returns the response and the job id."""
    if store.engine.dialect.name == "sqlite":
        pytest.skip("SQLite: the first UPDATE takes the write lock, so nothing moves between")
    from sqlalchemy import create_engine, event, update

    from suanli.store.models import JobRow

    client, auth = api
    jid = client.post("/v1/jobs", json={"spec": HELLO}, headers=auth["alice"]).json()["id"]
    with store.tx() as s:
        s.execute(update(JobRow).where(JobRow.id == jid).values(state="running"))
    other = create_engine(store.engine.url)  # the loop's own connection

    def set_state(to: str) -> None:
        with other.begin() as c:
            c.execute(update(JobRow).where(JobRow.id == jid).values(state=to))

    def hook(conn, cursor, statement, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("UPDATE jobs"):
            moves(statement, set_state)

    event.listen(store.engine, "after_cursor_execute", hook)
    try:
        return client.post(f"/v1/jobs/{jid}/cancel", headers=auth["alice"]), jid
    finally:
        event.remove(store.engine, "after_cursor_execute", hook)
        other.dispose()


def test_a_cancel_is_not_lost_when_the_loop_requeues_the_job_between_its_statements(
    store: Store, api: Any
) -> None:
    """The API's cancel is two compare-and-set statements; under PostgreSQL's read
    committed the loop may move the job (running -> queued, a retry) between them."""
    moved: list[bool] = []

    def requeue_once(statement: str, set_state: Any) -> None:
        if not moved and "IN (" in statement:
            moved.append(True)  # after the first statement missed (running) ...
            set_state("queued")  # ... the loop commits a retry: running -> queued

    r, _ = _cancel_while_the_loop_moves_the_job(store, api, requeue_once)
    assert moved and r.status_code == 200
    assert r.json()["state"] == "cancelled"


def test_a_cancel_that_never_catches_the_job_says_so_with_a_409(store: Store, api: Any) -> None:
    """If the loop moves the job under every compare-and-set round, the API answers 409
    (send it again), never a 200 that cancelled nothing."""
    from suanli.store.models import JobRow

    def flip(statement: str, set_state: Any) -> None:
        # each statement finds the job just where the other one would have caught it
        set_state("queued" if "IN (" in statement else "running")

    r, jid = _cancel_while_the_loop_moves_the_job(store, api, flip)
    assert r.status_code == 409 and "send the cancel again" in r.json()["error"]
    with store.tx() as s:
        row = s.get(JobRow, jid)
        assert row is not None and not row.cancel_requested and row.state == "running"


def test_the_command_line_reads_job_files_within_limits_and_manages_tokens(
    tmp_path: Path,
) -> None:
    """`suanli submit` refuses a "billion laughs" file and `.inf` with one line each (it
    once ran to 1.58 GB, or printed a traceback); tokens are listed and revoked."""
    port = free_port()
    svc = start_service(tmp_path, port)
    env = {
        **os.environ,
        "SUANLI_URL": f"http://127.0.0.1:{port}",
        "SUANLI_TOKEN": (tmp_path / "admin.token").read_text().strip(),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return suanli(*args, env=env)

    try:
        bomb = tmp_path / "bomb.yaml"
        lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
        for i in range(1, 10):
            prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
            lines.append(f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
        lines.append("name: bomb\ncommand: [echo]\nenv: {X: y}\nextra: *j")
        bomb.write_text("\n".join(lines) + "\n")
        out = cli("submit", str(bomb))
        assert out.returncode == 2 and "aliases are expanded" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
        inf = tmp_path / "inf.yaml"
        inf.write_text("name: x\ncommand: [echo]\nmax_runtime_s: .inf\n")
        out = cli("submit", str(inf))
        assert out.returncode == 2 and "max_runtime_s" in out.stderr and "finite" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        made = json.loads(
            cli("token", "create", "--role", "admin", "--owner", "dave", "--json").stdout
        )
        rows = json.loads(cli("token", "list", "--json").stdout)
        dave = next(r["id"] for r in rows if r["owner"] == "dave")
        assert "token" not in rows[0] and made["owner"] == "dave"
        assert cli("token", "revoke", str(dave)).returncode == 0
        gone = httpx.get(
            f"http://127.0.0.1:{port}/v1/jobs",
            headers={"Authorization": f"Bearer {made['token']}"},
        )
        assert gone.status_code == 401 and gone.json()["error"] == "unknown token"
    finally:
        stop_service(svc)


def test_a_service_that_cannot_switch_users_issues_no_tenant_tokens(store: Store) -> None:
    """Not root and not --single-user: jobs would run as the service's own user, so a token
    for another tenant is refused, saying what to do."""
    admin = store.create_token("admin", "admin")
    client = TestClient(create_app(store, multi_tenant=False))
    auth = {"Authorization": f"Bearer {admin}"}
    r = client.post("/v1/tokens", json={"role": "user", "owner": "eve"}, headers=auth)
    assert r.status_code == 409 and "--single-user" in r.json()["error"]
    r = client.post("/v1/tokens", json={"role": "admin", "owner": "admin"}, headers=auth)
    assert r.status_code == 201


def test_a_data_dir_from_before_is_made_private_and_logs_are_read_from_their_end(
    tmp_path: Path,
) -> None:
    """Files an older version left readable (0644) are private once the service starts; a
    log is answered from its end, however long the job made it."""
    from suanli.service.up import make_private

    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "jobs" / "1").mkdir(parents=True)
    for f in ("suanli.db", "admin.token", "logs/1.out"):
        (data / f).write_text("x")
        (data / f).chmod(0o644)
    (data / "jobs" / "1").chmod(0o755)  # a job's own directory is the job's business
    make_private(data)
    for f in ("", "suanli.db", "admin.token", "logs", "logs/1.out"):
        assert (data / f).stat().st_mode & 0o077 == 0, f
    assert (data / "jobs" / "1").stat().st_mode & 0o777 == 0o755
    from suanli.run.local import tail

    big = tmp_path / "big.out"
    big.write_bytes(b"a" * 3_000_000 + b"the end\n")
    assert tail(big, 8) == "the end\n" and len(tail(big, 1 << 20)) == 1 << 20
    assert tail(tmp_path / "absent", 10) == ""
