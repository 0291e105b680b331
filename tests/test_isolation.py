"""Tenants against each other and against the service, for real: `suanli up` as root (as CI
runs it) on SQLite and on PostgreSQL, a job of tenant A trying every way in the audit to
reach B or the service, while B's job runs normally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from suanli.run import limits
from suanli.run.local import free_port
from tests.helpers import start_service, stop_service, wait_state

PG_URL = os.environ.get("SUANLI_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="per-owner OS accounts need root (CI runs as root)"
)

#: what tenant A's job tries; every line must come out "denied"
ATTACK = r"""
import json, os, signal, sys
data, bob_log, bob_dir, bob_pid, svc_pid, pg_port = sys.argv[1:7]
out = {}
def attempt(name, fn):
    try:
        got = fn()
        out[name] = "ALLOWED: " + repr(got)[:200]
    except (PermissionError, FileNotFoundError, ProcessLookupError) as exc:
        out[name] = "denied"
    except Exception as exc:  # e.g. the database refusing the connection
        out[name] = "denied" if "password" in str(exc) or "auth" in str(exc) else f"error {exc!r}"
attempt("admin token", lambda: open(os.path.join(data, "admin.token")).read())
attempt("list the logs", lambda: os.listdir(os.path.join(data, "logs")))
attempt("another tenant's log", lambda: open(bob_log).read())
attempt("the database file", lambda: open(os.path.join(data, "suanli.db"), "rb").read(16))
attempt("the service's environment", lambda: open(f"/proc/{svc_pid}/environ", "rb").read())
attempt("another tenant's directory", lambda: os.listdir(bob_dir))
attempt("another tenant's file", lambda: open(os.path.join(bob_dir, "bob.txt")).read())
attempt("signal another tenant's job", lambda: os.kill(int(bob_pid), signal.SIGKILL))
def db():
    import psycopg
    psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg_port}/postgres", connect_timeout=5)
    return "connected"
if pg_port != "0":
    attempt("connect to the database", db)
cmdline = open(f"/proc/{svc_pid}/cmdline", "rb").read().decode().replace("\0", " ")
out["a secret in the service's argv"] = "ALLOWED" if "postgresql" in cmdline else "denied"
out["the service's own variables"] = "ALLOWED" if "SUANLI_CANARY" in os.environ else "denied"
out["a device the scheduler did not give"] = (
    "denied" if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else "ALLOWED"
)
out["root"] = "ALLOWED" if os.getuid() == 0 else "denied"
print("ATTACK " + json.dumps(out), flush=True)
"""


#: plants code for whoever starts Python next in its directory, then fails once: the retry's
#: wrapper runs as root, and must import none of it
PLANT = r"""
import pathlib, sys
probes, home = sys.argv[1], pathlib.Path.home()
probe = f"open({probes!r} + '/ran-as-' + str(__import__('os').getuid()), 'w').close()"
(home / "p").mkdir(exist_ok=True)
(home / "p" / "sitecustomize.py").write_text(probe + "\n")
version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
site = home / ".local" / "lib" / version / "site-packages"
site.mkdir(parents=True, exist_ok=True)
(site / "x.pth").write_text("import os; " + probe + "\n")
if (home / "twice").exists():
    sys.exit(0)
