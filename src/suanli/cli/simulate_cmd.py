"""``suanli simulate``: the scheduler on real traces, with the simulator's clock."""

from __future__ import annotations

import statistics
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from suanli.catalog.loader import accelerators
from suanli.cli.output import console, fmt, print_json
from suanli.cli.simulate_gavel_cmd import gavel_cmd
from suanli.cli.simulate_market_cmd import market_cmd
from suanli.cli.simulate_serve_cmd import serve_cmd
from suanli.cluster.wan import Wan
from suanli.errors import UsageError
from suanli.sched.policies import NAMED, PluginContext, build, load_policy
from suanli.sched.round_action import DEFAULT_STORAGE, checkpoint_costs
from suanli.sim.openb import run_openb
from suanli.sim.replay import replay_policy
from suanli.sim.spec import SpecError, perf_workload, read_cluster
from suanli.sim.traces import OPENB_PODS, read_nodes, read_openb_pods, sniff


class Mode(StrEnum):
    openb = "openb"
    replay = "replay"


def _kind(path: Path) -> str | None:
    """What the file at ``path`` looks like (`sniff`); a missing file is a `SpecError`."""
    if not path.exists():
        raise SpecError(f"{path}: no such file")
    if path.is_dir():
        raise SpecError(f"{path}: a directory; give a file")
    seen = sniff(path)
    return seen[0] if seen is not None else None


def _cluster(path: Path) -> tuple[list[Any], list[Any], Wan]:
    """--cluster: our cluster YAML, or a node list CSV (openb, Alibaba v2026)."""
    if path.suffix in (".yaml", ".yml") or _kind(path) == "a cluster YAML":
        return read_cluster(path)
    return read_nodes(path), [], Wan()


def _is_workload_yaml(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml") or _kind(path) == "a workload YAML"


def _has_gpus(nodes: list[Any], mode: str) -> None:
    if not any(n.gpu_count for n in nodes):
        raise SpecError(
            f"the --cluster has no GPUs (every node has gpus 0), so --mode {mode} has nothing "
            "to place the workload on; give node groups gpu_type and gpus"
        )


def simulate_cmd(
    ctx: typer.Context,
    cluster: Annotated[
        Path | None, typer.Option("--cluster", help="Node list CSV or cluster YAML.")
    ] = None,
    workload: Annotated[
        Path | None, typer.Option("--workload", help="Pod list CSV or workload YAML.")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="A policy YAML file, or one of: "
            + ", ".join(NAMED)
            + " (Gavel's policies run in `suanli simulate gavel`).",
        ),
    ] = None,
    mode: Annotated[Mode, typer.Option("--mode")] = Mode.openb,
    seed: Annotated[int, typer.Option("--seed", help="First seed.")] = 42,
    seeds: Annotated[int, typer.Option("--seeds", help="How many seeds.")] = 1,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write PNG plots here.")] = None,
    storage: Annotated[
        str,
        typer.Option(
            "--storage",
            help="Storage tier (catalog) where jobs the rounds move save their checkpoints.",
        ),
    ] = DEFAULT_STORAGE,
) -> None:
    """Replay a trace through a scheduling policy and report what it achieved.

    `suanli simulate market` instead runs the compute market against fixed prices.
    """
    if ctx.invoked_subcommand is not None:
        return
    if cluster is None or workload is None or policy is None:
        # the options are optional only so that a subcommand can go without them
        missing = [o for o, v in (("--cluster", cluster), ("--workload", workload)) if v is None]
        missing += ["--policy"] if policy is None else []
        raise typer.BadParameter(
            "required, unless a subcommand (market) is given",
            param_hint=", ".join(f"'{o}'" for o in missing),
        )
    if seeds < 1:
        raise UsageError("--seeds must be >= 1")
    t0 = time.perf_counter()
    if policy.startswith("gavel-") and policy not in NAMED:
        raise UsageError(
            f"--policy {policy}: Gavel's policies run on Gavel's protocol in "
            "`suanli simulate gavel` (--rate N or --trace FILE, --cluster with `gavel:`); "
            "see `suanli simulate gavel --help`"
        )
    config = load_policy(policy)
    if config.rounds is not None:
        checkpoint_costs(storage)  # an unknown or node-local tier is refused before any run
    nodes, sites, wan = _cluster(cluster)
    if mode is Mode.openb:
        out = _openb(nodes, workload, config, seed, seeds, plot, json_out)
    else:
        out = _replay(nodes, sites, workload, config, seed, seeds, plot, storage, wan)
    out["wall_s"] = time.perf_counter() - t0
    if json_out:
        print_json(out)
        return
    table = Table(
        title=f"simulate {policy} ({out['mode']})", show_header=False, title_justify="left"
    )
    for k, v in _readable(out):
        table.add_row(k, v)
    console.print(table)


