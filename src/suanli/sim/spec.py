"""Our own YAML formats for clusters and workloads, validated with pydantic.

Cluster::

    sites:
      - {name: bj, region: cn-north, pue: 1.2, carbon_g_per_kwh: 550, usd_per_kwh: 0.08}
    nodes:
      - {count: 16, gpu_type: h800-sxm, gpus: 8, cpu: 128, memory_gib: 1024, site: bj,
         usd_per_gpu_hour: 2.0}   # price optional (else the catalog's reference price)

A node group's keys: ``count`` (nodes, default 1), ``gpu_type`` (a catalog chip, or
``NAME@measured``), ``gpus`` (devices per node, default 0: a CPU node), ``cpu``
(cores, default 64), ``memory_gib`` (default 512), ``site`` (default ``default``;
one of ``sites`` when they are listed), ``prefix`` (of node names) and
``usd_per_gpu_hour``. A site's: ``name``, ``region``, ``pue`` (default 1.3),
``carbon_g_per_kwh`` (default 450) and ``usd_per_kwh`` (default 0.10).

Workload (durations from the perf model: ``tokens`` of training for ``model`` on
each chip type; a job runs only on chips its model fits; ``cpu`` cores and
``memory_gib`` default to 4 cores and 16 GiB per device)::

    jobs:
      - {name: llama-ft, count: 20, model: llama-2-7b, tokens: 2e9, gpus: 8,
         arrival_rate_per_hour: 6, seq_len: 4096}

A job group's keys: ``name`` (default ``job<i>``), ``count`` (default 1), ``model``
(a catalog model or a Hugging Face config.json), ``tokens``, ``gpus`` (default 8),
``arrival_rate_per_hour`` (default 1), ``seq_len`` (default 4096), ``cpu`` and
``memory_gib``; ``data_region`` and ``data_gb`` (where its data is, and how much:
moved over the cluster's ``wan:`` table when it runs in another region).

A cluster's ``wan:`` (optional)::

    wan:
      default: {gbps: 10, rtt_ms: 60, source: "..."}
      links:
        - {a: us-east, b: us-west, gbps: 10, rtt_ms: 62, source: "..."}

Unknown keys (a typo such as ``gpu:`` for ``gpus:``), values of the wrong type
and values out of range are errors: `SpecError` lists each with the file, its
line and the key's path, and says what to write instead.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from suanli.calibration.profile import resolve_accelerator as get_accelerator
from suanli.catalog.loader import get_model
from suanli.cluster.state import NodeSpec, Site
from suanli.cluster.task import MILLI, Task
from suanli.cluster.wan import Wan, WanSpec
from suanli.errors import SuanliError
from suanli.perf import TrainLayout, estimate_train, make_system
from suanli.sim.traces import sniff
from suanli.yamlfile import dotted, expanded_size, line_of


class SpecError(SuanliError, ValueError):
    """A cluster or workload spec with problems (each named with its path)."""


#: as the job spec's: unknown keys are errors, no surprising coercion ("8" is not 8,
#: true is not 1), every number finite
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
MAX_FILE_BYTES = 8 << 20
MAX_VALUES = 1_000_000  # values in the document with every alias expanded
MAX_COUNT = 1_000_000  # nodes or jobs in one group
MAX_DEVICES = 1024  # per node or job
FORMAT_HELP = "see the format in src/suanli/sim/spec.py and benchmarks/specs/"


def _yaml_number(v: Any) -> Any:
    # YAML 1.1 reads 2e9 and 1.5e9 (no dot, or no sign in the exponent) as strings;
    # take them as the numbers they were meant to be
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return v  # and pydantic says "Input should be a valid number"
    return v


Number = Annotated[float, BeforeValidator(_yaml_number)]


class SpecFile(BaseModel):
    """A whole cluster or workload file."""

    model_config = STRICT

    def cross_checks(self) -> list[tuple[tuple[Any, ...], str]]:
        """Problems across fields, each with its location (for the line number)."""
        return []


Spec = TypeVar("Spec", bound=SpecFile)


def _catalog(lookup: Any, name: str) -> str:
    try:
        lookup(name)
    except SuanliError as exc:  # UnknownNameError is a KeyError; pydantic wants ValueError
        raise ValueError(str(exc)) from None
    return name


class SiteSpec(BaseModel):
    model_config = STRICT
    name: str = Field(min_length=1)
    region: str = ""
    pue: Number = Field(default=1.3, ge=1.0)
    carbon_g_per_kwh: Number = Field(default=450.0, ge=0)
    usd_per_kwh: Number = Field(default=0.10, ge=0)


class NodeGroup(BaseModel):
    model_config = STRICT
    count: int = Field(default=1, ge=0, le=MAX_COUNT)
    gpu_type: str = ""
    gpus: int = Field(default=0, ge=0, le=MAX_DEVICES)
    cpu: Number = Field(default=64.0, gt=0)  # cores
    memory_gib: Number = Field(default=512.0, gt=0)
    site: str = Field(default="default", min_length=1)
    prefix: str | None = None
    usd_per_gpu_hour: Number | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _devices(self) -> NodeGroup:
        # said of the group (nodes[i]: ...), as the messages before pydantic were
        if self.gpu_type:
            _catalog(get_accelerator, self.gpu_type)
            if not self.gpus:
                raise ValueError(
                    f"gpu_type {self.gpu_type} but no gpus: set gpus to the devices per node"
                )
        elif self.gpus:
            raise ValueError(f"gpus: {self.gpus} but no gpu_type: name the chip (gpu_type: ...)")
        return self


class ClusterSpec(SpecFile):
    sites: list[SiteSpec] | None = None
    nodes: list[NodeGroup] = Field(min_length=1)
    #: bandwidth and round trip between regions, each with its source (`suanli.cluster.wan`)
    wan: WanSpec | None = None

    def cross_checks(self) -> list[tuple[tuple[Any, ...], str]]:
        out: list[tuple[tuple[Any, ...], str]] = []
        names: list[str] = []
        for i, site in enumerate(self.sites or []):
            if site.name in names:
                out.append((("sites", i, "name"), f"{site.name!r} listed twice; names are unique"))
            names.append(site.name)
        listed = ", ".join(dict.fromkeys(names))
        for i, g in enumerate(self.nodes if names else []):
            if g.site not in names:
                out.append(
                    (
                        ("nodes", i, "site"),
                        f"{g.site!r} is not one of the sites listed ({listed}); "
                        "add it to sites: or fix the name",
                    )
                )
        if not any(g.count for g in self.nodes):
            out.append((("nodes",), "no nodes (every group has count 0)"))
        return out


class JobGroup(BaseModel):
    model_config = STRICT
    name: str | None = Field(default=None, min_length=1)
    count: int = Field(default=1, ge=0, le=MAX_COUNT)
    model: str = Field(min_length=1)
    tokens: Number = Field(gt=0)
    gpus: int = Field(default=8, ge=1, le=MAX_DEVICES)
    arrival_rate_per_hour: Number = Field(default=1.0, gt=0)
    seq_len: int = Field(default=4096, ge=1)
    cpu: Number | None = Field(default=None, gt=0)  # cores; default 4 per device
    memory_gib: Number | None = Field(default=None, gt=0)  # default 16 per device
    #: checkpoints when stopped, so a scheduler may preempt or move it (the rounds do)
    preemptible: bool = False
    #: where its data is and how big (moved over ``wan:`` when it runs elsewhere)
    data_region: str | None = Field(default=None, min_length=1)
    data_gb: Number = Field(default=0.0, ge=0)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _catalog(get_model, v)


class WorkloadSpec(SpecFile):
    jobs: list[JobGroup] = Field(min_length=1)

    def cross_checks(self) -> list[tuple[tuple[Any, ...], str]]:
        out: list[tuple[tuple[Any, ...], str]] = []
        names: set[str] = set()
        for i, job in enumerate(self.jobs):
            name = job.name or f"job{i}"
            if name in names:
                out.append((("jobs", i, "name"), f"{name!r} used twice; job names are unique"))
            names.add(name)
        if not any(j.count for j in self.jobs):
            out.append((("jobs",), "no jobs (every group has count 0)"))
        return out


def _sub_models(ann: Any) -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    stack = [ann]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            out.append(a)
        stack.extend(getattr(a, "__args__", ()))
    return out


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        subs = _sub_models(field.annotation) if field is not None else []
        if not subs:
            return None
        model = subs[0]
    return model


_SHOW_INPUT = {
    "finite_number",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "string_too_short",
}


def _problem(err: Any, model: type[BaseModel]) -> str:
    """One pydantic error as "what is wrong; what to do" (without its path)."""
    loc = tuple(err["loc"])
    kind = err["type"]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        keys = list(parent.model_fields) if parent is not None else []
        near = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        what = f"unknown key {str(loc[-1])!r}; {hint}"
        return f"{what}the keys here are {', '.join(keys)}"
    if kind == "missing":
        return "required; add it"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = "expected a mapping of key: value"
    elif kind in ("list_type", "tuple_type"):
        msg = "expected a list (- item lines, or [a, b])"
    elif kind.endswith(("_type", "_parsing")) or kind in _SHOW_INPUT:
        msg = f"{msg}, got {err.get('input')!r}"
    return msg


def _load(path: Path) -> tuple[Any, yaml.Node | None]:
    """The document and its node tree (for line numbers); any problem a `SpecError`."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(f"{path}: larger than {MAX_FILE_BYTES} bytes; a spec is small")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason}); expected YAML") from exc
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise SpecError(f"{path}{line}: not valid YAML ({problem})") from exc
    except RecursionError as exc:
        raise SpecError(f"{path}: nested too deeply") from exc
    finally:
        loader.dispose()
    if expanded_size(data, MAX_VALUES) > MAX_VALUES:
        raise SpecError(f"{path}: more than {MAX_VALUES} values once its aliases are expanded")
    return data, root


