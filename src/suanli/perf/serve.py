"""Inference: prefill and decode on the roofline of the chip.

Each layer's kernels take the longer of their compute time (FLOPs at the
compute dtype's peak times GEMM efficiency) and their memory time (weights,
KV cache and activations streamed at the achieved bandwidth), plus two TP
all-reduces and a fixed per-layer cost (kernel launches). Prefill is usually
compute-bound, decode memory-bound; the model does not assume which.

Weight-only quantization (int8/int4 "w8a16/w4a16") stores weights narrow but
computes in bf16, and its kernels reach a lower fraction of bandwidth
(``wq_bw_eff``); fp8 weights compute in fp8
where the chip has it (TensorRT-LLM's FP8 mode), else upcast.

A static batch of ``batch`` sequences: TTFT is the batch's prefill; TPOT is a
decode step at the mean context ``input + output/2`` (decode time is linear in
context, so this gives the exact total); output tokens/s = all generated
tokens over prefill + decode time, times the number of replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

from suanli.catalog.types import Accelerator, ModelArch
from suanli.errors import InvalidLayoutError
from suanli.perf import collectives as coll
from suanli.perf.efficiency import Efficiency, default_efficiency
from suanli.perf.engines import IDEALISED, Decoding, Engine, kv_follows, through
from suanli.perf.shape import ModelShape, shape_of
from suanli.perf.system import System
from suanli.perf.train import gemm_time
from suanli.units import BYTES_PER_ELEMENT, GB

#: fp32: a device whose 16-bit formats are emulated (a CPU without bf16 instructions)
SERVE_WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp32")
SERVE_KV_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp32")
ACT_BYTES = 2.0
#: Serving engines prefill in chunks (vLLM's default max_num_batched_tokens with
#: chunked prefill is 8192), which bounds activation memory.
PREFILL_CHUNK_TOKENS = 8192
#: Decode is memory-bound and draws well under TDP; Splitwise (Patel et al.,
#: ISCA'24, Sec. III) measures the token phase at roughly 60% of the dynamic range.
DECODE_POWER_FRACTION = 0.6
#: Group-wise scales: one fp16 scale per 128 weights for int4/int8 (GPTQ/AWQ-style).
QUANT_SCALE_BYTES_PER_WEIGHT = {"int8": 2 / 128, "int4": 2 / 128}


@dataclass(frozen=True, slots=True)
class ServeEstimate:
    """A static batch on one replica of ``tp`` devices, and ``replicas`` of them."""

    ttft_s: float
    tpot_s: float
    output_tokens_per_s: float
    kv_cache_gb: float
    memory_gb: dict[str, float]
    fits_in_memory: bool
    max_batch: int
    prefill_breakdown_s: dict[str, float]
    decode_breakdown_s: dict[str, float]
    replicas: int
    energy_j_per_output_token: float
    cost_usd_per_million_output_tokens: float | None
    engine: str | None = None  # NAME[@VERSION], or None: the idealised engine
    kv_dtype: str | None = None  # the KV cache's precision the estimate used
    notes: tuple[str, ...] = ()  # what the estimate could not take from the engine

    def to_dict(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "kv_dtype": self.kv_dtype,
            "notes": list(self.notes),
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "kv_cache_gb": self.kv_cache_gb,
            "memory_gb": dict(self.memory_gb),
            "fits_in_memory": self.fits_in_memory,
            "max_batch": self.max_batch,
            "prefill_breakdown_s": dict(self.prefill_breakdown_s),
            "decode_breakdown_s": dict(self.decode_breakdown_s),
            "replicas": self.replicas,
            "energy_j_per_output_token": self.energy_j_per_output_token,
            "cost_usd_per_million_output_tokens": self.cost_usd_per_million_output_tokens,
        }


def check_serve(
    model: ModelArch,
    num_devices: int,
    tp: int,
    weight_dtype: str,
    kv_dtype: str,
    batch: int,
    input_len: int,
    output_len: int,
) -> None:
    """Raise `InvalidLayoutError` naming the first broken constraint."""
    if tp < 1 or num_devices < 1:
        raise InvalidLayoutError("--tp and --num-devices must be >= 1")
    if num_devices % tp:
        raise InvalidLayoutError(
            f"num-devices {num_devices} is not a multiple of tp {tp} (replicas = num-devices/tp)"
        )
    if model.heads % tp:
        raise InvalidLayoutError(
            f"tp {tp} does not divide the {model.heads} attention heads of {model.name}"
        )
    if weight_dtype not in SERVE_WEIGHT_DTYPES:
        raise InvalidLayoutError(f"weight dtype must be one of {', '.join(SERVE_WEIGHT_DTYPES)}")
    if kv_dtype not in SERVE_KV_DTYPES:
        raise InvalidLayoutError(f"KV dtype must be one of {', '.join(SERVE_KV_DTYPES)}")
    if batch < 1 or input_len < 1 or output_len < 1:
        raise InvalidLayoutError("--batch, --input-len and --output-len must be >= 1")


def weight_bytes_per_device(
    s: ModelShape, tp: int, weight_dtype: str, decoding: Decoding = IDEALISED
) -> float:
    """Weights one device holds: linear layers at ``weight_dtype``, embeddings at bf16,
    all split over the TP ranks; an engine that keeps the vocabulary tensors whole
    (``decoding.head_split`` False: gpt-fast) holds them on every rank, its output
    projection quantized with the layers where it says so."""
    wb = BYTES_PER_ELEMENT[weight_dtype] + QUANT_SCALE_BYTES_PER_WEIGHT.get(weight_dtype, 0.0)
    embed = s.embedding_params + s.head_params
    linear = s.total_params - embed - s.arch.layers * s.norm_bias_params_per_layer
    embed_b = BYTES_PER_ELEMENT["fp32"] if weight_dtype == "fp32" else ACT_BYTES
    if decoding.head_split:
        return (linear * wb + embed * embed_b) / tp
    head_b = wb if decoding.quantizes_head(weight_dtype) else embed_b
    return linear * wb / tp + s.embedding_params * embed_b + s.head_params * head_b


def kv_bytes_per_token_device(s: ModelShape, tp: int, kv_dtype: str) -> float:
    """KV bytes per token on one device: heads split over TP, replicated when tp > kv heads.

    MLA's latent is shared by all heads, so every TP rank keeps all of it.
    """
    full = s.kv_bytes_per_token(BYTES_PER_ELEMENT[kv_dtype])
    if s.arch.mla is not None:
        return full
    return full / min(tp, s.arch.kv_heads)


def serve_memory(
    s: ModelShape,
    system: System,
    tp: int,
    weight_dtype: str,
    kv_dtype: str,
    batch: int,
    input_len: int,
    output_len: int,
    e: Efficiency,
    decoding: Decoding = IDEALISED,
) -> dict[str, float]:
    """Bytes per device: weights, KV cache of the batch at full length, activations, workspace.

    Activations: one layer's intermediates for a prefill chunk (serving engines
    prefill in chunks of at most `PREFILL_CHUNK_TOKENS`) plus fp32 logits (of the whole
    vocabulary on every rank where the engine keeps the output projection whole).
    """
    a = s.arch
    chunk = min(batch * input_len, PREFILL_CHUNK_TOKENS)
    head_tp = decoding.head_ranks(tp)
    act = chunk * (4 * a.hidden + 2 * a.ffn / tp) * ACT_BYTES + batch * a.vocab / head_tp * 4
    return {
        "weights": weight_bytes_per_device(s, tp, weight_dtype, decoding),
        "kv_cache": batch * (input_len + output_len) * kv_bytes_per_token_device(s, tp, kv_dtype),
        "activations": act,
        "workspace": e.workspace_gb * GB,
    }


def max_batch_that_fits(
    s: ModelShape,
    system: System,
    tp: int,
    weight_dtype: str,
    kv_dtype: str,
    seq_tokens: int,
    e: Efficiency,
    decoding: Decoding = IDEALISED,
) -> int:
    """The most sequences of ``seq_tokens`` whose KV cache fits beside the weights."""
    fixed = serve_memory(
        s, system, tp, weight_dtype, kv_dtype, 1, PREFILL_CHUNK_TOKENS, 0, e, decoding
    )
    free = (
        system.accelerator.memory_gb * GB
        - fixed["weights"]
        - fixed["activations"]
        - (fixed["workspace"])
    )
    per_seq = seq_tokens * kv_bytes_per_token_device(s, tp, kv_dtype)
    return int(max(0.0, free) // per_seq) if per_seq > 0 else 0


def _bw_eff(e: Efficiency, weight_dtype: str) -> float:
    if weight_dtype in ("int8", "int4"):
        return e.mem_bw_eff * e.wq_bw_eff
    return e.mem_bw_eff


def _peer_link(acc: Accelerator) -> bool:
    """Whether an engine's peer-to-peer all-reduce runs here: its kernels read peers'
    memory over NVLink (vLLM checks every pair is joined by it; IntraNodeComm detects
    NVLink topologies); elsewhere the engine falls back to NCCL."""
    return acc.intra_node_link.startswith("nvlink")


def _experts_touched(s: ModelShape, tokens: float) -> float:
    """Expected distinct routed experts a batch of ``tokens`` touches in one MoE layer."""
    moe = s.arch.moe
    if moe is None:
        return 0.0
    return float(moe.num_experts * (1 - (1 - moe.experts_per_token / moe.num_experts) ** tokens))


def _pass_time(
    s: ModelShape,
    system: System,
    e: Efficiency,
    tp: int,
    weight_dtype: str,
    *,
    tokens: float,
    kv_read_bytes: float,
    attn_flops: float,
    lm_head_tokens: float,
    layer_frac: float = 1.0,
    decoding: Decoding = IDEALISED,
    attn_pairs: float = 0.0,
) -> dict[str, float]:
    """Seconds of one forward pass over ``tokens`` tokens, by part.

    ``layer_frac`` of the layers run here (an edge/cloud split runs a share of
    them on each side); ``kv_read_bytes``, ``attn_flops`` and ``attn_pairs`` (the
    (sequence, KV head) pairs a decode kernel works on) are for all layers.
    ``lm_head_tokens`` = 0 leaves the LM head out.
    """
    a = s.arch
    acc = system.accelerator
    # fp32 weights: the whole model computes in fp32 (activations, head, attention)
    # (and int8/int4 weights on a device measured to compute in fp32: their activations
    # and output head are fp32 there)
    narrow = weight_dtype in ("int8", "int4") and acc.compute_dtype == "fp32"
    wide = "fp32" if weight_dtype == "fp32" or narrow else "bf16"
    compute_dtype = "fp8" if weight_dtype == "fp8" and acc.native("fp8") else wide
    # GEMMs run at a share (gemm_eff_max) of the best rate a GEMM reaches on the chip
    peak = acc.peak(compute_dtype) * acc.achievable_fraction(compute_dtype) * 1e12
    peak16 = acc.peak(wide) * acc.achievable_fraction(wide) * 1e12
    act_bytes = BYTES_PER_ELEMENT[wide]
    bw = acc.memory_bandwidth_gbs * GB
    wb = BYTES_PER_ELEMENT[weight_dtype] + QUANT_SCALE_BYTES_PER_WEIGHT.get(weight_dtype, 0.0)
    # weights stream through skinny GEMMs: at the measured rate where there is one
    # (the rate of matrices whose inner size is the hidden size, where it was measured by K;
    # a kernel measured for this weight dtype streams at its own rate)
    rate16 = (acc.gemv_rate_gbs(s.arch.hidden, wide) or acc.memory_bandwidth_gbs) * GB
    own = acc.gemv_rate_gbs(s.arch.hidden, weight_dtype) if weight_dtype != wide else None
    bw_w = own * GB * e.mem_bw_eff if own else rate16 * _bw_eff(e, weight_dtype)
    bw_a = bw * e.mem_bw_eff
    h = a.hidden
    layer_params = s.attn_params + s.dense_mlp_params  # dense layer
    weights_dense = layer_params / tp * wb
    flops_dense = 2 * tokens * layer_params / tp
    width = layer_params / h / tp  # output width of the layer's GEMMs, taken together
    t_dense = max(gemm_time(flops_dense, tokens, width, h, peak, bw_a, e), weights_dense / bw_w)
    t_moe = 0.0
    moe = a.moe
    if moe is not None:
        touched = _experts_touched(s, tokens)
        moe_w = (s.attn_params + touched * s.expert_params + s.shared_expert_params) / tp * wb
        moe_params = (
            s.attn_params + moe.experts_per_token * s.expert_params + s.shared_expert_params
        )
        flops_moe = 2 * tokens * moe_params / tp
        per_expert = tokens * moe.experts_per_token / max(touched, 1.0)
        width_moe = moe_params / h / tp
        t_moe = max(gemm_time(flops_moe, per_expert, width_moe, h, peak, bw_a, e), moe_w / bw_w)
    t_weights = (s.num_dense_layers * t_dense + s.num_moe_layers * t_moe) * layer_frac
    # attention over the KV cache: read it once, and each (sequence, KV head) pair's own
    # work where it was measured; FLOPs at bf16
    bw_kv = acc.decode_attention_gbs * GB if acc.decode_attention_gbs else bw_a
    t_pairs = attn_pairs / tp * (acc.decode_attention_row_us or 0.0) * 1e-6
    t_attn = (
        max(attn_flops / tp / (peak16 * e.attn_eff), kv_read_bytes / bw_kv + t_pairs) * layer_frac
        if (attn_flops or kv_read_bytes)
        else 0.0
    )
    # elementwise: norms, residuals, activation, rope — a handful of passes over h; eager
    # PyTorch runs them at its measured elementwise rate where there is one (on a CPU a
    # fifth of memory speed: per-element work, bf16 conversions), an engine's own graph
    # (a measured ONNX Runtime or OpenVINO, a GPU engine's fused kernels) at memory speed
    eager_bw = acc.train_elementwise_gbs * GB if acc.train_elementwise_gbs else bw_a
    bw_elem = bw_a if acc.measured_engine else eager_bw
    layers = a.layers * layer_frac
    t_elem = layers * tokens * (10 * h / tp + 3 * a.ffn / tp) * act_bytes / bw_elem
    ar_bytes = tokens * h * act_bytes
    ar = coll.all_reduce_s(ar_bytes, tp, min(tp, system.devices_per_node), system, e)
    if decoding.custom_all_reduce and tp <= system.devices_per_node and _peer_link(acc):
        # the engine picks its own kernel where it beats NCCL's (small messages)
        ar = min(ar, coll.peer_all_reduce_s(ar_bytes, tp, system, e))
    if tp > 1 and not decoding.graph_capture:  # each all-reduce launched from the host on its own
        ar += e.tp_launch_us * 1e-6
    t_tp = layers * 2 * ar
    # the output projection stays in 16 bits whatever the layers' weight dtype (quantized
    # checkpoints keep it so) and streams at the 16-bit weight rate, split over the TP
    # ranks; an engine may state otherwise (gpt-fast keeps it whole on every rank and
    # quantizes it with the layers)
    head_tp = decoding.head_ranks(tp)
    quant_head = decoding.quantizes_head(weight_dtype)
    head_w = a.vocab * h / head_tp * (wb if quant_head else act_bytes)
    head_flops = 2 * lm_head_tokens * a.vocab * h / head_tp
    bw_head = bw_w if quant_head else rate16 * e.mem_bw_eff
    t_head = (
        max(
            gemm_time(head_flops, lm_head_tokens, a.vocab / head_tp, h, peak16, bw_a, e),
            head_w / bw_head,
        )
        if lm_head_tokens
        else 0.0
    )
    # the sampler, over the whole vocabulary of each row the head projects: the logits cast
    # to fp32 (read, write) and one pass to pick the token (argmax, or the draw after a
    # softmax). serve_lm runs `logits.float().argmax(-1)` in PyTorch whatever engine ran the
    # layers; vLLM's V1 sampler likewise converts the logits to float32 first (step 2 of
    # vllm/v1/sample/sampler.py's docstring). At 8 x 32,000 logits on a 2-core CPU that is a
    # third of a millisecond a step, which the fixed-cost probe (a vocabulary of 256) does
    # not see; on a GPU it is microseconds.
    logit_bytes = (act_bytes + 4.0 if act_bytes < 4 else 0.0) + 4.0
    t_sample = lm_head_tokens * a.vocab * logit_bytes / eager_bw
    # fixed costs: the global per-layer one, or what the device's engine was measured at
    # (with these weights, where measured: an int8-weight GEMM call costs its own)
    layer_us, step_us = acc.decode_overhead_us(weight_dtype)
    t_over = layers * (e.layer_overhead_us if layer_us is None else layer_us) * 1e-6
    return {
        "weights_gemm": t_weights,
        "attention": t_attn,
        "elementwise": t_elem,
        "tp_comm": t_tp,
        "lm_head": t_head,
        "sampling": t_sample,
        "layer_overhead": t_over,
        "step_overhead": (step_us or 0.0) * 1e-6
        + (e.sched_step_us * 1e-6 if decoding.host_scheduling else 0.0),
    }


def prefill_parts(
    model: ModelArch,
    system: System,
    *,
    tp: int,
    batch: int,
    input_len: int,
    weight_dtype: str = "bf16",
    eff: Efficiency | None = None,
    layer_frac: float = 1.0,
    with_head: bool = True,
    decoding: Decoding = IDEALISED,
) -> dict[str, float]:
    """Seconds, by part, to prefill ``batch`` prompts of ``input_len`` tokens at once,
    as the engine whose decode ``decoding`` describes prefills (`Decoding.prefill`)."""
    e = eff if eff is not None else default_efficiency()
    s = shape_of(model)
    qv = s.q_dim + s.v_dim
    attn = model.layers * batch * input_len * input_len * qv  # causal: half of 2*I^2*(dq+dv)
    head = batch if with_head else 0
    return _pass_time(
        s,
        system,
        e,
        tp,
        weight_dtype,
        tokens=batch * input_len,
        kv_read_bytes=0.0,  # a prompt's attention reads its own K/V, counted in its FLOPs
        attn_flops=attn,
        lm_head_tokens=head,
        layer_frac=layer_frac,
        decoding=decoding.prefill(),
    )


def decode_parts(
    model: ModelArch,
    system: System,
    *,
    tp: int,
    batch: float,
    context: float,
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    decoding: Decoding = IDEALISED,
    eff: Efficiency | None = None,
    layer_frac: float = 1.0,
    with_head: bool = True,
) -> dict[str, float]:
    """Seconds, by part, of one decode step for ``batch`` sequences at ``context`` tokens,
    decoded as ``decoding`` says (`perf.engines.Decoding`).

    ``decoding.gqa_kv_reuse`` False models decode-attention kernels that read a KV head
    once per *query* head of its group instead of once per group: TensorRT-LLM
    before its XQA kernel (v0.7, Dec 2023), and code that ``repeat_interleave``s
    K/V before attention (gpt-fast). Current engines (vLLM, SGLang, TRT-LLM
    with XQA, FlashInfer) reuse, which is the default.
    """
    e = eff if eff is not None else default_efficiency()
    s = shape_of(model)
    kv_tok = kv_bytes_per_token_device(s, tp, kv_dtype)
    kv_reads = 1.0 if decoding.gqa_kv_reuse or model.mla else model.heads / model.kv_heads
    attn = model.layers * 2 * batch * context * (s.q_dim + s.v_dim)
    head = batch if with_head else 0
    kv_read = batch * context * kv_tok * kv_reads
    # the kernel's (sequence, KV head) pairs: per query head where it reads K/V per query
    # head; one latent per sequence under MLA
    pairs = model.layers * batch * (1 if model.mla else model.kv_heads * kv_reads)
    return _pass_time(
        s,
        system,
        e,
        tp,
        weight_dtype,
        tokens=batch,  # one new token per sequence
        kv_read_bytes=kv_read,
        attn_flops=attn,
        lm_head_tokens=head,
        layer_frac=layer_frac,
        decoding=decoding,
        attn_pairs=pairs,
    )


def estimate_serve(
    model: ModelArch,
    system: System,
    *,
    num_devices: int,
    tp: int,
    batch: int,
    input_len: int,
    output_len: int,
    weight_dtype: str = "bf16",
    kv_dtype: str | None = None,
    decoding: Decoding = IDEALISED,
    eff: Efficiency | None = None,
    engine: Engine | None = None,
) -> ServeEstimate:
    """Estimate a static batch on ``num_devices / tp`` replicas (see `decode_parts`).

    ``engine``: what it can do decides the decode (over ``decoding``) and the
    default KV precision, and a precision it has no kernels for is refused
    (`suanli.perf.engines`)."""
    notes: tuple[str, ...] = ()
    if engine is not None:
        system = through(system, engine.name) or system  # its rates measured here
        engine.check(system.accelerator, weight_dtype, kv_dtype)
        kv_dtype = kv_dtype or engine.default_kv(weight_dtype, system.accelerator)
        decoding = engine.decoding()
        notes = tuple(engine.caveats(system.accelerator, tp))
    kv_dtype = kv_dtype or kv_follows(weight_dtype, system.accelerator)
    check_serve(model, num_devices, tp, weight_dtype, kv_dtype, batch, input_len, output_len)
    e = eff if eff is not None else default_efficiency()
    s = shape_of(model)
    acc = system.accelerator
    replicas = num_devices // tp
    pre = prefill_parts(
        model,
        system,
        tp=tp,
        batch=batch,
        input_len=input_len,
        weight_dtype=weight_dtype,
        eff=e,
        decoding=decoding,
    )
    ttft = sum(pre.values())

    # Decode at the mean context (input + output / 2): decode time is linear in it.
    dec = decode_parts(
        model,
        system,
        tp=tp,
        batch=batch,
        context=input_len + output_len / 2,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        decoding=decoding,
        eff=e,
    )
    tpot = sum(dec.values())

    total_s = ttft + output_len * tpot
    out_tps = replicas * batch * output_len / total_s

    mem = serve_memory(
        s, system, tp, weight_dtype, kv_dtype, batch, input_len, output_len, e, decoding
    )
    total = sum(mem.values())
    cap = acc.memory_gb * GB
    max_batch = max_batch_that_fits(
        s, system, tp, weight_dtype, kv_dtype, input_len + output_len, e, decoding
    )
    idle_w = acc.idle_w if acc.idle_w is not None else 0.3 * acc.tdp_w
    decode_w = idle_w + DECODE_POWER_FRACTION * (acc.tdp_w - idle_w)
    energy = (acc.tdp_w * ttft + decode_w * output_len * tpot) * num_devices * system.pue
    tokens_out = replicas * batch * output_len
    price = system.price_usd_per_hour
    cost = price * num_devices * total_s / 3600 / tokens_out * 1e6 if price is not None else None
    return ServeEstimate(
        ttft_s=ttft,
        tpot_s=tpot,
        output_tokens_per_s=out_tps,
        kv_cache_gb=mem["kv_cache"] / GB,
        memory_gb={**{k: v / GB for k, v in mem.items()}, "total": total / GB},
        fits_in_memory=total <= cap,
        max_batch=max_batch,
        prefill_breakdown_s=pre,
        decode_breakdown_s=dec,
        replicas=replicas,
        energy_j_per_output_token=energy / tokens_out,
        cost_usd_per_million_output_tokens=cost,
        engine=engine.label if engine is not None else None,
        kv_dtype=kv_dtype,
        notes=notes,
    )
