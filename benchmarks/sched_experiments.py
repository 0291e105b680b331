"""Two scheduling experiments from the scheduler issue, with figures to compare.

    python benchmarks/sched_experiments.py

1. Gavel's setting (36 V100 + 36 P100 + 36 K80, Gavel's synthetic workload,
   Poisson arrivals): average JCT of heterogeneity-aware max-min fairness vs the
   heterogeneity-agnostic version, across arrival rates (Gavel reports up to
   3.5x). Fluid execution of the LP allocations (see suanli.sim.gavel_sim).
2. A mixed NVIDIA + Ascend + Cambricon cluster (benchmarks/specs/) whose job
   durations come from the perf model: perf-affinity placement vs type-blind
   best-fit, JCT and cost.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from suanli.cli.simulate_cmd import cost_and_energy
from suanli.sched.policies import NAMED, PluginContext, build
from suanli.sim.gavel_sim import read_gavel_throughputs, simulate_gavel, synthetic_jobs
from suanli.sim.replay import run_replay
from suanli.sim.spec import perf_workload, read_cluster_yaml
from suanli.sim.traces import shared_data_dir

SPECS = Path(__file__).resolve().parent / "specs"


def gavel(console: Console) -> None:
    d = shared_data_dir()
    if d is None:
        console.print("SKIP Gavel: ../shared/data not found")
        return
    table_ = read_gavel_throughputs(d / "gavel_simulation_throughputs.json")
    cap = {"v100": 36, "p100": 36, "k80": 36}
    t = Table(title="Gavel: average JCT (h), 300 jobs, mean of 2 seeds")
    for col in ("jobs/hour", "hetero-aware max-min", "agnostic max-min", "agnostic / aware"):
        t.add_column(col, justify="right")
    for rate in (1.0, 2.0, 4.0, 6.0, 8.0):
        aware, blind = [], []
        for seed in (0, 1):
            jobs = synthetic_jobs(table_, 300, rate, seed)
            aware.append(simulate_gavel(jobs, table_, cap, "gavel-max-min").mean_jct_s)
            blind.append(simulate_gavel(jobs, table_, cap, "gavel-max-min-agnostic").mean_jct_s)
        a, b = statistics.mean(aware) / 3600, statistics.mean(blind) / 3600
        t.add_row(f"{rate:g}", f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}x")
    console.print(t)


def mixed(console: Console) -> None:
    nodes, _ = read_cluster_yaml(SPECS / "mixed_cluster.yaml")
    types = sorted({n.gpu_type for n in nodes if n.gpu_count})
    t = Table(title="Mixed cluster (4 H800 + 8 Ascend 910B + 8 MLU370 nodes): 140 jobs")
    for col in (
        "policy",
        "JCT mean h",
        "JCT p50 h",
        "JCT p99 h",
        "makespan h",
        "cost USD",
        "energy MWh",
    ):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for policy in ("best-fit", "perf-affinity"):
        rows = []
        for seed in (0, 1, 2):
            tasks, thr = perf_workload(SPECS / "mixed_workload.yaml", types, seed)
            fw = build(NAMED[policy], PluginContext(workload=tasks, throughput=thr))
            r = run_replay(nodes, tasks, fw, policy, seed, throughput=thr)
            s = r.summary()
            cost, energy = cost_and_energy(nodes, r.gpu_seconds_by_type)
            rows.append(
                (
                    s["jct_s"]["mean"],
                    s["jct_s"]["p50"],
                    s["jct_s"]["p99"],
                    s["makespan_s"],
                    cost,
                    energy,
                )
            )
        m = [statistics.mean(x[i] for x in rows) for i in range(6)]
        t.add_row(
            policy,
            f"{m[0] / 3600:.1f}",
            f"{m[1] / 3600:.1f}",
            f"{m[2] / 3600:.1f}",
            f"{m[3] / 3600:.1f}",
            f"{m[4]:,.0f}",
            f"{m[5] / 3.6e9:.2f}",
        )
    console.print(t)


def main() -> int:
    console = Console(width=120)
    gavel(console)
    mixed(console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
