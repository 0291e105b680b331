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
    params: float, zero: int, shards: int, dtype: str = "bf16"
) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per device for ``params`` under ZeRO ``zero``."""
    wb, gb, ob = (
        FP32_STATE_BYTES if dtype == "fp32" else (WEIGHT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES)
    )
    w = wb * params
    g = gb * params
    o = ob * params
    if zero >= 1:
        o /= shards
    if zero >= 2:
        g /= shards
    if zero >= 3:
        w /= shards
    return w, g, o


def stage_ends(s: ModelShape, lay: TrainLayout) -> float:
    """Embedding and output-head parameters on the heaviest stage (before TP): both on
    one stage without a pipeline; with one, the larger (a tied head is a copy there)."""
    embed = s.embedding_params
    head = s.head_params if s.head_params else (embed if lay.pp > 1 else 0)
    return float(embed + head if lay.pp == 1 else max(embed, head))


def stage_params(s: ModelShape, lay: TrainLayout) -> tuple[float, float]:
    """(non-expert, expert) parameters held by one device of the heaviest stage."""
    a = s.arch
    tp = lay.tp
    per_layer = s.attn_params + s.norm_bias_params_per_layer
    share = lay.stage_layers(a.layers) / a.layers  # of all layers, on the heaviest stage
    layer_params = (
        s.num_dense_layers * (per_layer + s.dense_mlp_params)
        + s.num_moe_layers * (per_layer + s.shared_expert_params + s.router_params)
    ) * share
    dense = (layer_params + stage_ends(s, lay)) / tp
    moe = a.moe
    expert = 0.0
    if moe is not None:
        expert = s.num_moe_layers * share * moe.num_experts * s.expert_params / (tp * lay.ep)
    return dense, expert


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


def train_memory(
    s: ModelShape, lay: TrainLayout, workspace_gb: float, pipeline_depth: int | None = None
) -> TrainMemory:
    """Memory per device of the heaviest stage (first stage for activations)."""
    dense, expert = stage_params(s, lay)
    shards = lay.dp * lay.cp
    wd, gd, od = model_state_bytes(dense, lay.zero, shards, lay.dtype)
    we, ge, oe = model_state_bytes(expert, lay.zero, max(1, shards // lay.ep), lay.dtype)
    layers_per_stage = lay.stage_layers(s.arch.layers)
    moe_frac = s.num_moe_layers / s.arch.layers
    per_layer = (1 - moe_frac) * activation_bytes_per_layer(s, lay, False)
    if moe_frac:
        per_layer += moe_frac * activation_bytes_per_layer(s, lay, True)
    m = lay.num_microbatches
    # 1F1B keeps as many micro-batches in flight on the first stage as the pipeline is deep;
    # ``pipeline_depth`` says so when these layers are the head of a longer pipeline
    depth = pipeline_depth or lay.pp
    in_flight: float = min(depth, m) if depth > 1 else 1
    if lay.vpp > 1:
        in_flight = in_flight * (1 + (lay.pp - 1) / (lay.pp * lay.vpp))
    act = per_layer * layers_per_stage * in_flight
    extra = 0.0
    if lay.recompute == "full":
        # One layer's activations are rebuilt at a time during the backward pass.
        full = TrainLayout(
            tp=lay.tp,
            cp=lay.cp,
            micro_batch=lay.micro_batch,
            seq_len=lay.seq_len,
            sequence_parallel=lay.sequence_parallel,
            fused_attention=lay.fused_attention,
            dtype=lay.dtype,
        )
        extra = activation_bytes_per_layer(s, full, moe_frac > 0.5)
    tokens = lay.micro_batch * lay.seq_len / lay.cp
    logits = tokens * s.arch.vocab / lay.tp * LOGIT_BYTES
    if lay.pp == 1:
        act += extra + logits
    else:  # first stage: most micro-batches in flight; last stage: one, plus the logits
        act = max(act + extra, per_layer * layers_per_stage + extra + logits)
    return TrainMemory(
        weights=wd + we,
        gradients=gd + ge,
        optimizer=od + oe,
        activations=act,
        workspace=workspace_gb * 1e9,
    )
