"""Memory per device for training: model states under ZeRO, and activations.

Model states follow the ZeRO paper (Rajbhandari et al., SC'20, Sec. 3.1):
mixed-precision Adam keeps 2 bytes of weights, 2 of gradients and K = 12 of
optimizer state (fp32 master weights, momentum, variance) per parameter;
stage 1 shards the optimizer state over the data-parallel ranks, stage 2 also
the gradients, stage 3 also the weights.

Activations follow Korthikanti et al., "Reducing Activation Recomputation in
Large Transformer Models" (MLSys'23), Sec. 4, generalised from GPT's
``34 + 5as/h`` bytes per token per hidden unit to any attention width, gated
MLPs and experts, and to fused attention (no score matrix stored).
"""

from __future__ import annotations

from dataclasses import dataclass

from suanli.perf.layout import TrainLayout
from suanli.perf.shape import ModelShape

WEIGHT_BYTES = 2.0  # bf16/fp16 working weights (fp8 training keeps bf16 weights too)
GRAD_BYTES = 2.0
OPTIMIZER_BYTES = 12.0  # ZeRO paper's K for mixed-precision Adam
LOGIT_BYTES = 4.0  # fp32 logits for a numerically safe cross-entropy


@dataclass(frozen=True, slots=True)
class TrainMemory:
    """Bytes per device on the most loaded pipeline stage."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    workspace: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.workspace


#: plain fp32 training (where a device has no fast 16-bit format): fp32 weights and
#: gradients, Adam's two fp32 moments and no master copy (16 bytes, as mixed precision)
FP32_STATE_BYTES = (4.0, 4.0, 8.0)


def act_scale(lay: TrainLayout) -> float:
    """Activation bytes relative to 16-bit training: 2 in plain fp32."""
    return 2.0 if lay.dtype == "fp32" else 1.0


def model_state_bytes(
    params: float,
    zero: int,
    shards: int,
    dtype: str = "bf16",
    *,
    sharded: tuple[bool, bool, bool] | None = None,
) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per device for ``params`` under ZeRO ``zero``.

    ``sharded`` (weights, gradients, optimizer) overrides what the stage shards, for
    layouts whose peak holds more than the stage's name says (`state_sharding`).
    """
    wb, gb, ob = (
        FP32_STATE_BYTES if dtype == "fp32" else (WEIGHT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES)
    )
    w_sh, g_sh, o_sh = sharded if sharded is not None else (zero >= 3, zero >= 2, zero >= 1)
    return (
        wb * params / (shards if w_sh else 1),
        gb * params / (shards if g_sh else 1),
        ob * params / (shards if o_sh else 1),
    )


def state_sharding(lay: TrainLayout) -> tuple[bool, bool, bool]:
    """Whether (weights, gradients, optimizer states) stay sharded at the step's peak.

    ZeRO-3 that keeps parameters gathered holds a stage's whole weights through the
    micro-batches; under a pipeline it also accumulates whole gradients until the last
    backward (TorchTitan's default), which is ZeRO-1's memory.
    """
    keep = lay.keeps_params_gathered
    return (
        lay.zero >= 3 and not keep,
        lay.zero >= 2 and not (keep and lay.pp > 1),
        lay.zero >= 1,
    )


def stage_ends(s: ModelShape, lay: TrainLayout) -> float:
    """Embedding and output-head parameters on the heaviest stage (before TP): both on
    one stage without a pipeline; with one, the larger (a tied head is a copy there)."""
    embed = s.embedding_params
    if lay.pp == 1:
        return float(embed + s.head_params)
    return float(max(embed, _head_on_last_stage(s)))


def _head_on_last_stage(s: ModelShape) -> int:
    """The output head's parameters under a pipeline: a tied head is a copy there."""
    return s.head_params or s.embedding_params


def layer_params(s: ModelShape, lay: TrainLayout, layers: float) -> tuple[float, float]:
    """(non-expert, expert) parameters of ``layers`` layers on one device (after TP/EP)."""
    a = s.arch
    per_layer = s.attn_params + s.norm_bias_params_per_layer
    share = layers / a.layers  # of all layers
    dense = (
        s.num_dense_layers * (per_layer + s.dense_mlp_params)
        + s.num_moe_layers * (per_layer + s.shared_expert_params + s.router_params)
    ) * share
    moe = a.moe
    expert = 0.0
    if moe is not None:
        expert = s.num_moe_layers * share * moe.num_experts * s.expert_params / (lay.tp * lay.ep)
    return dense / lay.tp, expert


def stage_params(s: ModelShape, lay: TrainLayout) -> tuple[float, float]:
    """(non-expert, expert) parameters held by one device of the heaviest stage."""
    dense, expert = layer_params(s, lay, lay.stage_layers(s.arch.layers))
    return dense + stage_ends(s, lay) / lay.tp, expert


def activation_bytes_per_layer(s: ModelShape, lay: TrainLayout, moe_layer: bool) -> float:
    """Activation bytes one layer keeps for one micro-batch (per device)."""
    a = s.arch
    tp = lay.tp
    tokens = lay.micro_batch * lay.seq_len / lay.cp
    h = a.hidden
    if lay.recompute == "full":
        return act_scale(lay) * tokens * 2 * h / (tp if lay.sequence_parallel else 1)
    replicated = 10.0 * h  # two norm inputs, QKV and MLP inputs, two dropout masks
    attn = 2.0 * (s.q_dim + 2 * s.kv_dim) + 2.0 * s.v_dim
    if moe_layer and a.moe is not None:
        k = a.moe.experts_per_token
        e_fc1 = (2 if a.gated_mlp else 1) * a.moe.expert_ffn
        mlp = k * (2.0 * e_fc1 + 2.0 * a.moe.expert_ffn) + 2.0 * h * k  # + dispatched copies
        if a.moe.num_shared_experts:
            mlp += a.moe.num_shared_experts * (2.0 * e_fc1 + 2.0 * a.moe.expert_ffn)
    else:
        mlp = 2.0 * s.fc1_width + 2.0 * a.ffn
    per_token = (replicated / tp if lay.sequence_parallel else replicated) + (attn + mlp) / tp
    if not lay.fused_attention and lay.recompute == "none":
        per_token += 5.0 * a.heads * lay.seq_len / tp  # scores, softmax, dropout mask
    return act_scale(lay) * tokens * per_token


