"""Pool files: what capacity can be had, where, and at what price.

A pool file is YAML::

    pools:
      - name: bj-h800              # optional; defaults to the accelerator name
        accelerator: h800-sxm
        count: 512                 # devices
        usd_per_device_hour: 2.1   # optional; defaults to the catalog reference price
        site: beijing              # optional
        region: cn-north           # optional
        devices_per_node: 8        # optional; defaults to the chip's typical server
        inter_node_gbps: 400       # optional; scale-out Gb/s per device
        topology: fat-tree-2tier   # optional; a catalog topology

Every problem is reported with its line number and path, all at once, and
nothing is planned from a file that has any.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from suanli.calibration.profile import resolve_accelerator as get_accelerator
from suanli.catalog.loader import accelerators, topologies
from suanli.errors import SuanliError, UnknownNameError
from suanli.perf.system import System, make_system
from suanli.yamlfile import dotted, line_of


class PoolFileError(SuanliError, ValueError):
    """A pool file with problems; ``problems`` lists each with its line and path."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    accelerator: str
    count: int = Field(ge=1)
    usd_per_device_hour: float | None = Field(default=None, ge=0)
    site: str = ""
    region: str = ""
    devices_per_node: int | None = Field(default=None, ge=1)
    inter_node_gbps: float | None = Field(default=None, gt=0)
    topology: str = "fat-tree-2tier"


@dataclass(frozen=True)
class PoolEntry:
    """One kind of capacity on offer, resolved against the catalog."""

    name: str
    system: System
    count: int
    site: str = ""
    region: str = ""

    @property
    def accelerator(self) -> str:
        return self.system.accelerator.name

    @property
    def price_usd_per_hour(self) -> float | None:
        return self.system.price_usd_per_hour


def parse_pool(text: str, source: str = "<pool>") -> list[PoolEntry]:
    """Parse pool YAML text; raise `PoolFileError` listing every problem with its line."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise PoolFileError(source, [f"{line}not valid YAML ({problem})"]) from exc
    prefix: tuple[Any, ...] = ()
    if isinstance(data, dict):
        if set(data) != {"pools"}:
            extra = sorted(set(data) - {"pools"})
            msg = f"unknown top-level key(s) {extra}" if extra else "missing 'pools'"
            raise PoolFileError(source, [f"line {line_of(root, ())}: {msg}; expected 'pools:'"])
        data, prefix = data["pools"], ("pools",)
    if not isinstance(data, list) or not data:
        raise PoolFileError(source, [f"line {line_of(root, prefix)}: expected a list of pools"])
    problems: list[str] = []
    entries: list[PoolEntry] = []
    names: set[str] = set()
    for i, raw in enumerate(data):
        path = (*prefix, i)
        if not isinstance(raw, dict):
            problems.append(f"line {line_of(root, path)}: {dotted(path)}: expected a mapping")
            continue
        try:
            entry = _Entry.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                loc = (*path, *err["loc"])
                problems.append(f"line {line_of(root, loc)}: {dotted(loc)}: {err['msg']}")
            continue
        try:
            acc = get_accelerator(entry.accelerator)
        except UnknownNameError as exc:
            loc = (*path, "accelerator")
            problems.append(f"line {line_of(root, loc)}: {dotted(loc)}: {exc}")
            continue
        if entry.topology not in topologies():
            loc = (*path, "topology")
            problems.append(
                f"line {line_of(root, loc)}: {dotted(loc)}: unknown topology "
                f"{entry.topology!r}; one of {', '.join(sorted(topologies()))}"
            )
            continue
        name = entry.name or acc.name
        if name in names:
            loc = (*path, "name")
            problems.append(
                f"line {line_of(root, loc)}: {dotted(loc)}: duplicate pool name {name!r}"
            )
            continue
        names.add(name)
        system = make_system(
            acc,
            devices_per_node=entry.devices_per_node,
            inter_node_gbps=entry.inter_node_gbps,
            topology=entry.topology,
            price_usd_per_hour=entry.usd_per_device_hour,
        )
        entries.append(PoolEntry(name, system, entry.count, entry.site, entry.region))
    if problems:
        raise PoolFileError(source, problems)
    return entries


def load_pool(path: str | Path) -> list[PoolEntry]:
    """Read and parse a pool file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PoolFileError(str(p), [f"cannot read the pool file ({exc.strerror})"]) from exc
    return parse_pool(text, str(p))


def pool_from_accelerators(names: list[str], count: int) -> list[PoolEntry]:
    """A pool of ``count`` devices of each named chip (no pool file given).

    Without names: every data-center GPU/NPU (kinds gpu/npu sold in servers of
    four or more), not edge modules, FPGAs or CPUs.
    """
    known = accelerators()
    out = []
    default = [n for n, a in known.items() if a.kind in ("gpu", "npu") and a.devices_per_node >= 4]
    for n in names or default:
        acc = get_accelerator(n)
        out.append(PoolEntry(acc.name, make_system(acc), count))
    return out
