"""Replica kinds: a chip (and layout) a service's replica may run on, with what one
replica serves there. The serving simulator and the live services controller build the
chip-mix optimizer from the same kinds, so a plan tried in simulation is the plan run.

Each kind's capacity per request-size bucket is what one replica serves within the
SLOs (`suanli.autoscale.capacity`), from perf's step times on the chip; its price is
the catalog's (or a pool file's); its cold start the weights' read from storage over
the host link plus the engine's start (`suanli.autoscale.coldstart`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from suanli.autoscale.capacity import best_effort_rps, capacity_rps, slo_batch
from suanli.autoscale.coldstart import cold_start
from suanli.autoscale.mix import ReplicaKind, SizeBuckets
from suanli.autoscale.routing import Fills
from suanli.autoscale.scalers import Optimizer
from suanli.catalog.loader import get_accelerator, get_model, get_storage_tier, interconnects
from suanli.catalog.types import ModelArch
from suanli.errors import SuanliError, UsageError
from suanli.perf.batching import StepTime, slo_token_budget
from suanli.perf.engines import Engine, decoding_of, fits, get_engine, usual_engine
from suanli.perf.serve import check_serve
from suanli.perf.system import System, make_system
from suanli.plan.pool import PoolEntry, pool_from_accelerators


@dataclass(frozen=True)
class Kind:
    """A kind of replica the service may start: a chip, its layout, price and start time."""

    name: str
    steps: StepTime
    tp: int
    usd_per_hour: float  # one replica, all its devices
    cold_start_s: float
    spot: bool = False  # may be reclaimed (`suanli.sim.serving.spot`)
    on_demand: str | None = None  # a spot kind: its on-demand twin, the fallback


def replica_steps(
    model: ModelArch, system: System, tp: int, weight_dtype: str, engine: Engine | None
) -> StepTime | None:
    """A replica's step times on ``system``: under ``engine`` (None where it has no
    kernels for ``weight_dtype`` there), or, with none named, under the chip's usual
    engine where it has them (as `estimate serve` and `plan serve` take it), else the
    idealised one."""
    acc = system.accelerator
    if engine is None:
        engine = usual_engine(acc, weight_dtype, None)
    elif not fits(engine, acc, weight_dtype, None):
        return None
    kv = engine.default_kv(weight_dtype) if engine is not None else "bf16"
    return StepTime(
        model, system, tp=tp, weight_dtype=weight_dtype, kv_dtype=kv, decoding=decoding_of(engine)
    )


def make_kinds(
    model_name: str,
    pool: Sequence[PoolEntry],
    *,
    tp: int = 1,
    weight_dtype: str = "bf16",
    storage: str = "local-nvme",
    host_link: str = "pcie4",
    engine: Engine | None = None,
) -> dict[str, Kind]:
    """A replica kind per chip of the pool that holds the model; with ``engine``, the
    chips it runs on only, each replica decoding as it does (GQA reuse, KV); without,
    as its chip's usual engine does (`replica_steps`)."""
    model = get_model(model_name)
    tier = get_storage_tier(storage)
    links = interconnects()
    if host_link not in links:
        raise UsageError(f"--host-link {host_link!r}: not in the catalog ({', '.join(links)})")
    check_serve(model, tp, tp, weight_dtype, "bf16", 1, 1, 1)
    kinds, runs_on = {}, 0
    for entry in pool:
        price = entry.price_usd_per_hour
        if price is None:
            raise UsageError(
                f"{entry.name}: no price in the catalog; give one in a pool file "
                "(usd_per_device_hour) so cost can be compared"
            )
        steps = replica_steps(model, entry.system, tp, weight_dtype, engine)
        if steps is None:
            continue  # another vendor's chip, or no kernels for these weights
        runs_on += 1
        if steps.kv_capacity_tokens() <= 0:
            continue  # the weights alone do not fit: not a kind this model can use
        start = cold_start(model, tier, links[host_link], tp=tp, weight_dtype=weight_dtype)
        kinds[entry.name] = Kind(entry.name, steps, tp, price * tp, start.total_s)
    if not runs_on and engine is not None:
        raise UsageError(
            f"--engine {engine.label} runs none of {', '.join(e.name for e in pool)} with "
            f"{weight_dtype} weights (see `suanli catalog list engines`)"
        )
    if not kinds:
        raise UsageError(
            f"{model_name} does not fit on any of {', '.join(e.name for e in pool)} at tp {tp}: "
            "raise --tp or allow a chip with more memory"
        )
    return kinds


def bucket_table(
    kinds: dict[str, Kind], buckets: SizeBuckets, tpot_slo_s: float, ttft_slo_s: float
) -> dict[str, list[float]]:
    """Each kind's capacity per size bucket; a bucket no kind serves within the SLO gets
    every kind's one-at-a-time rate (served, and missing the SLO)."""
    table = {k: [0.0] * buckets.count for k in kinds}
    for b in range(buckets.count):
        size = buckets.representative(b)
        for k, kind in kinds.items():
            table[k][b] = capacity_rps(kind.steps, *size, tpot_slo_s, ttft_slo_s)
        if not any(table[k][b] for k in kinds):
            for k, kind in kinds.items():
                table[k][b] = best_effort_rps(kind.steps, *size)
    return table


