"""``suanli plan train|serve|split``: ranked, explained options.

JSON: ``{"options": [...], "rejected": {...}, "candidates_evaluated": n,
"wall_s": t}``, options best first; an infeasible request exits 3 and prints
``{"options": [], "infeasible": "<reason>"}``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from suanli.calibration.profile import resolve_accelerator as get_accelerator
from suanli.catalog import get_model
from suanli.cli.compress_opts import (
    DistillFrom,
    Prune,
    PruneAxis,
    PruneAxisOpt,
    pruned_model,
    teacher_model,
)
from suanli.cli.output import console, fmt, print_json
from suanli.errors import UsageError
from suanli.perf import make_system
from suanli.perf.engines import get_engine
from suanli.plan.common import PlanResult
from suanli.plan.common import Progress as ProgressFn
from suanli.plan.pool import PoolEntry, load_pool, pool_from_accelerators
from suanli.plan.serve import ServeRequest, plan_serve
from suanli.plan.split import SplitRequest, bandwidth_table, plan_split
from suanli.plan.train import OBJECTIVES, TrainRequest, plan_train

plan_app = typer.Typer(
    help="Search chips and layouts; ranked options with reasons.", no_args_is_help=True
)

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Top = Annotated[int, typer.Option("--top", help="How many options to show.")]
PoolOpt = Annotated[str | None, typer.Option("--pool", help="Pool file (YAML): what can be had.")]
MarketOpt = Annotated[
    bool,
    typer.Option(
        "--market", help="Plan over the market's open offers now (SUANLI_URL, SUANLI_TOKEN)."
    ),
]
OrderOpt = Annotated[
    bool, typer.Option("--order", help="With --market: order the best option at its price.")
]
Accels = Annotated[
    list[str] | None,
    typer.Option(
        "--accelerator", help="Chip(s) to consider (repeat); default: the pool, else all GPUs/NPUs."
    ),
]


@contextmanager
def _progress(enabled: bool, what: str) -> Iterator[ProgressFn | None]:
    """A Rich progress bar for searches that take more than a moment (not with --json)."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _positive(**values: float | None) -> None:
    """Reject zero or negative values of the named options (None = not given)."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {value:g}")


def _pool(pool: str | None, accelerators: list[str] | None, count: int) -> list[PoolEntry]:
    if pool is not None:
        entries = load_pool(pool)
        if accelerators:
            wanted = {get_accelerator(a).name for a in accelerators}
            entries = [p for p in entries if p.accelerator in wanted]
        return entries
    return pool_from_accelerators(accelerators or [], count)


def _market_or_pool(
    market: bool, order: bool, pool: str | None, accelerators: list[str] | None, count: int
) -> tuple[list[PoolEntry], list[str]]:
    """The pool to plan over: the market's open offers (--market), else a file or chips."""
    if order and not market:
        raise UsageError("--order buys from the market: give --market too")
    if not market:
        return _pool(pool, accelerators, count), []
    if pool is not None:
        raise UsageError("give --market or --pool, not both")
    from suanli.cli.market_cmd import market_pool

    entries, skipped = market_pool()
    if accelerators:
        wanted = {get_accelerator(a).name for a in accelerators}
        entries = [p for p in entries if p.accelerator in wanted]
    if not entries:
        raise UsageError("no open on-demand or reserved offer to plan over: " + "; ".join(skipped))
    return entries, skipped


MAX_WEIGHED = 20  # offers summarised one by one


def _weighed(entries: list[PoolEntry], plan_one: Any, describe: Any) -> list[str]:
    """One line per market offer: its best option, or why it cannot do the job."""
    out = []
    for e in entries[:MAX_WEIGHED]:
        res = plan_one(e)
        what = describe(res.options[0]) if res.options else f"infeasible: {res.infeasible}"
        out.append(f"weighed {e.name} ({e.count} free): {what}")
    return out


def _finish(result: PlanResult, json_out: bool, render: Any) -> None:
    if json_out:
        print_json(result.to_dict())
    elif result.options:
        render(result)
        rej = ", ".join(f"{k}: {v}" for k, v in result.rejected.most_common())
        console.print(
            f"{result.candidates_evaluated:,} candidates costed in "
            f"{result.wall_s:.2f} s" + (f"; rejected — {rej}" if rej else "")
        )
        for note in result.notes:
            console.print(note)
    if not result.options:
        if not json_out:
            typer.echo(f"infeasible: {result.infeasible}", err=True)
        raise typer.Exit(3)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds < 86400 * 3 else f"{seconds / 86400:,.1f} d"


