"""The loop when things go wrong: odd job output, failed starts, cancel races, deadlines,
stray grandchildren, names that collide. Real processes and a real store throughout."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient

from suanli.api import create_app
from suanli.calibration.feedback import METRIC
from suanli.run.executor import ExecutorUnavailable, Handle, Launch
from suanli.run.local import LocalExecutor, alive
from suanli.service.loop import NODE_LABEL, Loop
from suanli.store import Store
from suanli.store.models import SYSTEM_OWNER, JobRow, NodeRow
from tests.helpers import A100, events, get, reap, run_until, submit

PY = sys.executable
SUMMARY = {
    "summary": True,
    "model": "tiny-llama-40m",
    "device": "cuda",
    "device_name": "NVIDIA H100 80GB HBM3",
    "world_size": 1,
    "micro_batch": 2,
    "seq_len": 64,
}


@pytest.fixture()
def rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store.sqlite(tmp_path)
    loop = Loop(store, LocalExecutor(tmp_path / "logs", A100), tick_s=0.05, grace_s=2.0)
    yield store, loop
    reap(loop.executor)


def printing(summary: dict[str, object]) -> list[str]:
    return [PY, "-c", f"print({METRIC + json.dumps(summary)!r})"]


def test_a_summary_with_a_zero_step_time_is_refused_and_scheduling_goes_on(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    zero = submit(store, {"command": printing({**SUMMARY, "median_step_time_s": 0})})
    junk = submit(store, {"command": printing({**SUMMARY, "median_step_time_s": "fast"})})
    good = submit(store, {"command": printing({**SUMMARY, "median_step_time_s": 0.004})})
    for jid in (zero, junk, good):
        assert run_until(loop, store, jid, {"succeeded", "failed"}).state == "succeeded"
    refused = [e.message for e in store.events(zero) if e.kind == "perf"]
    assert len(refused) == 1 and "must be a positive number" in refused[0]
    assert "not recorded" in next(e.message for e in store.events(junk) if e.kind == "perf")
    measured = [e.message for e in store.events(good) if e.kind == "perf"]
    assert len(measured) == 1 and "measured 0.004 s/step" in measured[0]
    after = submit(store, {"command": [PY, "-c", "print('still scheduling')"]})
    assert run_until(loop, store, after, {"succeeded"}).exit_code == 0


def test_a_job_that_cannot_start_fails_alone_and_is_not_started_twice(rig, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    bad = submit(
        store,
        {"command": [PY, "-c", "print(1)"], "working_dir": str(tmp_path / "no-such-dir")},
    )
    ok = submit(store, {"command": [PY, "-c", "import time; time.sleep(1)"]})
    row = run_until(loop, store, bad, {"failed"})
    assert row.members == [] and row.attempts == 1
    assert "could not start" in store.events(bad)[-1].message
    assert "no-such-dir" in store.events(bad)[-1].message
    assert run_until(loop, store, ok, {"succeeded"}).attempts == 1
    assert events(store, ok).count("started") == 1


class FailsOnRank1(LocalExecutor):
    """A node that goes away while a gang starts: rank 0 has started, rank 1 cannot."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.started: list[Handle] = []

    def start(self, launch: Launch) -> Handle:
        if launch.rank == 1:
            raise OSError("node went away")
        h = super().start(launch)
        self.started.append(h)
        return h