def _validate(path: Path, model: type[Spec], what: str, key: str) -> Spec:
    """``path`` read as ``model``; every problem listed with its line and key path."""
    data, root = _load(path)
    seen = sniff(path)
    if not isinstance(data, dict) or (key not in data and seen is not None and seen[0] != what):
        looks = ""
        if seen is not None and seen[0] != what:
            use = "" if seen[1] == "nothing here" else f", which is for {seen[1]}"
            looks = f"this looks like {seen[0]}{use}, not {what}; "
        raise SpecError(
            f"{path} line {line_of(root, ())}: {looks}expected {what}: a mapping with "
            f"'{key}:' and a list under it ({FORMAT_HELP})"
        )
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        problems = [(tuple(e["loc"]), _problem(e, model)) for e in exc.errors()]
    else:
        problems = spec.cross_checks()
        if not problems:
            return spec
    lines = [
        f"line {line_of(root, loc)}: " + (f"{dotted(loc)}: {msg}" if loc else msg)
        for loc, msg in problems[:10]
    ]
    if len(problems) > 10:
        lines.append(f"and {len(problems) - 10} more")
    raise SpecError(f"{path}: not a valid {what.removeprefix('a ')}: " + "; ".join(lines))


def read_cluster_yaml(path: Path) -> tuple[list[NodeSpec], list[Site]]:
    nodes, sites, _wan = read_cluster(path)
    return nodes, sites


