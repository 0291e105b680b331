"""Many sites, one scheduler: nearest site only, cheapest site ignoring data, and ours.

Setting (issue 17): the real openb inventory's T4 and V100 nodes (Alibaba
cluster-trace-gpu-v2023) spread over eight Google Cloud regions, and the trace's
GPU pods with their real run times, every job's data in the east (us-east1,
South Carolina). Each region carries public figures with their sources:

* grid carbon intensity: Google's ``region-carbon-info`` (data/yearly/2024.csv,
  gCO2eq/kWh, the 2024 annual average per region);
* the on-demand price of each chip there: GCP's list prices as SkyPilot's catalog
  records them (skypilot-catalog ``catalogs/v6/gcp/vms.csv``, commit 0489582);
* PUE 1.10: Google's fleet-wide trailing-twelve-month figure (Google data centers,
  "Efficiency").

What is *not* a published figure, and is swept instead: how much data a job
reads (``--data-gb``) and what one transfer gets between two regions
(``--gbps``). The openb trace says neither. Chips: openb's ``V100M16`` and
``V100M32`` are V100s (the catalog's v100-32gb power stands in for both) and
``T4``; openb's P100 nodes are left out (no catalog entry), and so are the
undisclosed G1-G3 and the pods that only accept them.

    python benchmarks/cross_site.py [--pods 2000] [--data-gb 10,100,1000] [--gbps 1,10]
                                    [--speedup 1] [--plot benchmarks/out/cross_site.png]

``--speedup N`` compresses the trace's arrivals N-fold (run times unchanged) to load
the cluster: at 1 it is mostly idle and a job rarely waits for a device.

For each setting it prints mean JCT, cost (device-hours x the region's price),
carbon (device-hours x chip TDP x PUE x the region's intensity) and data moved,
per policy, and plots them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np

from suanli.catalog.loader import accelerators
from suanli.cluster.state import NodeSpec, Site
from suanli.cluster.task import Task
from suanli.cluster.wan import Link, Wan
from suanli.sched.policies import NAMED
from suanli.sim.replay import replay_policy
from suanli.sim.traces import read_openb_nodes, read_openb_pods, shared_data_dir

PUE = 1.10  # Google fleet-wide TTM PUE (Google data centers, "Efficiency")
DATA_REGION = "us-east1"
#: region -> (grid gCO2eq/kWh, Google region-carbon-info 2024; {chip: $/device-hour,
#: SkyPilot's GCP catalog, on demand}). A chip a region does not offer is absent.
REGIONS: dict[str, tuple[float, dict[str, float]]] = {
    "us-east1": (575.77, {"T4": 0.35, "V100": 2.48}),
    "us-east4": (323.05, {"T4": 0.37}),
    "us-central1": (412.72, {"T4": 0.35, "V100": 2.48}),
    "us-west1": (79.23, {"T4": 0.35, "V100": 2.48}),
    "us-west4": (357.30, {"T4": 0.37}),
    "europe-west1": (103.37, {"T4": 0.35}),
    "europe-west4": (208.81, {"T4": 0.35, "V100": 2.604}),
    "asia-east1": (439.29, {"V100": 2.48}),
}
CHIP = {"T4": "T4", "V100M16": "V100", "V100M32": "V100"}  # openb model -> priced chip
TDP_OF = {"T4": "t4", "V100": "v100-32gb"}  # priced chip -> catalog entry (its TDP)
#: ours also without its queueing delay (``site-wait``): what waiting for a busy site adds
NO_WAIT = "site-aware, no wait"
POLICIES = ("nearest-site", "cheapest-site", NO_WAIT, "site-aware")
CONFIGS = {p: NAMED[p] for p in POLICIES if p in NAMED} | {
    NO_WAIT: replace(
        NAMED["site-aware"], filters=[f for f in NAMED["site-aware"].filters if f != "site-wait"]
    )
}


def inventory(data: Path, seed: int, share: float = 1.0) -> tuple[list[NodeSpec], list[Site]]:
    """openb's T4 and V100 nodes (a seeded ``share`` of them) dealt round-robin
    (shuffled, seeded) to the regions that offer their chip, each labelled with its
    region's price."""
    rng = np.random.default_rng(seed)
    nodes = [
        n for n in read_openb_nodes(data / "openb_node_list_gpu_node.csv") if n.gpu_type in CHIP
    ]
    order = rng.permutation(len(nodes))[: max(1, round(share * len(nodes)))]
    where: dict[str, list[str]] = {
        chip: [r for r, (_, prices) in REGIONS.items() if chip in prices] for chip in TDP_OF
    }
    dealt: dict[str, int] = {chip: 0 for chip in TDP_OF}
    out = []
    for i in order:
        n = nodes[i]
        chip = CHIP[n.gpu_type]
        region = where[chip][dealt[chip] % len(where[chip])]
        dealt[chip] += 1
        price = REGIONS[region][1][chip]
        out.append(replace(n, site=region, labels={"usd_per_gpu_hour": str(price)}))
    sites = [Site(r, r, PUE, intensity, 0.0) for r, (intensity, _) in REGIONS.items()]
    return out, sites


