"""``suanli catalog list|show``."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from suanli.catalog import loader
from suanli.cli.output import console, fmt, print_json
from suanli.errors import UnknownNameError
from suanli.perf.engines import engines
from suanli.perf.shape import shape_of

catalog_app = typer.Typer(
    help="What chips, links, networks and models suanli knows.", no_args_is_help=True
)


class Kind(StrEnum):
    accelerators = "accelerators"
    models = "models"
    networks = "networks"
    storage = "storage"
    engines = "engines"


def _accel_table() -> Table:
    t = Table(
        title="Accelerators: dense peaks (! = a disputed figure; `catalog show NAME` for sources)",
        title_justify="left",
    )
    t.add_column("name", no_wrap=True)
    t.add_column("vendor", no_wrap=True)
    t.add_column("kind")
    for col in ("bf16 TF", "fp8 TF", "mem GB", "mem GB/s", "link GB/s", "TDP W", "$/h"):
        t.add_column(col, justify="right", no_wrap=True)
    for a in loader.accelerators().values():
        t.add_row(
            a.name + ("!" if a.disputed else ""),
            a.vendor,
            a.kind,
            fmt(a.peak_tflops.get("bf16") or a.peak_tflops.get("fp16")),
            fmt(a.peak_tflops.get("fp8")),
            fmt(a.memory_gb),
            fmt(a.memory_bandwidth_gbs),
            fmt(a.intra_node_link_gbs),
            fmt(a.tdp_w),
            fmt(a.price_usd_per_hour),
        )
    return t


def _model_table() -> Table:
    t = Table(title="Models", title_justify="left")
    for col in (
        "name",
        "params B",
        "active B",
        "layers",
        "hidden",
        "heads/kv",
        "ffn",
        "vocab",
        "type",
    ):
        t.add_column(
            col, justify="left" if col in ("name", "type") else "right", no_wrap=col == "name"
        )
    for m in loader.models().values():
        s = shape_of(m)
        kind = "MoE" if m.moe else "dense"
        if m.mla:
            kind += "+MLA"
        t.add_row(
            m.name,
            f"{s.total_params / 1e9:.2f}",
            f"{s.active_params / 1e9:.2f}",
            str(m.layers),
            str(m.hidden),
            f"{m.heads}/{m.kv_heads}",
            str(m.ffn),
            str(m.vocab),
            kind,
        )
    return t


def _network_table() -> Table:
    t = Table(title="Links and networks", title_justify="left")
    for col in ("name", "what", "GB/s per direction", "latency us", "notes"):
        t.add_column(col, no_wrap=col == "name")
    for i in loader.interconnects().values():
        note = "in-network reduction (SHARP)" if i.in_network_reduction else ""
        t.add_row(i.name, i.scope, fmt(i.bandwidth_gbs), fmt(i.latency_us), note)
    for tp in loader.topologies().values():
        note = f"{tp.tiers} tiers, {tp.oversubscription:g}:1 oversubscribed, {tp.hops} hops"
        t.add_row(tp.name, f"topology ({tp.kind})", "", "", note)
    return t


def _head(split: bool | None, quantized: bool | None) -> str:
    """How an engine keeps the output projection: split over TP ranks or whole on each,
    and whether int8/int4 weights quantize it; "?" where no source states it."""
    if split is None and quantized is None:
        return "?"
    where = {True: "split", False: "whole", None: "?"}[split]
    return where + (", quantized" if quantized else "")


def _engine_table() -> Table:
    """Each engine version's capabilities; "?" where no source states one."""
    t = Table(title="Serving engines (estimate serve / plan serve --engine NAME\\[@VERSION])")
    cols = (
        "engine",
        "since",
        "vendors",
        "GQA reuse",
        "graphs",
        "host sched.",
        "own all-reduce",
        "LM head",
        "weights",
        "KV",
    )
    for col in (*cols, "published on"):
        t.add_column(col)

    def said(v: Any) -> str:
        if v is None:
            return "?"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return ", ".join(v) if isinstance(v, tuple) else str(v)

    for e in engines().values():
        for p in e.versions:
            t.add_row(
                e.name,
                p.since,
                ", ".join(e.vendors),
                said(p.gqa_kv_reuse),
                said(p.graph_capture),
                said(p.host_scheduling),
                said(p.custom_all_reduce),
                _head(p.head_split, p.head_quantized),
                said(p.weight_dtypes),
                said(p.kv_dtypes),
                said(p.published) if p.published else "-",
            )
    t.caption = "Sources: src/suanli/perf/data/engines.yaml (--json prints them)"
    return t


