"""Run one job member and record how it ended:
``python -m suanli.run.wrap EXIT_FILE [options] -- ARGV``.

The wrapper is the member's process-group leader and stays the service's user;
the command runs as the job's account (``--user UID:GID[:GROUPS]``), in its
working directory (``--cwd``, entered *after* the switch, so the kernel checks
the job's own access), under umask 077, inside the member's cgroups (``--join``
names ``cgroup.procs`` files the wrapper enters first, so every descendant is
counted and limited) or, without cgroups, under an address-space rlimit
(``--as-bytes``).

A member has ended when its whole process group — and cgroup — is gone, not when
its first process has: ``sh -c 'python3 train.py'`` loses ``sh`` to SIGTERM at
once while Python checkpoints for seconds. So after the command exits the
wrapper waits for what it left behind: during a stop (it got SIGTERM) as long as
they take, until the service's SIGKILL after the grace; after a normal exit it
sends them SIGTERM, then SIGKILL 5 s later (as a container's leftovers go with
its main process). Then it writes the command's exit code, atomically, for a
restarted service that cannot ``wait()``.

The wrapper is root's code running next to a tenant's: it starts isolated
(``python -I``: no ``PYTHON*`` variable, no user site-packages, no current
directory on the path) with a fixed environment of its own, and the job's
environment reaches only the command (``--env-file``, a root-only file it reads and
removes). Otherwise a job could plant a ``sitecustomize`` or ``.pth`` in its home and
have the next attempt's wrapper import it as root. It signals what it finds through
pidfds, checked again after opening, so a pid reused meanwhile is never hit. Only
the standard library is imported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable

LEFTOVER_GRACE_S = 5.0


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def leftovers(procs_files: list[str]) -> set[int]:
    """Live processes (zombies excluded) of this wrapper's process group and cgroups,
    other than the wrapper."""
    me, pgid = os.getpid(), os.getpgid(0)
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_stat(int(name))[2]) == pgid:
                    found.add(int(name))
    for f in procs_files:  # a process that left the group (setsid) is still in its cgroup
        with contextlib.suppress(OSError, ValueError), open(f) as fh:
            found |= {int(x) for x in fh.read().split()}
    live = set()
    for pid in found - {me}:
        with contextlib.suppress(OSError, ValueError, IndexError):
            if _stat(pid)[0] != "Z":
                live.add(pid)
    return live


def signal_members(find: Callable[[], set[int]], sig: int) -> None:
    """Send ``sig`` to what ``find()`` lists, through pidfds opened first and the list taken
    again after: a pid that ended and was reused in between is not in the second list, and a
    pidfd names one process, never its successor."""
    fds = {}
    for pid in find():
        with contextlib.suppress(OSError):
            fds[pid] = os.pidfd_open(pid)
    still = find()
    for pid, fd in fds.items():
        with contextlib.suppress(OSError):
            if pid in still:
                signal.pidfd_send_signal(fd, sig)
        os.close(fd)


def _parse(argv: list[str]) -> tuple[str, dict[str, list[str]], list[str]]:
    if "--" not in argv or argv.index("--") < 1:
        raise SystemExit("usage: python -m suanli.run.wrap EXIT_FILE [options] -- COMMAND...")
    cut = argv.index("--")
    exit_file, opts, cmd = argv[0], argv[1:cut], argv[cut + 1 :]
    parsed: dict[str, list[str]] = {}
    for key, value in zip(opts[::2], opts[1::2], strict=True):
        parsed.setdefault(key, []).append(value)
    if not cmd:
        raise SystemExit("suanli.run.wrap: no command after --")
    return exit_file, parsed, cmd


def main(argv: list[str]) -> int:
    exit_file, opts, cmd = _parse(argv)
    joins = opts.get("--join", [])
    for f in joins:  # enter the member's cgroups before anything else starts
        with open(f, "w") as fh:
            fh.write(str(os.getpid()))
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    user: dict[str, object] = {}
    if opts.get("--user"):
        uid, gid, *groups = opts["--user"][0].split(":")
        user = {
            "user": int(uid),
            "group": int(gid),
            "extra_groups": [int(g) for g in groups[0].split(",") if g] if groups else [],
        }
    cwd = opts["--cwd"][0] if opts.get("--cwd") else None
    as_bytes = int((opts.get("--as-bytes") or ["0"])[0])
    nproc = int((opts.get("--nproc") or ["0"])[0])
    env = None
    if opts.get("--env-file"):
        with open(opts["--env-file"][0]) as fh:
            env = json.load(fh)
        os.unlink(opts["--env-file"][0])

    def child() -> None:  # runs after the switch to the job's account
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if cwd:
            os.chdir(cwd)
        if as_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
        if nproc:  # processes of this account, all its jobs together: no fork bomb
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    try:
        proc = subprocess.Popen(cmd, preexec_fn=child, umask=0o077, env=env, **user)  # type: ignore[call-overload]
        code = int(proc.wait())
    except OSError as exc:
        print(f"suanli: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
        code = 127
    except subprocess.SubprocessError:  # the chdir (or rlimit) failed as the job's user
        print(f"suanli: cannot enter working_dir {cwd} as the job's account", file=sys.stderr)
        code = 126
    # the member ends with its last process
    rest = leftovers(joins)
    deadline = time.monotonic() + LEFTOVER_GRACE_S

    def find() -> set[int]:
        return leftovers(joins)

    if rest and not stopping["now"]:
        signal_members(find, signal.SIGTERM)
    while rest:
        # in a stop they checkpoint until the service's SIGKILL; else they get 5 s
        if not stopping["now"] and time.monotonic() > deadline:
            signal_members(find, signal.SIGKILL)
        time.sleep(0.05)
        rest = leftovers(joins)
    tmp = exit_file + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(str(code))
    os.replace(tmp, exit_file)  # atomic: a reader sees no code or the whole code
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
