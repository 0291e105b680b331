"""The CPU and memory a job asked for, enforced by the kernel where it can be.

One cgroup per job member, named after the job, made *before* the member starts:

- cgroup v2 (a unified hierarchy with the ``cpu`` and ``memory`` controllers and
  a writable root): ``cpu.max`` and ``memory.max``;
- cgroup v1 (``cpu`` and ``memory`` hierarchies mounted and writable, as on these
  machines): ``cpu.cfs_quota_us`` and ``memory.limit_in_bytes``;
- neither: an address-space rlimit for memory, and the CPU share unenforced
  (no rlimit caps a rate) — said so at start and in ``suanli nodes``.

The cgroup also finds every process of a member, including one that left its
process group (``setsid``): a stop kills all of them, and a restarted service
stops what a job it lost track of left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

ROOT_NAME = "suanli"
CFS_PERIOD_US = 100_000
#: the member's wrapper (a small Python that waits for the command) lives in its cgroup
#: too, so that nothing of the member is outside it: its memory is added to the limit
WRAPPER_BYTES = 32 * 2**20
#: processes one member may have at once (a fork bomb stops here, not at the machine's)
MAX_PIDS = 4096


@dataclass(frozen=True)
class Limits:
    """Which kernel mechanism enforces job limits on this machine."""

    kind: str  # "cgroup2", "cgroup1" or "rlimit"
    dirs: tuple[Path, ...]  # the suanli cgroup in each hierarchy used

    def describe(self) -> str:
        where = ", ".join(map(str, self.dirs))
        if self.kind == "cgroup2":
            return f"cgroup v2 cpu.max + memory.max + pids.max ({where})"
        if self.kind == "cgroup1":
            return f"cgroup v1 cpu.cfs_quota_us + memory.limit_in_bytes + pids.max ({where})"
        return (
            "rlimit: memory as address space (RLIMIT_AS); CPU share not enforced "
            "(no writable cgroup hierarchy)"
        )

    # --- per member ---------------------------------------------------------------
    def prepare(self, key: str, cpu_cores: float, memory_bytes: int) -> list[str]:
        """Make the member's cgroups with its limits; returns the ``cgroup.procs`` files
        its wrapper joins (none under rlimits)."""
        if self.kind == "rlimit":
            return []
        files = []
        quota = max(1000, int(cpu_cores * CFS_PERIOD_US))
        memory_bytes += WRAPPER_BYTES
        for d in self.dirs:
            g = d / key
            g.mkdir(exist_ok=True)
            if self.kind == "cgroup2":
                (g / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
                (g / "memory.max").write_text(str(memory_bytes))
                if (g / "pids.max").exists():
                    (g / "pids.max").write_text(str(MAX_PIDS))
                with contextlib.suppress(OSError):
                    (g / "memory.swap.max").write_text("0")
                files.append(str(g / "cgroup.procs"))
                continue
            if (g / "cpu.cfs_quota_us").exists():
                (g / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                (g / "cpu.cfs_quota_us").write_text(str(quota))
            if (g / "pids.max").exists():
                (g / "pids.max").write_text(str(MAX_PIDS))
            if (g / "memory.limit_in_bytes").exists():
                (g / "memory.limit_in_bytes").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):  # memsw exists only with swap accounting
                    (g / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            files.append(str(g / "cgroup.procs"))
        return files

    def procs(self, key: str) -> set[int]:
        out: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                out |= {int(x) for x in (d / key / "cgroup.procs").read_text().split()}
        return out

    def kill(self, key: str) -> None:
        """SIGKILL every process of the member's cgroups, until none is left (``pids.max``
        bounds how many a fork loop can make meanwhile)."""
        from suanli.run.wrap import signal_members

        for _ in range(100):
            if not self.procs(key):
                return
            signal_members(lambda: self.procs(key), signal.SIGKILL)

    def remove(self, key: str) -> None:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                (d / key).rmdir()

    def groups(self) -> list[str]:
        """Every member cgroup that exists (a restarted service scans them)."""
        names: set[str] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                names |= {p.name for p in d.iterdir() if p.is_dir()}
        return sorted(names)


def _mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 4:
                out.append((parts[1], parts[2], set(parts[3].split(","))))
    return out


def _writable(d: Path) -> bool:
    return d.is_dir() and os.access(d, os.W_OK)


def detect(
    prefer: str | None = None, mounts: list[tuple[str, str, set[str]]] | None = None
) -> Limits:
    """The best mechanism here (``prefer``: force one; ``mounts``: (where, type, options)
    in place of /proc/mounts — for tests of a hierarchy this kernel does not have)."""
    mounts = _mounts() if mounts is None else mounts
    if prefer in (None, "cgroup2"):
        for where, kind, _ in mounts:
            root = Path(where)
            if kind != "cgroup2" or not _writable(root):
                continue
            with contextlib.suppress(OSError):
                have = set((root / "cgroup.controllers").read_text().split())
                if {"cpu", "memory"} <= have:
                    wanted = "+cpu +memory" + (" +pids" if "pids" in have else "")
                    (root / "cgroup.subtree_control").write_text(wanted)
                    mine = root / ROOT_NAME
                    mine.mkdir(exist_ok=True)
                    (mine / "cgroup.subtree_control").write_text(wanted)
                    return Limits("cgroup2", (mine,))
    if prefer in (None, "cgroup1"):
        v1: dict[str, Path] = {}
        for where, kind, opts in mounts:
            for ctl in ("cpu", "memory", "pids"):
                if kind == "cgroup" and ctl in opts and _writable(Path(where)):
                    v1.setdefault(ctl, Path(where))
        if "cpu" in v1 and "memory" in v1:
            with contextlib.suppress(OSError):
                dirs = tuple(dict.fromkeys(v1[c] / ROOT_NAME for c in v1))
                for d in dirs:
                    d.mkdir(exist_ok=True)
                return Limits("cgroup1", dirs)
    return Limits("rlimit", ())