def _storage_table() -> Table:
    t = Table(title="Storage tiers (where moved and preempted jobs keep checkpoints)")
    for col in (
        "name",
        "kind",
        "write GB/s/node",
        "read GB/s/node",
        "aggregate GB/s",
        "latency ms",
    ):
        t.add_column(col)
    for st in loader.storage_tiers().values():
        agg = (
            fmt(st.aggregate_gbs)
            if st.aggregate_gbs is not None
            else (f"{fmt(st.aggregate_gbs_per_tib)} per TiB" if st.aggregate_gbs_per_tib else "—")
        )
        t.add_row(
            st.name,
            st.kind,
            fmt(st.write_gbs_per_node),
            fmt(st.read_gbs_per_node),
            agg,
            fmt(st.latency_ms),
        )
    return t


@catalog_app.command("list")
def list_cmd(
    kind: Annotated[Kind, typer.Argument(help="What to list.")] = Kind.accelerators,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List accelerators, models, networks, storage tiers or serving engines."""
    if json_out:
        tables: dict[Kind, dict[str, Any]] = {
            Kind.accelerators: dict(loader.accelerators()),
            Kind.models: dict(loader.models()),
            Kind.networks: {**loader.interconnects(), **loader.topologies()},
            Kind.storage: dict(loader.storage_tiers()),
            Kind.engines: {n: e.model_dump() for n, e in engines().items()},
        }
        table = tables[kind]
        print_json([v if isinstance(v, dict) else _record(v) for v in table.values()])
        return
    tables_of = {
        Kind.accelerators: _accel_table,
        Kind.models: _model_table,
        Kind.networks: _network_table,
        Kind.storage: _storage_table,
        Kind.engines: _engine_table,
    }
    console.print(tables_of[kind]())


def _record(rec: Any) -> dict[str, Any]:
    out = dataclasses.asdict(rec)
    if hasattr(rec, "hidden"):  # a model: add derived counts
        s = shape_of(rec)
        out["total_params"] = s.total_params
        out["active_params"] = s.active_params
    return out


@catalog_app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="An accelerator, model, link or topology name.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one entry with every figure and its source."""
    key = name.strip().lower()
    tables: list[dict[str, Any]] = [
        loader.accelerators(),
        loader.models(),
        loader.interconnects(),
        loader.topologies(),
        loader.storage_tiers(),
    ]
    for table in tables:
        if key in table:
            rec = _record(table[key])
            break
    else:
        known = [n for t in tables for n in t]
        raise UnknownNameError("entry", name, known)
    if json_out:
        print_json(rec)
        return
    sources = rec.pop("sources", {})
    disputed = rec.pop("disputed", {}) or {}
    t = Table(title=rec.get("display_name", key), title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_column("source")
    for k, v in rec.items():
        if v is None or v == "" or k == "display_name":
            continue
        value = (
            ", ".join(f"{dk} {fmt(dv)}" for dk, dv in v.items())
            if isinstance(v, dict)
            else (fmt(v))
        )
        note = sources.get(k, "")
        if k in disputed:
            note = f"[red]DISPUTED[/red]: {disputed[k]} — {note}"
        t.add_row(k, value, note)
    console.print(t)
