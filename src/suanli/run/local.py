"""The local executor: jobs as real processes on this machine, pinned to their devices.

Each job runs as a subprocess in its own process group (so a cancel reaches
every child), with its stdout/stderr in log files, ``SUANLI_JOB_ID`` in its
environment, its devices made visible through the vendor's variable, and for
gangs the torchrun-style ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``. Stopping is SIGTERM, then SIGKILL after a grace
period — the same path serves cancel and preemption (the job may checkpoint in
its grace). A process is identified by pid *and* start time, so a restarted
service can re-attach to it without mistaking a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from suanli.run.devices import Inventory
from suanli.run.executor import DeviceInfo, Handle, Launch, NodeInfo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalExecutor:
    """Start, watch and stop job processes on this machine; logs under ``log_dir``."""

    name = "local"

    def __init__(self, log_dir: Path, inventory: Inventory | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.inventory = inventory

    def nodes(self) -> list[NodeInfo]:
        """This machine, as one node (no inventory: no node to run on)."""
        inv = self.inventory
        if inv is None:
            return []
        devs = [
            DeviceInfo(d.index, d.accelerator, d.memory_mib, d.visible_env) for d in inv.devices
        ]
        return [NodeInfo("local", inv.cpu_cores, inv.memory_mib, devs)]

    def terminate(self, h: Handle) -> None:
        """SIGTERM the member's process group (it may checkpoint in its grace)."""
        _signal_group(h, signal.SIGTERM)

    def kill(self, h: Handle) -> None:
        _signal_group(h, signal.SIGKILL)

    def is_alive(self, h: Handle) -> bool:
        return alive(h)

    def logs(self, h: Handle) -> str:
        return "".join(
            Path(p).read_text(errors="replace")
            for p in (h.stdout, h.stderr)
            if p and Path(p).exists()
        )

    def start(self, launch: Launch) -> Handle:
        env = {**os.environ, **launch.env, "SUANLI_JOB_ID": launch.job_id}
        # jobs see the service's Python first (`python3 -m suanli.workloads...` just works)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if launch.visible_env:
            env[launch.visible_env] = ",".join(str(d) for d in launch.devices)
        if launch.world_size > 1 or launch.master_port:
            env.update(
                MASTER_ADDR=launch.master_addr,
                MASTER_PORT=str(launch.master_port or free_port()),
                WORLD_SIZE=str(launch.world_size),
                RANK=str(launch.rank),
                # a member pinned to its own devices sees them from index 0 (`cuda:0` is its
                # first); unpinned members on one node are numbered among themselves
                LOCAL_RANK=str(0 if launch.visible_env and launch.devices else launch.local_rank),
            )
        stem = f"{launch.job_id}.{launch.rank}" if launch.world_size > 1 else launch.job_id
        out = self.log_dir / f"{stem}.out"
        err = self.log_dir / f"{stem}.err"
        code_file = self.log_dir / f"{stem}.exit"
        code_file.unlink(missing_ok=True)
        # a wrapper records the exit code, for a restarted service that cannot wait() for it
        argv = [sys.executable, "-m", "suanli.run.wrap", str(code_file), "--", *launch.argv]
        with out.open("ab") as fo, err.open("ab") as fe:
            proc = subprocess.Popen(
                argv, stdout=fo, stderr=fe, env=env, cwd=launch.cwd, start_new_session=True
            )
        self._procs[f"{launch.job_id}/{launch.rank}"] = proc
        start = psutil.Process(proc.pid).create_time()
        return Handle(
            launch.job_id, proc.pid, start, str(out), str(err), "local", launch.rank, launch.devices
        )

    def poll(self, h: Handle) -> int | None:
        """The exit code, or None while the process runs. Works after a restart too."""
        for key, proc in list(self._procs.items()):
            if proc.pid == h.pid:
                code = proc.poll()
                if code is not None:
                    del self._procs[key]
                    return _recorded(h, code)  # the command's own code, not the wrapper's
                return None
        if alive(h):
            return None
        # not our child (re-attached after a restart): the wrapper left its exit code
        return _recorded(h, -9)  # no record: killed before it could say (SIGKILL)

    def stop(self, h: Handle, grace_s: float = 10.0) -> int | None:
        """`terminate`, wait up to ``grace_s``, then `kill`: the two steps the loop takes over
        ticks, in one blocking call (for scripts and tests)."""
        self.terminate(h)
        deadline = time.monotonic() + grace_s
        while (code := self.poll(h)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if code is None:
            self.kill(h)
            deadline = time.monotonic() + 2.0
            while (code := self.poll(h)) is None and time.monotonic() < deadline:
                time.sleep(0.02)
        return code


def _signal_group(h: Handle, sig: int) -> None:
    """Signal the member's process group, even when its leader has already exited.

    The group id is the leader's pid (``start_new_session``), and children the
    leader left behind keep the group alive. POSIX does not reuse a pid while a
    group of that id exists, so a live *different* process with that pid (start
    time differs) means our group is gone; then nothing is signalled.
    """
    with contextlib.suppress(psutil.NoSuchProcess):
        p = psutil.Process(h.pid)
        if abs(float(p.create_time()) - h.start_time) >= 1e-3:
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(h.pid, sig)


def _recorded(h: Handle, default: int) -> int:
    """The exit code the wrapper recorded for the command, else ``default``."""
    try:
        return int(Path(h.stdout).with_suffix(".exit").read_text())
    except (OSError, ValueError):
        return default


def alive(h: Handle) -> bool:
    """Whether the process behind the handle still runs (same pid *and* start time)."""
    try:
        p = psutil.Process(h.pid)
        same = abs(float(p.create_time()) - h.start_time) < 1e-3
        return bool(same and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
