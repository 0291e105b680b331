"""Attention: causal prefill fused (SDPA) and unfused, training's forward + backward, and
the K/V a decode step reads."""

from __future__ import annotations

from typing import Any

from suanli.calibration.timing import (
    DTYPES,
    Budget,
    Plan,
    steady,
    sweep,
    sync_for,
    timed,
    torch_module,
)

TRAIN_ATTN_TOKENS = 1024  # tokens per training-attention timing (a micro-batch's worth)


def attention(
    device: str, plan: Plan, dtype: str = "bf16", heads: int = 8, head_dim: int = 64
) -> dict[str, Any]:
    """Causal attention, fused (SDPA) and unfused, in TFLOP/s of the causal work (fp32 on
    a CPU, bf16 on a GPU); and fused forward + backward in ``dtype``, as training runs it
    (``train_tflops``, in perf's count: 3.5 x the causal forward). Lengths grow while
    the probe's budget affords the next (its work grows with the square)."""
    torch = torch_module()
    sync = sync_for(torch, device)
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    out: dict[str, Any] = {"heads": heads, "head_dim": head_dim, "by_seq": {}, "dtype": dtype}
    budget = Budget(plan.probe_budget_s)

    def call_s(seq: int) -> float:
        q, k, v = (torch.randn(1, heads, seq, head_dim, device=device, dtype=dt) for _ in "qkv")
        mask = torch.full((seq, seq), float("-inf"), device=device, dtype=dt).triu(1)

        def fused() -> Any:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        def unfused() -> Any:
            s = (q @ k.transpose(-1, -2)) / head_dim**0.5 + mask
            return torch.softmax(s, dim=-1) @ v

        flops = 2 * 2 * heads * seq * seq * head_dim / 2  # QK^T and PV, causal half
        t_fused = timed(fused, sync, plan.min_time_s, budget)
        t_unfused = timed(unfused, sync, plan.min_time_s, budget)
        t_train, train = _attention_train(
            torch, device, sync, plan, budget, seq, dtype, heads, head_dim
        )
        tf = {"fused_tflops": flops / t_fused / 1e12, "unfused_tflops": flops / t_unfused / 1e12}
        tf["fused_speedup"] = tf["fused_tflops"] / tf["unfused_tflops"]
        tf["train_tflops"] = train
        out["by_seq"][str(seq)] = {name: round(x, 4) for name, x in tf.items()}
        return t_fused + t_unfused + t_train

    sweep(plan.attn_seq, call_s, lambda seq, t: t, lambda seq: seq * seq, budget)
    return out