def _readable(out: dict[str, Any]) -> list[tuple[str, str]]:
    """A result as people read it: nested figures on their own rows, each in the unit its
    name ends with made readable (hours, kWh, dollars); `--json` keeps the raw numbers."""
    rows: list[tuple[str, str]] = []

    def value(name: str, v: Any) -> str:
        if isinstance(v, list):
            return ", ".join(fmt(x) for x in v)
        if not isinstance(v, int | float) or isinstance(v, bool):
            return fmt(v)
        if name.endswith("_per_s"):
            return f"{fmt(v)}/s"
        if name.endswith("_s"):
            return f"{v / 3600:,.2f} h" if abs(v) >= 3600 else f"{v:.3g} s"
        if name.endswith("_j"):
            return f"{v / 3.6e6:,.1f} kWh"
        if name.endswith("_usd"):
            return f"${v:,.2f}"
        if name.endswith("_kg"):
            return f"{fmt(float(v))} kg"
        return fmt(v)

    for k, v in out.items():
        if k == "per_seed":
            continue
        label = k.removesuffix("_per_s")
        if label == k:
            for unit in ("_s", "_j", "_usd", "_kg"):
                label = label.removesuffix(unit)
        if isinstance(v, dict):
            for sub, x in v.items():
                rows.append((f"{label} {sub}".replace("_", " "), value(k, x)))
        else:
            rows.append((label.replace("_", " "), value(k, v)))
    return rows


