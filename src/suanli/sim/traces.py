"""Readers for the real public traces in ``../shared/data`` (see its README).

Each reader names the file it needs and fails with a `TraceError` that says
which file and line is wrong; nothing here invents data.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from suanli.cluster.state import NodeSpec
from suanli.cluster.task import MILLI, Task
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


@dataclass(frozen=True)
class CsvFormat:
    """A CSV trace format: its name, the columns it must have, and where it is used."""

    name: str  # "an openb node list", as it reads in a sentence
    columns: tuple[str, ...]  # required, in the file's order
    use: str  # what takes it
    suffix: str = ""  # and at least one column ending so (Sia's per-cluster columns)

    def missing(self, header: list[str]) -> list[str]:
        have = set(header)
        out = [c for c in self.columns if c not in have]
        if self.suffix and not any(h.endswith(self.suffix) for h in header):
            out.append(f"*{self.suffix}")
        return out

    @property
    def header(self) -> str:
        return ",".join(self.columns) + (f",*{self.suffix}" if self.suffix else "")


#: Every CSV format read here (and by `suanli.sim.market_sources`), recognised by header.
CSV_FORMATS: dict[str, CsvFormat] = {
    f.name: f
    for f in (
        CsvFormat(
            "an openb node list",
            ("sn", "cpu_milli", "memory_mib", "gpu", "model"),
            "simulate --cluster",
        ),
        CsvFormat(
            "an openb pod list",
            ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"),
            "simulate --workload",
        ),
        CsvFormat(
            "an Alibaba v2026 node inventory",
            ("gpu_model", "gpu_capacity_num", "cpu_num", "node_name"),
            "simulate --cluster",
        ),
        CsvFormat(
            "a Sia workload",
            ("name", "time", "application", "num_replicas", "batch_size"),
            "simulate market",
        ),
        CsvFormat(
            "a Sia placements table",
            ("model", "cluster", "local_bsz", "step_time", "sync_time", "placement"),
            "the Sia readers",
        ),
        CsvFormat("a Sia peak-throughput table", ("model",), "simulate market", "_samples_per_s"),
        CsvFormat("a Gavel throughput table", ("job_type", "scale_factor"), "the Gavel readers"),
        CsvFormat(
            "an Azure LLM inference trace",
            ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
            "simulate market",
        ),
    )
}
OPENB_NODES, OPENB_PODS, V2026_NODES, SIA_WORKLOAD, SIA_PLACEMENTS, SIA_PEAK = (
    CSV_FORMATS[n]
    for n in (
        "an openb node list",
        "an openb pod list",
        "an Alibaba v2026 node inventory",
        "a Sia workload",
        "a Sia placements table",
        "a Sia peak-throughput table",
    )
)
#: Top-level YAML keys -> what a file with them is (and where it goes).
YAML_KINDS = {
    "nodes": ("a cluster YAML", "simulate --cluster"),
    "sites": ("a cluster YAML", "simulate --cluster"),
    "jobs": ("a workload YAML", "simulate --workload in --mode replay"),
    "gavel": ("a Gavel cluster YAML", "simulate gavel --cluster"),
    "synthetic": (
        "an old Gavel workload YAML",
        "nothing now: use simulate gavel --rate JOBS_PER_HOUR",
    ),
    "pools": ("a pool file", "suanli plan --pool"),
    "tiers": ("a policy YAML", "simulate --policy"),
    "actions": ("a policy YAML", "simulate --policy"),
    "command": ("a job spec", "suanli submit"),
    "resources": ("a job spec", "suanli submit"),
}
GAVEL_TRACE = "a Gavel trace"
_HEAD_BYTES = 64 * 1024
_TOP_KEY = re.compile(r"([A-Za-z_][\w-]*)\s*:(\s|$)")


def _csv_kind(header: list[str]) -> CsvFormat | None:
    fits = [f for f in CSV_FORMATS.values() if not f.missing(header)]
    return max(fits, key=lambda f: len(f.columns) + bool(f.suffix), default=None)


def sniff(path: Path) -> tuple[str, str] | None:
    """What ``path`` looks like, from its first lines: (a name, what takes it), or None.

    Recognises every CSV format of `CSV_FORMATS`, Gavel traces, our YAML files (by
    their top-level keys, see `YAML_KINDS`) and empty or binary files; used to say
    "this looks like X" when a file is given where another format belongs.
    """
    try:
        with path.open("rb") as fh:
            raw = fh.read(_HEAD_BYTES)
    except OSError:
        return None
    if b"\0" in raw:
        return ("a binary file", "nothing here")
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ("an empty file", "nothing here")
    first = lines[0]
    if first.count("\t") in (6, 9):
        return (GAVEL_TRACE, "simulate gavel --trace")
    kind = _csv_kind([c.strip() for c in next(csv.reader([first]))])
    if kind is not None:
        return (kind.name, kind.use)
    for ln in lines:
        m = _TOP_KEY.match(ln)
        if m and m.group(1) in YAML_KINDS:
            return YAML_KINDS[m.group(1)]
    if first.lstrip().startswith(("{", "[")):
        return ("a JSON file", "nothing here")
    return None


def _not_format(path: Path, expected: str, wanted: str, *, missing: str = "") -> TraceError:
    """The error for a file that is not ``expected``: what it looks like instead, if known."""
    seen = sniff(path)
    gap = f" ({missing})" if missing else ""
    if seen is not None and seen[0] != expected:
        what, use = seen
        where = "" if use == "nothing here" else f", which is for {use}"
        return TraceError(
            f"{path} line 1: this looks like {what}{where}, not {expected}{gap}; give {wanted}"
        )
    return TraceError(f"{path} line 1: not {expected}{gap}; give {wanted}")


class _Row:
    """One CSV row with typed getters whose errors name the file, line and column."""

    def __init__(self, path: Path, line: int, fmt: CsvFormat, row: dict[str, str]) -> None:
        self.path, self.line, self.fmt, self.row = path, line, fmt, row

    def error(self, col: str, what: str) -> TraceError:
        return TraceError(f"{self.path} line {self.line}: column {col!r}: {what} ({self.fmt.name})")

    def text(self, col: str, *, required: bool = True) -> str:
        v = self.row.get(col) or ""
        if required and not v.strip():
            raise self.error(col, "empty; every row needs one")
        return v

    def whole(self, col: str, *, ge: int = 0, le: int | None = None) -> int:
        v = self.row.get(col) or ""
        try:
            out = int(v)
        except ValueError:
            raise self.error(col, f"expected a whole number, got {v!r}") from None
        if out < ge or (le is not None and out > le):
            bound = f">= {ge}" if le is None else f"from {ge} to {le}"
            raise self.error(col, f"{out} is out of range (expected {bound})")
        return out

    def number(self, col: str, *, ge: float = 0.0) -> float:
        v = self.row.get(col) or ""
        try:
            out = float(v)
        except ValueError:
            raise self.error(col, f"expected a number, got {v!r}") from None
        if not math.isfinite(out) or out < ge:
            raise self.error(col, f"{v!r} is out of range (expected a finite number >= {ge:g})")
        return out


def _open(path: Path) -> TextIO:
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from exc


def _rows(path: Path, fmt: CsvFormat) -> Iterator[_Row]:
    """The rows of a ``fmt`` CSV; a file of another format, a row with too few or too
    many fields, or text that is not UTF-8 is a `TraceError` naming the file and line."""
    wanted = f"{fmt.name} (a CSV with the header {fmt.header})"
    with _open(path) as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                raise TraceError(f"{path}: empty; expected {wanted}")
            missing = fmt.missing(header)
            if missing:
                raise _not_format(path, fmt.name, wanted, missing=f"missing column(s) {missing}")
            for fields in reader:
                if not fields:
                    continue  # a blank line
                if len(fields) != len(header):
                    raise TraceError(
                        f"{path} line {reader.line_num}: {len(fields)} fields, expected "
                        f"{len(header)} as in its header ({fmt.name})"
                    )
                yield _Row(path, reader.line_num, fmt, dict(zip(header, fields, strict=True)))
        except UnicodeDecodeError as exc:
            raise TraceError(f"{path}: not UTF-8 text ({exc.reason}); expected {wanted}") from exc
        except csv.Error as exc:
            raise TraceError(f"{path} line {reader.line_num}: not CSV ({exc})") from exc


def _unique(path: Path, line: int, seen: set[str], name: str, what: str) -> None:
    if name in seen:
        raise TraceError(f"{path} line {line}: {what} {name!r} appears twice; names must be unique")
    seen.add(name)


def read_openb_nodes(path: Path, *, switch_size: int = 32) -> list[NodeSpec]:
    """Alibaba openb node list (sn, cpu_milli, memory_mib, gpu, model).

    The trace has no network topology; nodes are grouped ``switch_size`` to a
    leaf switch in file order so that topology-aware plugins have something to
    work with (stated, not measured).
    """
    out: list[NodeSpec] = []
    names: set[str] = set()
    for r in _rows(path, OPENB_NODES):
        name = r.text("sn")
        _unique(path, r.line, names, name, "node")
        gpus = r.whole("gpu")
        model = r.text("model", required=gpus > 0)
        out.append(
            NodeSpec(
                name=name,
                cpu_milli=r.whole("cpu_milli"),
                memory_mib=r.whole("memory_mib"),
                gpu_count=gpus,
                gpu_type=model if gpus else "",
                switch=f"leaf-{len(out) // switch_size}",
            )
        )
    if not out:
        raise TraceError(f"{path}: no nodes ({OPENB_NODES.name} with a header only)")
    return out


def read_openb_pods(path: Path) -> list[Task]:
    """Alibaba openb pod list; the multigpu50 variant has only the first five columns."""
    out = []
    names: set[str] = set()
    for r in _rows(path, OPENB_PODS):
        name = r.text("name")
        _unique(path, r.line, names, name, "pod")
        spec = r.text("gpu_spec", required=False)
        created = r.number("creation_time") if r.row.get("creation_time") else 0.0
        deleted = r.number("deletion_time") if r.row.get("deletion_time") else None
        if deleted is not None and deleted < created:
            raise r.error("deletion_time", f"{deleted:g} is before creation_time {created:g}")
        out.append(
            Task(
                name=name,
                cpu_milli=r.whole("cpu_milli"),
                memory_mib=r.whole("memory_mib"),
                num_gpu=r.whole("num_gpu"),
                gpu_milli=r.whole("gpu_milli", le=MILLI),
                gpu_spec=frozenset(s for s in spec.split("|") if s),
                arrival_s=created,
                duration_s=(deleted - created) if deleted is not None else 0.0,
                labels={"qos": r.row.get("qos") or ""},
            )
        )
    if not out:
        raise TraceError(f"{path}: no pods ({OPENB_PODS.name} with a header only)")
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
    names: set[str] = set()
    for r in _rows(path, V2026_NODES):
        name = f"v2026-{r.text('node_name')}"
        _unique(path, r.line, names, name, "node")
        gpus = r.whole("gpu_capacity_num")
        model = r.text("gpu_model", required=gpus > 0)
        out.append(
            NodeSpec(
                name=name,
                cpu_milli=int(r.number("cpu_num") * 1000),
                memory_mib=V2026_MEMORY_MIB,
                gpu_count=gpus,
                gpu_type=V2026_TYPES.get(model, model) if gpus else "",
                switch=f"leaf-{len(out) // switch_size}",
            )
        )
    if not out:
        raise TraceError(f"{path}: no nodes ({V2026_NODES.name} with a header only)")
    return out


NODE_LISTS = (
    f"a node list: {OPENB_NODES.name} (header {OPENB_NODES.header}), "
    f"{V2026_NODES.name} (header {V2026_NODES.header}) or a cluster YAML named *.yaml"
)


def read_nodes(path: Path) -> list[NodeSpec]:
    """A node list in any known CSV format, recognised from its header."""
    seen = sniff(path)
    if seen is not None and seen[0] == V2026_NODES.name:
        return read_v2026_nodes(path)
    if seen is not None and seen[0] == OPENB_NODES.name:
        return read_openb_nodes(path)
    with _open(path):
        pass  # a file that cannot be opened says so, not "not a node list"
    raise _not_format(path, "a node list", NODE_LISTS)


#: What a Gavel trace's lines hold, by layout (fields per line).
GAVEL_LAYOUTS = {
    7: "job_type, command, num_steps_arg, needs_data_dir, total_steps, arrival_time, scale_factor",
    10: "job_type, command, working_directory, num_steps_arg, needs_data_dir, total_steps, "
    "scale_factor, priority_weight, SLO, arrival_time",
}

#: Where job_type, scale_factor, total_steps and arrival_time are, by layout.
GAVEL_FIELDS = {7: (0, 6, 4, 5), 10: (0, 6, 5, 9)}


def read_gavel_trace(path: Path) -> list[tuple[str, int, float, float]]:
    """A Gavel ``.trace`` file: (job type, scale factor, total steps, arrival s) per job.

    Both layouts Gavel used: 7 tab-separated fields (job_type, command, num_steps_arg,
    needs_data_dir, total_steps, arrival_time, scale_factor) and 10 (job_type, command,
    working_directory, num_steps_arg, needs_data_dir, total_steps, scale_factor,
    priority_weight, SLO, arrival_time). Anything else, a job without a type, a scale
    factor under 1, no steps or a negative arrival is a `TraceError` naming the line.
    """
    wanted = (
        "a Gavel trace (one job a line, 7 or 10 tab-separated fields: "
        + "; or ".join(GAVEL_LAYOUTS.values())
        + ")"
    )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not UTF-8 text ({exc.reason}); expected {wanted}") from exc
    out: list[tuple[str, int, float, float]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) not in GAVEL_LAYOUTS:
            if not out:
                seen = sniff(path)
                if seen is not None and seen[0] != GAVEL_TRACE:
                    raise _not_format(path, GAVEL_TRACE, wanted)
            raise TraceError(f"{path} line {n}: {len(f)} tab-separated field(s); expected {wanted}")
        cols = ("job_type", "scale_factor", "total_steps", "arrival_time")
        fields = {c: f[k] for c, k in zip(cols, GAVEL_FIELDS[len(f)], strict=True)}
        r = _Row(path, n, CsvFormat(GAVEL_TRACE, cols, "simulate gavel --trace"), fields)
        job_type = r.text("job_type")
        scale = r.whole("scale_factor", ge=1)
        steps = r.number("total_steps")
        if steps <= 0:
            raise r.error("total_steps", f"{steps:g}; a job needs at least one step")
        out.append((job_type, scale, steps, r.number("arrival_time")))
    if not out:
        raise TraceError(f"{path}: no jobs; expected {wanted}")
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
    for r in _rows(path, SIA_PEAK):
        for col in r.row:
            if col == "model" or not col.endswith("_samples_per_s"):
                continue
            cluster = col.removesuffix("_samples_per_s")
            out[(r.text("model"), SIA_GPUS.get(cluster, cluster))] = r.number(col)
    return out


def read_sia_step_times(path: Path) -> list[dict[str, float | str]]:
    """``sia_placements_all.csv``: measured step and sync time by model, GPU, local batch
    and placement (a digit string: GPUs on each node)."""
    out: list[dict[str, float | str]] = []
    for r in _rows(path, SIA_PLACEMENTS):
        cluster = r.text("cluster")
        out.append(
            {
                "model": r.text("model"),
                "gpu": SIA_GPUS.get(cluster, cluster),
                "local_bsz": r.number("local_bsz"),
                "step_time_s": r.number("step_time"),
                "sync_time_s": r.number("sync_time"),
                "placement": r.text("placement"),
            }
        )
    return out


def read_sia_workload(path: Path, samples_by_app: dict[str, float]) -> list[Task]:
    """A Sia workload (``sia_philly_workload-1.csv``, ``sia_saturn_workload-1.csv``: name,
    arrival time, application, replicas, batch size) as gangs of one-GPU tasks.

    The trace gives no training length; ``samples_by_app`` (samples to train, per
    application) must come from the caller, and each task's ``work`` is its share.
    """
    out: list[Task] = []
    for r in _rows(path, SIA_WORKLOAD):
        app = r.text("application")
        if app not in samples_by_app:
            raise TraceError(f"{path} line {r.line}: no training length given for {app!r}")
        name = r.text("name")
        replicas = r.whole("num_replicas", ge=1)
        arrival = r.number("time")
        for k in range(replicas):
            out.append(
                Task(
                    name=f"{name}-{k}",
                    cpu_milli=4000,
                    memory_mib=16_384,
                    num_gpu=1,
                    gpu_milli=1000,
                    job=name,
                    min_available=replicas,
                    arrival_s=arrival,
                    work=samples_by_app[app] / replicas,
                    kind="train",
                    labels={"workload": app, "batch_size": r.text("batch_size")},
                )
            )
    return out
