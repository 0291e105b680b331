"""The time of one continuous-batching engine step (vLLM-like), from the prefill and
decode models of `suanli.perf.serve`.

A step runs ``n_decode`` sequences one token each (their KV caches read: linear in the
tokens cached, ``ctx_tokens``) and a prefill chunk of ``prefill_tokens`` in the same
forward pass. The pass reads the weights once, so a mixed step costs the decode and
the prefill less the smaller of their weight-streaming times, and pays the per-layer
and per-step fixed costs once. Chunks of a long prompt are costed as prompts of their
own length (attention to earlier chunks is left out: under 5% for prompts that fit
one 8k-token budget, which is nearly all of the Azure traces).

Figures are cached by batch size and by chunk length rounded up to 16 tokens, so a
simulated hour of steps costs dictionary look-ups, not roofline evaluations.
"""

from __future__ import annotations

from functools import lru_cache

from suanli.catalog.types import ModelArch
from suanli.perf.efficiency import Efficiency, default_efficiency
from suanli.perf.serve import (
    PREFILL_CHUNK_TOKENS,
    decode_parts,
    kv_bytes_per_token_device,
    prefill_parts,
    serve_memory,
)
from suanli.perf.shape import shape_of
from suanli.perf.system import System
from suanli.units import GB

ROUND_TOKENS = 16
TOKEN_BUDGET = 8192  # vLLM: max_num_batched_tokens with chunked prefill
MAX_SEQS = 256  # vLLM: max_num_seqs
PROBE_CONTEXT = 4096  # attention is linear in the cached tokens: measured once, at this


class StepTime:
    """Seconds of one engine step on one replica (``tp`` devices) of ``system``."""

    def __init__(
        self,
        model: ModelArch,
        system: System,
        *,
        tp: int = 1,
        weight_dtype: str = "bf16",
        kv_dtype: str = "bf16",
        eff: Efficiency | None = None,
        gqa_kv_reuse: bool = True,
    ) -> None:
        self.model, self.system, self.tp = model, system, tp
        self.weight_dtype, self.kv_dtype = weight_dtype, kv_dtype
        self.gqa_kv_reuse = gqa_kv_reuse  # as the engine decodes (`suanli.perf.engines`)
        self.eff = eff if eff is not None else default_efficiency()
        probe = decode_parts(
            model,
            system,
            batch=1,
            context=PROBE_CONTEXT,
            tp=tp,
            weight_dtype=weight_dtype,
            kv_dtype=kv_dtype,
            gqa_kv_reuse=gqa_kv_reuse,
            eff=self.eff,
        )
        self.attn_s_per_token = probe["attention"] / PROBE_CONTEXT
        self._decode = lru_cache(maxsize=None)(self._decode_uncached)
        self._prefill = lru_cache(maxsize=None)(self._prefill_uncached)

    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache that fit beside the weights, activations and workspace."""
        s = shape_of(self.model)
        fixed = serve_memory(
            s,
            self.system,
            self.tp,
            self.weight_dtype,
            self.kv_dtype,
            1,
            PREFILL_CHUNK_TOKENS,
            0,
            self.eff,
        )
        free = self.system.accelerator.memory_gb * GB - sum(
            v for k, v in fixed.items() if k != "kv_cache"
        )
        per_token = kv_bytes_per_token_device(s, self.tp, self.kv_dtype)
        return int(max(0.0, free) // per_token)

    def _decode_uncached(self, batch: int) -> tuple[float, float, float]:
        """(seconds at no context, of which weight streaming, of which fixed costs)."""
        p = decode_parts(
            self.model,
            self.system,
            batch=batch,
            context=0.0,
            tp=self.tp,
            weight_dtype=self.weight_dtype,
            kv_dtype=self.kv_dtype,
            gqa_kv_reuse=self.gqa_kv_reuse,
            eff=self.eff,
        )
        return sum(p.values()), p["weights_gemm"], p["layer_overhead"] + p["step_overhead"]

    def _prefill_uncached(self, tokens: int) -> tuple[float, float, float]:
        p = prefill_parts(
            self.model,
            self.system,
            tp=self.tp,
            batch=1,
            input_len=tokens,
            weight_dtype=self.weight_dtype,
            eff=self.eff,
        )
        return sum(p.values()), p["weights_gemm"], p["layer_overhead"] + p["step_overhead"]

    def decode_s(self, batch: int, ctx_tokens: float) -> float:
        """A decode-only step: ``batch`` rows over ``ctx_tokens`` cached tokens in all."""
        return self._decode(batch)[0] + self.attn_s_per_token * ctx_tokens

    def step_s(self, n_decode: int, ctx_tokens: float, prefill_tokens: int) -> float:
        if not prefill_tokens:
            return self.decode_s(n_decode, ctx_tokens) if n_decode else 0.0
        rounded = -(-prefill_tokens // ROUND_TOKENS) * ROUND_TOKENS
        pre, pre_w, pre_fixed = self._prefill(rounded)
        if not n_decode:
            return pre
        dec, dec_w, _ = self._decode(n_decode)
        return dec + self.attn_s_per_token * ctx_tokens + pre - min(pre_w, dec_w) - pre_fixed