(home / "twice").touch()
sys.exit(1)
"""


def _start(data: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return start_service(data, port, *extra, env={**os.environ, "SUANLI_CANARY": "a secret"})


def _wait(c: httpx.Client, jid: int, states: set[str]) -> dict[str, Any]:
    return wait_state(c, jid, states, timeout=120)


def _pg_db_file(tmp: Path) -> tuple[list[str], str]:
    """(suanli up arguments, the port) for the PostgreSQL run: the URL in a 0600 file."""
    assert PG_URL is not None
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    db = f"iso_{os.getpid()}_{int(time.time())}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {db}"))
    admin.dispose()
    f = tmp / "db-url"
    f.write_text(url.set(database=db).render_as_string(hide_password=False))
    f.chmod(0o600)
    return ["--db-file", str(f)], str(url.port)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_tenants_job_reaches_nothing_of_another_or_of_the_service(
    tmp_path: Path, backend: str
) -> None:
    if backend == "postgresql" and not PG_URL:
        pytest.skip("SUANLI_TEST_PG_URL is not set (.ci/run starts a PostgreSQL server for it)")
    extra, pg_port = _pg_db_file(tmp_path) if backend == "postgresql" else ([], "0")
    data, port = tmp_path / "data", free_port()
    shared = Path(tempfile.mkdtemp(prefix="suanli-iso-"))  # where B's job waits for its go
    shared.chmod(0o755)
    go = shared / "go"  # B's job ends when this exists (also when the test fails)
    svc = _start(data, port, *extra)
    admin = (data / "admin.token").read_text().strip()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as c:
            tok = {
                who: c.post("/v1/tokens", json={"role": "user", "owner": who}).json()["token"]
                for who in ("alice", "bob")
            }
            nodes = c.get("/v1/nodes").json()
            assert nodes[0]["labels"]["suanli.io/isolation"] == "per-owner OS accounts"
            # what this machine's kernel offers (a cgroup here; an rlimit where none is)
            assert nodes[0]["labels"]["suanli.io/limits"] == limits.detect().describe()
        alice = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tok['alice']}"})
        bob = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tok['bob']}"})
        wait = (
            "import os, time\n"
            "open(os.path.expanduser('~/bob.txt'), 'w').write('bob')\n"
            "print('bob-secret', os.getpid(), flush=True)\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\n"
        )
        spec = {"name": "bob", "command": ["python3", "-c", wait], "resources": {"cpu": 0.5}}
        bid = bob.post("/v1/jobs", json={"spec": spec}).json()["id"]
        _wait(bob, bid, {"running"})
        # B's command (its python, a child of the wrapper) and where its files are
        end = time.monotonic() + 60
        pids: list[int] = []
        while not pids and time.monotonic() < end:
            pids = [
                p.pid
                for p in psutil.Process(svc.pid).children(recursive=True)
                if p.environ().get("SUANLI_JOB_ID") == str(bid)
                and "bob-secret" in " ".join(p.cmdline())
            ]
            time.sleep(0.05)
        assert pids, "B's job process not found"
        args = [str(data), str(data / "logs" / f"{bid}.out"), str(data / "jobs" / str(bid))]
        args += [str(pids[0]), str(svc.pid), pg_port]
        attack = {"name": "alice", "command": ["python3", "-c", ATTACK, *args]}
        aid = alice.post("/v1/jobs", json={"spec": attack}).json()["id"]
        row = _wait(alice, aid, {"succeeded", "failed"})
        text = alice.get(f"/v1/jobs/{aid}/logs").text
        assert row["state"] == "succeeded", text
        line = next(x for x in text.splitlines() if x.startswith("ATTACK "))
        results = json.loads(line.removeprefix("ATTACK "))
        assert results and all(v == "denied" for v in results.values()), results
        # B's member is held to its pids too (a fork bomb stops at its cgroup's pids.max)
        pids_max = Path("/sys/fs/cgroup/pids/suanli")
        if pids_max.is_dir():
            held = [g for g in pids_max.iterdir() if g.name.endswith(f"-{bid}")]
            assert held and (held[0] / "pids.max").read_text().strip() == "4096"
        # A's job plants code for the next attempt's wrapper (root's code) to import: a
        # sitecustomize on a PYTHONPATH of its own, a .pth in its user site; it runs as A only
        probes = Path(tempfile.mkdtemp(prefix="suanli-probe-"))
        probes.chmod(0o1777)
        spec = {
            "name": "plant",
            "command": ["python3", "-c", PLANT, str(probes)],
            "retries": 1,
            "env": {"PYTHONPATH": str(data / "jobs" / str(aid + 1) / "p")},  # its own home
        }
        pid_ = alice.post("/v1/jobs", json={"spec": spec}).json()["id"]
        assert pid_ == aid + 1
        row = _wait(alice, pid_, {"succeeded", "failed"})
        assert row["state"] == "succeeded" and row["attempts"] == 2, row["events"]
        ran_as = {f.name for f in probes.iterdir()}
        assert ran_as and "ran-as-0" not in ran_as, ran_as
        # B's job ran on, untouched, and finishes normally
        assert psutil.pid_exists(pids[0])
        go.touch()
        done = _wait(bob, bid, {"succeeded", "failed"})
        assert done["state"] == "succeeded", done["events"]
        assert "bob-secret" in bob.get(f"/v1/jobs/{bid}/logs").text
        # and neither tenant sees the other's job or log through the API
        assert alice.get(f"/v1/jobs/{bid}/logs").status_code == 404
        assert bob.get(f"/v1/jobs/{aid}").status_code == 404
        # what a spec may not ask for is refused at submit, naming the field
        for bad, field in (
            ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "env"),
            ({"env": {"CUDA_VISIBLE_DEVICES": "0,1"}}, "env"),
            ({"owner": "bob"}, "owner"),
        ):
            r = alice.post("/v1/jobs", json={"spec": {"name": "x", "command": "true", **bad}})
            assert r.status_code == 422 and r.json()["problems"][0].startswith(f"spec.{field}")
        alice.close()
        bob.close()
    finally:
        go.touch()
        stop_service(svc)
    # the service's files were private from creation
    for f in ("admin.token", "logs", *(["suanli.db"] if backend == "sqlite" else [])):
        assert (data / f).stat().st_mode & 0o077 == 0, f


def test_a_password_in_db_is_refused_and_a_job_gets_the_memory_it_asked_for(
    tmp_path: Path,
) -> None:
    """--db with a password would sit in /proc/<pid>/cmdline for any job to read; and a job
    that allocates past its memory_gb is stopped by the kernel (its cgroup)."""
    out = subprocess.run(
        [sys.executable, "-m", "suanli", "up", "--db", "postgresql+psycopg://u:secret@h/db"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "--db-file" in out.stderr
    data, port = tmp_path / "data", free_port()
    svc = _start(data, port)
    admin = (data / "admin.token").read_text().strip()
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {admin}"}
        ) as c:
            user = c.post("/v1/tokens", json={"role": "user", "owner": "carol"}).json()["token"]
            c.headers["Authorization"] = f"Bearer {user}"
            hog = "x = bytearray(1024 * 2**20); print('survived', len(x))"
            spec = {
                "name": "hog",
                "command": ["python3", "-c", hog],
                "resources": {"memory_gb": 0.25, "cpu": 0.5},
            }
            jid = c.post("/v1/jobs", json={"spec": spec}).json()["id"]
            row = _wait(c, jid, {"succeeded", "failed"})
            assert row["state"] == "failed" and "survived" not in c.get(f"/v1/jobs/{jid}/logs").text
    finally:
        stop_service(svc)
