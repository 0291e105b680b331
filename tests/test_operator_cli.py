"""The operator's command line: a port clash said first, ages and exits for people, logs
from an offset, and queues managed from the CLI (`default` always listed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from suanli.api import create_app
from suanli.cli.output import age, exit_status
from suanli.store import Store
from suanli.store.models import SYSTEM_OWNER, JobRow, NodeRow
from tests.helpers import start_service, stop_service, suanli, wait_state

HELLO = {
    "name": "hello",
    "command": ["python3", "-c", "print('hello')"],
    "resources": {"accelerator": "cpu", "devices": 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_on_a_busy_port_says_so_first_and_exits_2(tmp_path: Path) -> None:
    """Nothing (no URL, no admin token) is printed or created before the clash is said."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = suanli("up", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use: stop what holds it or pass --port"
    ]
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (1619, "26m"),
        (3600, "1h"),
        (11520, "3h12m"),
        (86400, "1d"),
        (187200, "2d4h"),
        (-3, "0s"),
    ],
)
def test_ages_read_as_people_write_them(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_exits_read_as_people_write_them() -> None:
    assert exit_status(None) == "-"
    assert exit_status(0) == "0" and exit_status(3) == "3"
    assert exit_status(-15) == "SIGTERM" and exit_status(-9) == "SIGKILL"
    assert exit_status(-200) == "signal 200"


@pytest.fixture()
def api(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store.sqlite(tmp_path)
    tokens = {who: store.create_token("user", who) for who in ("alice", "bob")}
    tokens["admin"] = store.create_token("admin", "admin")
    client = TestClient(create_app(store))
    return client, store, {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}


def _job_with_logs(store: Store, tmp_path: Path, out: bytes, err: bytes) -> tuple[int, Path]:
    """alice's job whose one member wrote ``out`` and ``err``."""
    files = tmp_path / "logs"
    files.mkdir(exist_ok=True)
    (files / "1.out").write_bytes(out)
    (files / "1.err").write_bytes(err)
    with store.tx() as s:
        row = store.add_job(s, {**HELLO, "queue": "default"}, "alice")
        row.members = [{"stdout": str(files / "1.out"), "stderr": str(files / "1.err")}]
        return row.id, files


def test_logs_are_read_from_an_offset_or_their_last_lines(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, store, who = api
    jid, files = _job_with_logs(store, tmp_path, b"one\ntwo\nthree\n", b"warn\n")
    url = f"/v1/jobs/{jid}/logs"
    whole = client.get(url, headers=who["alice"])  # no parameters: as before, with a cursor
    assert whole.text == "one\ntwo\nthree\nwarn\n"
    assert whole.headers["X-Log-Offset"] == "14,5"
    assert client.get(url, params={"offset": "14,5"}, headers=who["alice"]).text == ""
    with (files / "1.out").open("ab") as fh:
        fh.write("four ü".encode())
    new = client.get(url, params={"offset": "14,5"}, headers=who["alice"])
    assert new.text == "four ü" and new.headers["X-Log-Offset"] == "21,5"
    # a character cut by the end of what was read waits for the next read, whole
    cut = client.get(url, params={"offset": "8,5", "tail_bytes": 12}, headers=who["alice"])
    assert cut.text == "three\nfour " and cut.headers["X-Log-Offset"] == "19,5"
    assert client.get(url, params={"offset": "19"}, headers=who["alice"]).text == "ü" + "warn\n"
    last = client.get(url, params={"tail": 2}, headers=who["alice"])
    assert last.text == "three\nfour üwarn\n" and last.headers["X-Log-Offset"] == "21,5"
    (files / "1.out").write_bytes(b"retry\n")  # a new attempt: shorter than its offset
    assert client.get(url, params={"offset": "21,5"}, headers=who["alice"]).text == "retry\n"


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"offset": "-1"}, "offset: -1 is negative"),
        ({"offset": "3,-7"}, "offset: -7 is negative"),
        ({"offset": "abc"}, "is not byte offsets"),
        ({"tail": -1}, "tail"),
        ({"tail": 0}, "tail"),
        ({"tail": 3, "offset": "0"}, "pass one of them"),
    ],
)
def test_bad_log_parameters_are_a_422_saying_what_is_wrong(
    api: Any,
    tmp_path: Path,
    params: dict[str, Any],
    problem: str,
) -> None:
    client, store, who = api
    jid, _ = _job_with_logs(store, tmp_path, b"x\n", b"")
    r = client.get(f"/v1/jobs/{jid}/logs", params=params, headers=who["alice"])
    assert r.status_code == 422 and problem in r.json()["problems"][0], r.json()


