"""The Ray executor on a real two-node Ray cluster started on this machine.

The head node offers two ``ascend-910b`` and the worker one ``a100-80gb``
(custom resources named after catalog chips; no such card is here, which is
why they are custom resources). The scheduling loop — the same one ``suanli
up`` runs — places jobs, and Ray's own record of where each driver ran says
whether it landed where it must.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytest.importorskip("ray.job_submission", reason="the Ray executor needs `pip install suanli[ray]`")

from suanli.run.ray_exec import RayExecutor, RayUnavailable
from suanli.service.loop import Loop
from suanli.store import Store
from suanli.store.models import JobRow, NodeRow
from tests.helpers import get, submit

PY = sys.executable
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ray = shutil.which("ray", path=str(Path(PY).parent)) or "ray"
    env = {**os.environ, **RAY_ENV}
    gcs, dash = _port(), _port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=200000000"]
    common += ["--disable-usage-stats"]
    head = [ray, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1"]
    head += [f"--dashboard-port={dash}", '--resources={"ascend-910b": 2}', *common]
    worker = [ray, "start", f"--address=127.0.0.1:{gcs}", '--resources={"a100-80gb": 1}', *common]
    # two nodes on one machine: the second node's agents need ports of their own, or its
    # dashboard agent cannot serve the logs of jobs whose driver ran there
    for flag in ("dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export"):
        worker.append(f"--{flag}-port={_port()}")
    worker.append(f"--runtime-env-agent-port={_port()}")
    try:
        for argv in (head, worker):
            subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{dash}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture()
def rig(cluster: str, tmp_path: Path) -> Iterator[tuple[Store, Loop, RayExecutor]]:
    os.environ.update(RAY_ENV)
    store = Store.sqlite(tmp_path)
    ex = RayExecutor(cluster, tmp_path / "logs")
    yield store, Loop(store, ex, tick_s=0.1, grace_s=3.0), ex


def drive(loop: Loop, store: Store, want: dict[int, set[str]], timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        loop.tick()
        if all(get(store, j).state in states for j, states in want.items()):
            return
        time.sleep(0.1)
    stuck = {j: (get(store, j).state, [e.message for e in store.events(j)]) for j in want}
    raise AssertionError(f"not reached {want}: {stuck}")


def log(store: Store, jid: int) -> str:
    files = [Path(str(m["stdout"])) for m in get(store, jid).members or []]
    return "".join(f.read_text() for f in files if f.exists())  # none until Ray serves one


def test_nodes_come_from_ray_and_jobs_land_on_the_node_with_their_chip(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop, ex = rig
    loop.tick()
    with store.tx() as s:
        nodes = {n.name: n for n in s.query(NodeRow)}
    chips = {name: {d["accelerator"] for d in n.devices} for name, n in nodes.items()}
    assert sorted(map(sorted, chips.values())) == [["a100-80gb"], ["ascend-910b"]]
    assert all(n.executor == "ray" and n.cpu_cores == 2 for n in nodes.values())
    hello = [PY, "-c", "import os; print('hello from', os.environ['SUANLI_JOB_ID'])"]
    npu = submit(store, {"command": hello, "resources": {"accelerator": "ascend-910b"}})
    gpu = submit(store, {"command": hello, "resources": {"accelerator": "a100-80gb"}})
    cpu = submit(store, {"command": "echo plain", "resources": {"accelerator": "cpu"}})
    drive(loop, store, {npu: {"succeeded"}, gpu: {"succeeded"}, cpu: {"succeeded"}})
    for jid, chip in ((npu, "ascend-910b"), (gpu, "a100-80gb")):
        member = (get(store, jid).members or [])[0]
        assert chip in chips[str(member["node"])]
        ran_on = ex.client.get_job_info(str(member["ref"])).driver_node_id
        assert ran_on == ex._node_ids[str(member["node"])]  # Ray agrees where it ran
        assert f"hello from {jid}" in log(store, jid)
    assert "plain" in log(store, cpu)


GANG = (
    "import os, time; print('member', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'],"
    " 'local', os.environ['LOCAL_RANK'],"
    " 'master', os.environ['MASTER_ADDR'] + ':' + os.environ['MASTER_PORT'], flush=True);"
    " time.sleep(3)"
)


def test_a_gang_gets_a_placement_group_and_the_torchrun_environment(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop, _ex = rig
    jid = submit(
        store,
        {
            "command": [PY, "-c", GANG],
            "gang": 2,
            "resources": {"accelerator": "ascend-910b", "cpu": 0.5},
        },
    )
    drive(loop, store, {jid: {"running"}})
    members = get(store, jid).members or []
    # every member is recorded with its node and devices, so the loop holds them all
    assert [m["rank"] for m in members] == [0, 1] and len({m["ref"] for m in members}) == 1
    assert sorted(d for m in members for d in m["devices"]) == [0, 1]  # type: ignore[attr-defined]
    single = submit(store, {"command": "true", "resources": {"accelerator": "ascend-910b"}})
    for _ in range(5):
        loop.tick()
    assert get(store, jid).state == "running" and get(store, single).state == "queued"
    drive(loop, store, {jid: {"succeeded", "failed"}, single: {"succeeded"}})
    row = get(store, jid)
    assert row.state == "succeeded", log(store, jid)
    text = log(store, jid)
    assert "member 0 of 2 local 0" in text and "member 1 of 2 local 1" in text  # one node
    ports = set(re.findall(r"master [\d.]+:(\d+)", text))
    assert len(ports) == 1  # one rendezvous, chosen on rank 0's node
    assert "member exit codes [0, 0]" in text
    # three members cannot fit two devices: the gang waits whole, nothing starts
    big = submit(store, {"command": "true", "gang": 3, "resources": {"accelerator": "ascend-910b"}})
    for _ in range(5):
        loop.tick()
    assert get(store, big).state == "queued"


def test_fractions_of_one_device_run_side_by_side(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop, ex = rig
    half = {"accelerator": "a100-80gb", "fraction": 0.5, "cpu": 0.5}
    cmd = [PY, "-c", "import time; time.sleep(4)"]
    jobs = [submit(store, {"command": cmd, "resources": half}) for _ in range(2)]
    drive(loop, store, {j: {"running", "succeeded"} for j in jobs})
    refs = [str((get(store, j).members or [])[0]["ref"]) for j in jobs]
    end = time.monotonic() + 30
    while time.monotonic() < end:  # Ray runs both at once: each asked for half the chip
        status = {str(ex.client.get_job_info(r).status) for r in refs}
        if status == {"RUNNING"} or "SUCCEEDED" in status:
            break
        time.sleep(0.2)
    assert status == {"RUNNING"}, status
    drive(loop, store, {j: {"succeeded"} for j in jobs})


CHECKPOINTER = (
    "import signal, sys, time\n"
    "def term(*_):\n"
    "    print('checkpoint saved', flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "print('training', flush=True)\n"
    "time.sleep(300)\n"
)


def test_cancel_and_preemption_stop_ray_jobs_with_grace(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop, _ex = rig
    low = submit(
        store,
        {
            "command": [PY, "-c", CHECKPOINTER],
            "preemptible": True,
            "resources": {"accelerator": "a100-80gb"},
        },
    )
    drive(loop, store, {low: {"running"}})
    end = time.monotonic() + 60
    while "training" not in log(store, low) and time.monotonic() < end:
        loop.tick()
        time.sleep(0.2)
    high = submit(
        store,
        {"command": "echo urgent", "priority": 5, "resources": {"accelerator": "a100-80gb"}},
    )
    drive(loop, store, {high: {"succeeded"}})
    kinds = [e.kind for e in store.events(low)]
    assert "preempted" in kinds and "requeued" in kinds, kinds
    assert "checkpoint saved" in log(store, low)  # SIGTERM, and time to use it
    drive(loop, store, {low: {"running"}})  # it comes back when the chip is free
    with store.tx() as s:
        row = s.get(JobRow, low)
        assert row is not None
        row.cancel_requested = True
    drive(loop, store, {low: {"cancelled"}})
    assert get(store, low).exit_code == -15


def test_an_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RayUnavailable, match="cannot reach the Ray dashboard"):
        RayExecutor(f"127.0.0.1:{_port()}", tmp_path)


class _Dashboard(http.server.BaseHTTPRequestHandler):
    """Answers like a Ray dashboard whose job store fails (500) or forgot a job (404)."""

    def do_GET(self) -> None:
        import ray

        if self.path == "/api/version":
            body, code = json.dumps({"version": "4", "ray_version": ray.__version__}), 200
        elif "forgotten" in self.path:
            body, code = "Job forgotten does not exist", 404
        else:
            body, code = "internal error", 500
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    answers: ClassVar[dict[str, Any]] = {"submit": 500, "stop": 500, "posted": [], "stopped": []}

    def do_POST(self) -> None:
        """Job submissions fail (5xx: perhaps taken, 4xx: refused); stops as configured."""
        a = _Dashboard.answers
        length = int(self.headers.get("Content-Length") or 0)
        sent = json.loads(self.rfile.read(length) or b"{}")
        if self.path.rstrip("/") == "/api/jobs":
            a["posted"].append(sent.get("submission_id"))
            code, body = a["submit"], "the job store failed"
        elif self.path.endswith("/stop"):
            sid = self.path.split("/")[-2]
            code = a["stop"]
            body = json.dumps({"stopped": True}) if code == 200 else "no such job"
            if code == 200:
                a["stopped"].append(sid)
        else:
            code, body = 404, "not found"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


def test_a_failing_dashboard_is_an_outage_not_a_lost_job(tmp_path: Path) -> None:
    from suanli.run.executor import Handle

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ex = RayExecutor(f"127.0.0.1:{server.server_address[1]}", tmp_path)
        h = Handle("1", 0, 0.0, str(tmp_path / "1.out"), str(tmp_path / "1.err"), ref="suanli-1")
        assert ex.poll(h) is None and ex.is_alive(h)  # 500: unknown, so still running
        gone = Handle("2", 0, 0.0, str(tmp_path / "2.out"), "", ref="forgotten")
        assert ex.poll(gone) == -9  # 404: Ray does not know it (its cluster restarted)
    finally:
        server.shutdown()
        server.server_close()


def test_a_submission_whose_answer_was_lost_is_stopped_when_ray_answers_again(
    tmp_path: Path,
) -> None:
    """A 5xx on submit may hide a job Ray took: the start is an outage (the loop tries
    again, a new submission), and the old one is stopped once the dashboard answers.
    A 4xx is Ray refusing the job: the job's own failure, nothing to stop."""
    from suanli.run.executor import Launch

    answers = _Dashboard.answers
    answers.update(submit=500, stop=500, posted=[], stopped=[])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ex = RayExecutor(f"127.0.0.1:{server.server_address[1]}", tmp_path)
        ex._node_ids["n1"] = "0" * 56
        launch = Launch("7", ["true"], node="n1")
        with pytest.raises(RayUnavailable, match="could not take job"):
            ex.start(launch)
        sid = answers["posted"][-1]
        ex.stop_unanswered()  # the dashboard still fails: asked again later
        assert answers["stopped"] == []
        answers["stop"] = 200
        ex.stop_unanswered()
        assert answers["stopped"] == [sid]
        ex.stop_unanswered()
        assert answers["stopped"] == [sid]  # once
        answers["submit"] = 400
        with pytest.raises(RuntimeError) as refused:
            ex.start(launch)
        assert not isinstance(refused.value, RayUnavailable)
        ex.stop_unanswered()
        assert answers["stopped"] == [sid]  # a refused job is not stopped
    finally:
        server.shutdown()
        server.server_close()
