"""What the simulated market trades: the Alibaba v2026 inventory as sellers, trace jobs as buyers.

Sellers. The nodes of ``alibaba_v2026_spot_gpu_node_info.csv`` go to regions round-robin
in file order (node k to region k mod R): the trace names no regions, and round-robin
keeps every region's mix of types close to the whole's. The engine leases units of an
offer and knows nothing of nodes, so each region's devices of one type form one
provider pool, sold twice over: on-demand at the list price, and as spot above a floor
(a share of list) whatever on-demand leaves. One pool per (type, region) rather than one
per node also keeps the auction from moving running spot leases between equally priced
offers (see the report of `clear_spot`'s tie-break).

List prices per device-hour come from the catalog (``price_usd_per_hour``, each with its
source). Where the catalog has none: `PRICE_PROXY` (a chip that differs from a priced one
only in its links), and the two undisclosed series get the device-weighted mean list
price of the disclosed types of this inventory (an assumption; nothing is known of them).

Buyers. Job shapes come from real traces: the openb pods (GPU count, trace duration; a
pod asking for a share of one GPU still leases a whole device, because the market sells
whole devices) and Gavel's Philly-derived trace (scale factor; duration = total steps /
the measured V100 steps/s). The traces together hold far less work than this inventory
does in a day, so, as the FGD protocol re-samples openb to 1.3x capacity, jobs are drawn
from them with replacement and arrive as a Poisson process whose rate gives the
requested offered load. No trace names a chip of this inventory, so each job takes
one type among those whose nodes hold its GPU count (up to 8: larger gangs span 8-GPU
nodes), with odds that offer every type the same load (`_type_odds`). Durations are
the traces' own, not rescaled to the chip drawn.

Sia's two workloads (Philly- and Helios/Saturn-derived, 160 jobs each; ``sia=True``) join
the pool as gangs of ``num_replicas`` GPUs. They name an application but no training
length, so each trains for `SIA_TRAINING`: the epochs Sia's own simulator gives the
application (siasosp23/artifacts ``sia-simulator/applications.py``, ``max_epochs``) over
its data set's training split (public sizes; deepspeech2's is an estimate). Its duration is
then taken on the same reference chip as Gavel's jobs, the V100: samples / (the measured
single-V100 peak samples/s x replicas), i.e. linear scaling, optimistic for big gangs as
Gavel's scaled-up rates are. Azure's LLM services are not trace jobs: see
`suanli.sim.market_sources`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from suanli.catalog.loader import accelerators
from suanli.market.money import to_micro
from suanli.sim.gavel_sim import read_gavel_throughputs
from suanli.sim.traces import (
    read_gavel_trace,
    read_openb_pods,
    read_sia_peak_throughput,
    read_sia_workload,
    read_v2026_nodes,
)

INVENTORY_CSV = "alibaba_v2026_spot_gpu_node_info.csv"
OPENB_CSV = "openb_pod_list_default.csv"
GAVEL_TRACE = "gavel_philly_vc_2869ce_seed0.trace"
GAVEL_THROUGHPUTS = "gavel_simulation_throughputs.json"
REQUIRED_FILES = (INVENTORY_CSV, OPENB_CSV, GAVEL_TRACE, GAVEL_THROUGHPUTS)
SIA_WORKLOADS = {
    "sia-philly": "sia_philly_workload-1.csv",
    "sia-saturn": "sia_saturn_workload-1.csv",
}
SIA_THROUGHPUT = "sia_single_gpu_peak_throughput.csv"
SIA_FILES = (*SIA_WORKLOADS.values(), SIA_THROUGHPUT)
#: The reference chip of Sia's durations, as of Gavel's (Sia's "azure" cluster: V100).
SIA_REFERENCE_GPU = "v100-32gb"
#: application -> (epochs, training samples per epoch, data set): epochs are Sia's simulator's
#: ``max_epochs``; set sizes are the public training splits of the data sets the Pollux/Sia
#: benchmarks train on. An assumption: Sia's workload files give no training length.
SIA_TRAINING: dict[str, tuple[int, int, str]] = {
    "cifar10": (100, 50_000, "CIFAR-10 train split"),
    "imagenet": (90, 1_281_167, "ImageNet-1k train split"),
    "bert": (2, 88_641, "SQuAD v1.1 train features (BERT fine-tuning)"),
    "yolov3": (50, 16_551, "PASCAL VOC 2007+2012 trainval"),
    "deepspeech2": (80, 20_376, "CMU ARCTIC, 18 speakers x 1,132 utterances (estimate)"),
}

#: No public price in the catalog; priced as the chip it differs from only in NVLink
#: (the catalog's notes on each): an assumption, not a quote.
PRICE_PROXY = {"a800-80gb": "a100-80gb", "h800-sxm": "h100-sxm"}
#: Gang sizes above this span several nodes, so any type with nodes this big may host them.
NODE_GPUS = 8


@dataclass(frozen=True, slots=True)
class Pool:
    """One provider's devices of one type in one region (on-demand and spot share them)."""

    accelerator: str
    region: str
    devices: int


