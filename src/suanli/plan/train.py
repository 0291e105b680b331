"""Training planner: the best chips, device count and parallel layout for T tokens.

The search, per accelerator type on offer and per device count:

1. Device counts: the one asked for, or 1, 2, 4 and whole nodes (1, 2, 3, 4, 6, 8,
   12, 16, … nodes) up to the limit and the pool's stock.
2. A memory floor prunes whole device counts at once: weights, gradients and
   Adam states need 16 bytes per parameter even fully sharded (ZeRO-3).
3. Layouts: tp divides the heads and stays in a node; pp leaves at most 10% of
   stage slots empty; cp for long sequences; ep for MoE; dp is what is left.
   Dominated choices are not costed: sequence parallelism is always on with
   tp > 1 (less memory and elementwise work, same traffic); ZeRO-1 (pp > 1) or
   ZeRO-2 (pp = 1) dominate stage 0 (same traffic, less memory), ZeRO-3 is
   tried where it must (under a pipeline: resharding each micro-batch, where
   ZeRO-1 does not fit); recompute is the least that fits (none, then
   selective, then full). Pipelines also get the split that balances the
   output head on the last stage (`balanced_split`), where it paces faster.
4. Each surviving candidate gets a memory check and, if it fits, a full
   `perf.estimate_train`; options are ranked by the objective within the
   deadline and budget. Heterogeneous pools also get two-type pipelines
   (`plan.hetero`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from suanli.catalog.types import ModelArch
from suanli.errors import InvalidLayoutError
from suanli.perf import TrainLayout, estimate_train
from suanli.perf.compress import (
    teacher_cost,
    teacher_layout,
    teacher_memory_bytes,
    with_teacher,
)
from suanli.perf.efficiency import Efficiency, default_efficiency
from suanli.perf.memory import stage_activations, train_memory
from suanli.perf.shape import ModelShape, shape_of
from suanli.plan.common import InfeasibleError, PlanResult, Progress, divisors
from suanli.plan.pool import PoolEntry
from suanli.units import GB

OBJECTIVES = ("time", "cost", "energy")
MAX_PP = 64
MICRO_BATCHES = (1, 2, 4, 8)


@dataclass(frozen=True)
class TrainRequest:
    model: ModelArch
    tokens: float
    pool: list[PoolEntry]
    num_devices: int | None = None
    max_devices: int | None = None
    global_batch: int | None = None
    seq_len: int = 4096
    dtype: str = "bf16"
    deadline_hours: float | None = None
    budget_usd: float | None = None
    objective: str = "time"
    top: int = 5
    #: Try pipelines across two chip types (meaningful for a real pool with stock limits).
    hetero: bool = True
    #: measured / predicted step time per chip for this model's family, from finished jobs
    #: (``GET /v1/corrections``); a chip without one is taken as predicted
    corrections: dict[str, float] = dataclasses.field(default_factory=dict)
    #: distillation: a frozen teacher whose forward pass every step also runs
    teacher: ModelArch | None = None


def device_counts(
    stock: int, devices_per_node: int, exact: int | None, limit: int | None
) -> list[int]:
    """Device counts to try: the exact one, or a few per node and whole-node steps."""
    cap = min(stock, limit) if limit else stock
    if exact is not None:
        return [exact] if exact <= stock else []
    out = {n for n in (1, 2, 4) if n < devices_per_node and n <= cap}
    k = 1
    while k * devices_per_node <= cap:
        out.add(k * devices_per_node)
        # 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... nodes
        k = k + 1 if k < 4 else (k * 3 // 2 if (k & (k - 1)) == 0 else k * 4 // 3)
    return sorted(out)


def global_batches(seq_len: int, given: int | None) -> list[int]:
    """The given global batch, or powers of two giving 1-4 M tokens per step."""
    if given is not None:
        return [given]
    out = [g for g in (2**i for i in range(0, 16)) if 1e6 <= g * seq_len <= 4.2e6]
    return out or [max(1, int(2e6 // seq_len))]


def memory_floor_devices(model: ModelArch, memory_gb: float, workspace_gb: float) -> int:
    """Fewest devices that can hold fully sharded weights, gradients and Adam states."""
    params = shape_of(model).total_params
    return math.ceil(16 * params / ((memory_gb - workspace_gb) * GB))


def _layout_family(
    model: ModelArch, n: int, dpn: int, seq_len: int
) -> list[tuple[int, int, int, int]]:
    """(tp, pp, cp, ep) choices for ``n`` devices (dp = n / (tp*pp*cp))."""
    out = []
    heads, kv, layers = model.heads, model.kv_heads, model.layers
    # TP stays inside a node and tiles it evenly (NVLink/HCCS domains are node-sized)
    tps = [
        t
        for t in divisors(n)
        if dpn % t == 0 and heads % t == 0 and (model.mla is not None or kv % t == 0 or t % kv == 0)
    ]
    # context parallelism only pays for long sequences (>= 16k tokens per cp rank pair)
    cps = [1] + [c for c in (2, 4, 8) if seq_len >= 8192 * c and seq_len % (2 * c) == 0]
    moe = model.moe
    for tp in tps:
        for cp in cps:
            if (n // tp) % cp:
                continue
            for pp in divisors(n // (tp * cp)):
                if pp > min(MAX_PP, layers):
                    break
                slots = -(-layers // pp) * pp
                if (slots - layers) / layers > 0.10:
                    continue
                dp = n // (tp * cp * pp)
                eps = [1]
                if moe is not None:
                    eps = [e for e in divisors(moe.num_experts) if (dp * cp) % e == 0 and e <= 64]
                for ep in eps:
                    out.append((tp, pp, cp, ep))
    return out


def plan_train(
    req: TrainRequest, eff: Efficiency | None = None, progress: Progress | None = None
) -> PlanResult:
    """Search layouts and hardware; options best first (see module docstring)."""
    t0 = time.perf_counter()
    e = eff if eff is not None else default_efficiency()
    if req.objective not in OBJECTIVES:
        raise InfeasibleError(f"objective must be one of {', '.join(OBJECTIVES)}")
    model = req.model
    s = shape_of(model)
    splits: dict[int, tuple[int, int] | None] = {}  # pp -> balanced (first, last) layers
    rejected: Counter[str] = Counter()
    options: list[dict[str, Any]] = []
    evaluated = 0
    work = [
        (entry, n)
        for entry in req.pool
        for n in device_counts(
            entry.count, entry.system.devices_per_node, req.num_devices, req.max_devices
        )
    ]
    floors: dict[str, int] = {}
    for i, (entry, n) in enumerate(work):
        if progress:
            progress(i, len(work))
        sys_ = entry.system
        acc = sys_.accelerator
        floor = floors.setdefault(
            entry.name, memory_floor_devices(model, acc.memory_gb, e.workspace_gb)
        )
        if n < floor:
            rejected["memory: too few devices even fully sharded"] += 1
            continue
        cap = acc.memory_gb * GB
        for gb in global_batches(req.seq_len, req.global_batch):
            for tp, pp, cp, ep in _layout_family(model, n, sys_.devices_per_node, req.seq_len):
                dp = n // (tp * pp * cp)
                if pp not in splits:
                    splits[pp] = balanced_split(model, pp)
                zeros = [0] if dp * cp == 1 else ([1] if pp > 1 else [2, 3])
                for zero in zeros:
                    for mb in MICRO_BATCHES:
                        if gb % (dp * mb):
                            if mb == 1:
                                rejected["global batch not divisible by dp"] += 1
                            break
                        m = gb // (dp * mb)
                        vpps = [1] + [
                            v for v in (2, 4) if pp > 1 and m % pp == 0 and pp * v <= model.layers
                        ]
                        for vpp in vpps:
                            base = TrainLayout(
                                tp=tp,
                                pp=pp,
                                dp=dp,
                                cp=cp,
                                ep=ep,
                                vpp=vpp,
                                zero=zero,
                                micro_batch=mb,
                                global_batch=gb,
                                seq_len=req.seq_len,
                                dtype=req.dtype,
                                sequence_parallel=tp > 1,
                            )
                            room, teacher = cap, None
                            if req.teacher is not None:  # the teacher's share first
                                try:
                                    lay_t = teacher_layout(req.teacher, base)
                                except InvalidLayoutError:
                                    rejected["the teacher cannot run on this layout"] += 1
                                    continue
                                room -= teacher_memory_bytes(req.teacher, lay_t)
                            variants = _fitting_variants(s, base, splits[pp], room, e)
                            for chosen in variants:
                                if chosen is None:
                                    rejected["memory: does not fit even with full recompute"] += 1
                                    continue
                                evaluated += 1
                                est = estimate_train(model, sys_, chosen, e, check=False)
                                if req.teacher is not None:  # costed once for the variants
                                    teacher = teacher or teacher_cost(req.teacher, base, sys_, e)
                                    est = with_teacher(est, chosen, teacher, sys_)
                                opt = _option(req, entry, n, chosen, est)
                                reason = _violates(req, opt)
                                if reason:
                                    rejected[reason] += 1
                                    continue
                                options.append(opt)
    if progress:
        progress(len(work), len(work))
    result = PlanResult(options=[], rejected=rejected)
    # two-type pipelines do not cost a teacher: with one, only single types are planned
    if req.hetero and len(req.pool) > 1 and req.num_devices is None and req.teacher is None:
        from suanli.plan.hetero import plan_hetero

        hetero, n_eval, rej = plan_hetero(req, e)
        evaluated += n_eval
        rejected.update(rej)
        best_single = _best(options, req.objective)
        for h in hetero:
            h["beats_best_single_type"] = best_single is None or (
                _key(h, req.objective) < _key(best_single, req.objective)
            )
        options.extend(hetero)
    options.sort(key=lambda o: _key(o, req.objective))
    result.options = _diverse_top(options, req.top)
    result.candidates_evaluated = evaluated
    result.wall_s = time.perf_counter() - t0
    if not result.options:
        result.infeasible = explain_infeasible(req, rejected, e)
    return result


def balanced_split(model: ModelArch, pp: int) -> tuple[int, int] | None:
    """(first, last) stage layers that give the last stage's output head the place of
    ``k`` layers, ``k`` the head's matmul weights in layers' (Llama 3 405B's recipe put
    fewer layers on its first and last stages); None where the head is under half a
    layer, or no split paces the pipeline faster than the even one would."""
    s = shape_of(model)
    head = model.vocab * model.hidden
    layer = (s.matmul_params_per_token() - head) / model.layers
    k = round(head / layer)
    layers = model.layers
    if pp < 2 or k < 1:
        return None
    best: tuple[int, int, int] | None = None  # (pace in layers, first, last)
    for mid in {(layers + k) // pp, -(-(layers + k) // pp)}:
        last = mid - k
        first = layers - last - (pp - 2) * mid
        if last < 1 or first < 1 or (pp > 2 and first > mid):
            continue
        pace = max(first, last + k, mid if pp > 2 else 0)
        if best is None or pace < best[0]:
            best = (pace, first, last)
    even_pace = -(-layers // pp) + k
    if best is None or best[0] >= even_pace:
        return None
    return best[1], best[2]


def _least_recompute(
    s: ModelShape, base: TrainLayout, cap: float, e: Efficiency
) -> TrainLayout | None:
    """The layout with the least recompute that fits in ``cap`` bytes, or None.

    Recompute changes only the activations: under an even split the states are
    counted once (the planner's hot path)."""
    lay = dataclasses.replace(base, recompute="none")
    mem = train_memory(s, lay, e.workspace_gb)
    if mem.total <= cap:
        return lay
    rest = mem.total - mem.activations
    for rc in ("selective", "full"):
        lay = dataclasses.replace(base, recompute=rc)
        if lay.uneven:
            total = train_memory(s, lay, e.workspace_gb).total
        else:
            total = rest + stage_activations(s, lay)
        if total <= cap:
            return lay
    return None


def _fitting_variants(
    s: ModelShape, base: TrainLayout, split: tuple[int, int] | None, cap: float, e: Efficiency
) -> list[TrainLayout | None]:
    """``base`` with the least recompute that fits, and the variants worth costing beside
    it under a pipeline: a split that balances the output head; ZeRO-3 resharding each
    micro-batch where ZeRO-1 does not fit even with full recompute (it pays the stage's
    gathers every micro-batch; ZeRO-3 keeping parameters gathered costs what ZeRO-1
    costs, so it is not costed twice). None: does not fit."""
    bases = [base]
    if split is not None and base.pp > 1 and base.vpp == 1:
        first, last = split
        bases.append(dataclasses.replace(base, first_stage_layers=first, last_stage_layers=last))
    out: list[TrainLayout | None] = []
    for b in bases:
        chosen = _least_recompute(s, b, cap, e)
        out.append(chosen)
        if chosen is None and b.pp > 1 and b.zero == 1:
            out[-1] = _least_recompute(
                s, dataclasses.replace(b, zero=3, fsdp_reshard="always"), cap, e
            )
    return out


def _key(opt: dict[str, Any], objective: str) -> tuple[bool, float, float]:
    """Sort key; by cost, options priced at a rental rate come before electricity-only ones."""
    main = {"time": opt["time_to_train_s"], "cost": opt["cost_usd"], "energy": opt["energy_j"]}
    unpriced = objective == "cost" and opt.get("cost_basis") != "rental"
    return (unpriced, main[objective], opt["time_to_train_s"])


def _best(options: list[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    return min(options, key=lambda o: _key(o, objective)) if options else None


def _diverse_top(options: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The best ``k``, skipping near-duplicates (same chip, count and tp/pp/dp)."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for o in options:
        lay = o["layout"]
        sig = (
            o.get("pool"),
            o["num_devices"],
            lay.get("tp"),
            lay.get("pp"),
            lay.get("dp"),
            o.get("stages") is not None,
        )
        if sig in seen:
            continue
        seen.add(sig)
        out.append(o)
        if len(out) == k:
            break
    return out


def _violates(req: TrainRequest, opt: dict[str, Any]) -> str | None:
    if req.deadline_hours is not None and opt["time_to_train_s"] > req.deadline_hours * 3600:
        return "over the deadline"
    if req.budget_usd is not None and opt["cost_usd"] > req.budget_usd:
        return "over the budget"
    return None


def layout_dict(lay: TrainLayout) -> dict[str, Any]:
    return lay.to_dict()


def _option(
    req: TrainRequest, entry: PoolEntry, n: int, lay: TrainLayout, est: Any
) -> dict[str, Any]:
    steps = req.tokens / (lay.global_batch * lay.seq_len)
    factor = req.corrections.get(entry.accelerator, 1.0)
    t = steps * est.step_time_s * factor
    price = entry.price_usd_per_hour
    cost = price * n * t / 3600 if price is not None else est.cost_usd * steps
    return {
        "accelerator": entry.accelerator,
        "pool": entry.name,
        "num_devices": n,
        "layout": layout_dict(lay),
        "estimate": est.to_dict(),
        "time_to_train_s": t,
        "cost_usd": cost,
        "cost_basis": "rental" if price is not None else "electricity only (no public price)",
        "energy_j": est.energy_j * steps * factor,
        "correction": factor,
        "why": explain_option(est, lay),
    }


def explain_option(est: Any, lay: TrainLayout) -> str:
    """One line on what shapes this option: memory headroom and the largest overheads."""
    bd = est.breakdown_s
    step = est.step_time_s
    costs = {
        "pipeline bubble": bd["pp_bubble"],
        "TP/CP traffic": bd["tp_cp_comm"],
        "expert all-to-all": bd["ep_comm"],
        "exposed DP traffic": bd["dp_comm_exposed"],
        "attention": bd["attention"],
        "elementwise": bd["elementwise"],
    }
    top = sorted(costs.items(), key=lambda kv: -kv[1])[:2]
    parts = [f"{name} {100 * v / step:.0f}%" for name, v in top if v > 0.01 * step]
    mem = est.memory_gb
    why = f"MFU {100 * est.mfu:.0f}%; {mem['total']:.0f} GB per device"
    if lay.recompute != "none":
        why += f" with {lay.recompute} recompute to fit"
    if lay.zero == 3:
        resharded = lay.pp > 1 and not lay.keeps_params_gathered
        why += ", ZeRO-3 to fit" + (" (resharded each micro-batch)" if resharded else "")
    if lay.uneven:
        why += (
            f"; first/last stages hold {lay.first_stage_layers}/{lay.last_stage_layers} "
            "layers to balance the output head"
        )
    if parts:
        why += "; largest overheads: " + ", ".join(parts)
    return why


def explain_infeasible(req: TrainRequest, rejected: Counter[str], e: Efficiency) -> str:
    """The binding constraint in plain words."""
    model = req.model
    params = shape_of(model).total_params
    have = {p.accelerator: p.count for p in req.pool}
    for entry in req.pool:
        acc = entry.system.accelerator
        usable = acc.memory_gb - e.workspace_gb
        weights_only = math.ceil(2 * params / (usable * GB))
        states = math.ceil(16 * params / (usable * GB))
        stock = min(entry.count, req.num_devices or entry.count, req.max_devices or entry.count)
        if stock < weights_only:
            return (
                f"{model.display_name} in {req.dtype} needs at least {weights_only} "
                f"{acc.name} ({acc.memory_gb:g} GB each) for weights alone; "
                f"the pool has {stock}"
            )
        if stock < states:
            return (
                f"{model.display_name} needs at least {states} {acc.name} to train: "
                f"weights, gradients and Adam states take 16 bytes per parameter "
                f"({16 * params / 1e12:.2f} TB) even fully sharded; the pool has {stock}"
            )
    if rejected:
        reason, count = rejected.most_common(1)[0]
        detail = ""
        if reason == "over the deadline":
            detail = f" of {req.deadline_hours:g} h"
        elif reason == "over the budget":
            detail = f" of {req.budget_usd:,.0f} USD"
        return (
            f"no layout on {', '.join(f'{v} x {k}' for k, v in have.items())} satisfies the "
            f"request; the most common reason: {reason}{detail} ({count} candidates)"
        )
    return "no device count in the pool can run this request"