def batch_table(
    kinds: dict[str, Kind], buckets: SizeBuckets, tpot_slo_s: float, ttft_slo_s: float
) -> dict[str, list[int]]:
    """Each kind's SLO batch per size bucket (`slo_batch`; 0 where it misses the SLO):
    what the chip-mix router measures a replica's fill by (`suanli.autoscale.routing`)."""
    return {
        k: [
            slo_batch(kind.steps, *buckets.representative(b), tpot_slo_s, ttft_slo_s)
            for b in range(buckets.count)
        ]
        for k, kind in kinds.items()
    }


def best_effort_table(kinds: dict[str, Kind], buckets: SizeBuckets) -> dict[str, list[float]]:
    """Each kind's one-at-a-time rate per size bucket, SLO or not: what a miss budget
    lets the optimizer send to a kind that cannot serve a size within the SLO."""
    return {
        k: [best_effort_rps(kind.steps, *buckets.representative(b)) for b in range(buckets.count)]
        for k, kind in kinds.items()
    }


def replica_kinds(
    kinds: dict[str, Kind],
    table: dict[str, list[float]],
    max_replicas: int,
    buckets: SizeBuckets,
    *,
    with_best_effort: bool = False,
) -> list[ReplicaKind]:
    """The ILP's kinds (`cheapest_mix`): each with its price and capacity per size
    bucket, and, for a miss budget, its one-at-a-time rates."""
    slow = best_effort_table(kinds, buckets) if with_best_effort else {}
    return [
        ReplicaKind(
            k,
            kind.usd_per_hour,
            tuple(table[k]),
            available=max_replicas,
            spot=kind.spot,
            best_effort_rps=tuple(slow.get(k, ())),
        )
        for k, kind in kinds.items()
    ]


def mix_optimizer(
    kinds: dict[str, Kind],
    table: dict[str, list[float]],
    *,
    utilization: float,
    max_replicas: int,
    max_spot_share: float = 1.0,
    buckets: SizeBuckets | None = None,
    max_miss_share: float = 0.0,
    z: float = 2.33,
) -> Optimizer:
    """Mélange's optimizer over ``kinds``, each with its capacity per size bucket; with
    ``max_miss_share``, planning that share of requests outside the SLO at most."""
    buckets = buckets or SizeBuckets()
    cold = max(k.cold_start_s for k in kinds.values())
    return Optimizer(
        replica_kinds(kinds, table, max_replicas, buckets, with_best_effort=max_miss_share > 0),
        buckets.count,
        cold,
        target_utilization=utilization,
        max_spot_share=max_spot_share,
        max_miss_share=max_miss_share,
        z=z,
    )


def chip_optimizer(
    model: str,
    chips: Sequence[str],
    *,
    tp: int,
    ttft_slo_s: float,
    tpot_slo_s: float,
    utilization: float,
    max_replicas: int,
    max_miss_share: float = 0.0,
    engine: str | None = None,
) -> Optimizer:
    """The live service's optimizer: one kind per allowed chip at its catalog price (a
    fresh one each time: an optimizer keeps its history), its replicas costed as
    ``engine`` (the spec's) runs them."""
    kinds, table = _chip_table(model, tuple(chips), tp, ttft_slo_s, tpot_slo_s, engine)
    return mix_optimizer(
        kinds,
        table,
        utilization=utilization,
        max_replicas=max_replicas,
        max_miss_share=max_miss_share,
    )


@functools.lru_cache(maxsize=32)
def chip_fills(
    model: str,
    chips: tuple[str, ...],
    tp: int,
    ttft_slo_s: float,
    tpot_slo_s: float,
    engine: str | None = None,
) -> Fills:
    """The live router's measure of a chip-mix service's replicas: each chip's SLO batch
    per size bucket (`suanli.autoscale.routing`)."""
    kinds, _ = _chip_table(model, chips, tp, ttft_slo_s, tpot_slo_s, engine)
    return Fills(batch_table(kinds, SizeBuckets(), tpot_slo_s, ttft_slo_s))


@functools.lru_cache(maxsize=32)
def _chip_table(
    model: str,
    chips: tuple[str, ...],
    tp: int,
    ttft_slo_s: float,
    tpot_slo_s: float,
    engine: str | None = None,
) -> tuple[dict[str, Kind], dict[str, list[float]]]:
    """Kinds and their capacities per size bucket, built once per service shape: the
    API checks a spec with them and the controller then runs it (read, never changed).
    ``engine``: the one the replicas run (a spec's), None: each chip's usual one."""
    pool = pool_from_accelerators(list(chips), tp)
    kinds = make_kinds(model, pool, tp=tp, engine=get_engine(engine) if engine else None)
    return kinds, bucket_table(kinds, SizeBuckets(), tpot_slo_s, ttft_slo_s)


@functools.lru_cache(maxsize=64)
def token_budget(model: str, chip: str, tp: int, tpot_slo_s: float) -> int | None:
    """The token budget a replica of ``model`` on ``chip`` runs with for the TPOT SLO
    (`slo_token_budget`), as the simulator runs it; None where the catalog cannot say: a
    model it does not know (an HF id, which only vLLM resolves), a chip it does not
    know, or one whose memory does not hold the model at ``tp``."""
    try:
        arch = get_model(model)
        # none named: the chip's usual engine (vLLM on NVIDIA and AMD, vLLM-Ascend on Ascend)
        steps = replica_steps(arch, make_system(get_accelerator(chip)), tp, "bf16", None)
        if steps is None or steps.kv_capacity_tokens() <= 0:
            return None
    except (SuanliError, ValueError, OSError):
        return None
    return slo_token_budget(steps, tpot_slo_s)
