"""Processes ``suanli calibrate`` starts: peers that load a shared CPU while it measures
(``calibrate --processes N``), and children that run one benchmark in a fresh heap.

A peer runs in its own process group, so stopping it also stops the children its own
benchmarks start; its stdin is a pipe nobody writes, which closes when the measuring
process ends however it ends (SIGKILL included), and the peer takes its group down
then. A peer never outlives the calibration it loads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading

from suanli.errors import SuanliError


def python_call(module: str, func: str, *args: object) -> list[str]:
    """argv running ``module.func(*args)`` in a fresh interpreter, the arguments as
    strings, printing what it returns (if anything)."""
    code = (
        f"import sys; from {module} import {func} as f; r = f(*sys.argv[1:]); r is None or print(r)"
    )
    return [sys.executable, "-c", code, *map(str, args)]


def start_peer(quick: bool, threads: int) -> subprocess.Popen[str]:
    """A copy of the benchmarks that loads the CPU while this process measures; returns
    once it has loaded PyTorch (the load starts then)."""
    peer = subprocess.Popen(
        python_call(__name__, "peer", "quick" if quick else "full", threads),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert peer.stdout is not None
    if peer.stdout.readline().strip() != "ready":
        stop(peer)
        raise SuanliError("a calibration peer process did not start (is PyTorch importable?)")
    return peer


def stop(peer: subprocess.Popen[str]) -> None:
    """Stop a peer and everything it started (peers run until told)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(peer.pid, signal.SIGKILL)
    peer.wait()
    for pipe in (peer.stdin, peer.stdout):
        if pipe is not None:
            pipe.close()


def peer(plan_name: str, threads: str) -> None:
    """The peer's body: the benchmarks in a loop, until its group is killed."""
    from suanli.calibration import micro

    torch = micro._torch()
    torch.set_num_threads(int(threads))
    plan = micro.Plan.quick() if plan_name == "quick" else micro.Plan.full()

    def orphaned() -> None:  # EOF on stdin: the measuring process is gone, so is the group
        sys.stdin.read()
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=orphaned, daemon=True).start()
    print("ready", flush=True)
    while True:
        micro._measure(torch, "cpu", plan, None)
