"""Readers for the real public traces in ``../shared/data`` (see its README).

Each reader names the file it needs and fails with a `TraceError` that says
which file and line is wrong; nothing here invents data.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from suanli.cluster.state import NodeSpec
from suanli.cluster.task import Task
from suanli.errors import SuanliError


class TraceError(SuanliError, ValueError):
    """A trace file that cannot be read as the format it claims."""


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the project root (or the working directory), if present."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").exists() and cand.is_dir():
            return cand
    cand = Path.cwd().parent / "shared" / "data"
    return cand if cand.is_dir() else None


def _rows(path: Path, required: set[str]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        fh = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from exc
    with fh:
        reader = csv.DictReader(fh)
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise TraceError(f"{path}: missing column(s) {sorted(missing)}")
        yield from enumerate(reader, start=2)


def read_openb_nodes(path: Path, *, switch_size: int = 32) -> list[NodeSpec]:
    """Alibaba openb node list (sn, cpu_milli, memory_mib, gpu, model).

    The trace has no network topology; nodes are grouped ``switch_size`` to a
    leaf switch in file order so that topology-aware plugins have something to
    work with (stated, not measured).
    """
    out: list[NodeSpec] = []
    for line, row in _rows(path, {"sn", "cpu_milli", "memory_mib", "gpu", "model"}):
        try:
            gpus = int(row["gpu"])
            out.append(
                NodeSpec(
                    name=row["sn"],
                    cpu_milli=int(row["cpu_milli"]),
                    memory_mib=int(row["memory_mib"]),
                    gpu_count=gpus,
                    gpu_type=row["model"] if gpus else "",
                    switch=f"leaf-{len(out) // switch_size}",
                )
            )
        except ValueError as exc:
            raise TraceError(f"{path} line {line}: {exc}") from exc
    return out


def read_openb_pods(path: Path) -> list[Task]:
    """Alibaba openb pod list; the multigpu50 variant has only the first five columns."""
    out = []
    for line, row in _rows(path, {"name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"}):
        try:
            spec = row.get("gpu_spec") or ""
            created = float(row.get("creation_time") or 0)
            deleted = row.get("deletion_time")
            out.append(
                Task(
                    name=row["name"],
                    cpu_milli=int(row["cpu_milli"]),
                    memory_mib=int(row["memory_mib"]),
                    num_gpu=int(row["num_gpu"]),
                    gpu_milli=int(row["gpu_milli"]),
                    gpu_spec=frozenset(s for s in spec.split("|") if s),
                    arrival_s=created,
                    duration_s=(float(deleted) - created) if deleted else 0.0,
                    labels={"qos": row.get("qos") or ""},
                )
            )
        except ValueError as exc:
            raise TraceError(f"{path} line {line}: {exc}") from exc
    return out