def read_cluster(path: Path) -> tuple[list[NodeSpec], list[Site], Wan]:
    """Nodes, sites and the WAN between their regions (empty where none is given)."""
    spec = _validate(path, ClusterSpec, "a cluster YAML", "nodes")
    sites = [Site(**s.model_dump()) for s in spec.sites or []]
    nodes: list[NodeSpec] = []
    for g, group in enumerate(spec.nodes):
        labels = (
            {"usd_per_gpu_hour": str(float(group.usd_per_gpu_hour))}
            if group.usd_per_gpu_hour is not None
            else {}
        )
        prefix = group.prefix if group.prefix is not None else (group.gpu_type or "cpu")
        for k in range(group.count):
            nodes.append(
                NodeSpec(
                    name=f"{prefix}-{g}-{k}",
                    cpu_milli=int(float(group.cpu) * 1000),
                    memory_mib=int(float(group.memory_gib) * 1024),
                    gpu_count=group.gpus,
                    gpu_type=group.gpu_type,
                    site=group.site,
                    switch=f"{group.site}-leaf-{k // 32}",
                    labels=labels,
                )
            )
    return nodes, sites, spec.wan.wan() if spec.wan else Wan()


def read_workload_yaml(path: Path) -> WorkloadSpec:
    """The workload YAML at ``path``, validated (see the module docstring)."""
    return _validate(path, WorkloadSpec, "a workload YAML", "jobs")


