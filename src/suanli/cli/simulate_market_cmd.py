"""``suanli simulate market``: the compute market against fixed prices, on real traces."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from suanli.cli.output import console, fmt, print_json
from suanli.errors import SuanliError, UsageError
from suanli.market.money import MICRO
from suanli.sim.traces import shared_data_dir

if TYPE_CHECKING:
    from suanli.sim.market import Comparison


def market_cmd(
    horizon_h: Annotated[float, typer.Option("--horizon-h", help="Simulated hours.")] = 24.0,
    interval_s: Annotated[
        float, typer.Option("--interval-s", help="Seconds between market rounds.")
    ] = 300.0,
    load: Annotated[
        float, typer.Option("--load", help="Offered load: arrival rate x device-seconds / devices.")
    ] = 1.0,
    spot_share: Annotated[
        float, typer.Option("--spot-share", help="Share of jobs that tolerate reclaim (bid spot).")
    ] = 0.5,
    floor_share: Annotated[
        float, typer.Option("--floor-share", help="Spot floor, as a share of list price.")
    ] = 0.3,
    willingness_min: Annotated[
        float, typer.Option("--willingness-min", help="Lowest spot bid, as a share of list.")
    ] = 0.5,
    willingness_max: Annotated[
        float, typer.Option("--willingness-max", help="Highest spot bid, as a share of list.")
    ] = 1.0,
    fee_share: Annotated[
        float, typer.Option("--fee-share", help="Share of each payment the platform keeps.")
    ] = 0.05,
    checkpoint_min: Annotated[
        float, typer.Option("--checkpoint-min", help="Minutes of running between checkpoints.")
    ] = 30.0,
    regions: Annotated[int, typer.Option("--regions", help="Regions the nodes spread over.")] = 3,
    node_share: Annotated[
        float, typer.Option("--node-share", help="Share of the inventory's nodes (every k-th).")
    ] = 1.0,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", help="Cap on jobs (the earliest arrivals).")
    ] = None,
    any_region: Annotated[
        bool,
        typer.Option(
            "--any-region/--home-region", help="Jobs take any region, or one drawn for each."
        ),
    ] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    sia: Annotated[
        bool, typer.Option("--sia/--no-sia", help="Sia's workloads join the trace-job pool.")
    ] = True,
    serving: Annotated[
        bool,
        typer.Option(
            "--serving/--no-serving", help="Azure's LLM services buy on-demand devices per window."
        ),
    ] = True,
    serve_model: Annotated[
        str, typer.Option("--serve-model", help="Catalog model the services run.")
    ] = "llama-3.1-70b",
    serve_window_min: Annotated[
        float, typer.Option("--serve-window-min", help="Minutes per serving order (window).")
    ] = 60.0,
    serve_scale: Annotated[
        float, typer.Option("--serve-scale", help="Times the Azure trace's request rate.")
    ] = 1.0,
    serve_ttft_s: Annotated[float, typer.Option("--serve-ttft-s", help="p99 TTFT SLO.")] = 2.0,
    serve_tpot_s: Annotated[float, typer.Option("--serve-tpot-s", help="p99 TPOT SLO.")] = 0.1,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="The shared data (default ../shared/data).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the clearing prices here (PNG).")
    ] = None,
) -> None:
    """The compute market (on-demand + spot auction) against fixed prices, first come.

    Sellers: the Alibaba v2026 inventory. Buyers: jobs drawn from openb, Gavel Philly and
    Sia's workloads, and Azure's LLM services sized by the serving planner (on-demand).

    Both worlds see the same demand; suanli.sim.market states the rules.
    """
    # the simulator (and the controller's store models it shares) load only when asked for
    from suanli.sim.market import MarketParams, compare, steps_of
    from suanli.sim.market_demand import REQUIRED_FILES, SIA_FILES
    from suanli.sim.market_sources import AZURE_FILES

    params = MarketParams(
        horizon_h=horizon_h,
        interval_s=interval_s,
        load=load,
        spot_share=spot_share,
        floor_share=floor_share,
        willingness=(willingness_min, willingness_max),
        fee_share=fee_share,
        checkpoint_min=checkpoint_min,
        regions=regions,
        node_share=node_share,
        max_jobs=max_jobs,
        any_region=any_region,
        seed=seed,
        sia=sia,
        serving=serving,
        serve_model=serve_model,
        serve_window_min=serve_window_min,
        serve_scale=serve_scale,
        serve_ttft_s=serve_ttft_s,
        serve_tpot_s=serve_tpot_s,
    )
    d = data_dir or shared_data_dir() or _expected_data_dir()
    needed = (*REQUIRED_FILES, *(SIA_FILES if sia else ()), *(AZURE_FILES if serving else ()))
    missing = [f for f in needed if not (d / f).is_file()]
    try:
        params.check()  # a bad value is named before the data is looked for
        if missing:
            raise UsageError(
                f"the market simulation reads the shared data sets from {d} (../shared/data "
                f"beside the project root, or --data-dir); missing there: {', '.join(missing)}"
            )
        t0 = time.perf_counter()
        with Progress(console=console, transient=True, disable=json_out) as bar:
            task = bar.add_task("market, then baseline: rounds", total=2 * steps_of(params))
            res = compare(d, params, on_step=lambda: bar.advance(task))
        wall_s = time.perf_counter() - t0
        if plot is not None:
            _plot_market(res, plot)
    except SuanliError as exc:  # here too, so the subcommand behaves alike wherever it is mounted
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    out = _market_report(res, wall_s)
    if json_out:
        print_json(out)
        return
    _print_market(res, out, plot)


def _expected_data_dir() -> Path:
    """Where `shared_data_dir` looks: ``shared/data`` beside the project root."""
    here = Path(__file__).resolve()
    root = next((p for p in here.parents if (p / "pyproject.toml").exists()), Path.cwd())
    return root.parent / "shared" / "data"


def _market_report(res: Comparison, wall_s: float) -> dict[str, Any]:
    inv = res.inventory
    prices = {
        t: [None if v is None else v / MICRO for v in series]
        for t, series in res.market.price_micro.items()
    }
    return {
        "mode": "market",
        "params": dataclasses.asdict(res.params),
        "inventory": {
            "nodes": inv.nodes,
            "devices": inv.devices,
            "regions": sorted({p.region for p in inv.pools}),
            "devices_by_type": {t: inv.devices_of(t) for t in inv.types},
            "list_usd_per_device_h": {t: v / MICRO for t, v in inv.list_price_micro.items()},
            "list_price_basis": inv.price_basis,
        },
        "demand": res.demand,
        "market": res.market.summary(),
        "baseline": res.baseline.summary(),
        "interval_s": res.params.interval_s,
        "clearing_price_usd_per_device_h": prices,
        "wall_s": wall_s,
    }


def _print_market(res: Comparison, out: dict[str, Any], plot: Path | None) -> None:
    dem, inv = out["demand"], out["inventory"]
    trace = [k for k, v in dem["sources"].items() if "trace_jobs" in v]
    console.print(
        f"[bold]market vs fixed price[/bold] over {res.params.horizon_h:g} h, "
        f"{res.params.interval_s:g} s rounds: {inv['nodes']:,} nodes, {inv['devices']:,} devices "
        f"(Alibaba v2026) in {len(inv['regions'])} regions; {dem['jobs']:,} jobs drawn from "
        f"{dem['trace_jobs']:,} trace jobs ({' + '.join(trace)}), {dem['arrivals_per_h']:,.0f}/h, "
        f"offered load in the horizon {dem['offered_load_in_horizon']:.2f}"
        + (
            f" [yellow](capped at --max-jobs {res.params.max_jobs:,})[/yellow]"
            if dem["capped"]
            else ""
        )
        + (
            f"; {dem['serving_jobs']:,} serving orders (on-demand), offered load "
            f"{dem['serving_offered_load']:.4f}"
            if res.params.serving
            else ""
        )
    )
    _print_sources(dem)
    for t, basis in inv["list_price_basis"].items():
        if "assumed" in basis:
            console.print(f"  list price of {t}: {basis}", style="dim")
    m, b = out["market"], out["baseline"]
    table = Table(title_justify="left")
    table.add_column("")
    table.add_column("market (on-demand + spot)", justify="right")
    table.add_column("fixed price, first come", justify="right")
    rows: list[tuple[str, str, Callable[[Any], str]]] = [
        ("utilisation", "utilisation", lambda v: f"{v:.1%}"),
        ("user cost (USD)", "user_cost_usd", lambda v: f"{float(v):,.0f}"),
        ("provider revenue (USD)", "provider_revenue_usd", lambda v: f"{float(v):,.0f}"),
        ("platform fee (USD)", "platform_fee_usd", lambda v: f"{float(v):,.0f}"),
        ("mean price (USD/device-h)", "mean_price_usd_per_device_h", fmt),
        ("spot interruptions", "spot_interruptions", fmt),
        ("work lost (device-h)", "lost_device_h", fmt),
        ("jobs submitted", "jobs_submitted", fmt),
        ("jobs started", "jobs_started", fmt),
        ("jobs finished", "jobs_finished", fmt),
        ("mean JCT, finished (h)", "mean_jct_h", fmt),
        ("mean wait to start (h)", "mean_wait_h", fmt),
    ]
    for label, key, show in rows:
        table.add_row(label, show(m[key]), show(b[key]))
    console.print(table)
    per_type = Table(title="per type (USD per device-hour)", title_justify="left")
    for col in (
        "type",
        "devices",
        "list",
        "spot floor",
        "spot mean",
        "spot max",
        "util mkt",
        "util base",
    ):
        per_type.add_column(col, justify="right" if col != "type" else "left")
    for t, series in out["clearing_price_usd_per_device_h"].items():
        sold = [v for v in series if v is not None]
        lst = inv["list_usd_per_device_h"][t]
        per_type.add_row(
            t,
            f"{inv['devices_by_type'][t]:,}",
            f"{lst:.2f}",
            f"{lst * res.params.floor_share:.2f}",
            f"{sum(sold) / len(sold):.2f}" if sold else "—",
            f"{max(sold):.2f}" if sold else "—",
            f"{m['utilisation_by_type'][t]:.1%}",
            f"{b['utilisation_by_type'][t]:.1%}",
        )
    console.print(per_type)
    console.print(f"wall time {out['wall_s']:.1f} s" + (f"; plot: {plot}" if plot else ""))


def _print_sources(dem: dict[str, Any]) -> None:
    table = Table(title="demand by source", title_justify="left")
    for col in ("source", "in trace", "jobs", "mean GPUs", "mean h", "detail"):
        table.add_column(col, justify="left" if col in ("source", "detail") else "right")
    for src, v in dem["sources"].items():
        row = [src, "", f"{v['jobs']:,}", f"{v['mean_units']:.1f}", f"{v['mean_h']:.2f}"]
        if "trace_jobs" in v:
            table.add_row(*row[:1], f"{v['trace_jobs']:,} jobs", *row[2:], "drawn, spot or not")
            continue
        types = ", ".join(f"{t} x{n}" for t, n in v["orders_by_type"].items()) or "none"
        detail = (
            f"{v['requests_per_s']:.2f} req/s, {v['mean_input_tokens']:,.0f} in / "
            f"{v['mean_output_tokens']:,.0f} out tokens; on-demand orders: {types}"
        )
        if v["unserved_windows"]:
            detail += f"; {v['unserved_windows']} windows with no feasible type"
        table.add_row(*row[:1], f"{v['trace_requests']:,} req", *row[2:], detail)
    console.print(table)
    for note in dem["notes"]:
        console.print(f"  {note}", style="dim")


def _plot_market(res: Comparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step_h = res.params.interval_s / 3600
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(2, 1))
    for k, (t, series) in enumerate(res.market.price_micro.items()):
        color = f"C{k}"
        xs = [i * step_h for i in range(len(series))]
        ys = [float("nan") if v is None else v / MICRO for v in series]
        top.plot(xs, ys, lw=1, color=color, label=t)
        top.axhline(res.inventory.list_price_micro[t] / MICRO, color=color, lw=0.6, ls="--")
    top.set_ylabel("spot clearing price (USD/device-h)")
    top.set_title("spot clearing price per type (dashed: on-demand list price)")
    top.legend(fontsize=7, ncol=3)
    for r in (res.market, res.baseline):
        xs = [i * step_h for i in range(len(r.utilisation_series))]
        bottom.plot(xs, r.utilisation_series, lw=1, label=r.label)
    bottom.set_ylim(0, 1.02)
    bottom.set_xlabel("hours")
    bottom.set_ylabel("utilisation")
    bottom.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