def _corrections(path: Path | None, family: str) -> dict[str, float]:
    """This model family's factors per chip from a saved ``GET /v1/corrections`` answer."""
    if path is None:
        return {}
    try:
        rows = json.loads(path.read_text())
        return {str(r["chip"]): float(r["factor"]) for r in rows if r["family"] == family}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"--corrections {path}: not a corrections file ({exc}); "
            "save one with: suanli corrections --json > corrections.json"
        ) from exc


@plan_app.command("train")
def train_cmd(
    model: Annotated[str, typer.Option("--model", help="Catalog name or config.json path.")],
    tokens: Annotated[float, typer.Option("--tokens", help="Tokens to train on (e.g. 1e12).")],
    accelerator: Accels = None,
    pool: PoolOpt = None,
    num_devices: Annotated[
        int | None, typer.Option("--num-devices", help="Use exactly N devices.")
    ] = None,
    max_devices: Annotated[
        int | None, typer.Option("--max-devices", help="Use at most N devices.")
    ] = None,
    global_batch: Annotated[int | None, typer.Option("--global-batch")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len")] = 4096,
    deadline_hours: Annotated[float | None, typer.Option("--deadline-hours")] = None,
    budget_usd: Annotated[float | None, typer.Option("--budget-usd")] = None,
    objective: Annotated[str, typer.Option("--objective", help="time, cost or energy.")] = "time",
    top: Top = 5,
    corrections: Annotated[
        Path | None,
        typer.Option(
            "--corrections",
            help="JSON from GET /v1/corrections: measured/predicted per (family, chip).",
        ),
    ] = None,
    market: MarketOpt = False,
    order: OrderOpt = False,
    prune_ratio: Prune = None,
    prune_axis: PruneAxis = PruneAxisOpt.width,
    distill_from: DistillFrom = None,
    json_out: Json = False,
) -> None:
    """Best chips, device count and parallel layout to train on T tokens (with --market:
    over what the market offers now, cheapest first, and --order buys the best)."""
    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}")
    if num_devices is not None and max_devices is not None:
        raise UsageError("give --num-devices or --max-devices, not both")
    _positive(
        tokens=tokens,
        seq_len=seq_len,
        top=top,
        num_devices=num_devices,
        max_devices=max_devices,
        global_batch=global_batch,
        deadline_hours=deadline_hours,
        budget_usd=budget_usd,
    )
    arch = pruned_model(model, prune_ratio, prune_axis)
    count = num_devices or max_devices or 4096
    entries, skipped = _market_or_pool(market, order, pool, accelerator, count)
    if market and objective == "time" and deadline_hours is not None:
        objective = "cost"  # a deadline and a market: the cheapest that meets it
    req = TrainRequest(
        model=arch,
        tokens=tokens,
        pool=entries,
        num_devices=num_devices,
        max_devices=max_devices,
        global_batch=global_batch,
        seq_len=seq_len,
        deadline_hours=deadline_hours,
        budget_usd=budget_usd,
        objective=objective,
        top=top,
        # two-type pipelines need a real pool with stock limits
        hetero=pool is not None or market,
        corrections=_corrections(corrections, arch.family or arch.name),
        teacher=teacher_model(distill_from),
    )
    with _progress(not json_out, "searching layouts") as progress:
        result = plan_train(req, progress=progress)
    if market:  # what each offer on the market would give, best of it or why not
        result.notes += _weighed(
            entries,
            lambda e: plan_train(dataclasses.replace(req, pool=[e], top=1, hetero=False)),
            lambda o: (
                f"{o['num_devices']} devices, {_hours(o['time_to_train_s'])}, "
                f"{fmt(o['cost_usd'])} USD"
            ),
        )

    def render(res: PlanResult) -> None:
        t = Table(
            title=f"Training {arch.name} on {tokens:.3g} tokens, best by {objective}",
            title_justify="left",
        )
        for col in (
            "#",
            "chips",
            "devices",
            "tp/pp/dp/cp/ep/vpp",
            "zero",
            "mb",
            "recompute",
            "step s",
            "MFU",
            "mem GB",
            "time",
            "USD",
            "MWh",
        ):
            t.add_column(col, justify="left" if col in ("chips", "recompute") else "right")
        for i, o in enumerate(res.options, 1):
            lay, est = o["layout"], o["estimate"]
            mem = est["memory_gb"]
            t.add_row(
                str(i),
                o["pool"],
                f"{o['num_devices']:,}",
                f"{lay['tp']}/{lay['pp']}/{lay['dp']}/{lay['cp']}/{lay['ep']}/{lay['vpp']}",
                str(lay["zero"]),
                str(lay["micro_batch"]),
                lay["recompute"],
                fmt(est["step_time_s"]),
                f"{100 * est['mfu']:.0f}%",
                fmt(mem.get("total", max(mem.values()))),
                _hours(o["time_to_train_s"]),
                fmt(o["cost_usd"]) + ("" if o.get("cost_basis") == "rental" else " (kWh)"),
                fmt(o["energy_j"] / 3.6e9),
            )
        console.print(t)
        for i, o in enumerate(res.options, 1):
            line = f"{i}. {o['why']}"
            if o.get("stages"):
                line += (
                    " — "
                    + ("beats" if o["beats_best_single_type"] else "does not beat")
                    + (" the best single-type option")
                )
            console.print(line)
        for why in skipped:
            console.print(f"not weighed: {why}")

    _finish(result, json_out, render)
    if order:
        from suanli.cli.market_cmd import order_best

        order_best(result.options, lambda o: o["time_to_train_s"] / 3600, json_out)