def _per_layer_activations(s: ModelShape, lay: TrainLayout) -> float:
    """Activation bytes of one layer and micro-batch, MoE and dense layers blended."""
    moe_frac = s.num_moe_layers / s.arch.layers
    per_layer = (1 - moe_frac) * activation_bytes_per_layer(s, lay, False)
    if moe_frac:
        per_layer += moe_frac * activation_bytes_per_layer(s, lay, True)
    return per_layer


def _recompute_buffer(s: ModelShape, lay: TrainLayout) -> float:
    """Full recompute rebuilds one layer's activations at a time in the backward pass."""
    if lay.recompute != "full":
        return 0.0
    full = TrainLayout(
        tp=lay.tp,
        cp=lay.cp,
        micro_batch=lay.micro_batch,
        seq_len=lay.seq_len,
        sequence_parallel=lay.sequence_parallel,
        fused_attention=lay.fused_attention,
        dtype=lay.dtype,
    )
    return activation_bytes_per_layer(s, full, s.num_moe_layers / s.arch.layers > 0.5)


def logit_bytes(s: ModelShape, lay: TrainLayout) -> float:
    """One micro-batch's fp32 logits on a device of the last stage."""
    return lay.micro_batch * lay.seq_len / lay.cp * s.arch.vocab / lay.tp * LOGIT_BYTES


def _states(
    s: ModelShape, lay: TrainLayout, dense: float, expert: float
) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes of a device holding these parameters."""
    shards = lay.dp * lay.cp
    how = state_sharding(lay)
    wd, gd, od = model_state_bytes(dense, lay.zero, shards, lay.dtype, sharded=how)
    we, ge, oe = model_state_bytes(
        expert, lay.zero, max(1, shards // lay.ep), lay.dtype, sharded=how
    )
    return wd + we, gd + ge, od + oe


def train_memory(
    s: ModelShape, lay: TrainLayout, workspace_gb: float, pipeline_depth: int | None = None
) -> TrainMemory:
    """Memory per device of the heaviest stage (first stage for activations)."""
    if lay.uneven:
        assert pipeline_depth is None, "a longer pipeline's head stages are split evenly"
        return _uneven_memory(s, lay, workspace_gb)
    dense, expert = stage_params(s, lay)
    weights, grads, opt = _states(s, lay, dense, expert)
    act = stage_activations(s, lay, pipeline_depth)
    return TrainMemory(
        weights=weights,
        gradients=grads,
        optimizer=opt,
        activations=act,
        workspace=workspace_gb * 1e9,
    )


def stage_activations(s: ModelShape, lay: TrainLayout, pipeline_depth: int | None = None) -> float:
    """Activation bytes of the fullest stage of an even split: the part of `train_memory`
    that recompute changes (the planner tries recompute modes on the same states)."""
    layers_per_stage = lay.stage_layers(s.arch.layers)
    per_layer = _per_layer_activations(s, lay)
    m = lay.num_microbatches
    # 1F1B keeps as many micro-batches in flight on the first stage as the pipeline is deep;
    # ``pipeline_depth`` says so when these layers are the head of a longer pipeline
    depth = pipeline_depth or lay.pp
    in_flight: float = min(depth, m) if depth > 1 else 1
    if lay.vpp > 1:
        in_flight = in_flight * (1 + (lay.pp - 1) / (lay.pp * lay.vpp))
    act = per_layer * layers_per_stage * in_flight
    extra = _recompute_buffer(s, lay)
    logits = logit_bytes(s, lay)
    if lay.pp == 1:
        return act + extra + logits
    # first stage: most micro-batches in flight; last stage: one, plus the logits
    return max(act + extra, per_layer * layers_per_stage + extra + logits)


def _uneven_memory(s: ModelShape, lay: TrainLayout, workspace_gb: float) -> TrainMemory:
    """The fullest of the first, second and last stages when they hold different layers.

    Stage ``i`` of a 1F1B pipeline keeps ``min(pp - i, m)`` micro-batches' activations;
    the first also holds the embedding, the last the output head and the logits.
    """
    first, mid, last = lay.stage_split(s.arch.layers)
    per_layer = _per_layer_activations(s, lay)
    extra = _recompute_buffer(s, lay)
    m = lay.num_microbatches
    stages = [
        (first, s.embedding_params, min(lay.pp, m) * first * per_layer),
        (last, _head_on_last_stage(s), last * per_layer + logit_bytes(s, lay)),
    ]
    if lay.pp > 2:  # the second stage, the fullest of the middle ones
        stages.append((mid, 0, min(lay.pp - 1, m) * mid * per_layer))
    best: TrainMemory | None = None
    for layers, ends, act in stages:
        dense, expert = layer_params(s, lay, layers)
        weights, grads, opt = _states(s, lay, dense + ends / lay.tp, expert)
        mem = TrainMemory(weights, grads, opt, act + extra, workspace_gb * 1e9)
        if best is None or mem.total > best.total:
            best = mem
    assert best is not None
    return best
