"""Pipelines across two chip types: early stages on one, late stages on the other.

Stages must take equal time for a pipeline to flow, so each type gets layers in
proportion to its speed: with ``p_A`` stages of per-layer time ``t_A`` and
``p_B`` of ``t_B``, type A takes ``L * (p_A / t_A) / (p_A / t_A + p_B / t_B)``
layers (as in HetPipe and Metis). Both types share the data-parallel width and
tensor-parallel size so that micro-batches line up; the boundary between them
crosses the scale-out network at the slower type's NIC.

Per-layer times come from `perf.estimate_train` on each type alone, so the
split inherits the same calibrated model; the step is
``(m + p - 1) * slowest stage`` plus the exposed DP traffic of the slower side.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

from suanli.catalog.types import ModelArch
from suanli.perf import TrainLayout, estimate_train
from suanli.perf import collectives as coll
from suanli.perf.efficiency import Efficiency
from suanli.perf.memory import train_memory
from suanli.perf.shape import shape_of
from suanli.perf.train import ACT_BYTES, model_flops_per_token
from suanli.plan.common import divisors
from suanli.plan.pool import PoolEntry
from suanli.plan.train import TrainRequest, _violates, global_batches, layout_dict
from suanli.units import GB


def _pow2_upto(n: int) -> list[int]:
    out, k = [], 1
    while k <= n:
        out.append(k)
        k *= 2
    return out


def plan_hetero(req: TrainRequest, e: Efficiency) -> tuple[list[dict[str, Any]], int, Counter[str]]:
    """Two-type pipeline options for every ordered pair of pool entries."""
    model = req.model
    rejected: Counter[str] = Counter()
    options: list[dict[str, Any]] = []
    evaluated = 0
    submodels: dict[int, ModelArch] = {}

    def sub(layers: int) -> ModelArch:
        if layers not in submodels:
            submodels[layers] = dataclasses.replace(model, layers=layers)
        return submodels[layers]

    for a in req.pool:
        for b in req.pool:
            if a is b:
                continue
            dpn = min(a.system.devices_per_node, b.system.devices_per_node)
            tp = max(t for t in divisors(model.heads) if t <= dpn)
            for gb in global_batches(req.seq_len, req.global_batch):
                for dp in _pow2_upto(min(a.count, b.count) // tp):
                    if gb % dp:
                        continue
                    for p_a in _pow2_upto(min(a.count // (tp * dp), model.layers // 2)):
                        for p_b in _pow2_upto(min(b.count // (tp * dp), model.layers // 2)):
                            evaluated += 1
                            opt = _evaluate(req, e, a, b, tp, dp, p_a, p_b, gb, sub)
                            if isinstance(opt, str):
                                rejected[f"hetero: {opt}"] += 1
                                continue
                            reason = _violates(req, opt)
                            if reason:
                                rejected[reason] += 1
                                continue
                            options.append(opt)
    return options, evaluated, rejected


def _evaluate(
    req: TrainRequest,
    e: Efficiency,
    a: PoolEntry,
    b: PoolEntry,
    tp: int,
    dp: int,
    p_a: int,
    p_b: int,
    gb: int,
    sub: Any,
) -> dict[str, Any] | str:
    model = req.model
    layers = model.layers
    pp = p_a + p_b
    base = TrainLayout(
        tp=tp,
        pp=pp,
        dp=dp,
        zero=1 if dp > 1 else 0,
        global_batch=gb,
        seq_len=req.seq_len,
        dtype=req.dtype,
        sequence_parallel=tp > 1,
    )
    for rc in ("none", "selective", "full"):
        lay = dataclasses.replace(base, recompute=rc)
        est_a = estimate_train(model, a.system, lay, e, check=False)
        est_b = estimate_train(model, b.system, lay, e, check=False)
        t_a, t_b = est_a.extra["layer_s"], est_b.extra["layer_s"]
        w_a, w_b = p_a / t_a, p_b / t_b
        l_a = min(max(p_a, round(layers * w_a / (w_a + w_b))), layers - p_b)
        l_b = layers - l_a
        # type A's stages lead the whole pipeline: its first stage holds pp micro-batches
        mem_a = train_memory(
            shape_of(sub(l_a)), dataclasses.replace(lay, pp=p_a), e.workspace_gb, pipeline_depth=pp
        )
        mem_b = train_memory(shape_of(sub(l_b)), dataclasses.replace(lay, pp=p_b), e.workspace_gb)
        fits = (
            mem_a.total <= a.system.accelerator.memory_gb * GB
            and mem_b.total <= b.system.accelerator.memory_gb * GB
        )
        if fits:
            break
    else:
        return "does not fit even with full recompute"
    stage_a = math.ceil(l_a / p_a) * t_a
    stage_b = math.ceil(l_b / p_b) * t_b + est_b.extra["head_s"]
    m = gb // dp
    tokens = req.seq_len
    boundary = coll.p2p_s(
        tokens * model.hidden * ACT_BYTES / tp,
        True,
        a.system if a.system.inter_bw < b.system.inter_bw else b.system,
        e,
    )
    step_pipe = (m + pp - 1) * max(stage_a, stage_b) + 2 * (m + pp - 1) * boundary
    # DP traffic and optimizer: each side's share of the per-type figures (they scale
    # with the parameters a device holds, i.e. with the layers per stage).
    side = []
    for est, l_x, p_x in ((est_a, l_a, p_a), (est_b, l_b, p_b)):
        share = (l_x / p_x) / (layers / pp)
        side.append(share * (est.breakdown_s["dp_comm_exposed"] + est.breakdown_s["optimizer"]))
    step = step_pipe + max(side)
    n_a, n_b = tp * dp * p_a, tp * dp * p_b
    n = n_a + n_b
    tokens_step = gb * req.seq_len
    steps = req.tokens / tokens_step
    t_total = steps * step
    flops = model_flops_per_token(shape_of(model), req.seq_len) * tokens_step
    peak = (
        n_a * a.system.accelerator.peak(req.dtype) + n_b * b.system.accelerator.peak(req.dtype)
    ) * 1e12
    busy_a = min(1.0, m * stage_a / step)
    busy_b = min(1.0, m * stage_b / step)
    power = 0.0
    for x, nx, busy in ((a, n_a, busy_a), (b, n_b, busy_b)):
        acc = x.system.accelerator
        idle = acc.idle_w if acc.idle_w is not None else 0.3 * acc.tdp_w
        power += nx * (idle + busy * (acc.tdp_w - idle))
    energy_step = power * step * a.system.pue
    price_a, price_b = a.price_usd_per_hour, b.price_usd_per_hour
    rental = price_a is not None and price_b is not None
    if price_a is not None and price_b is not None:
        cost = (price_a * n_a + price_b * n_b) * t_total / 3600
    else:  # no rental price for one side: electricity only
        cost = energy_step * steps / 3.6e6 * a.system.usd_per_kwh
    layout = layout_dict(lay)
    estimate = {
        "step_time_s": step,
        "tokens_per_s": tokens_step / step,
        "tokens_per_s_per_device": tokens_step / step / n,
        "model_tflops_per_device": flops / step / n / 1e12,
        "mfu": flops / (step * peak),
        "memory_gb": {"stage_a": mem_a.total / GB, "stage_b": mem_b.total / GB},
        "fits_in_memory": True,
        "breakdown_s": {
            "stage_a_s": stage_a,
            "stage_b_s": stage_b,
            "pipeline": step_pipe,
            "pp_bubble": (pp - 1) * max(stage_a, stage_b),
            "dp_and_optimizer_exposed": max(side),
        },
        "energy_j": energy_step,
        "cost_usd": cost / steps,
    }
    slower = "first" if stage_a > stage_b else "last"
    return {
        "accelerator": f"{a.accelerator}+{b.accelerator}",
        "pool": f"{a.name}+{b.name}",
        "num_devices": n,
        "layout": layout,
        "stages": [
            {
                "accelerator": a.accelerator,
                "pool": a.name,
                "devices": n_a,
                "stages": p_a,
                "layers": l_a,
                "layers_per_stage": math.ceil(l_a / p_a),
            },
            {
                "accelerator": b.accelerator,
                "pool": b.name,
                "devices": n_b,
                "stages": p_b,
                "layers": l_b,
                "layers_per_stage": math.ceil(l_b / p_b),
            },
        ],
        "estimate": estimate,
        "time_to_train_s": t_total,
        "cost_usd": cost,
        "cost_basis": "rental" if rental else "electricity only (no public price)",
        "energy_j": energy_step * steps,
        "why": (
            f"{l_a} layers on {p_a} {a.accelerator} stages and {l_b} on {p_b} "
            f"{b.accelerator} stages balance per-layer times {1e3 * t_a:.1f} vs "
            f"{1e3 * t_b:.1f} ms; the {slower} part paces the pipeline"
        ),
    }