@plan_app.command("serve")
def serve_cmd(
    model: Annotated[str, typer.Option("--model", help="Catalog name or config.json path.")],
    rate: Annotated[float, typer.Option("--rate", help="Requests per second.")],
    input_len: Annotated[int, typer.Option("--input-len")],
    output_len: Annotated[int, typer.Option("--output-len")],
    ttft_slo_s: Annotated[float | None, typer.Option("--ttft-slo-s", help="p99 TTFT.")] = None,
    tpot_slo_s: Annotated[float | None, typer.Option("--tpot-slo-s", help="p99 TPOT.")] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="NAME\\[@VERSION] every replica runs (precisions, GQA reuse); default: each "
            "chip's usual one where it has kernels for the format, else the idealised engine.",
        ),
    ] = None,
    pool: PoolOpt = None,
    accelerator: Accels = None,
    top: Top = 5,
    market: MarketOpt = False,
    order: OrderOpt = False,
    hours: Annotated[float, typer.Option("--hours", help="With --order: how long to serve.")] = 1,
    prune_ratio: Prune = None,
    prune_axis: PruneAxis = PruneAxisOpt.width,
    json_out: Json = False,
) -> None:
    """Cheapest serving layouts that sustain a request rate within the SLOs (with --market:
    over what the market offers now; --order buys the best for --hours)."""
    _positive(
        rate=rate,
        input_len=input_len,
        output_len=output_len,
        top=top,
        ttft_slo_s=ttft_slo_s,
        tpot_slo_s=tpot_slo_s,
    )
    arch = pruned_model(model, prune_ratio, prune_axis)
    req = ServeRequest(
        model=arch,
        rate=rate,
        input_len=input_len,
        output_len=output_len,
        pool=_market_or_pool(market, order, pool, accelerator, 100_000)[0],
        ttft_slo_s=ttft_slo_s,
        tpot_slo_s=tpot_slo_s,
        top=top,
        engine=get_engine(engine) if engine else None,
    )
    with _progress(not json_out, "sizing serving layouts") as progress:
        result = plan_serve(req, progress=progress)
    result.notes.append(
        f"engine {req.engine.label} on every replica"
        if req.engine
        else "engine: each chip's usual one (vLLM on NVIDIA and AMD, vLLM-Ascend on Ascend, "
        "...) where it has kernels for the format, else the idealised one (name one with "
        "--engine)"
    )
    if market:
        result.notes += _weighed(
            req.pool,
            lambda e: plan_serve(dataclasses.replace(req, pool=[e], top=1)),
            lambda o: (
                f"{o['num_devices']} devices, "
                f"{fmt(o['usd_per_million_output_tokens'])} USD per million output tokens"
            ),
        )

    def render(res: PlanResult) -> None:
        t = Table(
            title=f"Serving {arch.name} at {rate:g} req/s ({input_len} in, {output_len} "
            "out), cheapest first",
            title_justify="left",
        )
        for col in (
            "#",
            "chips",
            "devices",
            "tp x replicas",
            "weights/KV",
            "batch",
            "USD/M out",
            "TTFT p50/p99 s",
            "TPOT p50/p99 ms",
            "SLO met",
        ):
            t.add_column(col, justify="left" if col in ("chips", "weights/KV") else "right")
        for i, o in enumerate(res.options, 1):
            shape = f"{o['tp']} x {o['replicas']}"
            if o["disaggregated"]:
                p = o["prefill"]
                shape = f"P {p['tp']}x{p['replicas']} + D {shape}"
            t.add_row(
                str(i),
                o["pool"],
                f"{o['num_devices']:,}",
                shape,
                f"{o['weight_dtype']}/{o['kv_dtype']}"
                + (f" ({o['engine']})" if o.get("engine") else ""),
                str(o["max_batch"]),
                fmt(o["usd_per_million_output_tokens"]),
                f"{o['ttft_p50_s']:.2f}/{o['ttft_p99_s']:.2f}",
                f"{1e3 * o['tpot_p50_s']:.0f}/{1e3 * o['tpot_p99_s']:.0f}",
                f"{100 * o['slo_attainment']:.1f}%",
            )
        console.print(t)
        for i, o in enumerate(res.options, 1):
            console.print(f"{i}. {o['why']}")

    _finish(result, json_out, render)
    if order:
        from suanli.cli.market_cmd import order_best

        order_best(result.options, lambda _: hours, json_out)


