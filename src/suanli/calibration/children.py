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


def start_peer(argv: list[str]) -> subprocess.Popen[str]:
    """Start a peer (``argv``, e.g. a `python_call`) that loads the CPU while this process
    measures; returns once it has printed "ready" (its load starts then). The peer calls
    `guard_peer` first, so it dies with this process."""
    peer = subprocess.Popen(
        argv,
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


def guard_peer() -> None:
    """In a peer: take its whole group down once the measuring process is gone (EOF on
    stdin), then say "ready"."""

    def orphaned() -> None:
        sys.stdin.read()
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=orphaned, daemon=True).start()
    print("ready", flush=True)
