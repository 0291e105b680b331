"""Attention: causal prefill fused (SDPA) and unfused, training's forward + backward, and
the K/V a decode step reads."""

from __future__ import annotations

from typing import Any

from suanli.calibration.timing import DTYPES, Budget, Plan, sweep, sync_for, timed, torch_module

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


def decode_attention_gbs(device: str, plan: Plan, dtype: str = "bf16") -> float:
    """GB/s of K/V a decode step's attention reads, with serve_lm's kernel.

    One new token per sequence against its cache (4 sequences, 8 KV heads of 128,
    4 query heads each, 1024 cached tokens: Llama-3-8B's geometry), read from the
    cache in place as the engine does, in ``dtype`` (serve_lm's).
    """
    torch = torch_module()
    from suanli.workloads.serve_lm import _decode_attention, attention_bias

    sync = sync_for(torch, device)
    dt = getattr(torch, DTYPES[dtype])
    b, kv, group, hd, span = 4, 8, 4, 128, 1024
    k, v = (torch.randn(b, kv, 2 * span, hd, dtype=dt, device=device) for _ in "kv")
    q = torch.randn(b, kv * group, 1, hd, dtype=dt, device=device)
    bias = attention_bias(torch.ones(b, span, dtype=torch.bool, device=device), dt)

    def step() -> None:
        _decode_attention(q, k[:, :, :span], v[:, :, :span], bias)

    t = timed(step, sync, plan.min_time_s, Budget(plan.probe_budget_s))
    return round(2 * b * kv * span * hd * int(k.element_size()) / t / 1e9, 2)
