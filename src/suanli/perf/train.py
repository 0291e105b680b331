"""Training step time, memory, MFU, energy and cost.

How a step is costed (per device, on the slowest pipeline stage):

1. Per layer and micro-batch, forward time = GEMMs (each at an efficiency that
   falls for small dimensions) + attention core (fused kernels at their own
   efficiency, or unfused batched GEMMs plus softmax memory traffic) +
   memory-bound elementwise ops (norms, residuals, activation function) +
   exposed TP collectives (+ EP all-to-all on MoE layers) + a fixed per-layer
   cost. Backward is twice the GEMM and elementwise work (fused attention's
   backward recomputes scores: 2.5x), recompute adds a forward (full) or the
   attention core (selective).
2. A stage runs layers/pp layers (+ the LM head on the last stage). The
   pipeline runs ``m + (pp - 1) / vpp`` stage-times (1F1B; interleaved divides
   the bubble by vpp), plus point-to-point sends on the critical path.
3. Data parallelism adds the gradient reduction (all-reduce, or ZeRO's
   reduce-scatter + all-gather; ZeRO-3 adds per-tensor parameter gathers in
   forward and backward), hidden behind compute by ``overlap_eff`` when the
   framework overlaps it. Under a pipeline, ZeRO-2 and resharding ZeRO-3
   reduce-scatter every micro-batch (and ZeRO-3 gathers every micro-batch);
   ZeRO-3 keeping a stage's parameters gathered (TorchTitan) does both once
   (see `suanli.perf.layout`). Uneven first/last stages: the slowest stage
   paces the pipeline.

FLOP conventions: MFU counts model FLOPs only — 6 x matmul parameters a token
touches (incl. the LM head) + 3 x the full (non-causal) attention score and
value products — against the dtype's dense peak. HFU adds recompute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from suanli.catalog.types import ModelArch, log_interp
from suanli.perf import collectives as coll
from suanli.perf.efficiency import Efficiency, default_efficiency
from suanli.perf.layout import TrainLayout, check_layout
from suanli.perf.memory import (
    GRAD_BYTES,
    WEIGHT_BYTES,
    act_scale,
    stage_ends,
    stage_params,
    state_sharding,
    train_memory,
)
from suanli.perf.shape import ModelShape, shape_of
from suanli.perf.system import System
from suanli.units import GB

ACT_BYTES = 2.0  # bf16/fp16 activations moved by collectives and elementwise ops
#: Adam step per parameter: read fp32 master, m, v and the gradient; write master, m,
#: v and the bf16 weight copy.
ADAM_BYTES_MOVED = 30.0
#: Cross-entropy traffic per logit: cast the bf16 logits to fp32 (2 + 4 bytes), max and
#: log-softmax (4 + 4 + 4), its gradient (4 + 4) and the cast back (4 + 2) — Megatron's
#: vocab-parallel cross entropy and PyTorch's F.cross_entropy on .float() logits alike.
LOSS_BYTES_PER_LOGIT = 32.0
#: ...of which the casts (bf16 -> fp32 in, fp32 -> bf16 gradient out): what is left once
#: a measured cross-entropy rate (``Accelerator.loss_logits_per_s``) times the rest
LOSS_CAST_BYTES_PER_LOGIT = 12.0
#: autocast over fp32 weights, per parameter and micro-batch: the forward's cast to bf16
#: (read 4, write 2) and the backward's cast of the bf16 gradient to fp32 (read 2, write 4)
AUTOCAST_BYTES_PER_PARAM = 12.0


@dataclass(frozen=True, slots=True)
class TrainEstimate:
    """One training step on ``num_devices`` devices. Times in s, memory in GB."""

    step_time_s: float
    tokens_per_s: float
    tokens_per_s_per_device: float
    model_tflops_per_device: float
    hardware_tflops_per_device: float
    mfu: float
    hfu: float
    memory_gb: dict[str, float]
    fits_in_memory: bool
    breakdown_s: dict[str, float]
    energy_j: float
    cost_usd: float
    power_w: float
    num_devices: int
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_device": self.tokens_per_s_per_device,
            "model_tflops_per_device": self.model_tflops_per_device,
            "hardware_tflops_per_device": self.hardware_tflops_per_device,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "memory_gb": dict(self.memory_gb),
            "fits_in_memory": self.fits_in_memory,
            "breakdown_s": dict(self.breakdown_s),
            "energy_j": self.energy_j,
            "cost_usd": self.cost_usd,
            "power_w": self.power_w,
            "num_devices": self.num_devices,
        }


def gemm_time(
    flops: float,
    m: float,
    n: float,
    k: float,
    peak: float,
    mem_bw: float,
    eff: Efficiency,
    by_size: dict[int, float] | None = None,
) -> float:
    """Seconds for an (m x k) @ (k x n) GEMM of ``flops`` FLOPs.

    Math at ``gemm_eff_max`` of ``peak`` (the caller's achievable rate: the data-sheet
    peak times the chip's published best-GEMM fraction), plus the share ``gemm_io_exposed`` of
    moving its operands and result (2 bytes each) at the achieved memory
    bandwidth ``mem_bw`` that is not hidden behind the math. Thin GEMMs and
    chips with many FLOPs per byte of bandwidth lose more of their peak: on the
    same shapes an H100 falls further below its best GEMM than an A100 does.

    ``by_size`` (measured TFLOP/s of a square Linear's forward and backward GEMMs, by
    size) replaces both: the GEMM runs at the measured rate of the square of the same
    volume (the cube root of m·n·k), which already paid for its operands.
    """
    if by_size:
        return flops / (log_interp(by_size, (m * n * k) ** (1 / 3)) * 1e12)
    io = 2.0 * (m * k + k * n + m * n)
    return flops / (peak * eff.gemm_eff_max) + eff.gemm_io_exposed * io / mem_bw


def _autocast_s(
    s: ModelShape, lay: TrainLayout, params: float, elem_bw: float, mem_bw: float
) -> float:
    """Seconds autocast spends casting a stage's weights to bf16 each micro-batch.

    Every weight a GEMM reads is cast in full, even where ZeRO-3 shards it; the
    embedding is looked up, not multiplied, so it is not. The layers' many small casts
    go at the elementwise rate, the output projection's one large cast at the memory's.
    """
    if not lay.autocast_weights:
        return 0.0
    ends = stage_ends(s, lay) / lay.tp  # part of ``params``
    projection = (s.head_params or s.embedding_params) / lay.tp if lay.pp == 1 else ends
    layers = max(0.0, params - ends)
    return AUTOCAST_BYTES_PER_PARAM * (layers / elem_bw + projection / mem_bw)


def model_flops_per_token(s: ModelShape, seq_len: int) -> float:
    """Training (fwd + bwd) model FLOPs per token, the MFU convention above."""
    return 6.0 * s.matmul_params_per_token() + 3.0 * s.attention_flops_per_token(seq_len)


def estimate_train(
    model: ModelArch,
    system: System,
    layout: TrainLayout,
    eff: Efficiency | None = None,
    *,
    check: bool = True,
) -> TrainEstimate:
    """Estimate one training step. Raises `InvalidLayoutError` for impossible layouts."""
    if check:
        check_layout(model, layout)
    e = eff if eff is not None else default_efficiency()
    s = shape_of(model)
    lay = layout
    acc = system.accelerator
    a = model
    tp, pp, dp, cp, ep, vpp = lay.tp, lay.pp, lay.dp, lay.cp, lay.ep, lay.vpp
    n_dev = tp * pp * dp * cp
    dpn = system.devices_per_node
    h = a.hidden
    seq = lay.seq_len
    tokens = lay.micro_batch * seq / cp  # tokens per micro-batch per device
    # GEMMs run at a share (gemm_eff_max) of the best rate a GEMM reaches on the chip
    peak = acc.peak(lay.dtype) * acc.achievable_fraction(lay.dtype) * 1e12
    peak16 = acc.peak("bf16") * acc.achievable_fraction("bf16") * 1e12
    mem_bw = acc.memory_bandwidth_gbs * GB * e.mem_bw_eff
    curve = (acc.gemm_tflops_by_size or {}).get(lay.dtype)  # measured devices only
    # a measured device's training probes ran in one precision (bf16, or fp32 where bf16
    # is emulated): their rates hold for layouts in that precision only
    measured = lay.dtype == (acc.compute_dtype or "bf16")
    act_bytes = ACT_BYTES * act_scale(lay)

    # --- 1. one layer, one micro-batch -------------------------------------------
    if a.mla is None:
        qkv_out = (s.q_dim + 2 * s.kv_dim) / tp
        t_attn_gemm = gemm_time(
            2 * tokens * h * qkv_out, tokens, qkv_out, h, peak, mem_bw, e, curve
        )
        t_attn_gemm += gemm_time(
            2 * tokens * s.v_dim / tp * h, tokens, h, s.v_dim / tp, peak, mem_bw, e, curve
        )
    else:  # MLA's down/up projections, taken as one GEMM group of the same FLOPs
        width = s.attn_params / h / tp
        t_attn_gemm = gemm_time(
            2 * tokens * s.attn_params / tp, tokens, width, h, peak, mem_bw, e, curve
        )
    heads_dev = a.heads / tp
    qk_dim = s.q_dim / a.heads
    # QK^T and AV over the full context (cp ranks each hold seq/cp queries)
    core = 2 * tokens * seq * heads_dev * (qk_dim + s.v_dim / a.heads)
    measured_attn = acc.attention_train_rate(seq) if measured else None
    if lay.fused_attention and measured_attn:  # this device's kernels, at this length
        t_core = 0.5 * core / (measured_attn * 1e12)
        t_core_bwd = 2.5 * t_core  # the rate was measured over both, in this count
        softmax_bytes = 0.0
    elif lay.fused_attention:
        t_core = 0.5 * core / (peak16 * e.attn_eff)  # causal blocks are skipped
        t_core_bwd = 2.5 * t_core  # FlashAttention's backward recomputes the scores
        softmax_bytes = 0.0
    else:  # batched GEMMs over all (masked) scores, then softmax in memory
        t_core = core / (peak16 * e.gemm_eff_max)  # score traffic is counted just below
        t_core_bwd = 2.0 * t_core
        # bytes per score: GEMM writes it, softmax reads it and writes probs, the AV
        # GEMM reads them (8); attention dropout reads, writes, and keeps a mask (+5)
        per_score = 13.0 if lay.dropout else 8.0
        softmax_bytes = per_score * tokens * heads_dev * seq
    t_softmax = softmax_bytes / mem_bw
    sp_div = tp if lay.sequence_parallel else 1
    # norms and residual adds (+ hidden dropout with its mask)
    elem_h = (14.0 if lay.dropout else 10.0) * h / sp_div
    elem_attn = 2.0 * (s.q_dim + s.kv_dim) / tp if a.mla is None else 2.0 * s.q_dim / tp

    tp_bytes = tokens * h * act_bytes
    t_tp = 2 * coll.all_reduce_s(tp_bytes, tp, min(tp, dpn), system, e) if tp > 1 else 0.0
    t_cp = 0.0
    if cp > 1:  # ring attention: K/V chunks pass around the cp ranks, overlapped with attention
        kv_bytes = tokens * 2 * max(s.kv_dim, s.q_dim / 4) / tp * act_bytes
        t_ring = (cp - 1) * coll.p2p_s(kv_bytes, tp * cp > dpn, system, e)
        t_cp = max(0.0, t_ring - e.overlap_eff * t_core)
    if acc.train_elementwise_gbs and measured:
        # measured eager elementwise work: its rate already holds each operator's dispatch
        elem_bw, overhead = acc.train_elementwise_gbs * GB, 0.0
    else:
        # the measured fixed cost is serve_lm's eager engine; on a CPU it is the operators'
        # dispatch, which any framework's training pays alike; a GPU's training stack
        # (fused kernels, CUDA graphs) is another engine, so there the fitted figure stands
        fixed_us = acc.layer_overhead_us if acc.kind == "cpu" else None
        elem_bw = mem_bw
        overhead = (e.layer_overhead_us if fixed_us is None else fixed_us) * 1e-6
    # Passes over a layer per micro-batch: forward + backward (2x) (+ forward again
    # under full recompute). Selective recompute redoes only the attention core.
    full = lay.recompute == "full"
    passes = 4.0 if full else 3.0
    core_total = t_core + t_core_bwd + (t_core if lay.recompute != "none" else 0.0)
    softmax_total = t_softmax * (4.0 if lay.recompute != "none" else 3.0)
    attn_layer = core_total + softmax_total
    comm_layer = t_tp * (passes - 1.0) + t_cp * (2.0 if full else 1.0)
    elem_fixed = (elem_h + elem_attn) * tokens * act_bytes / elem_bw
    act_factor = (3.0 if a.gated_mlp else 2.0) / tp  # activation fn reads 2f (or f), writes f

    def mlp_layer(
        m_tokens: float, fc1: float, ffn: float, copies: float, act_width: float
    ) -> tuple[float, float, float]:
        """(GEMM, elementwise, exposed TP/CP comm) seconds of one layer over all passes.

        ``copies`` MLPs of widths ``fc1``/``ffn`` each see ``m_tokens`` tokens.
        """
        f1, f2 = fc1 / tp, ffn / tp
        t_mlp = copies * (
            gemm_time(2 * m_tokens * h * f1, m_tokens, f1, h, peak, mem_bw, e, curve)
            + gemm_time(2 * m_tokens * f2 * h, m_tokens, h, f2, peak, mem_bw, e, curve)
        )
        t_act = act_factor * act_width * tokens * act_bytes / elem_bw
        comm = comm_layer
        if lay.overlap_tp_comm:  # TP collectives pipelined with the layer's GEMMs
            comm -= e.tp_overlap_eff * min(comm, passes * (t_attn_gemm + t_mlp))
        return passes * (t_attn_gemm + t_mlp), passes * (elem_fixed + t_act), comm

    g_dense, el_dense, c_dense = mlp_layer(tokens, s.fc1_width, a.ffn, 1.0, a.ffn)
    layers_stage = lay.stage_layers(a.layers)  # the heaviest stage paces the pipeline
    n_dense_stage = s.num_dense_layers * layers_stage / a.layers
    n_moe_stage = s.num_moe_layers * layers_stage / a.layers
    gemm_l = n_dense_stage * g_dense
    elem_l = n_dense_stage * el_dense
    comm_l = n_dense_stage * c_dense
    a2a_l = 0.0
    moe = a.moe
    if moe is not None:
        k = moe.experts_per_token
        fe = moe.expert_ffn
        fc1_e = (2 if a.gated_mlp else 1) * fe
        local_experts = moe.num_experts / ep
        expert_tokens = tokens * k * ep / moe.num_experts  # tokens each local expert sees
        a2a_bytes = tokens * k * h * act_bytes / tp
        ep_per_node = max(1, min(ep, dpn // (tp * cp)))
        t_a2a = 2 * coll.all_to_all_s(a2a_bytes, ep, ep_per_node, system, e)  # dispatch+combine
        g_moe, el_moe, c_moe = mlp_layer(
            max(expert_tokens, 1.0), fc1_e, fe, local_experts, (k + moe.num_shared_experts) * fe
        )
        if moe.num_shared_experts:
            n_sh = moe.num_shared_experts
            g_sh, _, _ = mlp_layer(tokens, n_sh * fc1_e, n_sh * fe, 1.0, 0.0)
            g_moe += g_sh - passes * t_attn_gemm
        router = gemm_time(
            2 * tokens * h * moe.num_experts, tokens, moe.num_experts, h, peak, mem_bw, e
        )
        gemm_l += n_moe_stage * (g_moe + passes * router)
        elem_l += n_moe_stage * el_moe
        comm_l += n_moe_stage * c_moe
        a2a_l = n_moe_stage * t_a2a * (passes - 1.0)
    attn_l = layers_stage * attn_layer
    over_l = layers_stage * overhead * passes

    # LM head and loss on the last stage: forward + backward GEMMs, and the fp32
    # cross-entropy passes over the (vocab-parallel) logits
    head_flops = 2 * tokens * a.vocab * h / tp
    if acc.lm_head_tflops and measured:  # measured as it runs: fwd + 2 bwd GEMMs
        t_head = 3 * head_flops / (log_interp(acc.lm_head_tflops, h) * 1e12)
    else:
        t_head = 3 * gemm_time(head_flops, tokens, a.vocab / tp, h, peak, mem_bw, e, curve)
    logits = tokens * a.vocab / tp
    if acc.loss_logits_per_s:  # measured: a CPU's exp is compute, not bytes
        t_loss = logits / acc.loss_logits_per_s + logits * LOSS_CAST_BYTES_PER_LOGIT / mem_bw
    else:
        t_loss = logits * LOSS_BYTES_PER_LOGIT / mem_bw
    dense_params, expert_params = stage_params(s, lay)
    t_cast = _autocast_s(s, lay, dense_params + expert_params, elem_bw, mem_bw)
    layer_s = (gemm_l + elem_l + attn_l + comm_l + a2a_l + over_l) / layers_stage
    if lay.uneven:  # the slowest of first, middle and last (which runs the head) paces
        first, mid, last = lay.stage_split(a.layers)
        loads = [(first * layer_s, first, False), (last * layer_s + t_head + t_loss, last, True)]
        if pp > 2:
            loads.append((mid * layer_s, mid, False))
        _, pacing, head_on = max(loads)
        scale = pacing / layers_stage
        gemm_l, elem_l, attn_l = gemm_l * scale, elem_l * scale, attn_l * scale
        comm_l, a2a_l, over_l = comm_l * scale, a2a_l * scale, over_l * scale
        if not head_on:
            t_head = t_loss = 0.0
    t_stage = gemm_l + elem_l + attn_l + comm_l + a2a_l + over_l + t_head + t_loss + t_cast

    # --- 2. pipeline ----------------------------------------------------------------
    m = lay.global_batch // (dp * lay.micro_batch)
    bubble = (pp - 1) / vpp * t_stage
    t_compute = m * t_stage
    t_p2p = 0.0
    if pp > 1:
        msg = tokens * h * act_bytes / sp_div
        inter = tp * cp * dp >= dpn  # stage neighbours sit on different nodes
        t_p2p = 2 * (m * vpp + pp - 1) * coll.p2p_s(msg, inter, system, e)

    # --- 3. data parallel / ZeRO -------------------------------------------------------
    shards = dp * cp
    ranks_per_node = max(1, dpn // (tp * cp)) if tp * cp < dpn else 1
    if not lay.hierarchical_collectives:
        ranks_per_node = 1  # a flat ring: every hop is paced by one device's NIC
    fp32 = lay.grad_reduce_dtype == "fp32" or lay.dtype == "fp32"
    reduce_bytes = 4.0 if fp32 else GRAD_BYTES
    grad_bytes = dense_params * reduce_bytes
    weight_bytes = 4.0 if lay.dtype == "fp32" else WEIGHT_BYTES
    keep = lay.keeps_params_gathered
    # gradients kept sharded (ZeRO-2, resharding ZeRO-3: as `train_memory` counts them)
    # are reduce-scattered every micro-batch; held whole (ZeRO-0/1, TorchTitan's ZeRO-3
    # under a pipeline), they are reduced once a step
    grad_rounds = m if state_sharding(lay)[1] else 1
    t_dp = 0.0
    if shards > 1:
        if lay.zero == 0:
            t_dp = coll.all_reduce_s(grad_bytes, shards, ranks_per_node, system, e)
        else:  # reduce-scatter grads; ZeRO-3 gathers parameters as layers need them (below)
            t_dp = grad_rounds * coll.reduce_scatter_s(
                grad_bytes, shards, ranks_per_node, system, e
            )
        if 0 < lay.zero < 3:  # all-gather the updated parameters
            params = dense_params * weight_bytes
            t_dp += coll.all_gather_s(params, shards, ranks_per_node, system, e)
    if expert_params and shards // ep > 1:
        t_dp += coll.all_reduce_s(expert_params * reduce_bytes, shards // ep, 1, system, e)
    t_zero3 = 0.0
    if lay.zero == 3 and shards > 1:
        # gathers per micro-batch: forward and backward. A recomputed layer's forward runs
        # inside its own backward (DeepSpeed's and FSDP's pre-backward hook gathers the
        # layer, the checkpoint replays it, its backward follows), so one gather serves
        # both. Kept parameters are gathered once per micro-batch, or once per step for
        # a pipeline stage
        gathers = 1 if keep else 2
        rounds = 1 if keep and pp > 1 else m
        per_layer = dense_params * weight_bytes / max(1, layers_stage)
        n_tensors = s.tensors_per_layer
        one = coll.all_gather_s(per_layer / n_tensors, shards, ranks_per_node, system, e)
        t_zero3 = gathers * layers_stage * n_tensors * one * rounds
    dp_total = t_dp + t_zero3
    # a CPU's collectives run on the cores that compute (gloo): nothing hides them
    if (lay.overlap_grad_reduce or lay.zero == 3) and acc.kind != "cpu":
        # Gradients are reduced bucket by bucket during the backward pass; ZeRO-3
        # prefetches the next layer's parameters during this one's compute.
        window = t_compute if lay.zero == 3 and not (keep and pp > 1) else t_compute * 2 / 3
        t_dp_exposed = dp_total - e.overlap_eff * min(dp_total, window)
    else:
        t_dp_exposed = dp_total
    opt_shards = shards if lay.zero >= 1 else 1
    t_optimizer = (dense_params + expert_params) / opt_shards * ADAM_BYTES_MOVED / mem_bw

    step = t_compute + bubble + t_p2p + t_dp_exposed + t_optimizer

    # --- 4. derived figures -----------------------------------------------------------
    tokens_step = lay.global_batch * seq
    model_flops = model_flops_per_token(s, seq) * tokens_step
    hw_flops = model_flops
    if lay.recompute == "full":
        hw_flops += model_flops / 3
    elif lay.recompute == "selective":
        hw_flops += s.attention_flops_per_token(seq) * tokens_step
    model_tf = model_flops / (step * n_dev) / 1e12
    hw_tf = hw_flops / (step * n_dev) / 1e12
    mem = train_memory(s, lay, e.workspace_gb)
    # Power: idle draw plus the dynamic range scaled by the share of the step the
    # device computes (communication-bound and bubble time draw near idle).
    busy = min(1.0, t_compute / step)
    idle_w = acc.idle_w if acc.idle_w is not None else 0.3 * acc.tdp_w
    power = idle_w + (acc.tdp_w - idle_w) * busy
    energy = power * step * n_dev * system.pue
    price = system.price_usd_per_hour
    if price is not None:
        cost = price * n_dev * step / 3600
    else:  # no rental price: electricity only
        cost = energy / 3.6e6 * system.usd_per_kwh
    breakdown = {
        "gemm": m * (gemm_l + t_head),
        "loss": m * t_loss,
        "weight_casts": m * t_cast,
        "attention": m * attn_l,
        "elementwise": m * elem_l,
        "tp_cp_comm": m * comm_l,
        "ep_comm": m * a2a_l,
        "layer_overhead": m * over_l,
        "pp_bubble": bubble,
        "pp_p2p": t_p2p,
        "dp_comm_exposed": t_dp_exposed,
        "dp_comm_total": dp_total,
        "optimizer": t_optimizer,
    }
    return TrainEstimate(
        step_time_s=step,
        tokens_per_s=tokens_step / step,
        tokens_per_s_per_device=tokens_step / step / n_dev,
        model_tflops_per_device=model_tf,
        hardware_tflops_per_device=hw_tf,
        mfu=model_flops / (step * n_dev * peak),
        hfu=hw_flops / (step * n_dev * peak),
        memory_gb={
            "weights": mem.weights / GB,
            "gradients": mem.gradients / GB,
            "optimizer": mem.optimizer / GB,
            "activations": mem.activations / GB,
            "workspace": mem.workspace / GB,
            "total": mem.total / GB,
        },
        fits_in_memory=mem.total <= acc.memory_gb * GB,
        breakdown_s=breakdown,
        energy_j=energy,
        cost_usd=cost,
        power_w=power,
        num_devices=n_dev,
        extra={
            "stage_s": t_stage,  # one micro-batch through the heaviest stage (fwd + bwd)
            # the output head and the loss run once per stage, on the last one
            "layer_s": layer_s + t_cast / layers_stage,
            "head_s": t_head + t_loss,
            "microbatches": float(m),
        },
    )
