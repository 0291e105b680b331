"""``suanli simulate gavel``: Gavel's experiments (OSDI'20) on Gavel's protocol, in rounds."""

from __future__ import annotations

import statistics
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from suanli.cli.output import console, fmt, print_json
from suanli.errors import UsageError
from suanli.sim.spec import SpecError, read_gavel_cluster
from suanli.sim.traces import TraceError, read_gavel_trace, shared_data_dir

if TYPE_CHECKING:
    from suanli.sim.gavel_sim import GavelJob

THROUGHPUTS = "gavel_simulation_throughputs.json"
STANDARD_CLUSTER = {"v100": 36, "p100": 36, "k80": 36}


class GavelPolicy(StrEnum):
    max_min = "gavel-max-min"
    max_min_agnostic = "gavel-max-min-agnostic"
    max_throughput = "gavel-max-throughput"
    min_makespan = "gavel-min-makespan"
    finish_time_fairness = "gavel-finish-time-fairness"
    cost_throughput = "gavel-cost-throughput"
    min_cost_slo = "gavel-min-cost-slo"


def _window(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--window {text!r}: give two job ids, FIRST,END (end excluded)") from None
    if not 0 <= lo < hi:
        raise UsageError(f"--window {text!r}: need 0 <= FIRST < END")
    return lo, hi


def _trace_jobs(path: Path, table: dict[tuple[str, int], dict[str, float]]) -> list[GavelJob]:
    from suanli.sim.gavel_sim import GavelJob

    rows = read_gavel_trace(path)
    if not rows:
        raise TraceError(f"{path}: no jobs in the trace")
    unknown = sorted({(t, s) for t, s, _, _ in rows if (t, s) not in table})
    if unknown:
        shown = ", ".join(f"{t!r} on {s} GPU(s)" for t, s in unknown[:5])
        raise TraceError(
            f"{path}: Gavel's throughput table has no rates for {shown}; a trace for "
            "`simulate gavel` must use the job types of gavel_simulation_throughputs.json"
        )
    start = min(a for *_, a in rows)
    jobs = [GavelJob(t, s, steps, a - start) for t, s, steps, a in rows]
    return sorted(jobs, key=lambda j: j.arrival_s)


def gavel_cmd(
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="Jobs per hour of Gavel's generator (Poisson arrivals)."),
    ] = None,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="A Gavel .trace file instead of the generator.")
    ] = None,
    cluster: Annotated[
        Path | None,
        typer.Option("--cluster", help="YAML `gavel: {v100: N, p100: N, k80: N}` (36 of each)."),
    ] = None,
    policy: Annotated[GavelPolicy, typer.Option("--policy")] = GavelPolicy.max_min,
    compare: Annotated[
        bool,
        typer.Option("--compare", help="Also run the type-blind max-min and report the ratio."),
    ] = False,
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            help="Job ids FIRST,END whose mean JCT is reported (default: 4000,5000 with "
            "--rate, every job with --trace).",
        ),
    ] = None,
    multi_gpu: Annotated[
        bool, typer.Option("--multi-gpu", help="Scale factors 1/2/4/8 as in Gavel's -m.")
    ] = False,
    slo: Annotated[
        bool,
        typer.Option(
            "--slo",
            help="Give each generated job a deadline of 1.2x, 2x or 10x its V100 duration "
            "(Gavel's --assign_SLOs); SLO attainment is reported.",
        ),
    ] = False,
    round_s: Annotated[float, typer.Option("--round-s", help="Seconds per round.")] = 360.0,
    reset_every_s: Annotated[
        float,
        typer.Option("--reset-every-s", help="Least seconds between allocation recomputations."),
    ] = 1920.0,
    migration_s: Annotated[
        float,
        typer.Option(
            "--migration-s",
            help="Seconds a job loses when it changes device type (Gavel's simulator: 0).",
        ),
    ] = 0.0,
    fluid: Annotated[
        bool,
        typer.Option("--fluid", help="The fluid relaxation instead of rounds (needs --trace)."),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="First seed.")] = 0,
    seeds: Annotated[int, typer.Option("--seeds", help="How many seeds.")] = 1,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a JCT CDF (PNG) in this folder.")
    ] = None,
) -> None:
    """Gavel's heterogeneity-aware policies on Gavel's own protocol.

    36 V100 + 36 P100 + 36 K80 unless --cluster says otherwise; jobs from Gavel's
    generator at --rate jobs/h (the same draws as Gavel's simulator for the same
    seed) or from a Gavel --trace; allocations realised in rounds; the mean JCT of
    the --window of job ids (Gavel's: 4000-4999).
    """
    from suanli.sim.gavel_sim import (
        gavel_job_stream,
        read_gavel_throughputs,
        simulate_gavel,
        simulate_gavel_rounds,
    )

    if (rate is None) == (trace is None):
        raise UsageError("give either --rate JOBS_PER_HOUR (Gavel's generator) or --trace FILE")
    if rate is not None and not 0 < rate <= 1000:
        raise UsageError("--rate must be in (0, 1000] jobs per hour")
    if seeds < 1:
        raise UsageError("--seeds must be >= 1")
    if round_s <= 0 or reset_every_s < 0 or migration_s < 0:
        raise UsageError("--round-s must be > 0; --reset-every-s and --migration-s >= 0")
    if fluid and trace is None:
        raise UsageError("--fluid runs a finite job list: give --trace")
    if slo and (trace is not None or fluid):
        raise UsageError(
            "--slo draws deadlines for generated jobs: use it with --rate, not --trace"
        )
    if policy is GavelPolicy.min_cost_slo and not slo:
        raise UsageError("gavel-min-cost-slo meets deadlines: add --slo so that the jobs have some")
    data = shared_data_dir()
    if data is None or not (data / THROUGHPUTS).exists():
        raise SpecError(
            f"`simulate gavel` needs Gavel's throughput table ../shared/data/{THROUGHPUTS}"
        )
    table = read_gavel_throughputs(data / THROUGHPUTS, complete_only=False)
    capacity = read_gavel_cluster(cluster) if cluster is not None else dict(STANDARD_CLUSTER)
    span = _window(window) or ((4000, 5000) if trace is None else None)
    listed = _trace_jobs(trace, table) if trace is not None else None
    if listed is not None and span is not None and span[1] > len(listed):
        raise UsageError(f"--window {span[0]},{span[1]}: the trace has {len(listed)} jobs")
    policies = [policy.value] + (
        [GavelPolicy.max_min_agnostic.value]
        if compare and policy is not GavelPolicy.max_min_agnostic
        else []
    )
    t0 = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    with Progress(console=console, transient=True, disable=json_out) as bar:
        for s in range(seed, seed + seeds):
            row: dict[str, Any] = {"seed": s}
            for pol in policies:
                task = bar.add_task(f"seed {s} {pol}: jobs of the window done", total=None)

                def progress(done: int, total: int, task: Any = task) -> None:
                    bar.update(task, completed=done, total=total)

                if fluid:
                    assert listed is not None
                    res: Any = simulate_gavel(listed, table, capacity, pol)
                    jct = res.jct_s if span is None else res.jct_s[span[0] : span[1]]
                    row[pol] = {"mean_jct_h": statistics.mean(jct) / 3600, "jct_s": jct}
                else:
                    jobs = (
                        listed
                        if listed is not None
                        else gavel_job_stream(
                            table, float(rate or 0), s, multi_gpu=multi_gpu, slo=slo
                        )
                    )
                    res = simulate_gavel_rounds(
                        jobs,
                        table,
                        capacity,
                        pol,
                        window=span,
                        round_s=round_s,
                        reset_every_s=reset_every_s,
                        migration_s=migration_s,
                        seed=s,
                        progress=progress,
                    )
                    row[pol] = {
                        "mean_jct_h": res.mean_jct_s / 3600,
                        "jct_s": res.jct_s,
                        "rounds": res.rounds,
                        "lp_solves": res.lp_solves,
                        "migrations": res.migrations,
                        "cost_usd": res.cost_usd,
                        "slo_attainment": res.slo_attainment if res.slo_jobs else None,
                        "jobs_simulated": res.jobs_simulated,
                        "wall_s": res.wall_s,
                    }
                bar.remove_task(task)
            per_seed.append(row)
    out = _summary(per_seed, policies, capacity, rate, trace, span, fluid)
    out["wall_s"] = time.perf_counter() - t0
    if plot is not None:
        out["plot"] = str(_plot(per_seed, policies, plot))
    if json_out:
        for row in out["per_seed"]:
            for pol in policies:
                row[pol].pop("jct_s", None)
        print_json(out)
        return
    _print(out, policies)