def test_a_gang_that_starts_part_way_stops_the_started_members_and_retries(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store.sqlite(tmp_path)
    ex = FailsOnRank1(tmp_path / "logs", A100)
    loop = Loop(store, ex, tick_s=0.05)
    try:
        cmd = [PY, "-c", "import time; time.sleep(60)"]
        jid = submit(
            store,
            {"command": cmd, "gang": 2, "retries": 1, "resources": {"accelerator": "a100-80gb"}},
        )
        loop.tick()
        row = get(store, jid)
        assert row.state == "queued" and row.attempts == 1 and row.not_before is not None
        assert row.not_before - row.updated_at == pytest.approx(1.0)  # the first backoff
        assert "could not start: node went away; retry 1 of 1" in store.events(jid)[-1].message
        rank0 = ex.started[0]
        deadline = time.monotonic() + 5
        while ex.poll(rank0) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(rank0)  # the member that did start was stopped, not left running
        loop.tick()
        assert len(ex.started) == 1  # the retry waits out its backoff
        run_until(loop, store, jid, {"failed"})
        assert get(store, jid).attempts == 2
    finally:
        reap(ex)


def test_a_cancel_between_decision_and_start_wins(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    admin = store.create_token("admin", "root")
    client = TestClient(create_app(store))
    loop.tick()  # nodes known
    jid = submit(store, {"command": [PY, "-c", "print('must not run')"]})
    with store.tx() as s:
        bound = loop._decide(s)
    assert list(bound) == [jid]
    r = client.post(f"/v1/jobs/{jid}/cancel", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    loop._launch(jid, bound[jid])  # the loop goes on with its (now stale) decision
    row = get(store, jid)
    assert row.state == "cancelled" and not row.members and row.attempts == 0
    assert "started" not in events(store, jid)


CHECKPOINTER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print('checkpoint', flush=True), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def wait_ready(row: JobRow) -> None:
    out = Path(str(row.members[0]["stdout"]))  # type: ignore[index]
    deadline = time.monotonic() + 10
    while "ready" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_cancel_during_a_preemption_ends_the_job_cancelled(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    admin = store.create_token("admin", "root")
    client = TestClient(create_app(store))
    auth = {"Authorization": f"Bearer {admin}"}
    slow = CHECKPOINTER.replace("sys.exit(0)", "time.sleep(1) or sys.exit(0)")
    devs = {"accelerator": "a100-80gb", "devices": 2}
    low = submit(store, {"command": [PY, "-c", slow], "preemptible": True, "resources": devs})
    wait_ready(run_until(loop, store, low, {"running"}))
    high = submit(store, {"command": [PY, "-c", "print(1)"], "priority": 5, "resources": devs})
    for _ in range(40):
        loop.tick()
        if get(store, low).stop_reason:
            break
    assert (get(store, low).stop_reason or "").startswith("preempt:")
    assert client.post(f"/v1/jobs/{low}/cancel", headers=auth).json()["cancel_requested"]
    loop.tick()
    # the stop keeps its reason under the cancel: the preemptor goes on waiting for this
    # victim instead of evicting more
    assert get(store, low).stop_reason == f"cancel+preempt:{high}"
    with store.tx() as s:
        assert loop._decide(s) == {}
    assert run_until(loop, store, low, {"cancelled", "queued"}).state == "cancelled"
    run_until(loop, store, high, {"succeeded"})
    assert get(store, low).state == "cancelled"  # not requeued behind the preemptor


def test_a_preempted_job_can_be_cancelled_before_it_is_requeued(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    admin = store.create_token("admin", "root")
    client = TestClient(create_app(store))
    jid = submit(store, {"command": [PY, "-c", "print(1)"]})
    with store.tx() as s:
        row = s.get(JobRow, jid)
        assert row is not None
        row.state = "preempted"  # as the loop leaves a victim between two ticks
    r = client.post(f"/v1/jobs/{jid}/cancel", headers={"Authorization": f"Bearer {admin}"})
    assert r.json()["state"] == "cancelled"
    loop.tick()
    assert get(store, jid).state == "cancelled" and "requeued" not in events(store, jid)


def test_a_deadline_fails_the_job_even_if_it_exits_0_on_sigterm(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    jid = submit(store, {"command": [PY, "-c", CHECKPOINTER], "max_runtime_s": 0.5, "retries": 2})
    row = run_until(loop, store, jid, {"failed", "succeeded", "queued"}, timeout=15)
    while row.state == "running":
        row = run_until(loop, store, jid, {"failed", "succeeded"})
    assert row.state == "failed" and row.exit_code == 0 and row.attempts == 1
    assert "exceeded max_runtime_s" in store.events(jid)[-1].message


def test_a_job_that_finishes_as_it_is_cancelled_keeps_its_result(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    jid = submit(store, {"command": [PY, "-c", "print('done')"]})
    row = run_until(loop, store, jid, {"running"})
    h = Handle.from_dict(row.members[0])  # type: ignore[index]
    while loop.executor.is_alive(h):
        time.sleep(0.02)
    with store.tx() as s:
        r = s.get(JobRow, jid)
        assert r is not None
        r.cancel_requested = True  # the cancel arrives after the exit, before the tick
    assert run_until(loop, store, jid, {"succeeded", "cancelled"}).state == "succeeded"


def gone(pid: int) -> bool:
    """Not running: absent, or a zombie its new parent (init) has yet to reap."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_member_ends_with_its_last_process_not_its_first(tmp_path: Path) -> None:
    """What the command leaves in its group when it exits is stopped (SIGTERM, then SIGKILL)
    before the member counts as ended, as a container's leftovers go with its main
    process; nothing of the job outlives it."""
    ex = LocalExecutor(tmp_path)
    pidfile = tmp_path / "child.pid"
    script = (
        f"import subprocess; p = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)']);"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))"
    )
    h = ex.start(Launch("orphan", [PY, "-c", script]))
    deadline = time.monotonic() + 30
    while ex.poll(h) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ex.poll(h) == 0  # the command's own exit code
    assert gone(int(pidfile.read_text()))


def test_a_cancelled_shell_command_ends_only_when_its_last_process_has(rig, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`sh -c 'python3 ...'`: SIGTERM ends sh at once while Python checkpoints; the job is
    cancelled only once Python has finished, within the grace, and nothing is left."""
    store, loop = rig
    done, pidfile = tmp_path / "checkpointed", tmp_path / "py.pid"
    py = (
        "import os, signal, time\n"
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "def bye(*_):\n"
        "    time.sleep(0.5)\n"
        f"    open({str(done)!r}, 'w').write('ok')\n"
        "    raise SystemExit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "while True: time.sleep(0.05)\n"
    )
    script = tmp_path / "train.py"
    script.write_text(py)
    jid = submit(store, {"command": f"{PY} {script}; echo after"})
    run_until(loop, store, jid, {"running"})
    end = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < end:
        loop.tick()
        time.sleep(0.02)
    with store.tx() as s:
        row = s.get(JobRow, jid)
        assert row is not None
        row.cancel_requested = True
    row = run_until(loop, store, jid, {"cancelled", "failed", "succeeded"})
    assert row.state == "cancelled"
    assert done.read_text() == "ok"  # Python finished its checkpoint before the job ended
    assert gone(int(pidfile.read_text()))


def test_a_start_the_service_never_recorded_is_stopped_after_a_restart(tmp_path: Path) -> None:
    """The service died between starting a member and storing its handle: a restarted
    service finds the member by its cgroup and stops it, so nothing runs untracked."""
    from suanli.run import limits

    lim = limits.detect()
    if lim.kind == "rlimit":
        pytest.skip("no writable cgroup hierarchy here: members cannot be found after a crash")
    store = Store.sqlite(tmp_path)
    ex = LocalExecutor(tmp_path / "logs", A100, limits=lim)
    jid = submit(store, {"command": [PY, "-c", "import time; time.sleep(60)"]})
    with store.tx() as s:  # claimed and started, as the loop does, but never recorded
        row = s.get(JobRow, jid)
        assert row is not None
        row.state, row.members, row.attempts = "running", [], 1
    h = ex.start(Launch(str(jid), [PY, "-c", "import time; time.sleep(60)"]))
    assert alive(h) and lim.procs(h.group)
    again = LocalExecutor(tmp_path / "logs", A100, limits=lim)  # the restarted service's
    loop = Loop(store, again, tick_s=0.05)
    assert not lim.procs(h.group) and not alive(h)
    row = get(store, jid)
    assert row.state == "failed" and "lost" in store.events(jid)[-1].message
    reap(ex)  # the first service's Popen: wait for what it started
    del loop


def test_node_selectors_pin_jobs_and_calibration_runs_on_the_node_it_measures(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    cmd = [PY, "-c", "print(1)"]
    elsewhere = submit(store, {"command": cmd, "node_selector": {NODE_LABEL: "other"}})
    here = submit(store, {"command": cmd, "node_selector": {NODE_LABEL: "local"}})
    run_until(loop, store, here, {"succeeded"})
    for _ in range(5):
        loop.tick()
    assert get(store, elsewhere).state == "queued"
    from suanli.run.executor import NodeInfo

    with store.tx() as s:
        loop._calibration_job(s, NodeInfo("n7", 4, 1024))
    with store.tx() as s:
        cal = s.query(JobRow).filter(JobRow.name == "calibrate-n7").one()
    assert cal.spec["node_selector"] == {NODE_LABEL: "n7"} and cal.owner == SYSTEM_OWNER


def test_no_token_can_take_the_name_of_the_service_or_of_another_role(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    loop.tick()
    with store.tx() as s:
        node = s.get(NodeRow, "local")
        assert node is not None and node.owner == SYSTEM_OWNER
    root = store.create_token("admin", "admin")
    client = TestClient(create_app(store))
    auth = {"Authorization": f"Bearer {root}"}
    same = client.post("/v1/tokens", json={"role": "provider", "owner": "admin"}, headers=auth)
    assert same.status_code == 409 and "one role" in same.json()["error"]
    colon = client.post(
        "/v1/tokens", json={"role": "provider", "owner": SYSTEM_OWNER}, headers=auth
    )
    assert colon.status_code == 422 and "owner" in json.dumps(colon.json())
    more = client.post("/v1/tokens", json={"role": "admin", "owner": "admin"}, headers=auth)
    assert more.status_code == 201  # a second token of the same role is fine


class StoreFailsAfterStart(Store):
    """A database that goes away just after the members started, before they are stored."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.fail_next = False

    def tx(self):  # type: ignore[no-untyped-def,override]
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database went away")
        return super().tx()


class Recording(LocalExecutor):
    def __init__(self, *args: object, on_start: object = None) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.started: list[Handle] = []
        self.on_start = on_start

    def start(self, launch: Launch) -> Handle:
        if callable(self.on_start):
            self.on_start()
        h = super().start(launch)
        self.started.append(h)
        return h


def test_members_that_cannot_be_stored_are_killed_and_the_job_is_not_called_done(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = StoreFailsAfterStart(f"sqlite:///{tmp_path / 'db.sqlite'}")

    def arm() -> None:
        store.fail_next = True  # the next transaction is the one that stores the members

    ex = Recording(tmp_path / "logs", A100, on_start=arm)
    loop = Loop(store, ex, tick_s=0.05)
    try:
        jid = submit(store, {"command": [PY, "-c", "import time; time.sleep(60)"], "retries": 0})
        loop.tick()  # claims, starts, fails to store the members (logged, the loop goes on)
        assert len(ex.started) == 1
        row = get(store, jid)
        assert row.state == "running" and row.members == []
        deadline = time.monotonic() + 5
        while alive(ex.started[0]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(ex.started[0])  # nobody would have known of it: killed
        ex.on_start = None
        loop.tick()
        row = get(store, jid)
        assert row.state == "failed" and row.exit_code is None  # not "succeeded" on no members
        assert store.events(jid)[-1].message == "lost during start"
    finally:
        reap(ex)


def test_a_cancel_that_lands_while_the_job_goes_back_to_the_queue_ends_it(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    # what the API and the loop leave when they race: the loop requeues a running job (a
    # retry, a preemption) while the API marks the same job cancel_requested
    queued = submit(store, {"command": [PY, "-c", "print('must not run')"]})
    preempted = submit(store, {"command": [PY, "-c", "print('must not run')"]})
    with store.tx() as s:
        for jid, state in ((queued, "queued"), (preempted, "preempted")):
            row = s.get(JobRow, jid)
            assert row is not None
            row.state, row.cancel_requested = state, True
    loop.tick()
    for jid in (queued, preempted):
        row = get(store, jid)
        assert row.state == "cancelled" and row.attempts == 0, jid
        assert "started" not in events(store, jid)


def test_an_executor_that_is_away_at_start_does_not_use_up_a_retry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store.sqlite(tmp_path)
    away = [True]

    def outage() -> None:
        if away[0]:
            away[0] = False
            raise ExecutorUnavailable("Ray's dashboard is restarting")

    ex = Recording(tmp_path / "logs", A100, on_start=outage)
    loop = Loop(store, ex, tick_s=0.05)
    try:
        jid = submit(store, {"command": [PY, "-c", "print('ran')"], "retries": 0})
        loop.tick()
        row = get(store, jid)
        assert row.state == "queued" and row.attempts == 0 and row.not_before is not None
        assert store.events(jid)[-1].kind == "requeued"
        assert "Ray's dashboard is restarting" in store.events(jid)[-1].message
        with store.tx() as s:
            r = s.get(JobRow, jid)
            assert r is not None
            r.not_before = None  # skip the wait
        row = run_until(loop, store, jid, {"succeeded", "failed"})
        assert row.state == "succeeded" and row.attempts == 1
    finally:
        reap(ex)


def test_an_executor_that_stays_away_fails_the_job_in_the_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from suanli.service.loop import MAX_UNAVAILABLE_STARTS, RETRY_START_S

    store = Store.sqlite(tmp_path)

    def outage() -> None:
        raise ExecutorUnavailable("Ray's dashboard answers 503")

    ex = Recording(tmp_path / "logs", A100, on_start=outage)
    loop = Loop(store, ex, tick_s=0.05)
    jid = submit(store, {"command": [PY, "-c", "print('never')"], "retries": 0})
    waits = []
    for _ in range(MAX_UNAVAILABLE_STARTS):
        loop.tick()
        row = get(store, jid)
        if row.state != "queued":
            break
        assert row.not_before is not None and row.attempts == 0
        waits.append(round(row.not_before - row.updated_at))
        with store.tx() as s:
            r = s.get(JobRow, jid)
            assert r is not None
            r.not_before = None  # skip the wait
    assert waits[:4] == [RETRY_START_S * 2**i for i in range(4)]  # doubling, then capped
    assert max(waits) == 60 and len(waits) == MAX_UNAVAILABLE_STARTS - 1
    row = get(store, jid)
    assert row.state == "failed" and "could not start" in store.events(jid)[-1].message


def test_a_fraction_reaches_the_executor_as_the_share_the_scheduler_granted(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    seen: list[Launch] = []
    start = loop.executor.start

    def recording(launch: Launch) -> Handle:
        seen.append(launch)
        return start(launch)

    loop.executor.start = recording
    res = {"accelerator": "a100-80gb", "devices": 1, "fraction": 0.3337}
    jid = submit(store, {"command": [PY, "-c", "print(1)"], "resources": res})
    run_until(loop, store, jid, {"succeeded"})
    assert seen[0].share == 0.333  # the scheduler's thousandths, not the asked 0.3337


def test_a_job_that_cannot_start_says_why_once_per_reason(rig) -> None:  # type: ignore[no-untyped-def]
    """As `kubectl describe` does: an `unschedulable` event with the reason node by node,
    repeated only when the reason changes."""
    store, loop = rig
    hog = submit(
        store,
        {
            "command": [PY, "-c", "import time; time.sleep(60)"],
            "resources": {"accelerator": "a100-80gb", "devices": 2},
        },
    )
    run_until(loop, store, hog, {"running"})
    wait = submit(
        store,
        {
            "command": [PY, "-c", "print(1)"],
            "resources": {"accelerator": "a100-80gb", "devices": 1},
        },
    )
    never = submit(
        store,
        {"command": [PY, "-c", "print(1)"], "resources": {"accelerator": "h100-sxm", "devices": 1}},
    )
    for _ in range(5):
        loop.tick()
    why = [e.message for e in store.events(wait) if e.kind == "unschedulable"]
    assert why == ["0/1 nodes are available: 1 has 0 of 1 a100-80gb free"]
    why = [e.message for e in store.events(never) if e.kind == "unschedulable"]
    assert why == ["0/1 nodes are available: 1 has 0 h100-sxm"]
    with store.tx() as s:
        row = s.get(JobRow, hog)
        assert row is not None
        row.cancel_requested = True
    assert run_until(loop, store, wait, {"succeeded"}).state == "succeeded"
    # what the loop remembers of reasons is only for jobs still waiting
    with store.tx() as s:
        row = s.get(JobRow, never)
        assert row is not None
        row.cancel_requested = True
    run_until(loop, store, never, {"cancelled"})
    loop.tick()
    assert loop._why == {}


def test_a_start_never_recorded_that_finished_is_recorded_as_it_ended(tmp_path: Path) -> None:
    """It ran and exited 0 while the service was down: succeeded, not "lost" (the 300-job
    kill tests once found such a job failed)."""
    store = Store.sqlite(tmp_path)
    ex = LocalExecutor(tmp_path / "logs", A100)
    jid = submit(store, {"command": [PY, "-c", "print('ran')"]})
    with store.tx() as s:
        row = s.get(JobRow, jid)
        assert row is not None
        row.state, row.members, row.attempts, row.started_at = "running", [], 1, time.time()
    h = ex.start(Launch(str(jid), [PY, "-c", "print('ran')"]))
    end = time.monotonic() + 20
    while ex.poll(h) is None and time.monotonic() < end:
        time.sleep(0.02)
    Loop(store, LocalExecutor(tmp_path / "logs", A100), tick_s=0.05)  # the restarted service
    row = get(store, jid)
    assert row.state == "succeeded" and row.exit_code == 0
    assert "ended while the service was down" in store.events(jid)[-1].message


def test_a_retried_job_finds_what_its_first_attempt_left_in_its_directory(rig) -> None:  # type: ignore[no-untyped-def]
    """The private working directory survives attempts, so a job resumes from a checkpoint
    it wrote there after a failure or a preemption."""
    store, loop = rig
    code = (
        "import os, sys\n"
        "if os.path.exists('ckpt'):\n"
        "    print('resumed', os.getcwd() == os.environ['HOME']); sys.exit(0)\n"
        "open('ckpt', 'w').write('step 3'); sys.exit(1)\n"
    )
    jid = submit(store, {"command": [PY, "-c", code], "retries": 1})
    row = run_until(loop, store, jid, {"succeeded", "failed"}, timeout=30)
    assert row.state == "succeeded" and row.attempts == 2
    assert "resumed True" in Path(str(row.members[0]["stdout"])).read_text()


def test_a_tick_reads_a_bounded_number_of_queued_jobs(rig, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """One tenant's flood of submissions cannot make every tick long: a tick considers at
    most MAX_QUEUED_PER_TICK queued jobs, oldest first."""
    from suanli.service import loop as loop_mod

    store, loop = rig
    monkeypatch.setattr(loop_mod, "MAX_QUEUED_PER_TICK", 2)
    ids = [
        submit(store, {"command": [PY, "-c", "1"], "resources": {"accelerator": "h100-sxm"}})
        for _ in range(5)
    ]
    loop.tick()
    told = [jid for jid in ids if "unschedulable" in events(store, jid)]
    assert told == ids[:2]
