"""The scheduling loop over real processes: gangs, preemption with grace, health, constraints.

The machine is described (two A100s) so device pinning can be checked without
a GPU: each member is a real process whose environment shows what it got.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from suanli.run.local import LocalExecutor
from suanli.service.loop import Loop
from suanli.store import Store
from suanli.store.models import NodeRow, SiteRow
from tests.helpers import A100, events, get, logs, reap, run_until, submit

PY = sys.executable
SHOW_ENV = (
    "import os; print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['MASTER_PORT'],"
    " os.environ['CUDA_VISIBLE_DEVICES'], os.environ['LOCAL_RANK'], flush=True)"
)


@pytest.fixture()
def rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store.sqlite(tmp_path)
    loop = Loop(store, LocalExecutor(tmp_path / "logs", A100), tick_s=0.05, grace_s=3.0)
    yield store, loop
    reap(loop.executor)


def test_a_gang_starts_together_with_the_torchrun_environment(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    jid = submit(
        store,
        {"command": [PY, "-c", SHOW_ENV], "gang": 2, "resources": {"accelerator": "a100-80gb"}},
    )
    row = run_until(loop, store, jid, {"succeeded", "failed"})
    assert row.state == "succeeded", events(store, jid)
    lines = sorted(logs(row).split("\n")[:-1])
    ranks = [ln.split() for ln in lines]
    assert [r[0] for r in ranks] == ["0", "1"] and {r[1] for r in ranks} == {"2"}
    assert ranks[0][2] == ranks[1][2]  # one rendezvous port
    assert {r[3] for r in ranks} == {"0", "1"}  # one device each, different ones
    assert {r[4] for r in ranks} == {"0"}  # each sees only its own device: cuda:0 is it


def test_a_failing_member_stops_its_gang(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    code = "import os, sys, time; sys.exit(3) if os.environ['RANK'] == '1' else time.sleep(60)"
    jid = submit(
        store, {"command": [PY, "-c", code], "gang": 2, "resources": {"accelerator": "a100-80gb"}}
    )
    t0 = time.monotonic()
    row = run_until(loop, store, jid, {"failed"})
    assert row.exit_code == 3 and time.monotonic() - t0 < 15
    assert "stopping" in events(store, jid)


CHECKPOINTER = (
    "import signal, sys, time\n"
    "def term(*_):\n"
    "    print('checkpoint saved', flush=True); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "print('step', flush=True)\n"
    "time.sleep(60)\n"
)


def test_preemption_gives_grace_then_requeues_and_resumes(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    low = submit(
        store,
        {
            "command": [PY, "-c", CHECKPOINTER],
            "preemptible": True,
            "resources": {"accelerator": "a100-80gb", "devices": 2},
        },
    )
    run_until(loop, store, low, {"running"})
    time.sleep(0.5)  # let it install its handler
    high = submit(
        store,
        {
            "command": [PY, "-c", "print('urgent')"],
            "priority": 10,
            "resources": {"accelerator": "a100-80gb", "devices": 2},
        },
    )
    row = run_until(loop, store, high, {"succeeded"})
    kinds = events(store, low)
    assert kinds[kinds.index("stopping") :][:3] == ["stopping", "preempted", "requeued"]
    assert (
        "checkpoint saved" in logs(get(store, low))
        or "checkpoint saved"
        in Path(
            str(get(store, low).members[0]["stdout"])  # type: ignore[index]
        ).read_text()
    )
    # the preemptor started only after its victim had let go of the devices
    assert min(e.at for e in store.events(high) if e.kind == "started") >= max(
        e.at for e in store.events(low) if e.kind == "preempted"
    )
    assert row.exit_code == 0
    again = run_until(loop, store, low, {"running"})
    assert again.attempts == 1  # the preemption did not use up a retry
    assert events(store, low).count("started") == 2


def test_constraints_resolve_to_chips_and_unhealthy_devices_are_skipped(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    loop.tick()  # registers the node
    with store.tx() as s:
        node = s.get(NodeRow, "local")
        assert node is not None and len(node.devices) == 2
        node.devices = [{**d, "healthy": d["index"] != 0} for d in node.devices]
    loop._nodes_at = 0  # resync now
    show = [PY, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    nv = submit(store, {"command": show, "resources": {"vendor": "nvidia", "min_memory_gb": 40}})
    row = run_until(loop, store, nv, {"succeeded"})
    assert logs(row).strip() == "1"  # device 0 is marked unhealthy
    small = submit(store, {"command": show, "resources": {"model": "llama-3-8b"}})
    assert logs(run_until(loop, store, small, {"succeeded"})).strip() == "1"
    # Llama-3-70B's bf16 weights (141 GB) do not fit one 80 GB device; nor is there a Huawei chip
    big = submit(store, {"command": show, "resources": {"model": "llama-3-70b", "devices": 1}})
    huawei = submit(store, {"command": show, "resources": {"vendor": "huawei"}})
    for _ in range(10):
        loop.tick()
    assert get(store, big).state == get(store, huawei).state == "queued"


def test_model_constraint_counts_devices() -> None:
    from suanli.jobs.resolve import eligible_types
    from suanli.jobs.spec import Resources

    have = ["a100-80gb", "a100-40gb", "h200", "ascend-910b"]
    two = Resources(model="llama-3-70b", devices=2)
    assert eligible_types(two, have) == {"a100-80gb", "h200"}  # 2 x 64 GB x 0.9 < 141 GB
    four = Resources(model="llama-3-70b", devices=4)
    assert eligible_types(four, have) == {"a100-80gb", "a100-40gb", "h200", "ascend-910b"}
    assert eligible_types(Resources(model="llama-3-70b", devices=1), have) == set()  # 141 GB
    assert eligible_types(Resources(vendor="huawei", min_memory_gb=64), have) == {"ascend-910b"}
    assert eligible_types(Resources(accelerator="t4"), have) == set()


def test_allowed_regions_bind_through_the_node_site(rig) -> None:  # type: ignore[no-untyped-def]
    store, loop = rig
    loop.tick()  # registers the node
    with store.tx() as s:
        s.add(
            SiteRow(
                name="sh1",
                owner="admin",
                region="cn-east",
                pue=1.2,
                carbon_g_per_kwh=520,
                power_price_per_kwh=0.09,
                updated_at=0,
            )
        )
        s.flush()
        node = s.get(NodeRow, "local")
        assert node is not None
        node.site = "sh1"
    loop._nodes_at = 0  # resync now
    cmd = [PY, "-c", "print('ok')"]
    abroad = submit(store, {"command": cmd, "regions": ["eu-west"]})
    home = submit(store, {"command": cmd, "regions": ["cn-east", "cn-north"]})
    run_until(loop, store, home, {"succeeded"})
    assert get(store, abroad).state == "queued"  # data that must not leave its region waits