def perf_workload(
    path: Path, node_types: list[str], seed: int
) -> tuple[list[Task], dict[tuple[str, str], float]]:
    """Jobs of the YAML workload, and their throughput (tokens/s) on each chip type.

    Each job's throughput per chip comes from `perf.estimate_train` with a
    data-parallel layout over its devices (ZeRO-3 where the states need it).
    """
    spec = read_workload_yaml(path)
    rng = np.random.default_rng(seed)
    tasks: list[Task] = []
    thr: dict[tuple[str, str], float] = {}
    for g, job in enumerate(spec.jobs):
        try:
            model = get_model(job.model)
            gpus = job.gpus
            name = job.name or f"job{g}"
            for typ in node_types:
                acc = get_accelerator(typ)
                lay = TrainLayout(
                    dp=gpus,
                    zero=3 if gpus > 1 else 0,
                    global_batch=gpus * 4,
                    seq_len=job.seq_len,
                    recompute="full",
                )
                est = estimate_train(model, make_system(acc), lay)
                thr[(name, typ)] = est.tokens_per_s if est.fits_in_memory else 0.0
        except (ValueError, SuanliError) as exc:
            raise SpecError(f"{path}: jobs[{g}]: {exc!s} ({FORMAT_HELP})") from exc
        # only chips the model fits on; none at all makes the job unplaceable
        allowed = frozenset(typ for typ in node_types if thr[(name, typ)] > 0) or frozenset(
            {"(fits no chip)"}
        )
        t = 0.0
        cpu = job.cpu if job.cpu is not None else 4 * gpus
        memory = job.memory_gib if job.memory_gib is not None else 16 * gpus
        for k in range(job.count):
            t += float(rng.exponential(3600.0 / job.arrival_rate_per_hour))
            tasks.append(
                Task(
                    name=f"{name}-{k}",
                    cpu_milli=int(float(cpu) * 1000),
                    memory_mib=int(float(memory) * 1024),
                    num_gpu=gpus,
                    gpu_milli=MILLI,
                    gpu_spec=allowed,
                    arrival_s=t,
                    work=float(job.tokens),
                    kind="train",
                    preemptible=job.preemptible,
                    labels={"workload": name, "model": model.name},
                    data_region=job.data_region or "",
                    data_gb=float(job.data_gb),
                )
            )
    return tasks, thr


class GavelCluster(BaseModel):
    """Devices of each of Gavel's three types (its standard cluster: 36 of each)."""

    model_config = STRICT
    v100: int = Field(default=0, ge=0, le=100_000)
    p100: int = Field(default=0, ge=0, le=100_000)
    k80: int = Field(default=0, ge=0, le=100_000)


class GavelClusterSpec(SpecFile):
    """``gavel: {v100: 36, p100: 36, k80: 36}``: the cluster of `suanli simulate gavel`."""

    gavel: GavelCluster

    def cross_checks(self) -> list[tuple[tuple[Any, ...], str]]:
        if not any(self.gavel.model_dump().values()):
            return [(("gavel",), "no devices at all; give v100, p100 and/or k80 counts")]
        return []


def read_gavel_cluster(path: Path) -> dict[str, int]:
    """Devices per Gavel type from a ``gavel:`` cluster YAML (every problem named by line)."""
    spec = _validate(path, GavelClusterSpec, "a Gavel cluster YAML", "gavel")
    return spec.gavel.model_dump()
