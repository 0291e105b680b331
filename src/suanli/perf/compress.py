"""Compression as workloads: structured pruning and knowledge distillation.

**Pruning** (structured, as Minitron — Muralidharan et al. 2024 — and
Sheared-LLaMA — Xia et al. 2024 — prune): a sparsity ratio removes that share of
the MLP's intermediate channels (each expert's too) and of the query heads in each
KV group ("width"), or of the layers ("depth"). The result is a smaller
`ModelArch` that every estimate and plan takes like any other model. The hidden
size and vocabulary are kept: pruning embedding channels changes every layer's
shape and is not offered. What the pruned model is worth (its accuracy, the
retraining it needs) is not modelled.

**Distillation** (logit distillation, Hinton et al. 2015; Minitron distils each
pruned model from its parent): each training step also runs a frozen teacher's
forward pass over the step's tokens. The teacher is split by the student's TP
and PP (its layers ride the same pipeline stages) and kept whole over data
parallelism; it has no gradients or optimizer state and keeps no activations,
only one micro-batch's logits (fp32) for the loss. Its forward is costed as the
forward share of its own training estimate on the same layout: a third of the
GEMM, elementwise and per-layer work, half of the TP/EP traffic and of the loss's
passes over the logits, 1/3.5 of fused attention (forward 1, backward 2.5), then
stretched by the pipeline's fill and drain like the student's stages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from suanli.catalog.types import ModelArch, MoE
from suanli.errors import InvalidCompressionError, InvalidLayoutError
from suanli.perf.efficiency import Efficiency
from suanli.perf.layout import TrainLayout, check_layout
from suanli.perf.memory import logit_bytes, model_state_bytes, stage_params
from suanli.perf.shape import shape_of
from suanli.perf.system import System
from suanli.perf.train import TrainEstimate, estimate_train, model_flops_per_token
from suanli.units import GB

PruneAxis = Literal["width", "depth"]
PRUNE_AXES = ("width", "depth")
#: MLP widths stay multiples of this (tensor-core tiles; Minitron's widths are)
CHANNEL_MULTIPLE = 64


def prune(model: ModelArch, sparsity: float, axis: PruneAxis = "width") -> ModelArch:
    """``model`` with ``sparsity`` of its MLP channels and query heads (width) or of its
    layers (depth) removed."""
    if not 0.0 < sparsity < 1.0:
        raise InvalidCompressionError(
            f"pruning sparsity must be between 0 and 1 (exclusive), got {sparsity:g}"
        )
    if axis not in PRUNE_AXES:
        raise InvalidCompressionError(f"prune axis must be one of {', '.join(PRUNE_AXES)}")
    keep = 1.0 - sparsity
    tag = f"{model.name}-pruned-{axis}{round(100 * sparsity)}"
    note = f"{model.display_name} with {100 * sparsity:g}% of its {axis} pruned (structured)"
    if axis == "depth":
        layers = max(1, round(model.layers * keep))
        moe = model.moe
        if moe is not None and moe.first_dense_layers:
            moe = dataclasses.replace(
                moe, first_dense_layers=min(layers, round(moe.first_dense_layers * keep))
            )
        return dataclasses.replace(
            model, name=tag, display_name=note, layers=layers, moe=moe, sources=_sources(model)
        )
    ffn = _channels(model.ffn, keep)
    moe_w: MoE | None = model.moe
    if moe_w is not None:
        moe_w = dataclasses.replace(moe_w, expert_ffn=_channels(moe_w.expert_ffn, keep))
    if model.mla is not None or model.kv_heads == model.heads:
        heads = max(1, round(model.heads * keep))
        kv_heads = heads if model.mla is None else model.kv_heads
    else:  # GQA: drop query heads within each KV group, keep the groups
        per_group = model.heads // model.kv_heads
        heads = model.kv_heads * max(1, round(per_group * keep))
        kv_heads = model.kv_heads
    return dataclasses.replace(
        model,
        name=tag,
        display_name=note,
        ffn=ffn,
        moe=moe_w,
        heads=heads,
        kv_heads=kv_heads,
        sources=_sources(model),
    )


def _channels(width: int, keep: float) -> int:
    return max(CHANNEL_MULTIPLE, round(width * keep / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE)


def _sources(model: ModelArch) -> dict[str, str]:
    return {
        **model.sources,
        "pruned": f"derived from {model.name} by suanli.perf.compress.prune (structured)",
    }


def teacher_layout(teacher: ModelArch, layout: TrainLayout) -> TrainLayout:
    """The student's layout as the teacher runs it: same TP/PP/CP/DP, an even split,
    no recompute (nothing is kept for a backward), no ZeRO (nothing to shard but weights)."""
    lay = dataclasses.replace(
        layout,
        recompute="none",
        zero=0,
        fsdp_reshard="default",
        first_stage_layers=None,
        last_stage_layers=None,
        ep=layout.ep if teacher.moe is not None else 1,
    )
    try:
        check_layout(teacher, lay)
    except InvalidLayoutError as err:
        raise InvalidLayoutError(
            f"the teacher {teacher.name} cannot run on the student's layout: {err}"
        ) from None
    return lay


@dataclass(frozen=True, slots=True)
class TeacherCost:
    """What a teacher adds to a student's step on one layout: computed once per layout
    (the planner costs several variants of a layout that the teacher runs alike)."""

    name: str
    forward_s: float  # its forward over a step's micro-batches, the pipeline's fill included
    memory_bytes: float  # its weights on one device of the heaviest stage, and the logits
    flops_per_token: float  # forward only, in the MFU convention


def teacher_cost(
    teacher: ModelArch, layout: TrainLayout, system: System, eff: Efficiency | None = None
) -> TeacherCost:
    """The forward share of the teacher's own training estimate on the student's layout,
    and the memory it takes (see the module docstring)."""
    lay = teacher_layout(teacher, layout)
    bd = estimate_train(teacher, system, lay, eff, check=False).breakdown_s
    attn_share = 1 / 3.5 if layout.fused_attention else 1 / 3
    forward = (
        (bd["gemm"] + bd["elementwise"] + bd["layer_overhead"]) / 3
        + bd["attention"] * attn_share
        + (bd["tp_cp_comm"] + bd["ep_comm"] + bd["loss"] + bd["weight_casts"]) / 2
    )
    m = max(1, layout.num_microbatches)
    if layout.pp > 1:  # its stages fill and drain with the student's
        forward *= (m + (layout.pp - 1) / layout.vpp) / m
    return TeacherCost(
        teacher.name,
        forward,
        teacher_memory_bytes(teacher, lay),
        model_flops_per_token(shape_of(teacher), layout.seq_len) / 3,
    )


def teacher_memory_bytes(teacher: ModelArch, lay: TrainLayout) -> float:
    """The teacher's weights on one device of its heaviest stage (in the layout's
    precision), and one micro-batch's logits; ``lay`` from `teacher_layout`."""
    s = shape_of(teacher)
    weights = model_state_bytes(sum(stage_params(s, lay)), 0, 1, lay.dtype)[0]
    return weights + logit_bytes(s, lay)


