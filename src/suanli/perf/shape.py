"""Figures derived from a model's shapes: parameter counts, FLOPs, KV bytes.

Computed once per model (cached by identity) because planners call the perf
model millions of times with the same few models.

Conventions: "matmul parameters" are the weights of matrix multiplies (what
costs 2 FLOPs per token each); norms, biases and the input embedding lookup
cost no matmul FLOPs. The LM head is a matmul (tied or not).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from suanli.catalog.types import ModelArch


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Per-layer and whole-model counts for one `ModelArch`."""

    arch: ModelArch
    q_dim: int  # query width: heads * qk head dim
    kv_dim: int  # key (and value) width of one token: kv_heads * head dim (0 for MLA)
    v_dim: int  # value/output width: heads * v head dim
    attn_params: int  # matmul weights of one layer's attention
    dense_mlp_params: int  # matmul weights of one dense MLP
    expert_params: int  # matmul weights of one routed expert (0 if dense)
    shared_expert_params: int  # all shared experts of one MoE layer
    router_params: int
    num_moe_layers: int
    num_dense_layers: int
    norm_bias_params_per_layer: int
    embedding_params: int  # input embedding (V x h)
    head_params: int  # LM head (V x h); 0 if tied to the embedding
    total_params: int
    active_params: int  # parameters a token touches (top-k experts only)
    tensors_per_layer: int  # parameter tensors per layer (ZeRO-3 gathers each)
    mlp_act_width: int  # width of the activation-function output (ffn)
    fc1_width: int  # width of the first MLP GEMM output (2 ffn if gated)

    @property
    def layers(self) -> int:
        return self.arch.layers

    def kv_bytes_per_token(self, bytes_per_element: float) -> float:
        """KV-cache bytes one token occupies over all layers (all TP ranks together).

        MHA/GQA store K and V for each KV head; MLA stores one compressed latent
        plus the decoupled RoPE key per layer (DeepSeek-V2, Sec. 2.1.3).
        """
        a = self.arch
        if a.mla is not None:
            per_layer = a.mla.kv_lora_rank + a.mla.qk_rope_head_dim
        else:
            per_layer = 2 * a.kv_heads * a.head_dim
        return float(per_layer * a.layers * bytes_per_element)

    def matmul_params_per_token(self) -> float:
        """Matmul weights one token multiplies through in a forward pass (incl. LM head)."""
        a = self.arch
        per_layer_dense = self.attn_params + self.dense_mlp_params
        moe = a.moe
        total = self.num_dense_layers * per_layer_dense
        if moe is not None:
            per_moe = (
                self.attn_params
                + moe.experts_per_token * self.expert_params
                + self.shared_expert_params
                + self.router_params
            )
            total += self.num_moe_layers * per_moe
        return float(total + a.vocab * a.hidden)

    def attention_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs of QK^T and AV per token for a full (non-causal) context of seq_len."""
        a = self.arch
        return float(2 * seq_len * (self.q_dim + self.v_dim) * a.layers)


def _attention_shapes(a: ModelArch) -> tuple[int, int, int, int]:
    """(q_dim, kv_dim, v_dim, attention matmul params) of one layer."""
    h = a.hidden
    if a.mla is not None:
        m = a.mla
        qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
        q_dim = a.heads * qk_head
        v_dim = a.heads * m.v_head_dim
        q = h * m.q_lora_rank + m.q_lora_rank * q_dim if m.q_lora_rank else h * q_dim
        kv_a = h * (m.kv_lora_rank + m.qk_rope_head_dim)
        kv_b = m.kv_lora_rank * a.heads * (m.qk_nope_head_dim + m.v_head_dim)
        o = v_dim * h
        return q_dim, 0, v_dim, q + kv_a + kv_b + o
    q_dim = a.heads * a.head_dim
    kv_dim = a.kv_heads * a.head_dim
    return q_dim, kv_dim, q_dim, h * q_dim + 2 * h * kv_dim + q_dim * h


@functools.cache
def shape_of(a: ModelArch) -> ModelShape:
    """Derive (once per model) the counts the perf model needs."""
    h = a.hidden
    q_dim, kv_dim, v_dim, attn = _attention_shapes(a)
    n_mats = 3 if a.gated_mlp else 2
    dense_mlp = n_mats * h * a.ffn
    moe = a.moe
    if moe is not None:
        expert = n_mats * h * moe.expert_ffn
        shared = moe.num_shared_experts * expert
        router = h * moe.num_experts
        candidates = range(moe.first_dense_layers, a.layers)
        n_moe = sum(1 for i in candidates if (i - moe.first_dense_layers) % moe.moe_layer_freq == 0)
    else:
        expert = shared = router = n_moe = 0
    n_dense = a.layers - n_moe
    # Norms: two per layer (pre-attention, pre-MLP), plus MLA's two latent norms.
    norm = 2 * h + ((a.mla.q_lora_rank + a.mla.kv_lora_rank) if a.mla else 0)
    bias = (
        (q_dim + 2 * kv_dim + h + (a.ffn * (2 if a.gated_mlp else 1)) + h)
        if (a.attention_bias and not a.gated_mlp)
        else ((q_dim + 2 * kv_dim) if a.attention_bias else 0)
    )
    embed = a.vocab * h
    head = 0 if a.tied_embeddings else a.vocab * h
    total_layers = n_dense * (attn + dense_mlp) + n_moe * (
        attn + (moe.num_experts if moe else 0) * expert + shared + router
    )
    active_layers = n_dense * (attn + dense_mlp) + n_moe * (
        attn + (moe.experts_per_token if moe else 0) * expert + shared + router
    )
    extra = a.layers * (norm + bias) + h  # + final norm
    # Weights + biases of q/k/v/o and the MLP matrices, plus norms: ZeRO-3 gathers each.
    tensors = (4 + n_mats) * (2 if bias else 1) + 2 + (5 if a.mla else 0)
    return ModelShape(
        arch=a,
        q_dim=q_dim,
        kv_dim=kv_dim,
        v_dim=v_dim,
        attn_params=attn,
        dense_mlp_params=dense_mlp,
        expert_params=expert,
        shared_expert_params=shared,
        router_params=router,
        num_moe_layers=n_moe,
        num_dense_layers=n_dense,
        norm_bias_params_per_layer=norm + bias,
        embedding_params=embed,
        head_params=head,
        total_params=total_layers + extra + embed + head,
        active_params=active_layers + extra + embed + head,
        tensors_per_layer=tensors,
        mlp_act_width=a.moe.expert_ffn if (a.moe and n_dense == 0) else a.ffn,
        fc1_width=(2 if a.gated_mlp else 1) * a.ffn,
    )