@plan_app.command("split")
def split_cmd(
    model: Annotated[str, typer.Option("--model", help="Catalog name or config.json path.")],
    edge: Annotated[str, typer.Option("--edge", help="Edge accelerator.")],
    cloud: Annotated[str, typer.Option("--cloud", help="Cloud accelerator.")],
    uplink_mbps: Annotated[float, typer.Option("--uplink-mbps")],
    rtt_ms: Annotated[float, typer.Option("--rtt-ms")] = 20.0,
    input_len: Annotated[int, typer.Option("--input-len")] = 128,
    output_len: Annotated[int, typer.Option("--output-len")] = 64,
    edge_weight_dtype: Annotated[str, typer.Option("--edge-weight-dtype")] = "int4",
    top: Top = 5,
    json_out: Json = False,
) -> None:
    """Best layer to split a model between an edge device and the cloud."""
    _positive(uplink_mbps=uplink_mbps, input_len=input_len, output_len=output_len, top=top)
    if rtt_ms < 0:
        raise UsageError("--rtt-ms must be >= 0")
    if edge_weight_dtype not in ("bf16", "fp16", "fp8", "int8", "int4"):
        raise UsageError("--edge-weight-dtype one of bf16, fp16, fp8, int8, int4")
    arch = get_model(model)
    req = SplitRequest(
        model=arch,
        edge=make_system(get_accelerator(edge)),
        cloud=make_system(get_accelerator(cloud)),
        uplink_mbps=uplink_mbps,
        rtt_ms=rtt_ms,
        input_len=input_len,
        output_len=output_len,
        edge_weight_dtype=edge_weight_dtype,
    )
    result = plan_split(req)
    table = bandwidth_table(req) if result.options else []
    if json_out:
        out = result.to_dict()
        out["bandwidth_table"] = table
        print_json(out)
        if not result.options:
            raise typer.Exit(3)
        return
    full = result.options
    result.options = full[:top]

    def render(res: PlanResult) -> None:
        t = Table(
            title=f"Splitting {arch.name}: {edge} ({edge_weight_dtype}) -> {cloud}, "
            f"{uplink_mbps:g} Mb/s up, {rtt_ms:g} ms RTT",
            title_justify="left",
        )
        for col in (
            "split after layer",
            "edge/cloud layers",
            "activations",
            "latency s",
            "TTFT s",
            "edge J",
            "sent KB",
        ):
            t.add_column(col, justify="right")
        for o in res.options:
            t.add_row(
                str(o["split_after_layer"])
                + (
                    f" ({o['edge_engine']}, {o['edge_weight_dtype']})"
                    if o.get("edge_engine")
                    else ""
                ),
                f"{o['edge_layers']}/{o['cloud_layers']}",
                o["activation_dtype"] or "—",
                fmt(o["latency_s"]),
                fmt(o["ttft_s"]),
                fmt(o["edge_energy_j"]),
                fmt(o["transfer_bytes"] / 1e3),
            )
        console.print(t)
        bw = Table(title="How the best split moves with the uplink", title_justify="left")
        for col in (
            "uplink Mb/s",
            "best for latency",
            "latency s",
            "best for edge energy",
            "edge J",
        ):
            bw.add_column(col, justify="right")
        for row in table:
            bw.add_row(
                fmt(row["uplink_mbps"]),
                str(row["best_split_for_latency"]),
                fmt(row["latency_s"]),
                str(row["best_split_for_edge_energy"]),
                fmt(row["edge_energy_j"]),
            )
        console.print(bw)

    _finish(result, False, render)
