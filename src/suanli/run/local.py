"""The local executor: jobs as real processes on this machine, pinned to their devices.

Each member runs under a wrapper (`suanli.run.wrap`) that leads its own process
group (so a cancel reaches every child), with its stdout/stderr in log files
only the service can read, an environment built from an allow-list
(`suanli.run.jobenv`: ``SUANLI_JOB_ID``, its devices made visible through the
vendor's variable, for gangs the torchrun-style ``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``), a private
directory as ``HOME`` and default working directory, and — as ``suanli up``
runs it — as its owner's OS account (`suanli.run.accounts`) inside a cgroup
with the CPU and memory it asked for (`suanli.run.limits`). Stopping is
SIGTERM, then SIGKILL after a grace period — the same path serves cancel and
preemption (the job may checkpoint in its grace); the kill reaches processes
that left the group through the cgroup. A process is identified by pid *and*
start time, so a restarted service can re-attach to it without mistaking a
recycled pid; a member it never learned of is found by its cgroup and stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from suanli.run import jobenv
from suanli.run.devices import Device, Inventory
from suanli.run.executor import DeviceInfo, Handle, Launch, NodeInfo
from suanli.run.limits import Limits

log = logging.getLogger("suanli.local")
#: the wrapper's own environment (it runs as root beside a tenant's code: nothing of theirs)
#: the label of a pseudo-node (CPU slices): this machine's own cores, not more of them
PSEUDO_LABEL = "suanli.io/pseudo"
WRAPPER_ENV = {"PATH": jobenv.SYSTEM_PATH, "LANG": "C.UTF-8"}
#: processes one account may have at once, all its jobs together (RLIMIT_NPROC)
ACCOUNT_NPROC = 8192
LOG_TAIL_BYTES = 1 << 20  # what the service reads of a member's output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalExecutor:
    """Start, watch and stop job processes on this machine; logs under ``log_dir``.

    ``accounts``: run each owner's jobs as its own OS account (needs root);
    ``limits``: the kernel mechanism enforcing CPU and memory (None: not enforced).
    Both are what ``suanli up`` turns on; tests of scheduling leave them off.
    """

    name = "local"

    def __init__(
        self,
        log_dir: Path,
        inventory: Inventory | None = None,
        *,
        jobs_dir: Path | None = None,
        accounts: bool = False,
        limits: Limits | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir = Path(jobs_dir) if jobs_dir else self.log_dir.parent / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.inventory = inventory
        # pseudo-node -> its CPU slices (fixed with the inventory: `start` needs them even
        # before anyone asked for the nodes)
        self._slices: dict[str, list[Device]] = {}
        for d in inventory.devices if inventory is not None else ():
            if d.threads:
                self._slices.setdefault(f"local-{d.accelerator}", []).append(d)
        self.accounts = accounts
        self.limits = limits
        # cgroup names carry this data dir's mark: two services on one machine never clash
        mark = hashlib.sha256(str(self.log_dir.resolve()).encode()).hexdigest()[:8]
        self.group_prefix = f"sl{mark}-"
        self._jobs_gid: int | None = None
        if accounts:
            from suanli.run import accounts as acc

            self._jobs_gid = acc.jobs_group()
            self.opened = acc.open_paths([*acc.runtime_paths(), self.jobs_dir], self._jobs_gid)
            for change in self.opened:
                log.warning("granted search permission to job accounts: %s", change)

    def isolation(self) -> dict[str, str]:
        """What separates jobs here, as node labels (`suanli nodes` shows them)."""
        who = "per-owner OS accounts" if self.accounts else "the service's own user"
        how = self.limits.describe() if self.limits else "not enforced"
        return {"suanli.io/isolation": who, "suanli.io/limits": how}

    def nodes(self) -> list[NodeInfo]:
        """This machine, as one node (no inventory: no node to run on).

        CPU slices (`suanli.run.devices.cpu_slices`) show as one more node per slice
        type, since a node has one device type: pseudo-nodes of this same machine,
        whose cores and memory they share (a label says so)."""
        inv = self.inventory
        if inv is None:
            return []
        devs = [
            DeviceInfo(d.index, d.accelerator, d.memory_mib, d.visible_env)
            for d in inv.devices
            if not d.threads
        ]
        out = [NodeInfo("local", inv.cpu_cores, inv.memory_mib, devs, labels=self.isolation())]
        pseudo = {PSEUDO_LABEL: "CPU slices: threads of this machine's cores"}
        for name, group in self._slices.items():
            slots = [
                DeviceInfo(i, d.accelerator, 0, d.visible_env, threads=d.threads)
                for i, d in enumerate(group)
            ]
            cores = max(1, sum(d.threads for d in group))
            labels = {**self.isolation(), **pseudo}
            out.append(NodeInfo(name, cores, inv.memory_mib, slots, labels=labels))
        return out

    def _slice_threads(self, launch: Launch) -> int:
        """Math threads of the CPU slices the member was given (0: none)."""
        group = self._slices.get(launch.node, [])
        return sum(group[i].threads for i in launch.devices if 0 <= i < len(group))

    def terminate(self, h: Handle) -> None:
        """SIGTERM the member's process group (it may checkpoint in its grace)."""
        _signal_group(h, signal.SIGTERM)

    def kill(self, h: Handle) -> None:
        _signal_group(h, signal.SIGKILL)
        if self.limits and h.group:  # what left the group is still in the cgroup
            self.limits.kill(h.group)

    def is_alive(self, h: Handle) -> bool:
        return alive(h)

    def logs(self, h: Handle, tail_bytes: int = LOG_TAIL_BYTES) -> str:
        """The end of the member's output (a job may write gigabytes; what the service reads
        — a workload's summary, its last lines — is at the end)."""
        return "".join(tail(Path(p), tail_bytes) for p in (h.stdout, h.stderr) if p)

    def member_key(self, job_id: str, rank: int, world_size: int) -> str:
        return f"{job_id}.{rank}" if world_size > 1 else job_id

    def start(self, launch: Launch) -> Handle:
        if launch.cwd and not self.accounts and not Path(launch.cwd).is_dir():
            # (with accounts the wrapper enters it as the job's user and says if it cannot:
            # asked here as root, the answer would tell a tenant what exists where it may
            # not look)
            raise FileNotFoundError(f"working_dir {launch.cwd} does not exist")
        stem = self.member_key(launch.job_id, launch.rank, launch.world_size)
        account = None
        if self.accounts and not launch.owner.startswith("system:"):
            # the service's own jobs (calibration) are its code: they run as itself
            from suanli.run.accounts import ensure_account

            account = ensure_account(launch.owner or "anonymous")
        home = self.jobs_dir / stem
        # kept across attempts: a preempted or retried job resumes from what it wrote here
        # (a checkpoint under its default working directory); one another account left
        # (a job id reused after the database was reset) is never handed over
        if account is not None and home.exists() and home.stat().st_uid != account.uid:
            shutil.rmtree(home)
        home.mkdir(mode=0o700, exist_ok=True)
        if account is not None:
            os.chown(home, account.uid, account.gid)
        torchrun: dict[str, str] = {}
        if launch.world_size > 1 or launch.master_port:
            torchrun = {
                "MASTER_ADDR": launch.master_addr,
                "MASTER_PORT": str(launch.master_port or free_port()),
                "WORLD_SIZE": str(launch.world_size),
                "RANK": str(launch.rank),
                # a member pinned to its own devices sees them from index 0 (`cuda:0` is its
                # first); unpinned members on one node are numbered among themselves
                "LOCAL_RANK": str(
                    0 if launch.visible_env and launch.devices else launch.local_rank
                ),
            }
        env = jobenv.build(
            launch.env,
            launch.job_id,
            home,
            launch.visible_env,
            launch.devices,
            torchrun,
            cpu_cores=launch.cpu,
        )
        threads = self._slice_threads(launch)
        if threads:  # a CPU slice is its thread count: the job's own env may not change it
            env.update({k: str(threads) for k in jobenv.THREADS})
        out = self.log_dir / f"{stem}.out"
        err = self.log_dir / f"{stem}.err"
        code_file = self.log_dir / f"{stem}.exit"
        code_file.unlink(missing_ok=True)
        # the job's environment reaches its command only, through a file only root reads
        # (the wrapper, root's code, starts with a fixed one: see suanli.run.wrap)
        env_file = self.log_dir / f"{stem}.env"
        env_file.unlink(missing_ok=True)
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(env, fh)
        opts = ["--cwd", launch.cwd or str(home), "--env-file", str(env_file)]
        if account is not None:
            groups = ",".join(map(str, account.groups))
            opts += ["--user", f"{account.uid}:{account.gid}:{groups}"]
            opts += ["--nproc", str(ACCOUNT_NPROC)]
        group, joins = "", []
        memory_bytes = int(launch.memory_mib) * 2**20
        if self.limits is not None:
            group = self.group_prefix + stem
            self.limits.kill(group)  # a member of an earlier attempt the service lost
            # a CPU slice's threads are its speed: its quota is at least that many cores
            joins = self.limits.prepare(group, max(launch.cpu, float(threads)), memory_bytes)
            for f in joins:
                opts += ["--join", f]
            if self.limits.kind == "rlimit":
                opts += ["--as-bytes", str(memory_bytes)]
        # the wrapper records the exit code, for a restarted service that cannot wait() for it
        argv = [sys.executable, "-I", "-m", "suanli.run.wrap", str(code_file), *opts]
        argv += ["--", *launch.argv]
        with out.open("ab") as fo, err.open("ab") as fe:
            proc = subprocess.Popen(
                argv, stdout=fo, stderr=fe, env=WRAPPER_ENV, start_new_session=True
            )
        self._procs[f"{launch.job_id}/{launch.rank}"] = proc
        # into its cgroups from here too, at once: the wrapper joins them itself before it
        # starts the command, but a crash of this service must find the member either way
        for f in joins:
            with contextlib.suppress(OSError), open(f, "w") as fh:
                fh.write(str(proc.pid))
        start = psutil.Process(proc.pid).create_time()
        return Handle(
            launch.job_id,
            proc.pid,
            start,
            str(out),
            str(err),
            launch.node or "local",
            launch.rank,
            launch.devices,
            group=group,
        )

    def exit_codes(self, job_id: str, world: int, since: float) -> list[int | None]:
        """Each member's exit code as its wrapper recorded it, for a job whose handles were
        never stored (None: no record written after ``since``, the job's start)."""
        out: list[int | None] = []
        for rank in range(world):
            f = self.log_dir / f"{self.member_key(job_id, rank, world)}.exit"
            try:
                fresh = f.stat().st_mtime >= since  # not an earlier attempt's
                out.append(int(f.read_text()) if fresh else None)
            except (OSError, ValueError):
                out.append(None)
        return out

    def orphans(self, known: set[str]) -> list[str]:
        """Member cgroups of this service that hold processes no stored job owns (a start
        whose handle was never committed): their keys, for `stop_orphans`."""
        if self.limits is None:
            return []
        return [
            k
            for k in self.limits.groups()
            if k.startswith(self.group_prefix) and k not in known and self.limits.procs(k)
        ]

    def stop_orphan(self, key: str) -> None:
        assert self.limits is not None
        self.limits.kill(key)
        self.limits.remove(key)

    def poll(self, h: Handle) -> int | None:
        """The exit code, or None while the process runs. Works after a restart too."""
        for key, proc in list(self._procs.items()):
            if proc.pid == h.pid:
                code = proc.poll()
                if code is not None:
                    del self._procs[key]
                    self._release(h)
                    return _recorded(h, code)  # the command's own code, not the wrapper's
                return None
        if alive(h):
            return None
        # not our child (re-attached after a restart): the wrapper left its exit code
        self._release(h)
        return _recorded(h, -9)  # no record: killed before it could say (SIGKILL)

    def _release(self, h: Handle) -> None:
        """The wrapper is gone: stop anything of the member it could not wait for (it was
        SIGKILLed) and remove the member's cgroup."""
        if self.limits and h.group:
            self.limits.kill(h.group)
            self.limits.remove(h.group)

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


def tail(path: Path, max_bytes: int) -> str:
    """The last ``max_bytes`` of a file as text ("" if it is absent)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read(max_bytes).decode(errors="replace")
    except OSError:
        return ""


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
