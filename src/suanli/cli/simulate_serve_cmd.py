"""``suanli simulate serve``: a service's replicas under an autoscaler, on a real trace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from suanli.cli.output import console, fmt, kv_table, print_json
from suanli.errors import SuanliError, UsageError


def serve_cmd(
    trace: Annotated[
        Path, typer.Option("--trace", help="Request trace CSV (Azure LLM inference format).")
    ],
    model: Annotated[str, typer.Option("--model", help="Catalog model served.")] = "llama-3.1-8b",
    accelerator: Annotated[
        list[str] | None,
        typer.Option("--accelerator", help="Chip a replica may use (repeat for several)."),
    ] = None,
    pool: Annotated[
        Path | None, typer.Option("--pool", help="Pool file: chips with prices (see plan).")
    ] = None,
    autoscaler: Annotated[
        str,
        typer.Option("--autoscaler", help="static, static-mix, hpa, kpa, predictive or optimizer."),
    ] = "hpa",
    ttft_slo_s: Annotated[float, typer.Option("--ttft-slo-s", help="TTFT SLO.")] = 2.0,
    tpot_slo_s: Annotated[float, typer.Option("--tpot-slo-s", help="TPOT SLO.")] = 0.1,
    tp: Annotated[int, typer.Option("--tp", help="Devices per replica (tensor parallel).")] = 1,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="NAME\\[@VERSION] the replicas run (its chips, GQA reuse); default: each "
            "chip's usual one where it has kernels for the weights, else the idealised engine.",
        ),
    ] = None,
    rate_scale: Annotated[
        int, typer.Option("--rate-scale", help="Each request k times (same time axis).")
    ] = 1,
    time_scale: Annotated[
        float, typer.Option("--time-scale", help="Divide arrival times by this.")
    ] = 1.0,
    duration_s: Annotated[
        float | None,
        typer.Option("--duration-s", help="Only this much of the trace after the history."),
    ] = None,
    history_s: Annotated[
        float,
        typer.Option(
            "--history-s",
            help="The trace's first seconds (simulated time) are the service's past: each "
            "policy sizes itself from them, and is scored on what follows.",
        ),
    ] = 600.0,
    utilization: Annotated[
        float, typer.Option("--utilization", help="Target share of a replica's SLO capacity.")
    ] = 0.7,
    max_replicas: Annotated[int, typer.Option("--max-replicas")] = 64,
    plan_attainment: Annotated[
        float,
        typer.Option(
            "--plan-attainment",
            help="The optimizer (and static-mix) plans to keep at least this share of "
            "requests within the SLO; the rest may go where they miss it (Mélange: "
            "0.995). 1: every request.",
        ),
    ] = 1.0,
    storage: Annotated[
        str, typer.Option("--storage", help="Storage tier weights load from (cold start).")
    ] = "local-nvme",
    spot_price_ratio: Annotated[
        float | None,
        typer.Option(
            "--spot-price-ratio",
            help="Let the optimizer also run each chip on spot at this share of its "
            "on-demand price (a scenario input: no spot prices are in the catalog).",
        ),
    ] = None,
    spot_reclaims_per_hour: Annotated[
        float,
        typer.Option("--spot-reclaims-per-hour", help="Reclaims per spot replica-hour."),
    ] = 0.5,
    spot_notice_s: Annotated[
        float, typer.Option("--spot-notice-s", help="Notice before a reclaim (AWS: 120).")
    ] = 120.0,
    spot_unavailable_s: Annotated[
        float,
        typer.Option(
            "--spot-unavailable-s",
            help="After a reclaim, no spot replica of that chip starts for this long.",
        ),
    ] = 0.0,
    spot_max_share: Annotated[
        float, typer.Option("--spot-max-share", help="At most this share of load on spot.")
    ] = 1.0,
    spill_over: Annotated[
        bool,
        typer.Option(
            "--spill-over/--no-spill-over",
            help="A chip mix's router sends a request past a full chip to one with room "
            "(off: by the mix's draw alone, the router before spill-over).",
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="PNG: load and replicas over time.")
    ] = None,
) -> None:
    """Replay a request trace through a service's replicas (continuous-batching engines
    costed by perf) behind a router, under an autoscaler; print SLO attainment,
    device-hours and cost."""
    from suanli.autoscale.kinds import make_kinds
    from suanli.perf.engines import get_engine
    from suanli.plan.pool import load_pool, pool_from_accelerators
    from suanli.sim.serving.plot import plot_runs
    from suanli.sim.serving.setup import history_of, run_policy
    from suanli.sim.serving.spot import SpotTerms
    from suanli.sim.serving.trace import read_trace

    try:
        if pool is not None and accelerator:
            raise UsageError("give --pool or --accelerator, not both")
        if ttft_slo_s <= 0 or tpot_slo_s <= 0:
            raise UsageError("--ttft-slo-s and --tpot-slo-s must be > 0")
        if not 0.5 <= plan_attainment <= 1.0:
            raise UsageError(f"--plan-attainment must be in [0.5, 1], got {plan_attainment}")
        entries = (
            load_pool(pool) if pool else pool_from_accelerators(accelerator or ["a100-80gb"], 1)
        )
        if history_s <= 0:
            raise UsageError(f"--history-s must be > 0, got {history_s}")
        reqs = read_trace(
            trace,
            duration_s=None if duration_s is None else duration_s + history_s * time_scale,
            time_scale=time_scale,
            rate_scale=rate_scale,
        )
        kinds = make_kinds(
            model,
            entries,
            tp=tp,
            storage=storage,
            engine=get_engine(engine) if engine else None,
        )
        spot = (
            SpotTerms(
                spot_price_ratio,
                spot_reclaims_per_hour,
                notice_s=spot_notice_s,
                unavailable_s=spot_unavailable_s,
                max_share=spot_max_share,
            )
            if spot_price_ratio is not None
            else None
        )
        end = reqs[-1].arrival_s - history_of(reqs, history_s)  # the replay's length
        with Progress(console=console, transient=True, disable=json_out) as bar:
            task = bar.add_task(f"{autoscaler}: simulated seconds", total=end)
            setup, res = run_policy(
                autoscaler,
                kinds,
                reqs,
                ttft_slo_s=ttft_slo_s,
                tpot_slo_s=tpot_slo_s,
                utilization=utilization,
                max_replicas=max_replicas,
                spot=spot,
                max_miss_share=1.0 - plan_attainment,
                history_s=history_s,
                progress=lambda t: bar.update(task, completed=t),
                spill_over=spill_over,
            )
    except (SuanliError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if plot is not None:
        plot_runs([res], plot, f"{model} on {', '.join(kinds)}: {trace.name}")
    out = res.to_dict() | {
        "model": model,
        "kinds": {
            k: {
                "usd_per_hour": v.usd_per_hour,
                "cold_start_s": v.cold_start_s,
                "capacity_rps": setup.capacity_rps[k],
            }
            for k, v in setup.kinds.items()
        },
        "best_single": setup.best_single,
    }
    if json_out:
        print_json(out)
        return
    rows = [(k, fmt(v)) for k, v in res.to_dict().items()]
    rows += [("best single kind", setup.best_single)]
    rows += [(f"capacity {k} (req/s/replica)", fmt(v)) for k, v in setup.capacity_rps.items()]
    if spot is not None:
        rows += [("spot terms", str(spot))]
    console.print(kv_table(f"simulate serve: {model}, {autoscaler}", rows))
    if plot is not None:
        console.print(f"plot: {plot}")