def _summary(
    per_seed: list[dict[str, Any]],
    policies: list[str],
    capacity: dict[str, int],
    rate: float | None,
    trace: Path | None,
    span: tuple[int, int] | None,
    fluid: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mode": "gavel-fluid" if fluid else "gavel-rounds",
        "cluster": capacity,
        "workload": str(trace) if trace is not None else f"gavel generator, {rate:g} jobs/h",
        "window": list(span) if span is not None else "all jobs",
        "mean_jct_h": {
            pol: statistics.mean(r[pol]["mean_jct_h"] for r in per_seed) for pol in policies
        },
        "per_seed": per_seed,
    }
    if len(policies) == 2:
        out["agnostic_over_aware"] = out["mean_jct_h"][policies[1]] / out["mean_jct_h"][policies[0]]
    return out


def _print(out: dict[str, Any], policies: list[str]) -> None:
    span = (
        out["window"]
        if isinstance(out["window"], str)
        else "jobs {}-{}".format(out["window"][0], out["window"][1] - 1)
    )
    t = Table(title=f"simulate gavel ({out['mode']}): {out['workload']}, {span}")
    t.add_column("seed", justify="right")
    for pol in policies:
        t.add_column(f"{pol} mean JCT (h)", justify="right")
    rounds = "rounds" in out["per_seed"][0][policies[0]]
    if rounds:
        for pol in policies:
            t.add_column(f"{pol} cost ($)", justify="right")
    slo = rounds and out["per_seed"][0][policies[0]].get("slo_attainment") is not None
    if slo:
        for pol in policies:
            t.add_column(f"{pol} SLOs met", justify="right")
    t.add_column("rounds", justify="right")
    t.add_column("LP solves", justify="right")
    t.add_column("wall (s)", justify="right")
    for row in out["per_seed"]:
        first = row[policies[0]]
        t.add_row(
            str(row["seed"]),
            *(fmt(row[p]["mean_jct_h"]) for p in policies),
            *((f"{row[p]['cost_usd']:,.0f}" for p in policies) if rounds else ()),
            *((f"{row[p]['slo_attainment']:.1%}" for p in policies) if slo else ()),
            fmt(first.get("rounds")),
            fmt(first.get("lp_solves")),
            fmt(sum(row[p].get("wall_s", 0.0) for p in policies)),
        )
    console.print(t)
    mean = ", ".join(f"{p} {fmt(v)} h" for p, v in out["mean_jct_h"].items())
    console.print(f"mean over seeds: {mean}")
    if "agnostic_over_aware" in out:
        console.print(f"type-blind / aware mean JCT: {fmt(out['agnostic_over_aware'])}x")
    if "plot" in out:
        console.print(f"plot: {out['plot']}")


def _plot(per_seed: list[dict[str, Any]], policies: list[str], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for pol in policies:
        jct = np.sort([j / 3600 for r in per_seed for j in r[pol]["jct_s"]])
        ax.plot(jct, np.arange(1, len(jct) + 1) / len(jct), label=pol)
    ax.set_xscale("log")
    ax.set_xlabel("JCT (h)")
    ax.set_ylabel("share of jobs")
    ax.set_title("JCT CDF")
    ax.legend()
    path = folder / "gavel_jct_cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