@dataclass(frozen=True)
class Inventory:
    pools: tuple[Pool, ...]
    nodes: int
    list_price_micro: dict[str, int]  # per device-hour
    price_basis: dict[str, str]  # where each list price comes from
    largest_node: dict[str, int]  # GPUs on the biggest node of each type

    @property
    def devices(self) -> int:
        return sum(p.devices for p in self.pools)

    def devices_of(self, accelerator: str) -> int:
        return sum(p.devices for p in self.pools if p.accelerator == accelerator)

    @property
    def types(self) -> list[str]:
        return sorted({p.accelerator for p in self.pools})


@dataclass(frozen=True, slots=True)
class TraceJob:
    source: str
    units: int
    work_s: float


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One buyer's order as submitted; the simulation keeps its progress elsewhere."""

    id: int
    source: str
    accelerator: str
    units: int
    work_s: float
    arrival_s: float
    spot: bool
    max_price_micro: int  # per device-hour
    regions: frozenset[str] = frozenset()  # empty: any region


def load_inventory(data_dir: Path, *, regions: int = 3, node_share: float = 1.0) -> Inventory:
    """The v2026 nodes as (type, region) pools; ``node_share`` < 1 keeps every k-th node
    (k = round(1 / share)) so a small slice keeps the whole's mix of types."""
    nodes = [n for n in read_v2026_nodes(data_dir / INVENTORY_CSV) if n.gpu_count]
    stride = max(1, round(1 / node_share)) if node_share > 0 else len(nodes) + 1
    nodes = nodes[::stride]
    devices: Counter[tuple[str, str]] = Counter()
    largest: dict[str, int] = {}
    for k, n in enumerate(nodes):
        devices[(n.gpu_type, f"region-{k % regions}")] += n.gpu_count
        largest[n.gpu_type] = max(largest.get(n.gpu_type, 0), n.gpu_count)
    pools = tuple(Pool(t, r, d) for (t, r), d in sorted(devices.items()))
    price, basis = _list_prices(pools)
    return Inventory(pools, len(nodes), price, basis, largest)


def _list_prices(pools: tuple[Pool, ...]) -> tuple[dict[str, int], dict[str, str]]:
    catalog = accelerators()
    price: dict[str, int] = {}
    basis: dict[str, str] = {}
    for typ in sorted({p.accelerator for p in pools}):
        own = catalog.get(typ)
        name = typ if own is not None and own.price_usd_per_hour else PRICE_PROXY.get(typ)
        acc = catalog.get(name) if name else None
        if acc is not None and acc.price_usd_per_hour:
            price[typ] = to_micro(acc.price_usd_per_hour)
            src = acc.sources.get("price_usd_per_hour", "catalog")
            basis[typ] = src if name == typ else f"as {name} (assumed): {src}"
    known = [p for p in pools if p.accelerator in price]
    if known:
        mean = sum(price[p.accelerator] * p.devices for p in known) // sum(p.devices for p in known)
        for typ in sorted({p.accelerator for p in pools} - set(price)):
            price[typ] = mean
            basis[typ] = "undisclosed chip: device-weighted mean of the priced types (assumed)"
    return price, basis


def read_trace_jobs(data_dir: Path, *, sia: bool = True) -> list[TraceJob]:
    """Job shapes of the openb pods, Gavel's Philly trace and (``sia``) Sia's workloads
    (module docstring)."""
    out = [
        TraceJob("openb", p.num_gpu, p.duration_s)
        for p in read_openb_pods(data_dir / OPENB_CSV)
        if p.num_gpu > 0 and p.duration_s > 0
    ]
    rates = read_gavel_throughputs(data_dir / GAVEL_THROUGHPUTS)
    for job_type, scale, steps, _arrival in read_gavel_trace(data_dir / GAVEL_TRACE):
        rate = _v100_steps_per_s(rates, job_type, scale)
        if rate > 0 and steps > 0:
            out.append(TraceJob("gavel-philly", scale, steps / rate))
    return out + (read_sia_jobs(data_dir) if sia else [])


def read_sia_jobs(data_dir: Path) -> list[TraceJob]:
    """Sia's workloads as (replicas, seconds on V100s) jobs (module docstring)."""
    peak = read_sia_peak_throughput(data_dir / SIA_THROUGHPUT)
    samples = {app: float(epochs * size) for app, (epochs, size, _) in SIA_TRAINING.items()}
    out: list[TraceJob] = []
    for source, name in SIA_WORKLOADS.items():
        seen: set[str] = set()
        for task in read_sia_workload(data_dir / name, samples):
            if task.job in seen:  # one task per replica: the first stands for the gang
                continue
            seen.add(task.job)
            units = task.min_available
            rate = peak.get((task.labels["workload"], SIA_REFERENCE_GPU), 0.0) * units
            if units > 0 and rate > 0:
                out.append(TraceJob(source, units, task.work * units / rate))
    return out


