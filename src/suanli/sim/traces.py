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


#: Alibaba v2026 GPU model names -> catalog names (undisclosed series keep theirs).
V2026_TYPES = {
    "A100-SXM4-80GB": "a100-80gb",
    "A800-SXM4-80GB": "a800-80gb",
    "H800": "h800-sxm",
    "A10": "a10",
}
#: The v2026 inventory gives no memory; nodes get this much (stated, not measured).
V2026_MEMORY_MIB = 1024 * 1024


def read_v2026_nodes(path: Path, *, switch_size: int = 32) -> list[NodeSpec]:
    """Alibaba cluster-trace-v2026-spot-gpu node inventory (gpu_model, gpu_capacity_num,
    cpu_num, node_name). Memory is not in the trace; see `V2026_MEMORY_MIB`."""
    out: list[NodeSpec] = []
    for line, row in _rows(path, {"gpu_model", "gpu_capacity_num", "cpu_num", "node_name"}):
        try:
            gpus = int(row["gpu_capacity_num"])
            model = row["gpu_model"]
            out.append(
                NodeSpec(
                    name=f"v2026-{row['node_name']}",
                    cpu_milli=int(float(row["cpu_num"]) * 1000),
                    memory_mib=V2026_MEMORY_MIB,
                    gpu_count=gpus,
                    gpu_type=V2026_TYPES.get(model, model) if gpus else "",
                    switch=f"leaf-{len(out) // switch_size}",
                )
            )
        except ValueError as exc:
            raise TraceError(f"{path} line {line}: {exc}") from exc
    return out


def read_nodes(path: Path) -> list[NodeSpec]:
    """A node list in any known CSV format, recognised from its header."""
    try:
        with path.open(encoding="utf-8") as fh:
            header = fh.readline()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from exc
    if "gpu_capacity_num" in header:
        return read_v2026_nodes(path)
    if "cpu_milli" in header:
        return read_openb_nodes(path)
    raise TraceError(f"{path}: not a known node list (openb or Alibaba v2026 columns expected)")


def read_gavel_trace(path: Path) -> list[tuple[str, int, float, float]]:
    """A Gavel ``.trace`` file: (job type, scale factor, total steps, arrival s) per job.

    Both layouts Gavel used: 7 tab-separated fields (job_type, command, num_steps_arg,
    needs_data_dir, total_steps, arrival_time, scale_factor) and 10 (job_type, command,
    working_directory, num_steps_arg, needs_data_dir, total_steps, scale_factor,
    priority_weight, SLO, arrival_time).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from exc
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        f = line.split("\t")
        try:
            if len(f) == 7:
                out.append((f[0], int(f[6]), float(f[4]), float(f[5])))
            elif len(f) == 10:
                out.append((f[0], int(f[6]), float(f[5]), float(f[9])))
            else:
                raise ValueError(f"{len(f)} fields, expected 7 or 10")
        except ValueError as exc:
            raise TraceError(f"{path} line {n}: {exc}") from exc
    return out


#: Sia's cluster names -> the GPU each has (siasosp23 artifacts, traces README).
SIA_GPUS = {
    "aws": "t4",
    "azure": "v100-32gb",
    "dgx-ext": "a100-40gb",
    "quad": "quadro-rtx6000",
    "rtx": "rtx-2080ti",
}


def read_sia_peak_throughput(path: Path) -> dict[tuple[str, str], float]:
    """``sia_single_gpu_peak_throughput.csv``: samples/s per (application, GPU type)."""
    out: dict[tuple[str, str], float] = {}
    for line, row in _rows(path, {"model"}):
        for col, val in row.items():
            if col == "model" or not col.endswith("_samples_per_s"):
                continue
            cluster = col.removesuffix("_samples_per_s")
            try:
                out[(row["model"], SIA_GPUS.get(cluster, cluster))] = float(val)
            except ValueError as exc:
                raise TraceError(f"{path} line {line}: {col}: {exc}") from exc
    return out


def read_sia_step_times(path: Path) -> list[dict[str, float | str]]:
    """``sia_placements_all.csv``: measured step and sync time by model, GPU, local batch
    and placement (a digit string: GPUs on each node)."""
    out: list[dict[str, float | str]] = []
    cols = {"model", "cluster", "local_bsz", "step_time", "sync_time", "placement"}
    for line, row in _rows(path, cols):
        try:
            out.append(
                {
                    "model": row["model"],
                    "gpu": SIA_GPUS.get(row["cluster"], row["cluster"]),
                    "local_bsz": float(row["local_bsz"]),
                    "step_time_s": float(row["step_time"]),
                    "sync_time_s": float(row["sync_time"]),
                    "placement": row["placement"],
                }
            )
        except ValueError as exc:
            raise TraceError(f"{path} line {line}: {exc}") from exc
    return out


def read_sia_workload(path: Path, samples_by_app: dict[str, float]) -> list[Task]:
    """A Sia workload (``sia_philly_workload-1.csv``, ``sia_saturn_workload-1.csv``: name,
    arrival time, application, replicas, batch size) as gangs of one-GPU tasks.

    The trace gives no training length; ``samples_by_app`` (samples to train, per
    application) must come from the caller, and each task's ``work`` is its share.
    """
    out: list[Task] = []
    for line, row in _rows(path, {"name", "time", "application", "num_replicas", "batch_size"}):
        app = row["application"]
        if app not in samples_by_app:
            raise TraceError(f"{path} line {line}: no training length given for {app!r}")
        try:
            replicas = int(row["num_replicas"])
            for r in range(replicas):
                out.append(
                    Task(
                        name=f"{row['name']}-{r}",
                        cpu_milli=4000,
                        memory_mib=16_384,
                        num_gpu=1,
                        gpu_milli=1000,
                        job=row["name"],
                        min_available=replicas,
                        arrival_s=float(row["time"]),
                        work=samples_by_app[app] / replicas,
                        kind="train",
                        labels={"workload": app, "batch_size": row["batch_size"]},
                    )
                )
        except ValueError as exc:
            raise TraceError(f"{path} line {line}: {exc}") from exc
    return out
