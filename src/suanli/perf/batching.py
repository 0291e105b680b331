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
from suanli.perf.engines import IDEALISED, Decoding
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
#: vLLM refuses a token budget below ``max_num_seqs``: a full decode batch is one step
MIN_TOKEN_BUDGET = MAX_SEQS
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
        decoding: Decoding = IDEALISED,
    ) -> None:
        self.model, self.system, self.tp = model, system, tp
        self.weight_dtype, self.kv_dtype = weight_dtype, kv_dtype
        self.decoding = decoding  # as the engine decodes (`suanli.perf.engines`)
        self.eff = eff if eff is not None else default_efficiency()
        probe = decode_parts(
            model,
            system,
            batch=1,
            context=PROBE_CONTEXT,
            tp=tp,
            weight_dtype=weight_dtype,
            kv_dtype=kv_dtype,
            decoding=decoding,
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
            self.decoding,
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
            decoding=self.decoding,
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
            decoding=self.decoding,
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


def slo_token_budget(steps: StepTime, tpot_slo_s: float, most: int = TOKEN_BUDGET) -> int:
    """The token budget (``max_num_batched_tokens``) for a TPOT SLO: the largest power of
    two, up to ``most``, whose step of prompt tokens takes no longer than the SLO.

    Sarathi-Serve's rule (Agrawal et al., OSDI'24, Sec. 4.3: the token budget is the
    most tokens a batch can hold without breaking the time-between-tokens SLO). With
    vLLM's default of 8,192 one chunk of a long prompt holds every sequence decoding
    beside it for that whole step: 0.26 s on an H100 for an 8B model, 0.8 s on an A100.
    A request of a few output tokens (the Azure code trace's median is 13) then misses a
    100 ms TPOT for one neighbour's prompt. A smaller budget spreads that prompt over
    more steps, at a little more TTFT for the prompt itself. Never below
    `MIN_TOKEN_BUDGET`: the chip may miss the SLO even then, which the capacity tables
    say (`suanli.autoscale.capacity`)."""
    budget = MIN_TOKEN_BUDGET
    while budget * 2 <= most and steps.step_s(0, 0.0, budget * 2) <= tpot_slo_s:
        budget *= 2
    return budget