def _attention_train(
    torch: Any,
    device: str,
    sync: Any,
    plan: Plan,
    budget: Budget,
    seq: int,
    dtype: str,
    heads: int,
    hd: int,
) -> tuple[float, float]:
    """(seconds per call, TFLOP/s) of fused causal SDPA forward + backward in ``dtype`` over
    ``TRAIN_ATTN_TOKENS`` tokens: on a CPU its cost per token matters as much as per score,
    so it is timed at each length."""
    batch = max(1, TRAIN_ATTN_TOKENS // seq)
    dt = getattr(torch, DTYPES[dtype])
    q, k, v = (
        torch.randn(batch, heads, seq, hd, device=device, dtype=dt, requires_grad=True)
        for _ in "qkv"
    )
    grad = torch.randn_like(q)

    def fwd_bwd() -> None:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    flops = 3.5 * 0.5 * 4 * batch * heads * seq * seq * hd  # perf's count, see perf.train
    t = timed(fwd_bwd, sync, plan.min_time_s, budget)
    return t, float(flops / t / 1e12)


#: the decode-attention probes' geometry: KV heads, query heads per KV head, head size
#: (Llama-3-8B's)
DECODE_GEOMETRY = (8, 4, 128)
#: their timings, (sequences, cached tokens): the bytes' rate from the two spans at four
#: sequences; a (sequence, KV head) pair's own cost from four sequences against one
DECODE_SHAPES = ((4, 1024), (4, 64), (1, 64))


def decode_attention_fit(
    seconds: dict[tuple[int, int], float], elem_bytes: int
) -> dict[str, float]:
    """perf's decode-attention figures from a probe's seconds per layer at three shapes,
    (sequences, cached tokens) as `DECODE_SHAPES`: two spans at the most sequences, and
    the short span at fewer.

    * ``decode_attention_gbs``: the K/V bytes' rate, from the two spans;
    * ``decode_attention_row_us``: what each (sequence, KV head) pair costs beyond its
      bytes, from the most sequences against the fewest at the short span.

    A layer's decode attention is then pairs x ``row_us`` + K/V bytes / rate, its call's
    own cost left to the fixed costs. With the bytes alone, tiny-llama-40m's eager
    attention (8 sequences x 4 KV heads, 96 cached tokens, from DRAM) took 100 µs a
    layer where 54 were predicted; on that 2-core EPYC the fit gave 1.0-1.5 µs a pair in
    PyTorch, 2.1-2.4 through OpenVINO and 0 through ONNX Runtime. A rate that does not
    grow with the span (noise) leaves the bytes' rate at the long timing's and no pair
    cost.
    """
    kv, _, hd = DECODE_GEOMETRY
    most = max(b for b, _ in seconds)
    s_short, s_long = min(s for b, s in seconds if b == most), max(s for _, s in seconds)
    b_one = min(b for b, _ in seconds)
    s_one = min(s for b, s in seconds if b == b_one)
    t_long, t_short, t_one = seconds[most, s_long], seconds[most, s_short], seconds[b_one, s_one]
    per_token = 2 * kv * hd * elem_bytes  # K and V of one cached token of one sequence
    slope = (t_long - t_short) / (s_long - s_short)  # seconds per cached token, `most` seqs
    if slope <= 0:
        return {
            "decode_attention_gbs": round(most * s_long * per_token / t_long / 1e9, 2),
            "decode_attention_row_us": 0.0,
        }
    rate = most * per_token / slope
    pairs = (most - b_one) * kv
    bytes_between = (most * s_short - b_one * s_one) * per_token
    row_s = (t_short - t_one - bytes_between / rate) / pairs
    return {
        "decode_attention_gbs": round(rate / 1e9, 2),
        "decode_attention_row_us": round(max(0.0, row_s) * 1e6, 3),
    }


def cold_copies(total_bytes: int, read_bytes: int) -> int:
    """How many distinct caches a decode-attention timing cycles through, ``read_bytes``
    read from each a call, so that it reads ``total_bytes`` (`memory.sweep_bytes`) before
    it comes back to one: at least two."""
    return max(2, -(-total_bytes // read_bytes))


def decode_attention(device: str, plan: Plan, dtype: str = "bf16") -> dict[str, float]:
    """`decode_attention_fit` of serve_lm's decode-attention kernel in ``dtype``: one new
    token per sequence against its cache (`DECODE_GEOMETRY`), read from the cache in
    place as the engine does (a slot's cached tokens, strided by twice the span).

    Each timing runs over as many layers' caches as stream a decode-GEMM sweep's bytes
    (`memory.sweep_bytes`): a decode step streams its weights between one layer's
    attention and the same layer's next, so it finds its K/V in DRAM. At tiny-llama-40m's
    geometry on a 2-core EPYC (32 MB L3), 512 cached tokens from one layer's cache,
    re-read, ran 18.9 GB/s; from 22 distinct ones, 11.5.
    """
    torch = torch_module()
    from suanli.calibration.memory import sweep_bytes
    from suanli.workloads.serve_lm import _decode_attention, attention_bias

    sync = sync_for(torch, device)
    dt = getattr(torch, DTYPES[dtype])
    kv, group, hd = DECODE_GEOMETRY
    elem = int(torch.tensor([], dtype=dt).element_size())
    total = sweep_bytes(device, plan)
    seconds = {}
    for b, span in DECODE_SHAPES:
        layers = cold_copies(total, 2 * b * kv * span * hd * elem)
        # filled, not random: a GB of randn takes seconds, and the kernel's speed is not
        # the values'
        k, v = (
            torch.full((layers, b, kv, 2 * span, hd), 0.01, dtype=dt, device=device) for _ in "kv"
        )
        q = torch.randn(b, kv * group, 1, hd, dtype=dt, device=device)
        bias = attention_bias(torch.ones(b, span, dtype=torch.bool, device=device), dt)

        def step(k: Any = k, v: Any = v, q: Any = q, bias: Any = bias, span: int = span) -> None:
            for i in range(k.shape[0]):
                _decode_attention(q, k[i, :, :, :span], v[i, :, :, :span], bias)

        seconds[b, span] = steady(step, sync, plan.min_time_s) / layers
        del step, k, v  # this shape's caches go before the next shape's are made
    return decode_attention_fit(seconds, elem)