def with_teacher(
    student: TrainEstimate, layout: TrainLayout, teacher: TeacherCost, system: System
) -> TrainEstimate:
    """``student``'s step with the teacher's forward pass and memory added. Power stays
    the student's (the teacher's forward is compute alike, so the busy share, and the
    energy, are if anything slightly understated)."""
    forward = teacher.forward_s
    step = student.step_time_s + forward
    scale = student.step_time_s / step
    memory = dict(student.memory_gb)
    memory["teacher"] = teacher.memory_bytes / GB
    memory["total"] = student.memory_gb["total"] + memory["teacher"]
    tokens = layout.global_batch * layout.seq_len
    teacher_tflops = teacher.flops_per_token * tokens / (step * student.num_devices) / 1e12
    hw = student.hardware_tflops_per_device * scale + teacher_tflops
    return dataclasses.replace(
        student,
        step_time_s=step,
        tokens_per_s=student.tokens_per_s * scale,
        tokens_per_s_per_device=student.tokens_per_s_per_device * scale,
        model_tflops_per_device=student.model_tflops_per_device * scale,
        hardware_tflops_per_device=hw,
        mfu=student.mfu * scale,
        hfu=student.hfu * hw / max(student.hardware_tflops_per_device, 1e-30),
        memory_gb=memory,
        fits_in_memory=memory["total"] <= system.accelerator.memory_gb,
        breakdown_s={**student.breakdown_s, "teacher_forward": forward},
        energy_j=student.energy_j / scale,
        cost_usd=student.cost_usd / scale,
        extra={**student.extra, "teacher_forward_s": forward},
    )


def distill(
    student: TrainEstimate,
    layout: TrainLayout,
    teacher: ModelArch,
    system: System,
    eff: Efficiency | None = None,
) -> TrainEstimate:
    """``student``'s step with ``teacher``'s forward pass added (see the module docstring)."""
    return with_teacher(student, layout, teacher_cost(teacher, layout, system, eff), system)
