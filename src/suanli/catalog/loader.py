"""Load the catalog's data files into frozen records, once.

The data files are the catalog; this module only parses and checks them. A
malformed entry is a `CatalogFileError` naming the file, the entry and the
field — never a half-loaded catalog.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast, get_type_hints

import yaml

from suanli.catalog.types import (
    DTYPES,
    MLA,
    Accelerator,
    Interconnect,
    ModelArch,
    MoE,
    StorageTier,
    Topology,
)
from suanli.errors import CatalogFileError, UnknownNameError

T = TypeVar("T")

#: Fields that are facts and so need a citation in ``sources``.
_SOURCED_ACCEL_FIELDS = (
    "peak_tflops",
    "matmul_fraction",
    "memory_gb",
    "memory_bandwidth_gbs",
    "intra_node_link_gbs",
    "devices_per_node",
    "nic_gbps",
    "tdp_w",
    "idle_w",
    "price_usd_per_hour",
)


#: Storage-tier fields that are facts and so need a citation in ``sources``.
_SOURCED_STORAGE_FIELDS = (
    "write_gbs_per_node",
    "read_gbs_per_node",
    "latency_ms",
    "aggregate_gbs",
    "aggregate_read_gbs",
    "aggregate_gbs_per_tib",
    "usd_per_gb_month",
)


def _read_yaml(filename: str) -> tuple[str, list[dict[str, Any]]]:
    ref = resources.files("suanli.catalog") / "data" / filename
    text = ref.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogFileError(f"{filename}: not valid YAML: {exc}") from exc
    if not isinstance(data, list):
        raise CatalogFileError(f"{filename}: expected a list of entries at the top level")
    return filename, data


def build_record(cls: type[T], entry: dict[str, Any], where: str) -> T:
    """Build a dataclass record from a mapping, naming any missing or unknown field."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls))}
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        raise CatalogFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in entry]
    if missing:
        raise CatalogFileError(f"{where}: missing field(s) {', '.join(missing)}")
    kwargs: dict[str, Any] = {}
    for name, value in entry.items():
        hint = hints[name]
        if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        elif hint is int and not isinstance(value, int):
            raise CatalogFileError(f"{where}: {name} must be an integer, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def _check_sources(rec: Any, fields: tuple[str, ...], where: str) -> None:
    for name in fields:
        if getattr(rec, name, None) is not None and name not in rec.sources:
            raise CatalogFileError(f"{where}: {name} has no source (add sources.{name})")


R = TypeVar("R")


def _load_table(
    filename: str, build: Callable[[dict[str, Any], str], R], name: Callable[[R], str]
) -> dict[str, R]:
    """Build every entry of a data file, refusing duplicate names."""
    fname, data = _read_yaml(filename)
    out: dict[str, R] = {}
    for i, entry in enumerate(data):
        where = f"{fname} entry {i} ({entry.get('name', '?')})"
        rec = build(entry, where)
        if name(rec) in out:
            raise CatalogFileError(f"{where}: duplicate name {name(rec)!r}")
        out[name(rec)] = rec
    return out


def _accelerator(entry: dict[str, Any], where: str) -> Accelerator:
    acc = build_record(Accelerator, entry, where)
    bad = sorted(set(acc.peak_tflops) - set(DTYPES))
    if bad:
        raise CatalogFileError(f"{where}: unknown dtype(s) in peak_tflops: {bad}")
    fractions = acc.matmul_fraction or {}
    if set(fractions) - set(DTYPES) or not all(0 < f <= 1 for f in fractions.values()):
        raise CatalogFileError(
            f"{where}: matmul_fraction maps dtypes to the share (0 to 1] of the peak the best "
            f"GEMM reaches, got {fractions}"
        )
    if acc.kind not in ("cpu", "gpu", "npu", "fpga", "asic"):
        raise CatalogFileError(f"{where}: kind must be cpu/gpu/npu/fpga/asic")
    for k in acc.disputed:
        if k.split(".")[0] not in _SOURCED_ACCEL_FIELDS and not hasattr(acc, k):
            raise CatalogFileError(f"{where}: disputed names unknown field {k!r}")
    _check_sources(acc, _SOURCED_ACCEL_FIELDS, where)
    return acc


def _interconnect(entry: dict[str, Any], where: str) -> Interconnect:
    rec = build_record(Interconnect, entry, where)
    _check_sources(rec, ("bandwidth_gbs", "latency_us"), where)
    return rec


def _topology(entry: dict[str, Any], where: str) -> Topology:
    rec = build_record(Topology, entry, where)
    _check_sources(rec, ("oversubscription",), where)
    return rec


def _storage_tier(entry: dict[str, Any], where: str) -> StorageTier:
    rec = build_record(StorageTier, entry, where)
    ints: dict[str, Any] = {
        n: float(v)
        for n in _SOURCED_STORAGE_FIELDS
        if isinstance(v := getattr(rec, n), int) and not isinstance(v, bool)
    }
    rec = dataclasses.replace(rec, **ints)  # `float | None` fields: 80 -> 80.0
    if rec.kind not in ("local", "parallel-fs", "object"):
        raise CatalogFileError(f"{where}: kind must be local/parallel-fs/object")
    for name in _SOURCED_STORAGE_FIELDS:
        value = getattr(rec, name)
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise CatalogFileError(f"{where}: {name} must be a positive number, got {value!r}")
    if rec.aggregate_gbs is not None and rec.aggregate_gbs_per_tib is not None:
        raise CatalogFileError(f"{where}: give aggregate_gbs or aggregate_gbs_per_tib, not both")
    if rec.aggregate_read_gbs is not None and rec.aggregate_gbs is None:
        raise CatalogFileError(
            f"{where}: aggregate_read_gbs needs aggregate_gbs (the write figure)"
        )
    if (
        rec.kind == "parallel-fs"
        and rec.aggregate_gbs is None
        and rec.aggregate_gbs_per_tib is None
    ):
        raise CatalogFileError(
            f"{where}: a parallel file system needs aggregate_gbs or aggregate_gbs_per_tib"
        )
    for k in rec.disputed:
        if k not in _SOURCED_STORAGE_FIELDS:
            raise CatalogFileError(f"{where}: disputed names unknown field {k!r}")
    _check_sources(rec, _SOURCED_STORAGE_FIELDS, where)
    return rec


@functools.cache
def accelerators() -> dict[str, Accelerator]:
    """All accelerators by name."""
    return _load_table("accelerators.yaml", _accelerator, lambda r: r.name)


@functools.cache
def interconnects() -> dict[str, Interconnect]:
    """All link technologies by name."""
    return _load_table("interconnects.yaml", _interconnect, lambda r: r.name)


@functools.cache
def topologies() -> dict[str, Topology]:
    """All network topologies by name."""
    return _load_table("topologies.yaml", _topology, lambda r: r.name)


@functools.cache
def storage_tiers() -> dict[str, StorageTier]:
    """All storage tiers (checkpoint targets) by name."""
    return _load_table("storage.yaml", _storage_tier, lambda r: r.name)


def model_from_mapping(entry: dict[str, Any], where: str) -> ModelArch:
    """Build a model record from a catalog entry (nested ``moe`` / ``mla`` maps)."""
    entry = dict(entry)
    moe = entry.pop("moe", None)
    mla = entry.pop("mla", None)
    if "head_dim" not in entry and "hidden" in entry and "heads" in entry:
        entry["head_dim"] = int(entry["hidden"]) // int(entry["heads"])
    if "kv_heads" not in entry and "heads" in entry:
        entry["kv_heads"] = entry["heads"]
    rec = build_record(ModelArch, entry, where)
    if moe is not None:
        rec = dataclasses.replace(rec, moe=build_record(MoE, moe, f"{where} moe"))
    if mla is not None:
        rec = dataclasses.replace(rec, mla=build_record(MLA, mla, f"{where} mla"))
    _check_sources(rec, ("hidden",), where)
    return rec


@functools.cache
def models() -> dict[str, ModelArch]:
    """All catalog models by name."""
    return _load_table("models.yaml", model_from_mapping, lambda r: r.name)


def get_accelerator(name: str) -> Accelerator:
    """The accelerator called ``name`` (case-insensitive), or an error naming near ones.

    Catalog chips only: a measured profile (``NAME@measured``) is an input the layers
    above pass to perf (`suanli.calibration.profile.resolve_accelerator`), never read here.
    """
    table = accelerators()
    key = name.strip().lower()
    if key not in table:
        raise UnknownNameError("accelerator", name, table)
    return table[key]


def get_topology(name: str) -> Topology:
    """The topology called ``name``."""
    table = topologies()
    key = name.strip().lower()
    if key not in table:
        raise UnknownNameError("network", name, [*table, *interconnects()])
    return table[key]


def get_storage_tier(name: str) -> StorageTier:
    """The storage tier called ``name`` (case-insensitive), or an error naming near ones."""
    table = storage_tiers()
    key = name.strip().lower()
    if key not in table:
        raise UnknownNameError("storage tier", name, table, listing="storage")
    return table[key]


def get_model(name_or_path: str) -> ModelArch:
    """A catalog model by name, or a Hugging Face ``config.json`` (or its folder) by path."""
    table = models()
    key = name_or_path.strip().lower()
    if key in table:
        return table[key]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.exists():
        from suanli.catalog.hf import load_hf_config

        return load_hf_config(path)
    raise UnknownNameError("model", name_or_path, table)
