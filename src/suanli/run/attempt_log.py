"""A job's log file on an engine that keeps one log per attempt (a Ray job, a Volcano
Job): each attempt's log is saved under its engine id, and the job's log file is all of
them in the order they were written, so a retried or resumed job's earlier attempts stay
readable with `suanli logs`."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader sees the old or the new text, never half


def save_attempt(log_dir: Path, job_id: str, ref: str, text: str, stdout: Path) -> None:
    """Attempt ``ref``'s log (refs are ``suanli-<job>-<id>``), then the job's whole log."""
    atomic_write(log_dir / f"{ref}.log", text)
    parts = sorted(log_dir.glob(f"suanli-{job_id}-*.log"), key=lambda f: f.stat().st_mtime)
    atomic_write(stdout, "".join(f.read_text(errors="replace") for f in parts))