def workload(data: Path, count: int, data_gb: float, speedup: float) -> list[Task]:
    """The first ``count`` GPU pods (with run times) that our chips can run, arriving
    ``speedup`` times faster than in the trace (1: as recorded)."""
    out = []
    for p in read_openb_pods(data / "openb_pod_list_default.csv"):
        if not p.num_gpu or p.duration_s <= 0:
            continue
        if p.gpu_spec and not (p.gpu_spec & set(CHIP)):
            continue
        out.append(
            replace(p, data_region=DATA_REGION, data_gb=data_gb, arrival_s=p.arrival_s / speedup)
        )
        if len(out) == count:
            break
    return out


def measure(
    nodes: list[NodeSpec], sites: list[Site], tasks: list[Task], wan: Wan, policy: str
) -> dict[str, float]:
    res, _ = replay_policy(nodes, tasks, CONFIGS[policy], 0, sites=sites, wan=wan)
    price = {n.site: {} for n in nodes}  # type: dict[str, dict[str, float]]
    for n in nodes:
        price[n.site][n.gpu_type] = float(n.labels["usd_per_gpu_hour"])
    tdp = {m: accelerators()[TDP_OF[c]].tdp_w for m, c in CHIP.items()}
    intensity = {s.name: s.carbon_g_per_kwh for s in sites}
    dollars = kg = 0.0
    for (site, typ), sec in res.gpu_seconds_by_site_type.items():
        dollars += sec / 3600 * price[site][typ]
        kg += sec / 3600 * tdp[typ] / 1000 * PUE * intensity[site] / 1000
    return {
        "jct_h": statistics.mean(res.jct_s) / 3600 if res.jct_s else float("nan"),
        "jct_p50_h": statistics.median(res.jct_s) / 3600 if res.jct_s else float("nan"),
        "wait_h": statistics.mean(res.wait_s) / 3600 if res.wait_s else float("nan"),
        "cost_usd": dollars,
        "carbon_kg": kg,
        "moved_tb": res.moved_gb / 1000,
        "unfinished": float(res.unfinished + res.unplaceable),
    }


def plot(rows: list[tuple[float, float, str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(gb, gbps) for gb, gbps, _, _ in rows})
    metrics = (
        ("jct_h", "mean JCT (h)"),
        ("cost_usd", "cost ($)"),
        ("carbon_kg", "carbon (kg CO2)"),
        ("moved_tb", "data moved (TB)"),
    )
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    width = 0.8 / len(POLICIES)
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for k, policy in enumerate(POLICIES):
            ys = [
                next(m[key] for g, b, p, m in rows if (g, b) == s and p == policy) for s in settings
            ]
            ax.bar(np.arange(len(settings)) + k * width, ys, width, label=policy)
        ax.set_xticks(
            np.arange(len(settings)) + width * (len(POLICIES) - 1) / 2,
            [f"{g:g} GB\n{b:g} Gb/s" for g, b in settings],
        )
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle("openb pods on 8 GCP regions, data in us-east1 (JCT, cost, carbon, bytes moved)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--data-gb", default="10,100,1000")
    ap.add_argument("--gbps", default="1,10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="arrivals this many times faster than the trace's (load; 1 = as recorded)",
    )
    ap.add_argument(
        "--node-share",
        type=float,
        default=1.0,
        help="keep this share of the inventory (seeded): fewer devices, longer queues",
    )
    ap.add_argument("--plot", type=Path, default=Path("benchmarks/out/cross_site.png"))
    args = ap.parse_args()
    console = Console(width=170)
    data = shared_data_dir()
    if data is None or not (data / "openb_node_list_gpu_node.csv").exists():
        console.print("skipped: ../shared/data (the openb traces) is absent")
        return
    nodes, sites = inventory(data, args.seed, args.node_share)
    by_site = {s.name: sum(n.gpu_count for n in nodes if n.site == s.name) for s in sites}
    console.print(f"{len(nodes)} nodes, {sum(by_site.values())} GPUs: {by_site}")
    sizes = [float(x) for x in args.data_gb.split(",")]
    rates = [float(x) for x in args.gbps.split(",")]
    rows = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("runs", total=len(sizes) * len(rates) * len(POLICIES))
        for gb in sizes:
            tasks = workload(data, args.pods, gb, args.speedup)
            for gbps in rates:
                wan = Wan(default=Link(gbps, 0.0, "swept: not a published figure"))
                for policy in POLICIES:
                    rows.append((gb, gbps, policy, measure(nodes, sites, tasks, wan, policy)))
                    bar.advance(task)
    table = Table(
        title=f"{args.pods} openb GPU pods, data in {DATA_REGION}, arrivals x{args.speedup:g}"
    )
    for col in (
        "data/job",
        "WAN",
        "policy",
        "mean JCT h",
        "median JCT h",
        "mean wait h",
        "cost $",
        "carbon kg",
        "moved TB",
        "not run",
    ):
        table.add_column(col, justify="right")
    for gb, gbps, policy, m in rows:
        table.add_row(
            f"{gb:g} GB",
            f"{gbps:g} Gb/s",
            policy,
            f"{m['jct_h']:.2f}",
            f"{m['jct_p50_h']:.3f}",
            f"{m['wait_h']:.3f}",
            f"{m['cost_usd']:,.0f}",
            f"{m['carbon_kg']:,.0f}",
            f"{m['moved_tb']:.2f}",
            f"{m['unfinished']:.0f}",
        )
    console.print(table)
    plot(rows, args.plot)
    console.print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