def _v100_steps_per_s(
    rates: dict[tuple[str, int], dict[str, float]], job_type: str, scale: int
) -> float:
    """Measured V100 steps/s; a scale the table lacks (16, 32, or 8 for some types) takes
    the largest measured scale below it, scaled linearly: optimistic for big gangs."""
    measured = [s for (name, s) in rates if name == job_type and s <= scale]
    if not measured:
        return 0.0
    best = max(measured)
    return rates[(job_type, best)]["v100"] * scale / best


def _type_odds(
    inventory: Inventory, pool: list[TraceJob], horizon_s: float
) -> dict[int, np.ndarray]:
    """P(type | gang size) that offers every type the same load, where the sizes allow it.

    Water-filling: sizes that fewer types can host go first, each spread over its types
    in proportion to what they still lack of their share (devices / all devices) of the
    pool's device-seconds; the smallest size, which any type can host, fills the rest.
    """
    types = inventory.types
    cap = np.array([inventory.devices_of(t) for t in types], dtype=float)
    mass: dict[int, float] = defaultdict(float)
    for j in pool:
        mass[min(j.units, NODE_GPUS)] += j.units * min(j.work_s, horizon_s)
    need = cap / cap.sum() * sum(mass.values())
    odds: dict[int, np.ndarray] = {}
    for size in sorted(mass, reverse=True):
        fits = np.array([inventory.largest_node[t] >= size for t in types], dtype=float)
        w = np.maximum(need, 0.0) * fits
        if w.sum() <= 0:
            w = cap * fits
        if w.sum() <= 0:  # no type has nodes this big: spread over all, by devices
            w = cap.copy()
        odds[size] = w / w.sum()
        need -= odds[size] * mass[size]
    return odds


def sample_demand(
    inventory: Inventory,
    pool: list[TraceJob],
    *,
    horizon_s: float,
    load: float,
    spot_share: float,
    willingness: tuple[float, float],
    seed: int,
    max_jobs: int | None = None,
    any_region: bool = True,
) -> tuple[list[JobSpec], dict[str, float | int | bool]]:
    """Draw the buyers of one run (module docstring).

    The arrival rate is ``load x devices / E[units x min(work, horizon)]``: work that
    could not finish inside the horizon anyway does not count as offered. A spot bid
    offers ``U(willingness) x list``; an on-demand order takes the posted list price.
    A job accepts any region, or (``any_region=False``) one, drawn by devices.
    """
    rng = np.random.default_rng(seed)
    types = inventory.types
    per_job = np.array([j.units * min(j.work_s, horizon_s) for j in pool])
    rate_per_s = load * inventory.devices / float(per_job.mean())
    # a Poisson process on [0, horizon): a Poisson count of uniformly placed arrivals
    arrivals = np.sort(rng.uniform(0.0, horizon_s, int(rng.poisson(rate_per_s * horizon_s))))
    capped = max_jobs is not None and len(arrivals) > max_jobs
    arrivals = arrivals[:max_jobs] if capped else arrivals
    n = len(arrivals)
    picks = rng.integers(len(pool), size=n)
    sizes = np.array([min(pool[i].units, NODE_GPUS) for i in picks], dtype=int)
    odds = _type_odds(inventory, pool, horizon_s)
    kind = np.zeros(n, dtype=int)
    for size in np.unique(sizes):
        sel = sizes == size
        kind[sel] = rng.choice(len(types), size=int(sel.sum()), p=odds[int(size)])
    spot = rng.random(n) < spot_share
    factor = rng.uniform(willingness[0], willingness[1], n)
    where = rng.random(n)  # drawn either way, so both settings see the same jobs
    homes = {t: [p for p in inventory.pools if p.accelerator == t] for t in types}
    specs: list[JobSpec] = []
    for k in range(n):
        job, typ = pool[int(picks[k])], types[int(kind[k])]
        regions: frozenset[str] = frozenset()
        if not any_region:  # one region, in proportion to its devices of the type
            cum = np.cumsum([p.devices for p in homes[typ]])
            pick = int(np.searchsorted(cum, where[k] * cum[-1], side="right"))
            regions = frozenset({homes[typ][min(pick, len(cum) - 1)].region})
        list_micro = inventory.list_price_micro[typ]
        max_micro = round(list_micro * float(factor[k])) if spot[k] else list_micro
        specs.append(
            JobSpec(
                k,
                job.source,
                typ,
                job.units,
                job.work_s,
                float(arrivals[k]),
                bool(spot[k]),
                max_micro,
                regions,
            )
        )
    offered = sum(s.units * min(s.work_s, horizon_s - s.arrival_s) for s in specs)
    info: dict[str, float | int | bool] = {
        "trace_jobs": len(pool),
        "jobs": len(specs),
        "arrivals_per_h": rate_per_s * 3600,
        "offered_load_in_horizon": offered / (inventory.devices * horizon_s),
        "capped": capped,
    }
    return specs, info
