"""Heterogeneity-aware scheduling on a mixed NVIDIA + Ascend + Cambricon cluster.

    python benchmarks/sched_experiments.py [--seeds 3]

The cluster and jobs of ``benchmarks/specs/`` (4 H800 + 8 Ascend 910B + 8 MLU370
nodes; 140 fine-tuning jobs whose run time on each chip comes from the perf
model). The same replay simulator and `Session` as the live service, under:

* ``best-fit``: type-blind (the baseline);
* ``perf-affinity``: every job prefers the chip it is fastest on (absolute speed);
* ``gavel-rounds``: Gavel's max-min shares in 6-minute time slices;
* ``hetero-fair`` / ``hetero``: max-min / max-total-throughput shares choose each
  job's chip type (comparative advantage); jobs run on and move between types
  when the move repays its checkpoint (saved to and read from the DDN parallel
  file system of the catalog, sized by perf: 14 bytes per parameter).

Reported: mean JCT and cost over the seeds, and each policy's margin over
best-fit seed by seed. Gavel's own protocol is ``benchmarks/gavel_protocol.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from suanli.cli.simulate_cmd import cost_and_energy
from suanli.sched.policies import NAMED
from suanli.sim.replay import replay_policy
from suanli.sim.spec import perf_workload, read_cluster_yaml

SPECS = Path(__file__).resolve().parent / "specs"
POLICIES = ("best-fit", "perf-affinity", "gavel-rounds", "hetero-fair", "hetero")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    console = Console(width=150)
    nodes, _ = read_cluster_yaml(SPECS / "mixed_cluster.yaml")
    types = sorted({n.gpu_type for n in nodes if n.gpu_count})
    seeds = list(range(args.seeds))
    runs: dict[str, list[dict[str, float]]] = {}
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("replays", total=len(POLICIES) * len(seeds))
        for policy in POLICIES:
            config = NAMED[policy]
            for seed in seeds:
                tasks, thr = perf_workload(SPECS / "mixed_workload.yaml", types, seed)
                r, rounds = replay_policy(nodes, tasks, config, seed, throughput=thr)
                s = r.summary()
                cost, energy = cost_and_energy(nodes, r.gpu_seconds_by_type)
                runs.setdefault(policy, []).append(
                    {
                        "jct": s["jct_s"]["mean"] / 3600,
                        "p99": s["jct_s"]["p99"] / 3600,
                        "makespan": s["makespan_s"] / 3600,
                        "cost": cost,
                        "energy": energy / 3.6e9,
                        "moves": float(rounds.moves if rounds else 0),
                        "preemptions": float(r.preemptions),
                        "wall": r.wall_s,
                    }
                )
                bar.advance(task)
    t = Table(title=f"Mixed cluster, 140 jobs, mean of seeds {seeds}")
    cols = ("policy", "JCT mean h", "JCT p99 h", "makespan h", "cost USD", "energy MWh")
    cols += ("moves", "stops", "JCT vs best-fit", "cost vs best-fit", "wall s")
    for col in cols:
        t.add_column(col, justify="left" if col == "policy" else "right")
    base = runs["best-fit"]
    for policy, rs in runs.items():

        def m(key: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.mean(x[key] for x in rs)

        jct_margin = [1 - x["jct"] / b["jct"] for x, b in zip(rs, base, strict=True)]
        cost_margin = [1 - x["cost"] / b["cost"] for x, b in zip(rs, base, strict=True)]
        t.add_row(
            policy,
            f"{m('jct'):.1f}",
            f"{m('p99'):.1f}",
            f"{m('makespan'):.1f}",
            f"{m('cost'):,.0f}",
            f"{m('energy'):.2f}",
            f"{m('moves'):.0f}",
            f"{m('preemptions'):.0f}",
            " ".join(f"{x:+.0%}" for x in jct_margin),
            " ".join(f"{x:+.0%}" for x in cost_margin),
            f"{m('wall'):.1f}",
        )
    console.print(t)
    console.print("margins: seed by seed, + = better than best-fit (lower JCT or cost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
