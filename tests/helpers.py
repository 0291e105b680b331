"""Helpers shared by the loop tests: put a job straight in the store, read it back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from suanli.jobs.spec import parse_job_spec
from suanli.run.devices import Device, Inventory
from suanli.store import Store
from suanli.store.models import JobRow

# a described machine (two A100s), so device pinning is checked without a GPU: each
# member is a real process whose environment shows what it got
A100 = Inventory(
    cpu_cores=8,
    memory_mib=64 * 1024,
    devices=tuple(Device(i, "a100-80gb", 81920, "CUDA_VISIBLE_DEVICES") for i in range(2)),
)


def submit(store: Store, spec: dict[str, Any]) -> int:
    """Queue a job as the API would (validated spec, one transaction); returns its id."""
    full = parse_job_spec({"name": "j", **spec}).model_dump()
    with store.tx() as s:
        return store.add_job(s, full, "t").id


def get(store: Store, jid: int) -> JobRow:
    with store.tx() as s:
        row = s.get(JobRow, jid)
        assert row is not None
        return row


def run_until(loop: Any, store: Store, jid: int, states: set[str], timeout: float = 20) -> JobRow:
    """Tick ``loop`` until job ``jid`` is in one of ``states``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        loop.tick()
        row = get(store, jid)
        if row.state in states:
            return row
        time.sleep(0.05)
    raise AssertionError(f"job {jid} is {get(store, jid).state}, never reached {states}")


def events(store: Store, jid: int) -> list[str]:
    return [e.kind for e in store.events(jid)]


def logs(row: JobRow) -> str:
    return "".join(Path(str(m["stdout"])).read_text() for m in row.members or [])


def reap(executor: Any) -> None:
    """Leave no process of a local executor behind."""
    for proc in list(executor._procs.values()):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start_service(
    data: Path, port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`suanli up` as a real process; returns once it answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "suanli",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # an event, not a timer: wait while the process lives (a generous cap only for a hang)
    end = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"suanli up did not come up (exit {proc.poll()})")


def wait_state(c: httpx.Client, jid: int, states: set[str], timeout: float = 60) -> dict[str, Any]:
    """Poll the API until job ``jid`` is in one of ``states``."""
    end = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < end:
        row = c.get(f"/v1/jobs/{jid}").json()
        if row["state"] in states:
            return row
        time.sleep(0.1)
    raise AssertionError(f"job {jid} never reached {states}: {row}")


def stop_service(svc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """SIGTERM `suanli up` and wait for it (SIGKILL if it hangs); its jobs run on."""
    svc.send_signal(signal.SIGTERM)
    try:
        svc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        svc.kill()
        svc.wait()


def admin_cli(data: Path, port: int) -> tuple[dict[str, str], Any]:
    """The environment that points the CLI at the `suanli up` on ``port`` as the admin of
    its data directory, and ``cli(*args)``: the CLI's output, asserting it succeeded."""
    token = (data / "admin.token").read_text().strip()
    env = {**os.environ, "SUANLI_URL": f"http://127.0.0.1:{port}", "SUANLI_TOKEN": token}

    def cli(*args: str) -> str:
        out = suanli(*args, env=env)
        assert out.returncode == 0, out
        return out.stdout

    return env, cli


def suanli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, in a subprocess with no stdin (as CI runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "suanli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


#: a train_lm model small enough to train a few hundred steps a second on a CPU
TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}


def cli(env: dict[str, str], *args: str) -> Any:
    """``suanli ARGS`` as a user with ``env``; its JSON when ``--json`` is among them."""
    out = subprocess.run(
        [sys.executable, "-m", "suanli", *args], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout) if "--json" in args else out.stdout


def until(what: str, check: Any, timeout: float = 60) -> Any:
    """Poll ``check`` until it returns something true (a cap only for a hang)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def replicas_step(
    store: Store,
    book: Any,
    service: str,
    ready: set[int] | None = None,
    members: list[dict[str, Any]] | None = None,
) -> list[JobRow]:
    """What the jobs controller and the prober would do after a services-controller
    tick: queued replicas start (on ``members``), those asked to stop end; the replicas
    in ``ready`` answer (all of them when None). Returns every job, as it was read."""
    with store.tx() as s:
        jobs = list(s.query(JobRow).order_by(JobRow.id))
        for j in jobs:
            if j.cancel_requested and j.state == "running":
                j.state = "cancelled"
            elif j.state == "queued":
                j.state, j.members = "running", members
        s.flush()
        s.expunge_all()
    for r in book.of(service):
        r.ready = ready is None or r.job_id in ready
    return jobs


def cpu_order(env: dict[str, str], price: str, hours: str, mode: str = "on-demand") -> Any:
    """``suanli market order`` for one CPU core, as the user of ``env``; its JSON."""
    return cli(
        env,
        *("market", "order", "--accelerator", "cpu", "--count", "1", "--mode", mode),
        *("--max-price-usd-per-hour", price, "--hours", hours, "--json"),
    )


def tiny_service(tmp: Path, **over: Any) -> dict[str, Any]:
    """A service spec of one serve_lm replica of the tiny model on half a core (its config
    written under ``tmp``), for tests that need a replica that really serves."""
    cfg = tmp / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    spec: dict[str, Any] = {
        "name": "chat",
        "model": str(cfg),
        "engine_args": ["--dtype", "fp32", "--max-len", "128", "--slots", "1"],
        "replicas": {"min": 1, "max": 1},
        "resources": {"accelerator": "cpu", "cpu": 0.5, "memory_gb": 1},
        "autoscaler": {"policy": "static"},
    }
    return {**spec, **over}