def _openb(
    nodes: list[Any],
    workload: Path,
    config: Any,
    seed: int,
    seeds: int,
    plot: Path | None,
    quiet: bool,
) -> dict[str, Any]:
    kind = _kind(workload)
    if kind != OPENB_PODS.name and (
        workload.suffix in (".yaml", ".yml") or (kind or "").endswith("YAML")
    ):
        other = ", or run this workload with --mode replay" if kind == "a workload YAML" else ""
        raise SpecError(
            f"{workload}: {kind or 'a YAML file'}; --mode openb replays an openb pod list "
            f"(openb_pod_list_*.csv) to 130% of the cluster's GPUs: give one{other}"
        )
    pods = read_openb_pods(workload)
    _has_gpus(nodes, "openb")
    if not any(p.gpu_request_milli for p in pods):
        raise SpecError(
            f"{workload}: no pod asks for a GPU, and --mode openb measures GPU allocation; "
            "give a pod list with GPU pods"
        )
    runs = []
    with Progress(console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task(f"{config.name}: seeds", total=seeds)
        for s in range(seed, seed + seeds):
            fw = build(config, PluginContext(workload=pods))
            runs.append(run_openb(nodes, pods, fw, config.name, s))
            bar.advance(task)
    if plot is not None:
        _plot_openb(runs, plot / f"openb_{config.name}.png")
    dec = sum(r.decisions for r in runs)
    wall = sum(r.wall_s for r in runs)
    return {
        "mode": "openb",
        "policy": config.name,
        "seeds": list(range(seed, seed + seeds)),
        "allocation_ratio": {
            k: statistics.mean(r.allocation_ratio[k] for r in runs) for k in ("100", "130")
        },
        "failed_pods": statistics.mean(r.failed_pods for r in runs),
        "fragmentation": statistics.mean(r.fragmentation for r in runs),
        "decisions_per_s": dec / wall if wall else None,
        "per_seed": [
            {"seed": r.seed, "allocation_ratio": r.allocation_ratio, "failed_pods": r.failed_pods}
            for r in runs
        ],
    }


def _replay(
    nodes: list[Any],
    sites: list[Any],
    workload: Path,
    config: Any,
    seed: int,
    seeds: int,
    plot: Path | None,
    storage: str = DEFAULT_STORAGE,
    wan: Wan | None = None,
) -> dict[str, Any]:
    types = sorted({n.gpu_type for n in nodes if n.gpu_count})
    as_yaml = _is_workload_yaml(workload)
    pods = None if as_yaml else _replay_pods(workload)
    per_seed: list[dict[str, Any]] = []
    for s in range(seed, seed + seeds):
        if pods is None:
            tasks, thr = perf_workload(workload, types, s)
            if s == seed:
                _placeable(workload, tasks, thr, types)
        else:
            tasks, thr = pods, {}
            if s == seed and any(t.gpu_request_milli for t in tasks):
                _has_gpus(nodes, "replay")
        res, rounds = replay_policy(
            nodes, tasks, config, s, throughput=thr, storage=storage, sites=sites, wan=wan
        )
        summary = res.summary()
        if rounds is not None:
            summary["round_moves"] = rounds.moves
        cost, energy = cost_and_energy(nodes, res.gpu_seconds_by_type)
        summary.update(
            cost_usd=cost,
            energy_j=energy,
            carbon_kg=carbon_kg(sites, res.gpu_seconds_by_site_type),
        )
        summary["_jct"] = res.jct_s
        per_seed.append(summary)
    if plot is not None:
        _plot_cdf(
            [p.pop("_jct") for p in per_seed], config.name, plot / f"jct_cdf_{config.name}.png"
        )
    for p in per_seed:
        p.pop("_jct", None)
    first = per_seed[0]
    return {
        "mode": "replay",
        "policy": config.name,
        "seeds": list(range(seed, seed + seeds)),
        "jct_s": {
            k: statistics.mean(p["jct_s"][k] for p in per_seed) for k in ("mean", "p50", "p99")
        },
        "makespan_s": statistics.mean(p["makespan_s"] for p in per_seed),
        "utilization": first["utilization"],
        "preemptions": statistics.mean(p["preemptions"] for p in per_seed),
        "cost_usd": statistics.mean(p["cost_usd"] for p in per_seed),
        "energy_j": statistics.mean(p["energy_j"] for p in per_seed),
        "carbon_kg": statistics.mean(p["carbon_kg"] for p in per_seed),
        "moved_gb": statistics.mean(p["moved_gb"] for p in per_seed),
        "decisions_per_s": first["decisions_per_s"],
        "per_seed": per_seed,
    }


def _replay_pods(workload: Path) -> list[Any]:
    """An openb pod list for --mode replay; any other file says what replay takes."""
    if _kind(workload) != OPENB_PODS.name:
        seen = sniff(workload)
        looks = ""
        if seen is not None:
            use = "" if seen[1] == "nothing here" else f" (for {seen[1]})"
            looks = f"this looks like {seen[0]}{use}, "
        raise SpecError(
            f"{workload}: {looks}not a workload --mode replay can use: give a workload YAML "
            f"(jobs:, see benchmarks/specs/) or an openb pod list (a CSV with the header "
            f"{OPENB_PODS.header})"
        )
    pods = read_openb_pods(workload)
    if not any(p.duration_s for p in pods):
        raise SpecError(
            f"{workload}: no pod has a run time (no creation_time/deletion_time columns, as in "
            "openb_pod_list_multigpu50.csv), and --mode replay runs pods for their run time: "
            "use it with --mode openb, or give a pod list with times"
        )
    return pods


def _placeable(workload: Path, tasks: list[Any], thr: dict[Any, float], types: list[str]) -> None:
    """Refuse a YAML workload of which no job can run on the cluster (else: jct nan)."""
    if not types:
        _has_gpus([], "replay")
    if tasks and not any(v > 0 for v in thr.values()):
        raise SpecError(
            f"{workload}: no job fits in the memory of any chip of the cluster "
            f"({', '.join(types)}); give jobs more gpus, smaller models, or bigger chips"
        )


def cost_and_energy(nodes: list[Any], gpu_seconds: dict[str, float]) -> tuple[float, float]:
    """USD (node price label, else the catalog reference price) and J (TDP) of device-seconds."""
    acc = accelerators()
    price: dict[str, float] = {}
    for n in nodes:
        if n.gpu_count and "usd_per_gpu_hour" in n.labels:
            price[n.gpu_type] = float(n.labels["usd_per_gpu_hour"])
    cost = energy = 0.0
    for typ, sec in gpu_seconds.items():
        a = acc.get(typ.lower())
        p = price.get(typ, a.price_usd_per_hour if a is not None else None)
        cost += sec / 3600 * (p or 0.0)
        energy += sec * (a.tdp_w if a is not None else 0.0)
    return cost, energy


def carbon_kg(sites: list[Any], seconds: dict[tuple[str, str], float]) -> float:
    """kg CO2 of device-seconds: chip TDP x site PUE x the site grid's carbon intensity."""
    acc = accelerators()
    by_name = {s.name: s for s in sites}
    total = 0.0
    for (site, typ), sec in seconds.items():
        a = acc.get(typ.lower())
        s = by_name.get(site)
        pue = s.pue if s is not None else 1.3
        intensity = s.carbon_g_per_kwh if s is not None else 450.0
        watts = a.tdp_w if a is not None else 0.0
        total += sec * watts * pue / 3.6e6 * intensity / 1000
    return total


def _plot_cdf(jcts: list[list[float]], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, jct in enumerate(jcts):
        xs = sorted(j / 3600 for j in jct)
        ax.plot(xs, [(k + 1) / len(xs) for k in range(len(xs))], lw=1, label=f"seed {i}")
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (h)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(f"JCT CDF: {name}")
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_openb(runs: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.plot([a for a, _ in r.curve], [b for _, b in r.curve], lw=0.8, label=f"seed {r.seed}")
    ax.set_xlabel("arrived GPU request (% of capacity)")
    ax.set_ylabel("allocated GPU (% of capacity)")
    ax.set_title(runs[0].policy)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


simulate_app = typer.Typer(
    help="Replay traces through the scheduler, or run the compute market.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
simulate_app.callback(invoke_without_command=True)(simulate_cmd)
simulate_app.command("market")(market_cmd)
simulate_app.command("gavel")(gavel_cmd)
simulate_app.command("serve")(serve_cmd)