def test_another_tenants_log_stays_hidden_whatever_is_asked(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, store, who = api
    jid, _ = _job_with_logs(store, tmp_path, b"secret\n", b"")
    for params in ({}, {"offset": "0"}, {"offset": "0,0"}, {"tail": 1}, {"offset": "-1"}):
        r = client.get(f"/v1/jobs/{jid}/logs", params=params, headers=who["bob"])
        assert r.status_code == 404 and "secret" not in r.text, params
        assert client.get(f"/v1/jobs/{jid}/logs", headers=who["admin"]).text == "secret\n"


def test_queues_list_default_and_are_deleted_only_when_idle(api) -> None:  # type: ignore[no-untyped-def]
    client, store, who = api
    listed = client.get("/v1/queues", headers=who["alice"]).json()
    assert listed == [{"name": "default", "weight": 1.0, "quota_milli": {}, "reclaimable": True}]
    # the path names the queue: the body need not repeat it, and may not contradict it
    ok = client.put("/v1/queues/research", json={"weight": 2}, headers=who["admin"])
    assert ok.status_code == 200 and ok.json()["name"] == "research"
    bad = client.put("/v1/queues/research", json={"name": "other"}, headers=who["admin"])
    assert bad.status_code == 422 and "path and the body" in bad.json()["error"]
    assert [q["name"] for q in client.get("/v1/queues", headers=who["alice"]).json()] == [
        "default",
        "research",
    ]
    jid = client.post(
        "/v1/jobs", json={"spec": {**HELLO, "queue": "research"}}, headers=who["alice"]
    ).json()["id"]
    assert client.delete("/v1/queues/research", headers=who["alice"]).status_code == 403
    busy = client.delete("/v1/queues/research", headers=who["admin"])
    assert busy.status_code == 409 and f"1 job(s) waiting or running ({jid})" in busy.text
    d = client.delete("/v1/queues/default", headers=who["admin"])
    assert d.status_code == 409 and "default queue cannot be deleted" in d.json()["error"]
    assert client.delete("/v1/queues/nope", headers=who["admin"]).status_code == 404
    with store.tx() as s:
        row = s.get(JobRow, jid)
        assert row is not None
        row.state = "succeeded"
    assert client.delete("/v1/queues/research", headers=who["admin"]).json() == {
        "deleted": "research"
    }


def test_the_operator_manages_queues_and_follows_logs_from_the_command_line(
    tmp_path: Path,
) -> None:
    port = free_port()
    shared = Path(tempfile.mkdtemp(prefix="suanli-go-"))
    shared.chmod(0o755)  # jobs run as their own account: it must see the file
    go = shared / "go"
    svc = start_service(tmp_path, port)
    token = (tmp_path / "admin.token").read_text().strip()
    env = {**os.environ, "SUANLI_URL": f"http://127.0.0.1:{port}", "SUANLI_TOKEN": token}
    c = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    follow: subprocess.Popen[str] | None = None
    try:
        queues = json.loads(suanli("queues", "--json", env=env).stdout)
        assert [q["name"] for q in queues] == ["default"]
        made = suanli(
            "queue", "create", "research", "--weight", "2", "--quota", "a100-80gb=1.5",
            "--quota", "*=4", "--no-reclaimable", env=env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert "created queue research: weight 2, quota *=4, a100-80gb=1.5, not reclaimable" in (
            made.stdout
        )
        again = suanli("queue", "create", "research", env=env)
        assert again.returncode == 2 and "suanli queue set research" in again.stderr
        typo = suanli("queue", "set", "research", "--quota", "a100=1", env=env)
        assert typo.returncode == 2 and "unknown accelerator 'a100'" in typo.stderr
        changed = suanli("queue", "set", "research", "--quota", "*=none", "--json", env=env)
        assert json.loads(changed.stdout) == {
            "name": "research",
            "weight": 2.0,
            "quota_milli": {"a100-80gb": 1500},
            "reclaimable": False,
        }
        table = suanli("queues", env=env).stdout
        assert "research" in table and "a100-80gb=1.5" in table and "default" in table

        # a job in the queue writes a line, waits for the test, writes another
        script = "import os, time\nprint('one', flush=True)\n" + (
            f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\nprint('two')"
        )
        spec = {**HELLO, "name": "talk", "queue": "research", "command": ["python3", "-c", script]}
        jid = c.post("/v1/jobs", json={"spec": spec}).json()["id"]
        busy = suanli("queue", "delete", "research", env=env)
        assert busy.returncode == 2 and "waiting or running" in busy.stderr
        follow = subprocess.Popen(
            [sys.executable, "-m", "suanli", "logs", str(jid), "-f"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follow.stdout is not None
        # a cap only for a hang: readline then ends and the assertion says so
        watchdog = threading.Timer(120, follow.kill)
        watchdog.start()
        try:
            assert follow.stdout.readline() == "one\n"  # shown while the job still runs
        finally:
            watchdog.cancel()
        jobs = suanli("jobs", env=env).stdout
        assert "None" not in jobs and "talk" in jobs
        top = suanli("top", "--once", env=env)  # the running job, its queue, this node
        assert top.returncode == 0, top.stderr
        assert "1 running, 0 queued" in top.stdout and "local" in top.stdout, top.stdout
        row = next(line for line in top.stdout.splitlines() if line.startswith(f"│ {jid} "))
        assert "talk" in row and "research" in row, top.stdout
        go.touch()
        rest, err = follow.communicate(timeout=120)
        assert follow.returncode == 0, err
        assert rest == "two\n"  # only what was new: nothing shown twice
        done = wait_state(c, jid, {"succeeded", "failed"})
        assert done["state"] == "succeeded"
        assert suanli("logs", str(jid), "--tail", "1", env=env).stdout == "two\n"
        as_json = json.loads(suanli("logs", str(jid), "--json", env=env).stdout)
        assert as_json["id"] == jid and as_json["text"] == "one\ntwo\n"
        assert as_json["offset"].startswith("8,")
        rows = json.loads(suanli("jobs", "--json", env=env).stdout)
        assert rows[0]["exit_code"] == 0 and isinstance(rows[0]["created_at"], float)
        assert suanli("queue", "delete", "research", env=env).stdout.strip() == (
            "deleted queue research"
        )
        kept = suanli("queue", "delete", "default", env=env)
        assert kept.returncode == 2 and "default queue cannot be deleted" in kept.stderr
        # a node no one reports any more (a Ray node that died) is lost, and not listed
        with Store.sqlite(tmp_path).tx() as s:
            s.add(
                NodeRow(
                    name="gone-node", owner=SYSTEM_OWNER, site=None, executor="ray",
                    cpu_cores=8, memory_mib=1024, devices=[], labels={},
                    heartbeat_at=time.time() - 3600,
                )
            )  # fmt: skip
        nodes = {
            n["name"]: n["state"] for n in json.loads(suanli("nodes", "--json", env=env).stdout)
        }
        assert nodes["gone-node"] == "lost" and nodes["local"] == "ready"
        shown = suanli("nodes", env=env).stdout
        assert "gone-node" not in shown and "1 lost node(s) not shown" in shown
        assert "gone-node" in suanli("nodes", "--all", env=env).stdout
    finally:
        go.touch()
        if follow is not None and follow.poll() is None:
            follow.kill()
            follow.communicate()
        c.close()
        stop_service(svc)


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    out = suanli("--version")
    assert out.returncode == 0 and out.stdout == f"suanli {version('suanli')}\n"


def test_a_site_with_an_engine_is_checked_and_its_address_shown_only_to_its_owner(api) -> None:  # type: ignore[no-untyped-def]
    client, store, who = api
    prov = {"Authorization": f"Bearer {store.create_token('provider', 'acme')}"}
    url = "/v1/sites/west"
    bad = client.put(url, json={"region": "cn-west", "engine": "ray"}, headers=prov)
    assert bad.status_code == 422 and "HOST:PORT" in bad.text
    bad = client.put(url, json={"region": "cn-west", "address": "10.0.0.5:8265"}, headers=prov)
    assert bad.status_code == 422 and "need an engine" in bad.text
    bad = client.put(
        url,
        json={"region": "cn-west", "engine": "ray", "address": "h:1", "python": "py; rm"},
        headers=prov,
    )
    assert bad.status_code == 422  # an absolute path, nothing a shell would act on
    body = {"region": "cn-west", "engine": "ray", "address": "10.0.0.5:8265", "grace_s": 60.0}
    assert client.put(url, json=body, headers=who["alice"]).status_code == 403
    made = client.put(url, json=body, headers=prov)
    assert made.status_code == 200 and made.json()["status"] == "attaching"
    assert client.get(url, headers=who["admin"]).json()["address"] == "10.0.0.5:8265"
    seen = client.get(url, headers=who["alice"]).json()
    assert "address" not in seen and seen["engine"] == "ray" and seen["grace_s"] == 60.0
    assert all("address" not in s for s in client.get("/v1/sites", headers=who["bob"]).json())
    # a learned node goes with its engine's site; a running job there keeps the site
    with store.tx() as s:
        s.add(
            NodeRow(
                name="ray-1",
                owner=SYSTEM_OWNER,
                site="west",
                executor="ray",
                cpu_cores=2,
                memory_mib=1024,
                devices=[],
                labels={},
                heartbeat_at=0.0,
            )
        )
        row = store.add_job(s, {**HELLO, "queue": "default"}, "alice")
        row.state, row.members = "running", [{"node": "ray-1", "site": "west"}]
    busy = client.delete(url, headers=prov)
    assert busy.status_code == 409 and "cancel them" in busy.text, busy.text
    with store.tx() as s:
        s.get(JobRow, row.id).state = "succeeded"  # type: ignore[union-attr]
    assert client.delete(url, headers=prov).json() == {"deleted": "west"}
    with store.tx() as s:
        assert s.get(NodeRow, "ray-1") is None


def test_help_shows_no_value_for_a_flag() -> None:
    out = suanli("queue", "create", "--help")
    assert out.returncode == 0 and "--json" in out.stdout and "--no-reclaimable" in out.stdout
    assert "<bool>" not in out.stdout and "<float range>" in out.stdout  # values keep theirs


def test_simulate_help_names_every_policy_within_80_columns() -> None:
    from suanli.sched.policies import NAMED

    out = suanli("simulate", "--help", env={**os.environ, "COLUMNS": "80"})
    flat = " ".join(ln.strip("│ ") for ln in out.stdout.splitlines())
    assert out.returncode == 0 and all(f" {name}," in flat or f" {name} " in flat for name in NAMED)
    assert max(len(ln) for ln in out.stdout.splitlines()) <= 80


def test_nodes_say_who_holds_each_device_and_never_whose_to_another_tenant(api) -> None:  # type: ignore[no-untyped-def]
    client, store, who = api
    with store.tx() as s:
        devices = [{"index": i, "accelerator": "a100-80gb", "memory_mib": 81920} for i in (0, 1)]
        s.add(
            NodeRow(
                name="n1",
                owner=SYSTEM_OWNER,
                site=None,
                executor="local",
                cpu_cores=8,
                memory_mib=65536,
                devices=devices,
                labels={},
                heartbeat_at=time.time(),
            )
        )
        row = store.add_job(s, {**HELLO, "queue": "default"}, "alice")
        row.state, row.members = "running", [{"node": "n1", "devices": [1]}]
        jid = row.id

    def held(as_: str) -> list[dict[str, Any]]:
        (node,) = client.get("/v1/nodes", headers=who[as_]).json()
        return list(node["allocation"])

    assert held("alice") == [{"index": 1, "jobs": [str(jid)]}]
    assert held("admin") == [{"index": 1, "jobs": [str(jid)]}]
    assert held("bob") == [{"index": 1, "jobs": ["other"]}]  # taken, but not whose


def test_the_held_column_reads_device_by_device() -> None:
    from suanli.cli.output import held_devices as _held

    node = {
        "devices": [{"index": 0}, {"index": 1}, {"index": 2}],
        "allocation": [{"index": 0, "jobs": ["7"]}, {"index": 2, "jobs": ["7", "other"]}],
    }
    assert _held(node) == "0:j7 1:- 2:j7,other"
    assert _held({"devices": [], "allocation": []}) == "-"


def test_a_provider_registers_and_manages_a_node_from_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    svc = start_service(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    admin = (tmp_path / "admin.token").read_text().strip()
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}) as c:
            prov = c.post("/v1/tokens", json={"role": "provider", "owner": "dc1"}).json()["token"]
            user = c.post("/v1/tokens", json={"role": "user", "owner": "ann"}).json()["token"]
        env = {**os.environ, "SUANLI_URL": url, "SUANLI_TOKEN": prov}
        made = suanli(
            "node",
            "register",
            "gpu-1",
            "--cpu",
            "32",
            "--memory-gb",
            "256",
            "--device",
            "a100-80gb:2",
            "--device",
            "t4",
            "--label",
            "zone=a",
            env=env,
        )
        assert made.returncode == 0, made.stderr
        assert "registered node gpu-1: 32 cores, 3 device(s) (a100-80gb, t4)" in made.stdout
        shown = suanli("node", "show", "gpu-1", env=env)
        assert "0:a100-80gb, 1:a100-80gb, 2:t4" in shown.stdout and "zone=a" in shown.stdout
        beat = suanli("node", "heartbeat", "gpu-1", "--unhealthy", "2", env=env)
        assert beat.returncode == 0 and "unhealthy devices [2]" in beat.stdout
        assert "2:t4 (unhealthy)" in suanli("node", "show", "gpu-1", env=env).stdout

        def register(name: str, *extra: str, token: str = prov) -> Any:
            small = ("--cpu", "1", "--memory-gb", "1")
            return suanli(
                "node", "register", name, *small, *extra, env={**env, "SUANLI_TOKEN": token}
            )

        bad = register("gpu-2", "--device", "a100-80gb:x")
        assert bad.returncode == 2 and "CHIP or CHIP:COUNT" in bad.stderr
        typo = register("gpu-2", "--device", "a100")
        assert typo.returncode == 2 and "unknown accelerator 'a100'" in typo.stderr
        theirs = register("gpu-3", token=user)
        assert theirs.returncode == 2 and "users cannot manage node gpu-3" in theirs.stderr
        assert suanli("node", "delete", "gpu-1", env=env).returncode == 0
        gone = suanli("node", "show", "gpu-1", env=env)
        assert gone.returncode == 2 and "no node gpu-1" in gone.stderr
    finally:
        stop_service(svc)
