"""Serving planner: chip, quantization, TP, replicas and batch limit for a request rate.

For every chip on offer, weight format (bf16, fp8 where the chip has it, int8,
int4), KV format, TP size and batch limit, it finds the fewest replicas whose
p99 TTFT and TPOT meet the SLOs under Poisson arrivals (`plan.queueing`), and
prices them. It also evaluates prefill/decode disaggregation (Splitwise,
DistServe): a prefill pool sized for TTFT and a decode pool sized for TPOT,
possibly of different chips, with the KV cache shipped between them over the
scale-out network.

Decode step time is sampled on a geometric grid of batch sizes and
interpolated, so sizing a configuration costs a handful of perf calls.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from suanli.catalog.types import ModelArch
from suanli.perf.efficiency import Efficiency, default_efficiency
from suanli.perf.engines import (
    MEASURED_KV_DTYPE,
    MEASURED_WEIGHT_DTYPES,
    Engine,
    decoding_of,
    get_engine,
    through,
    usual_engine,
)
from suanli.perf.serve import (
    decode_parts,
    kv_bytes_per_token_device,
    max_batch_that_fits,
    prefill_parts,
)
from suanli.perf.shape import shape_of
from suanli.plan.common import PlanResult, Progress, divisors
from suanli.plan.pool import PoolEntry
from suanli.plan.queueing import ReplicaLoad, replica_load

BATCH_LIMITS = (8, 16, 32, 64, 128, 256, 512)
MAX_REPLICAS = 100_000


@dataclass(frozen=True)
class ServeRequest:
    model: ModelArch
    rate: float  # requests per second
    input_len: int
    output_len: int
    pool: list[PoolEntry]
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    target_attainment: float = 0.99
    disaggregation: bool = True
    top: int = 5
    #: the engine every replica runs: its precisions and GQA reuse (None: the idealised one)
    engine: Engine | None = None


@dataclass(frozen=True)
class _Config:
    entry: PoolEntry
    weight_dtype: str
    kv_dtype: str
    tp: int
    max_batch: int
    prefill_s: float
    tpot: Callable[[float], float]
    #: the engine the replica runs where the planner chose it (a measured device's)
    engine: str | None = None


def _curve(xs: list[float], ys: list[float]) -> Callable[[float], float]:
    def f(b: float) -> float:
        if b <= xs[0]:
            return ys[0]
        i = min(bisect.bisect_left(xs, b), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (b - x0) / (x1 - x0) if x1 > x0 else y1

    return f


def _formats(entry: PoolEntry, engine: Engine | None = None) -> list[tuple[str, str]]:
    """(weights, KV cache) precisions to weigh on a chip: those it runs natively, cut to
    what the engine has kernels for (its KV cache in a precision it keeps)."""
    acc = entry.system.accelerator
    fp8 = acc.native("fp8")
    out = [("bf16", "bf16")]
    if fp8:
        out += [("fp8", "fp8")]
    out += [("int8", "fp8" if fp8 else "int8"), ("int4", "fp8" if fp8 else "int8")]
    if engine is None:
        return out
    p = engine.profile
    kept = []
    for wd, kvd in out:
        if wd not in p.weight_dtypes:
            continue
        if p.kv_dtypes is None or kvd not in p.kv_dtypes:
            kvd = engine.default_kv(wd)  # as `estimate serve` would: nothing unstated assumed
        kept.append((wd, kvd))
    return kept


#: what a device measured through an engine serves there (serve_lm's ONNX export)
MEASURED_FORMATS = [(wd, MEASURED_KV_DTYPE) for wd in MEASURED_WEIGHT_DTYPES]


def _configs(req: ServeRequest, entry: PoolEntry, e: Efficiency) -> list[_Config]:
    """Layouts for ``entry`` under the request's engine; with none asked for, under the
    engine its users run (`usual_engine`) in the formats that engine has kernels for and
    the idealised one in the rest, as `estimate serve` answers for each, and under each
    engine this device was measured through (`suanli calibrate --engine`): the planner
    chooses the engine where the rates to choose by exist."""

    def on(engine: Engine) -> list[_Config]:
        system = through(entry.system, engine.name)
        if system is None:
            return _engine_configs(req, entry, e, engine, _formats(entry, engine))
        here = dataclasses.replace(entry, system=system)
        return _engine_configs(req, here, e, engine, MEASURED_FORMATS)

    if req.engine is not None:
        return on(req.engine)
    acc = entry.system.accelerator
    by_engine: dict[Engine | None, list[tuple[str, str]]] = {None: []}
    for f in _formats(entry):
        by_engine.setdefault(usual_engine(acc, *f), []).append(f)
    out = [
        c for engine, fs in by_engine.items() for c in _engine_configs(req, entry, e, engine, fs)
    ]
    for name in acc.engine_variants or {}:
        out += on(get_engine(name))
    return out


def _engine_configs(
    req: ServeRequest,
    entry: PoolEntry,
    e: Efficiency,
    engine: Engine | None,
    formats: list[tuple[str, str]],
) -> list[_Config]:
    model = req.model
    s = shape_of(model)
    seq = req.input_len + req.output_len
    ctx = req.input_len + req.output_len / 2
    dpn = entry.system.devices_per_node
    out = []
    if engine is not None and not engine.runs_on(entry.system.accelerator):
        return []
    decoding = decoding_of(engine)
    label = engine.label if engine is not None else None
    for wd, kvd in formats:
        for tp in divisors(dpn):
            if model.heads % tp or tp > entry.count:
                continue
            mb = max_batch_that_fits(s, entry.system, tp, wd, kvd, seq, e, decoding)
            if mb < 1:
                continue
            pre = sum(
                prefill_parts(
                    model,
                    entry.system,
                    tp=tp,
                    batch=1,
                    input_len=req.input_len,
                    weight_dtype=wd,
                    eff=e,
                    decoding=decoding,
                ).values()
            )
            xs = [1.0]
            while xs[-1] * 2 <= min(mb, BATCH_LIMITS[-1]):
                xs.append(xs[-1] * 2)
            if xs[-1] < min(mb, BATCH_LIMITS[-1]):
                xs.append(float(min(mb, BATCH_LIMITS[-1])))
            ys = [
                sum(
                    decode_parts(
                        model,
                        entry.system,
                        tp=tp,
                        batch=b,
                        context=ctx,
                        weight_dtype=wd,
                        kv_dtype=kvd,
                        decoding=decoding,
                        eff=e,
                    ).values()
                )
                for b in xs
            ]
            out.append(_Config(entry, wd, kvd, tp, mb, pre, _curve(xs, ys), label))
            if tp * 2 > dpn:
                break
    return out


def _meets(load: ReplicaLoad, req: ServeRequest) -> bool:
    if not load.stable:
        return False
    if req.ttft_slo_s is not None and load.ttft_p99_s > req.ttft_slo_s:
        return False
    if req.tpot_slo_s is not None and load.tpot_p99_s > req.tpot_slo_s:
        return False
    return not (
        (req.ttft_slo_s is not None or req.tpot_slo_s is not None)
        and load.slo_attainment < req.target_attainment
    )


def _fewest(lo: int, ok: Callable[[int], bool]) -> int | None:
    """Smallest n >= lo with ok(n), assuming ok is monotone; None past MAX_REPLICAS."""
    n = max(1, lo)
    if ok(n):
        return n
    hi = n * 2
    while not ok(hi):
        if hi > MAX_REPLICAS:
            return None
        n, hi = hi, hi * 2
    while n + 1 < hi:
        mid = (n + hi) // 2
        n, hi = (n, mid) if ok(mid) else (mid, hi)
    return hi


def _price(entry: PoolEntry) -> float | None:
    return entry.price_usd_per_hour


def _usd_per_m(req: ServeRequest, usd_per_hour: float | None) -> float | None:
    if usd_per_hour is None:
        return None
    return usd_per_hour / (req.rate * req.output_len * 3600) * 1e6


def plan_serve(
    req: ServeRequest, eff: Efficiency | None = None, progress: Progress | None = None
) -> PlanResult:
    """Ranked serving options (cheapest per million output tokens first)."""
    t0 = time.perf_counter()
    e = eff if eff is not None else default_efficiency()
    rejected: Counter[str] = Counter()
    options: list[dict[str, Any]] = []
    evaluated = 0
    all_configs: list[_Config] = []
    for i, entry in enumerate(req.pool):
        if progress:
            progress(i, len(req.pool) + 1)
        configs = _configs(req, entry, e)
        vendor = entry.system.accelerator.vendor.lower()
        runs = req.engine is None or req.engine.runs_on(
            (through(entry.system, req.engine.name) or entry.system).accelerator
        )
        if not runs and req.engine is not None:
            rejected[f"engine: {req.engine.label} does not run on {vendor} chips"] += 1
        elif not configs and req.engine is not None:
            have = ", ".join(req.engine.profile.weight_dtypes)
            rejected[f"memory: weights do not fit in any precision of {req.engine.label} "
                     f"({have}) with the largest TP"] += 1  # fmt: skip
        elif not configs:
            rejected["memory: weights do not fit even at int4 with the largest TP"] += 1
        all_configs += configs
        for c in configs:
            for limit in BATCH_LIMITS:
                if limit > c.max_batch:
                    rejected["batch limit: KV cache does not fit"] += 1
                    break
                evaluated += 1
                opt = _colocated(req, c, limit, rejected)
                if opt is not None:
                    options.append(opt)
    if req.disaggregation and all_configs:
        if progress:
            progress(len(req.pool), len(req.pool) + 1)
        dis, n = _disaggregated(req, all_configs, rejected, e)
        evaluated += n
        options += dis
    options.sort(
        key=lambda o: (
            o["usd_per_million_output_tokens"] is None,
            o["usd_per_million_output_tokens"] or 0.0,
            o["num_devices"],
        )
    )
    result = PlanResult(
        options=_top(options, req.top),
        rejected=rejected,
        candidates_evaluated=evaluated,
        wall_s=time.perf_counter() - t0,
    )
    if not result.options:
        reason = rejected.most_common(1)[0][0] if rejected else "no chip in the pool"
        result.infeasible = (
            f"no serving layout of {req.model.display_name} meets the request "
            f"on this pool; the most common reason: {reason}"
        )
    return result


def _top(options: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for o in options:
        sig = (o["accelerator"], o["weight_dtype"], o["tp"], o["disaggregated"], o.get("engine"))
        if sig not in seen:
            seen.add(sig)
            out.append(o)
        if len(out) == k:
            break
    return out


def _colocated(
    req: ServeRequest, c: _Config, limit: int, rejected: Counter[str]
) -> dict[str, Any] | None:
    def load(n: int) -> ReplicaLoad:
        return replica_load(
            req.rate / n,
            req.output_len,
            c.prefill_s,
            c.tpot,
            limit,
            ttft_slo_s=req.ttft_slo_s,
            tpot_slo_s=req.tpot_slo_s,
        )

    lo = math.ceil(req.rate * max(c.prefill_s, req.output_len * c.tpot(limit) / limit))
    n = _fewest(lo, lambda k: _meets(load(k), req))
    if n is None:
        rejected["SLO: not met at any replica count (single-request latency too high)"] += 1
        return None
    if n * c.tp > c.entry.count:
        rejected["pool: not enough devices for the replicas needed"] += 1
        return None
    ld = load(n)
    price = _price(c.entry)
    usd_h = price * n * c.tp if price is not None else None
    return {
        "accelerator": c.entry.accelerator,
        "pool": c.entry.name,
        "num_devices": n * c.tp,
        "tp": c.tp,
        "replicas": n,
        "weight_dtype": c.weight_dtype,
        "kv_dtype": c.kv_dtype,
        "engine": c.engine,
        "max_batch": limit,
        "disaggregated": False,
        "usd_per_million_output_tokens": _usd_per_m(req, usd_h),
        "usd_per_hour": usd_h,
        "ttft_p50_s": ld.ttft_p50_s,
        "ttft_p99_s": ld.ttft_p99_s,
        "tpot_p50_s": ld.tpot_p50_s,
        "tpot_p99_s": ld.tpot_p99_s,
        "slo_attainment": ld.slo_attainment,
        "mean_batch": ld.mean_batch,
        "why": _why(c, ld, price),
    }


def _why(c: _Config, ld: ReplicaLoad, price: float | None) -> str:
    measured = c.entry.system.accelerator.measured_engine
    through = f" through {measured} (measured here)" if measured else ""
    text = (
        f"{c.weight_dtype} weights, {c.kv_dtype} KV on tp {c.tp}{through}; prefill "
        f"{1e3 * c.prefill_s:.0f} ms/request keeps devices {100 * ld.rho_prefill:.0f}% busy "
        f"prefilling; mean decode batch {ld.mean_batch:.1f}"
    )
    if price is None:
        text += "; no public price for this chip, so cost is unknown"
    return text


def _disaggregated(
    req: ServeRequest, configs: list[_Config], rejected: Counter[str], e: Efficiency
) -> tuple[list[dict[str, Any]], int]:
    """Prefill pool x decode pool pairs, each sized on its own (Splitwise / DistServe)."""
    s = shape_of(req.model)
    out: list[dict[str, Any]] = []
    evaluated = 0
    # per chip and weight format: the prefill config with the cheapest prefill-seconds,
    # and every decode config (few per chip)
    best_prefill: dict[tuple[str, str, str | None], _Config] = {}
    for c in configs:
        key = (c.entry.name, c.weight_dtype, c.engine)
        cost = c.prefill_s * c.tp * (_price(c.entry) or 1.0)
        if key not in best_prefill or cost < best_prefill[key].prefill_s * best_prefill[key].tp * (
            _price(best_prefill[key].entry) or 1.0
        ):
            best_prefill[key] = c
    for p in best_prefill.values():
        for d in configs:
            if (d.weight_dtype, d.kv_dtype, d.engine) != (p.weight_dtype, p.kv_dtype, p.engine):
                continue  # the KV cache passes between pools of one format and one engine
            evaluated += 1
            kv_bytes = req.input_len * kv_bytes_per_token_device(s, 1, d.kv_dtype)
            link = min(p.entry.system.inter_bw * p.tp, d.entry.system.inter_bw * d.tp)
            transfer = kv_bytes / (link * e.nic_eff) + p.entry.system.inter_latency_s

            def pre_ok(n: int, p: _Config = p, d: _Config = d, transfer: float = transfer) -> bool:
                ld = replica_load(
                    req.rate / n, 1, p.prefill_s, lambda b: 0.0, 1 << 30, extra_ttft_s=transfer
                )
                return (
                    ld.stable
                    and ld.rho_prefill <= 0.9
                    and (req.ttft_slo_s is None or ld.ttft_p99_s + d.tpot(1.0) <= req.ttft_slo_s)
                )

            n_p = _fewest(math.ceil(req.rate * p.prefill_s), pre_ok)
            limit = max(b for b in BATCH_LIMITS if b <= d.max_batch) if d.max_batch >= 8 else 0
            if n_p is None or limit == 0:
                rejected["disaggregated: prefill pool cannot meet TTFT"] += 1
                continue
            pre_ld = replica_load(
                req.rate / n_p, 1, p.prefill_s, lambda b: 0.0, 1 << 30, extra_ttft_s=transfer
            )

            def dec_load(
                n: int, d: _Config = d, limit: int = limit, extra: float = pre_ld.ttft_p99_s
            ) -> ReplicaLoad:
                return replica_load(
                    req.rate / n,
                    req.output_len,
                    0.0,
                    d.tpot,
                    limit,
                    prefill_here=False,
                    extra_ttft_s=extra,
                    ttft_slo_s=req.ttft_slo_s,
                    tpot_slo_s=req.tpot_slo_s,
                )

            n_d = _fewest(
                math.ceil(req.rate * req.output_len * d.tpot(limit) / limit),
                lambda n: _meets(dec_load(n), req),
            )
            if n_d is None:
                rejected["disaggregated: decode pool cannot meet TPOT"] += 1
                continue
            same_pool = p.entry.name == d.entry.name
            used = n_p * p.tp + n_d * d.tp
            if (
                (same_pool and used > p.entry.count)
                or n_p * p.tp > p.entry.count
                or (n_d * d.tp > d.entry.count)
            ):
                rejected["pool: not enough devices for the replicas needed"] += 1
                continue
            ld = dec_load(n_d)
            pp_, dp_ = _price(p.entry), _price(d.entry)
            usd_h = (
                (pp_ * n_p * p.tp + dp_ * n_d * d.tp)
                if pp_ is not None and (dp_ is not None)
                else None
            )
            out.append(
                {
                    "accelerator": f"{p.entry.accelerator}->{d.entry.accelerator}",
                    "pool": f"{p.entry.name}->{d.entry.name}",
                    "num_devices": used,
                    "tp": d.tp,
                    "replicas": n_d,
                    "weight_dtype": d.weight_dtype,
                    "kv_dtype": d.kv_dtype,
                    "engine": d.engine,
                    "max_batch": limit,
                    "disaggregated": True,
                    "prefill": {
                        "accelerator": p.entry.accelerator,
                        "pool": p.entry.name,
                        "tp": p.tp,
                        "replicas": n_p,
                        "devices": n_p * p.tp,
                        "prefill_s": p.prefill_s,
                        "utilization": pre_ld.rho_prefill,
                    },
                    "decode": {
                        "accelerator": d.entry.accelerator,
                        "pool": d.entry.name,
                        "tp": d.tp,
                        "replicas": n_d,
                        "devices": n_d * d.tp,
                        "mean_batch": ld.mean_batch,
                    },
                    "kv_transfer_s": transfer,
                    "kv_transfer_bytes": kv_bytes,
                    "usd_per_million_output_tokens": _usd_per_m(req, usd_h),
                    "usd_per_hour": usd_h,
                    "ttft_p50_s": ld.ttft_p50_s - pre_ld.ttft_p99_s + pre_ld.ttft_p50_s,
                    "ttft_p99_s": ld.ttft_p99_s,
                    "tpot_p50_s": ld.tpot_p50_s,
                    "tpot_p99_s": ld.tpot_p99_s,
                    "slo_attainment": ld.slo_attainment,
                    "mean_batch": ld.mean_batch,
                    "why": (
                        f"prefill on {n_p} x tp{p.tp} {p.entry.accelerator} "
                        f"({1e3 * p.prefill_s:.0f} ms each), decode on {n_d} x tp{d.tp} "
                        f"{d.entry.accelerator} at mean batch {ld.mean_batch:.1f}; KV transfer "
                        f"{kv_bytes / 1e6:.0f} MB in {1e3 * transfer:.1f} ms"
                    ),
                }
            )
    return out, evaluated
