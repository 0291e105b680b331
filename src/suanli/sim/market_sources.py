"""Where the simulated market's buyers come from, and the serving demand of Azure's LLM trace.

Training jobs: the pool of real trace jobs (openb pods, Gavel Philly and, unless turned
off, Sia's two workloads; `suanli.sim.market_demand`) drawn as a Poisson process.

Serving: each of the Azure LLM inference trace's two services (conversation, code)
becomes a long-running serving demand. The trace holds one hour of arrivals; it is cut
into windows of ``serve_window_min`` and, as nothing is known of the other hours of the
day, replayed back to back over the horizon (window k of the run is window k mod n of
the trace). Per window: the request rate (requests / seconds the window covers, times
``serve_scale``) and the mean context and generated tokens. The serving planner
(`suanli.plan.serve.plan_serve`, as ``suanli plan serve`` calls it) sizes, per inventory
type, the fewest devices of that type that hold the rate within the p99 TTFT and TPOT
SLOs, with at most the inventory's devices of the type on offer. The window then orders
the type that is cheapest at list price (devices x list), on-demand at list price (a
service is not spot-tolerant: it cannot lose its devices mid-window), for the window.
Rate and lengths are rounded up to a 2^(1/4) grid (steps under 19%) before planning, so a
plan covers a little more than the window's demand and windows share cached plans.

The model, llama-3.1-70b: the trace is the one Splitwise (ISCA'24) characterised with
Llama2-70B-class models, and Llama 3.1's 128k context holds the trace's longest prompt
(14,050 tokens), which llama-3-70b's 8,192 do not. Types with no catalog accelerator (the
inventory's undisclosed series) cannot be sized and are skipped for serving.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from suanli.catalog.loader import accelerators, get_model
from suanli.plan.pool import pool_from_accelerators
from suanli.plan.serve import ServeRequest, plan_serve
from suanli.sim.market_demand import (
    SIA_REFERENCE_GPU,
    Inventory,
    JobSpec,
    read_trace_jobs,
    sample_demand,
)
from suanli.sim.traces import TraceError

if TYPE_CHECKING:
    from suanli.sim.market import MarketParams

AZURE_SERVICES = {
    "azure-conv": "azure_llm_inference_2023_conv.csv",
    "azure-code": "azure_llm_inference_2023_code.csv",
}
AZURE_FILES = tuple(AZURE_SERVICES.values())
SIA_NOTE = (
    "Sia: each job trains for its application's epochs in Sia's simulator over its data "
    "set's training split (market_demand.SIA_TRAINING; Sia's files give no length), at the "
    f"measured single-{SIA_REFERENCE_GPU} peak samples/s x replicas (the reference chip of "
    "Gavel's jobs; linear scaling, optimistic for big gangs) (assumed)"
)


@dataclass(frozen=True, slots=True)
class ServeWindow:
    """One window of a serving trace: its load, and the seconds of trace it covers."""

    requests: int
    span_s: float
    input_len: float  # mean context tokens
    output_len: float  # mean generated tokens

    @property
    def rate(self) -> float:
        return self.requests / self.span_s


def read_azure_windows(path: Path, window_s: float) -> list[ServeWindow]:
    """An Azure LLM inference trace (TIMESTAMP, ContextTokens, GeneratedTokens) in windows
    of ``window_s`` from its first request; a last window covering under a quarter of
    ``window_s`` joins the one before."""
    times: list[float] = []
    ins: list[int] = []
    outs: list[int] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror})") from exc
    if not lines or lines[0].strip() != "TIMESTAMP,ContextTokens,GeneratedTokens":
        raise TraceError(f"{path}: expected the header TIMESTAMP,ContextTokens,GeneratedTokens")
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            stamp, ctx, gen = line.split(",")
            day, clock = stamp.split(" ")
            h, m, s = clock.split(":")
            times.append(
                date.fromisoformat(day).toordinal() * 86_400.0
                + int(h) * 3600
                + int(m) * 60
                + float(s)
            )
            ins.append(int(ctx))
            outs.append(int(gen))
        except ValueError as exc:
            raise TraceError(f"{path} line {n}: {exc}") from exc
    if not times:
        raise TraceError(f"{path}: no requests")
    t = np.array(times) - min(times)
    span = max(float(t.max()), 1.0)
    edges = [k * window_s for k in range(max(1, math.ceil(span / window_s)))] + [span]
    if len(edges) > 2 and edges[-1] - edges[-2] < window_s / 4:
        del edges[-2]
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    i, o = np.array(ins, dtype=float), np.array(outs, dtype=float)
    out = []
    for k in range(len(edges) - 1):
        sel = which == k
        if sel.any():
            out.append(
                ServeWindow(
                    int(sel.sum()),
                    edges[k + 1] - edges[k],
                    float(i[sel].mean()),
                    float(o[sel].mean()),
                )
            )
    return out


def _up(x: float) -> float:
    """``x`` rounded up to the grid 2^(k/4)."""
    return float(2 ** (math.ceil(4 * math.log2(x) - 1e-9) / 4))


@functools.lru_cache(maxsize=4096)
def serving_plan(
    model: str,
    accelerator: str,
    count: int,
    rate: float,
    input_len: int,
    output_len: int,
    ttft_s: float,
    tpot_s: float,
) -> tuple[int, str] | None:
    """Fewest devices of one type (at most ``count``) that serve ``rate`` requests/s within
    the p99 SLOs, and the layout; None: no layout does. Cached per (type, rate bucket)."""
    req = ServeRequest(
        get_model(model),
        rate,
        input_len,
        output_len,
        pool_from_accelerators([accelerator], count),
        ttft_slo_s=ttft_s,
        tpot_slo_s=tpot_s,
        top=1,
    )
    res = plan_serve(req)
    if not res.options:
        return None
    o = res.options[0]
    shape = f"tp{o['tp']} x {o['replicas']}"
    if o["disaggregated"]:
        pre = o["prefill"]
        shape = f"prefill tp{pre['tp']} x {pre['replicas']} + decode {shape}"
    return int(o["num_devices"]), f"{o['weight_dtype']} {shape}"


def cheapest_layout(
    w: ServeWindow, types: list[str], inventory: Inventory, params: MarketParams
) -> tuple[str, int, str] | None:
    """The type whose devices hold the window's load for least at list price: the type,
    its devices and their layout; None: no type can (module docstring)."""
    rate = _up(w.rate * params.serve_scale)
    input_len, output_len = math.ceil(_up(w.input_len)), math.ceil(_up(max(w.output_len, 1.0)))
    best: tuple[int, int, str, str] | None = None
    for t in types:
        got = serving_plan(
            params.serve_model,
            t,
            inventory.devices_of(t),
            rate,
            input_len,
            output_len,
            params.serve_ttft_s,
            params.serve_tpot_s,
        )
        if got is None:
            continue
        cost = got[0] * inventory.list_price_micro[t]
        if best is None or (cost, got[0]) < best[:2]:
            best = (cost, got[0], t, got[1])
    return None if best is None else (best[2], best[1], best[3])


def _home_region(inventory: Inventory, typ: str) -> frozenset[str]:
    """The region with the most devices of the type (serving with ``any_region=False``)."""
    pools = [p for p in inventory.pools if p.accelerator == typ]
    return frozenset({max(pools, key=lambda p: p.devices).region})


def serving_demand(
    data_dir: Path, inventory: Inventory, params: MarketParams, first_id: int
) -> tuple[list[JobSpec], dict[str, dict[str, Any]], list[str]]:
    """On-demand orders of the Azure services, one per window (module docstring)."""
    window_s = params.serve_window_min * 60
    horizon_s = params.horizon_h * 3600
    catalog = accelerators()
    types = [t for t in inventory.types if t in catalog]
    skipped = [t for t in inventory.types if t not in catalog]
    price = inventory.list_price_micro
    specs: list[JobSpec] = []
    info: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for source, name in AZURE_SERVICES.items():
        windows = read_azure_windows(data_dir / name, window_s)
        picks = [cheapest_layout(w, types, inventory, params) for w in windows]
        chosen: Counter[str] = Counter()
        device_s = 0.0
        unserved = 0
        for k in range(math.ceil(horizon_s / window_s)):
            pick = picks[k % len(windows)]
            if pick is None:
                unserved += 1
                continue
            typ, units, _ = pick
            start = k * window_s
            work_s = min(window_s, horizon_s - start)
            specs.append(
                JobSpec(
                    first_id + len(specs),
                    source,
                    typ,
                    units,
                    work_s,
                    start,
                    False,
                    price[typ],
                    frozenset() if params.any_region else _home_region(inventory, typ),
                )
            )
            chosen[typ] += 1
            device_s += units * work_s
        reqs = sum(w.requests for w in windows)
        info[source] = {
            "trace_requests": reqs,
            "trace_windows": len(windows),
            "jobs": sum(chosen.values()),
            "unserved_windows": unserved,
            "requests_per_s": params.serve_scale * reqs / sum(w.span_s for w in windows),
            "mean_input_tokens": sum(w.input_len * w.requests for w in windows) / reqs,
            "mean_output_tokens": sum(w.output_len * w.requests for w in windows) / reqs,
            "orders_by_type": dict(chosen),
            "device_h": device_s / 3600,
        }
        layouts = sorted({f"{p[1]} {p[0]} ({p[2]})" for p in picks if p is not None})
        notes.append(f"{source}: a window takes " + (" or ".join(layouts) or "no feasible layout"))
    notes.insert(
        0,
        f"serving: {params.serve_model} sized by the serving planner for p99 TTFT <= "
        f"{params.serve_ttft_s:g} s and TPOT <= {1e3 * params.serve_tpot_s:g} ms; the one "
        f"hour of Azure arrivals replayed back to back in {params.serve_window_min:g} min "
        f"windows, rate x {params.serve_scale:g}; each window an on-demand order of the type "
        "cheapest at list price (assumed: no diurnal pattern, rate and lengths rounded up "
        "to a 2^(1/4) grid)",
    )
    if skipped:
        notes.append(
            f"serving skips {', '.join(skipped)}: no catalog accelerator to size them with"
        )
    return specs, info, notes


def build_demand(
    data_dir: Path, inventory: Inventory, params: MarketParams
) -> tuple[list[JobSpec], dict[str, Any]]:
    """Every buyer of one run, and what each source gave (``sources``) with the
    assumptions made (``notes``)."""
    horizon_s = params.horizon_h * 3600
    pool = read_trace_jobs(data_dir, sia=params.sia)
    specs, drawn_info = sample_demand(
        inventory,
        pool,
        horizon_s=horizon_s,
        load=params.load,
        spot_share=params.spot_share,
        willingness=params.willingness,
        seed=params.seed,
        max_jobs=params.max_jobs,
        any_region=params.any_region,
    )
    info: dict[str, Any] = dict(drawn_info)
    drawn = Counter(s.source for s in specs)
    sources: dict[str, dict[str, Any]] = {
        src: {"trace_jobs": n, "jobs": drawn[src]}
        for src, n in Counter(j.source for j in pool).items()
    }
    notes = [SIA_NOTE] if params.sia else []
    serving: list[JobSpec] = []
    if params.serving:
        serving, serve_info, serve_notes = serving_demand(data_dir, inventory, params, len(specs))
        sources.update(serve_info)
        notes += serve_notes
    for src, v in sources.items():  # what the run got from each source, on average
        mine = [s for s in (*specs, *serving) if s.source == src]
        v["mean_units"] = sum(s.units for s in mine) / len(mine) if mine else 0.0
        v["mean_h"] = sum(s.work_s for s in mine) / 3600 / len(mine) if mine else 0.0
    info["serving_jobs"] = len(serving)
    info["serving_offered_load"] = sum(s.units * s.work_s for s in serving) / (
        inventory.devices * horizon_s
    )
    info["sources"] = sources
    info["notes"] = notes
    return specs + serving, info
