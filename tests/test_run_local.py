"""The local executor with real subprocesses: pinning, logs, gangs, cancel with grace."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from suanli.run.devices import Inventory, detect, parse_npu_smi, parse_nvidia_smi
from suanli.run.executor import Launch
from suanli.run.local import LocalExecutor, alive

PY = sys.executable


def wait(ex: LocalExecutor, h, timeout: float = 20.0) -> int:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        code = ex.poll(h)
        if code is not None:
            return code
        time.sleep(0.02)
    raise AssertionError("process did not finish")


def test_runs_pinned_with_its_environment_and_logs(tmp_path: Path) -> None:
    ex = LocalExecutor(tmp_path)
    code = (
        "import os; print(os.environ['SUANLI_JOB_ID'], os.environ['CUDA_VISIBLE_DEVICES'],"
        " os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['MASTER_ADDR'])"
    )
    h = ex.start(
        Launch(
            "job-1",
            [PY, "-c", code],
            visible_env="CUDA_VISIBLE_DEVICES",
            devices=(2, 3),
            rank=1,
            world_size=2,
            master_port=29500,
        )
    )
    assert wait(ex, h) == 0
    assert Path(h.stdout).read_text().split() == ["job-1", "2,3", "1", "2", "127.0.0.1"]
    h2 = ex.start(Launch("job-2", [PY, "-c", "import sys; sys.exit(3)"]))
    assert wait(ex, h2) == 3


def test_a_job_runs_as_many_math_threads_as_cores_it_was_given(tmp_path: Path) -> None:
    """One core under a quota, but a thread per core of the machine, spends the quota
    spinning: OMP_NUM_THREADS and kin follow the request unless the user sets them."""
    ex = LocalExecutor(tmp_path)
    code = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])"
    cases = [(0.5, {}, "1 1"), (3.0, {}, "3 3"), (2.0, {"OMP_NUM_THREADS": "1"}, "1 2")]
    for i, (cpu, env, want) in enumerate(cases):
        h = ex.start(Launch(f"threads-{i}", [PY, "-c", code], cpu=cpu, env=env))
        assert wait(ex, h) == 0
        assert Path(h.stdout).read_text().strip() == want, (cpu, env)


def test_stop_terminates_then_kills_the_whole_group(tmp_path: Path) -> None:
    ex = LocalExecutor(tmp_path)
    # a parent that ignores SIGTERM and a child: both must be gone after stop()
    script = (
        "import signal, subprocess, sys, time;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f"subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)']);"
        "print('ready', flush=True); time.sleep(60)"
    )
    h = ex.start(Launch("stubborn", [PY, "-c", script]))
    for _ in range(200):
        if "ready" in Path(h.stdout).read_text():
            break
        time.sleep(0.02)
    t0 = time.monotonic()
    code = ex.stop(h, grace_s=0.5)
    assert code == -9 and time.monotonic() - t0 < 5 and not alive(h)
    # a process that honours SIGTERM exits within its grace (it could checkpoint there)
    polite = ex.start(Launch("polite", [PY, "-c", "import time; time.sleep(60)"]))
    time.sleep(0.2)
    assert ex.stop(polite, grace_s=5) == -15


def test_a_restarted_service_reattaches_by_pid_and_start_time(tmp_path: Path) -> None:
    ex = LocalExecutor(tmp_path)
    h = ex.start(Launch("long", [PY, "-c", "import time; time.sleep(30)"]))
    fresh = LocalExecutor(tmp_path)  # a new service process knows only the stored handle
    assert fresh.poll(h) is None and alive(h)
    forged = dataclasses.replace(h, start_time=h.start_time - 100)  # a recycled pid
    assert not alive(forged)
    fresh.stop(h, grace_s=2)
    assert not alive(h)
    ex.poll(h)  # reap


def test_device_detection_parsers_and_cpu_inventory() -> None:
    smi = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA A100-SXM4-80GB, 81920\n"
    devs = parse_nvidia_smi(smi)
    assert [(d.index, d.accelerator, d.memory_mib) for d in devs] == [
        (0, "h100-sxm", 81559),
        (1, "a100-80gb", 81920),
    ]
    npu = "| 0     910B3               | OK            | 93.6        39       0    / 0     |\n"
    assert [d.accelerator for d in parse_npu_smi(npu)] == ["ascend-910b3"]
    inv = detect({})  # no vendor tools: CPU only
    assert isinstance(inv, Inventory) and inv.cpu_cores >= 1 and inv.memory_mib > 0
    assert detect().devices == () or all(d.visible_env for d in detect().devices)


def test_cgroup_v2_limits_are_written_as_the_kernel_reads_them(tmp_path: Path) -> None:
    """This kernel binds cpu and memory to cgroup v1, so v2 cannot run here: its interface
    files are checked on a directory laid out like a v2 mount (what is written, not what
    the kernel then does — the v1 path and the memory kill are tested for real)."""
    from suanli.run import limits

    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    lim = limits.detect("cgroup2", mounts=[(str(tmp_path), "cgroup2", {"rw"})])
    assert lim.kind == "cgroup2" and lim.dirs == (tmp_path / "suanli",)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    files = lim.prepare("sl00-7", cpu_cores=1.5, memory_bytes=2**30)
    g = tmp_path / "suanli" / "sl00-7"
    assert files == [str(g / "cgroup.procs")]
    assert (g / "cpu.max").read_text() == "150000 100000"
    assert int((g / "memory.max").read_text()) == 2**30 + limits.WRAPPER_BYTES
    none = limits.detect("cgroup2", mounts=[])
    assert none.kind == "rlimit" and "not enforced" in none.describe()


def test_without_cgroups_memory_is_capped_by_an_rlimit(tmp_path: Path) -> None:
    """The fallback, for real: the command's address space is capped at what it asked for."""
    from suanli.run import limits

    ex = LocalExecutor(tmp_path / "logs", limits=limits.Limits("rlimit", ()))
    hog = "x = bytearray(1024 * 2**20); print('survived')"
    h = ex.start(Launch("hog", [sys.executable, "-c", hog], memory_mib=256))
    end = time.monotonic() + 30
    while (code := ex.poll(h)) is None and time.monotonic() < end:
        time.sleep(0.02)
    assert code not in (None, 0) and "survived" not in ex.logs(h)
    assert "MemoryError" in ex.logs(h)
