"""The rounds in the live loop: a real train_lm job moved to a faster chip type by a round.

No accelerator is here, so the two "types" are CPU slices (`suanli.run.devices.cpu_slices`):
pseudo-devices whose jobs run 2 math threads or 1 on this machine's cores. They are
not separate hardware, and the test says nothing about their speed: only that the
round moves the job to the type the allocation prefers, that the job checkpoints on
the way out and resumes from exactly that step.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from suanli.run.devices import Inventory, cpu_slices
from suanli.run.local import LocalExecutor
from suanli.sched.policies import parse_policy
from suanli.service.loop import Loop
from suanli.store import Store
from tests.helpers import TINY, get, logs, reap, run_until, submit

PY = sys.executable
SLICES = Inventory(cpu_cores=2, memory_mib=8192, devices=cpu_slices("fast:2,slow:1"))
POLICY = parse_policy(
    {
        "name": "live-rounds",
        "actions": ["enqueue", "rounds", "allocate", "backfill"],
        # a round every second and no wait between allocations: a test's pace
        "rounds": {
            "policy": "gavel-max-throughput",
            "round_s": 1,
            "reset_every_s": 0,
            "mode": "moves",
        },
        "tiers": [{"plugins": [{"name": "best-fit", "weight": 1}]}],
    }
)
SLICE = {"vendor": "cpu-slice", "devices": 1, "cpu": 1, "memory_gb": 1}


def _device(store: Store, jid: int) -> str:
    """The type of the slice the job runs on (each slice type is a pseudo-node)."""
    members = get(store, jid).members or []
    assert members, f"job {jid} has no members"
    return str(members[0]["node"]).removeprefix("local-")


def _until(loop: Loop, what, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        loop.tick()
        if what():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the loop")


@pytest.fixture()
def rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store.sqlite(tmp_path)
    ex = LocalExecutor(tmp_path / "logs", SLICES)
    loop = Loop(store, ex, policy=POLICY, tick_s=0.05, grace_s=60.0)
    yield store, loop, tmp_path
    reap(ex)


def test_a_round_moves_a_training_job_to_the_faster_type_and_it_resumes_where_it_stopped(
    rig,  # type: ignore[no-untyped-def]
) -> None:
    store, loop, tmp = rig
    release = tmp / "release"
    wait_for_file = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)"
    blocker = submit(
        store,
        {"command": [PY, "-c", wait_for_file], "preemptible": True, "resources": SLICE},
    )
    run_until(loop, store, blocker, {"running"})
    assert _device(store, blocker) == "cpu-slice-fast"  # the faster type, while it is free
    cfg = tmp / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    train = [PY, "-m", "suanli.workloads.train_lm", "--model", str(cfg), "--steps", "1000000"]
    train += ["--seq-len", "32", "--micro-batch", "2", "--precision", "fp32"]
    train += ["--ckpt-dir", str(tmp / "ckpt")]
    job = submit(store, {"command": train, "preemptible": True, "resources": SLICE})
    run_until(loop, store, job, {"running"})
    assert _device(store, job) == "cpu-slice-slow"  # the fast one is taken: it runs, slower
    _until(loop, lambda: "step" in logs(get(store, job)))  # it trains there
    release.touch()  # the fast type frees: the next round moves the job there
    # stopped, requeued and started again can all happen within one tick: wait for the event
    _until(loop, lambda: any(e.kind == "preempted" for e in store.events(job)))
    said = [e.message for e in store.events(job) if e.kind == "preempted"]
    assert said and "round" in said[0], said
    moved = [e.message for e in store.events(job) if "moves to cpu-slice-fast" in e.message]
    assert moved, [e.message for e in store.events(job)]
    _until(loop, lambda: get(store, job).state == "running" and "resumed" in logs(get(store, job)))
    assert _device(store, job) == "cpu-slice-fast"
    text = logs(get(store, job))
    saved = re.findall(r"checkpoint at step (\d+) after SIGTERM", text)
    resumed = re.findall(r"resumed from .* at step (\d+)", text)
    assert saved and resumed and resumed[-1] == saved[-1], text[-2000:]
    assert loop.rounds is not None and loop.rounds.moves >= 1


def test_cpu_slices_are_pseudo_nodes_whose_jobs_run_their_threads(tmp_path: Path) -> None:
    from suanli.jobs.resolve import eligible_types
    from suanli.jobs.spec import Resources
    from suanli.run.executor import Launch

    with pytest.raises(ValueError, match="NAME:THREADS"):
        cpu_slices("fast")
    assert [d.threads for d in cpu_slices("a:3,b:1x2")] == [3, 1, 1]
    ex = LocalExecutor(tmp_path / "logs", SLICES)
    nodes = {n.name: n for n in ex.nodes()}
    assert set(nodes) == {"local", "local-cpu-slice-fast", "local-cpu-slice-slow"}
    assert "pseudo" in " ".join(nodes["local-cpu-slice-fast"].labels)
    show = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['SUANLI_CPU_SLICE'])"
    try:
        for node, threads in (("local-cpu-slice-fast", "2"), ("local-cpu-slice-slow", "1")):
            h = ex.start(
                Launch(
                    node.removeprefix("local-"),
                    [PY, "-c", show],
                    node=node,
                    devices=(0,),
                    visible_env="SUANLI_CPU_SLICE",
                )
            )
            _wait_exit(ex, h)
            assert Path(h.stdout).read_text().split() == [threads, "0"]
    finally:
        reap(ex)
    # a job asks for them by vendor; catalog constraints never match a pseudo-device
    types = ["cpu-slice-fast", "a100-80gb"]
    assert eligible_types(Resources(vendor="cpu-slice"), types) == {"cpu-slice-fast"}
    assert "cpu-slice-fast" not in eligible_types(Resources(min_memory_gb=1), types)


def _wait_exit(ex: LocalExecutor, h) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + 60
    while ex.poll(h) is None:
        assert time.monotonic() < end, "the member never exited"
        time.sleep(0.05)


def test_an_elastic_job_starts_with_what_fits_and_grows_at_a_round(tmp_path: Path) -> None:
    store = Store.sqlite(tmp_path)
    two = Inventory(cpu_cores=2, memory_mib=8192, devices=cpu_slices("a:1x2"))
    ex = LocalExecutor(tmp_path / "logs", two)
    loop = Loop(store, ex, policy=POLICY, tick_s=0.05, grace_s=60.0)
    try:
        release = tmp_path / "release"
        wait = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)"
        blocker = submit(store, {"command": [PY, "-c", wait], "resources": SLICE})
        run_until(loop, store, blocker, {"running"})
        cfg = tmp_path / "tiny.json"
        cfg.write_text(json.dumps(TINY))
        train = [PY, "-m", "suanli.workloads.train_lm", "--model", str(cfg)]
        train += ["--steps", "1000000", "--seq-len", "32", "--micro-batch", "2"]
        train += ["--precision", "fp32", "--ckpt-dir", str(tmp_path / "ckpt")]
        spec = {"command": train, "preemptible": True, "gang": 2, "min_gang": 1}
        job = submit(store, {**spec, "resources": SLICE})
        run_until(loop, store, job, {"running"})
        assert len(get(store, job).members or []) == 1  # one device is taken: it starts small
        _until(loop, lambda: "step" in logs(get(store, job)))
        release.touch()
        _until(loop, lambda: any("grows from 1 to 2" in e.message for e in store.events(job)))
        _until(
            loop,
            lambda: (
                get(store, job).state == "running"
                and len(get(store, job).members or []) == 2
                and "resumed" in logs(get(store, job))
            ),
        )
        # a member's log is named by its rank and the world size: read both runs'
        text = "".join(f.read_text() for f in sorted((tmp_path / "logs").glob(f"{job}*.out")))
        saved = re.findall(r"checkpoint at step (\d+) after SIGTERM", text)
        resumed = re.findall(r"resumed from .* at step (\d+)", text)
        assert saved and resumed and resumed[-1] == saved[-1], text[-2000:]
    finally:
        reap(ex)


def test_an_elastic_spec_says_what_it_needs() -> None:
    from suanli.jobs.spec import parse_job_spec

    base = {"name": "e", "command": ["true"], "resources": SLICE}
    for bad, says in (
        ({"min_gang": 2}, "give gang"),
        ({"gang": 2, "min_gang": 3}, "min_gang <= gang"),
        ({"gang": 2, "min_gang": 1}, "must be preemptible"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_job_spec({**base, **bad})
    assert parse_job_spec({**base, "gang": 4, "min_gang": 2, "preemptible": True}).min_gang == 2
