"""``python -m suanli.workloads.serve_lm``: an OpenAI-compatible completions server.

It serves the GPT of ``train_lm`` (weights from a ``train_lm`` checkpoint, or
seeded random ones for load tests) with the three things that make LLM serving
fast: a KV cache (each sequence's keys and values are kept, so a new token
costs one position, not the whole prefix), continuous batching (every decode
step runs all active sequences together, and a finished sequence's slot takes
a waiting request at the next step, not when the whole batch is done), and
optional int8 weight-only quantization (weights stored in int8 with one scale
per output channel: half the bytes a decode step must read).

Tokens are bytes, as in training. The HTTP side (OpenAI's completions, chat
completions and models, Prometheus metrics) is ``suanli.workloads.openai_api``;
this module is the engine and the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from suanli.catalog.loader import get_model
from suanli.device import choose_precision
from suanli.run.executor import NODE_ADDRESS_ENV
from suanli.workloads import keep_freed_heap
from suanli.workloads.onnx_lm import (
    MASKED,
    ONNX_ENGINES,
    OnnxEngine,
    Runner,
    pytorch_on_one_thread,
    runner_for,
)
from suanli.workloads.replica_auth import REPLICA_TOKEN_ENV
from suanli.workloads.train_lm import GPT, Block, _rope

log = logging.getLogger("suanli.serve_lm")
MIN_TEMPERATURE = 1e-3  # a lower temperature samples as greedy decoding
#: the cached positions an exported graph is handed come in blocks of this many: OpenVINO
#: prepares its nodes again for every new input shape: its graph of tiny-llama-40m on a
#: 2-core EPYC ran 8.8-9.3 ms a step with the past growing by one, 6.1 with it held, and
#: 6.8-7.5 over shapes it had met before; vLLM's KV blocks are 16 tokens too
GRAPH_BLOCK_TOKENS = 16


class Int8Linear(nn.Module):
    """Weight-only int8: per-output-channel symmetric scales.

    On CPUs PyTorch's int8-weight GEMM (``_weight_int8pack_mm``, the kernel
    gpt-fast and torchao use) reads the int8 weight directly; elsewhere the
    weight is dequantized inside the matmul.
    """

    def __init__(self, lin: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        w = lin.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("qweight", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale.to(dtype))
        self.bias = lin.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = cast(torch.Tensor, self.qweight), cast(torch.Tensor, self.scale)
        if x.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm"):
            flat = x.reshape(-1, x.shape[-1])
            y = torch._weight_int8pack_mm(flat, q, scale.to(x.dtype))
            y = y.reshape(*x.shape[:-1], q.shape[0])
            return y if self.bias is None else y + self.bias
        return F.linear(x, q.to(x.dtype) * scale.to(x.dtype)[:, None], self.bias)


def quantize_int8(model: nn.Module, dtype: torch.dtype, keep: tuple[str, ...] = ("head",)) -> None:
    """Every linear layer of the decoder to int8 weight-only, except the output projection
    (``keep``): as GPTQ/AWQ checkpoints and vLLM leave it, its error would reach every
    logit, and the perf model counts it in full precision."""
    for name, child in list(model.named_children()):
        if name in keep:
            continue
        if isinstance(child, nn.Linear):
            setattr(model, name, Int8Linear(child, dtype))
        else:
            quantize_int8(child, dtype, keep)


def attention_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask SDPA takes (0 where ``valid``, -inf elsewhere), built once a step:
    a boolean mask would be converted again in every layer's call."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(
        ~valid, float("-inf")
    )


def _decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """One new token per sequence against its cache, reading each KV head once per group
    (the GQA-reusing decode kernel the perf model assumes).

    A group's query heads stand in as the query rows of one attention over their KV head,
    so SDPA's fused CPU kernel reads K and V where they lie in the cache: a slice of it is
    strided, and batched matrix products copied each layer's K and V to contiguous
    tensors first. 8 layers of tiny-llama-40m's geometry at batch 8, 95 cached tokens,
    bf16, on the 2-core Xeon of ``benchmarks/closing_loop.py``: 0.58 ms, against 1.37 ms
    with the products (and 2.5 against 7.0 ms at 600 tokens). ``bias``: [B, span],
    additive (`attention_bias`).
    """
    b, nh, _, hd = q.shape
    nkv = k.shape[1]
    qg = q.view(b, nkv, nh // nkv, hd)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=bias.view(b, 1, 1, -1))
    return out.reshape(b, nh, 1, hd)


@dataclass
class Request:
    """One sequence to generate, with OpenAI's sampling parameters.

    ``done`` resolves to the request itself once it finished (``finish`` says why):
    the HTTP layer shapes the answer, the engine only decodes.
    """

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float = 1.0
    stop: tuple[bytes, ...] = ()  # generation ends *before* any of these byte strings
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    done: Future[Request] = field(default_factory=Future)
    out: list[int] = field(default_factory=list)
    #: per generated token: (its log-probability, {token: log-probability} of the top k)
    token_logprobs: list[tuple[float, dict[int, float]]] = field(default_factory=list)
    finish: str = "length"  # or "stop": a stop string ended it
    slot: int = -1
    length: int = 0  # tokens in the cache
    on_token: Callable[[int], None] | None = None  # streaming: called with each new token
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    finished_at: float | None = None
    _gen: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.seed is not None:  # the same seed gives the same sample, as OpenAI's `seed`
            self._gen = torch.Generator().manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        """Argmax over the raw logits is the whole of sampling (the batched fast path)."""
        return (
            self.temperature < MIN_TEMPERATURE
            and self.logprobs is None
            and not (self.presence_penalty or self.frequency_penalty or self.logit_bias)
        )

    @property
    def stopped(self) -> bool:
        return self.finish == "stop"

    def text_bytes(self) -> bytes:
        return bytes(t % 256 for t in self.out)


class Engine:
    """The batch loop: admit waiting requests into free cache slots, decode all, repeat."""

    def __init__(
        self,
        model: GPT | None,
        arch: Any,
        slots: int,
        max_len: int,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
        backend: Runner | None = None,
    ) -> None:
        if (model is None) == (backend is None):
            raise ValueError("an Engine runs either the PyTorch model or a backend")
        self.arch, self.dtype = arch, dtype
        #: the PyTorch model; None where a backend holds its own copy of the weights
        self.model = model
        #: ONNX Runtime or OpenVINO running the exported model; None: eager PyTorch
        self.backend = backend
        self.device = torch.device(device)
        self.slots, self.max_len = slots, max_len
        shape = (arch.layers, slots, arch.kv_heads, max_len, arch.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self.waiting: queue.Queue[Request] = queue.Queue()
        self.active: dict[int, Request] = {}
        # (time, tokens) of recent decode steps; bounded whether or not /metrics is read
        self.decoded: deque[tuple[float, int]] = deque(maxlen=4096)
        self.requests_total = 0
        #: called in the engine thread with each request that finished (metrics)
        self.on_finish: list[Callable[[Request], None]] = []
        self._stop = threading.Event()

    # --- the model with a cache ----------------------------------------------------
    def _layers(self, x: torch.Tensor, pos: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """x: [B, T, h] at positions pos [B, T]; reads and writes the slots' caches."""
        m = self.model
        assert m is not None  # the eager path
        ang = pos.float()[..., None] * m.inv_freq  # type: ignore[operator]
        cos, sin = ang.cos()[:, None], ang.sin()[:, None]
        b, t, _ = x.shape
        dev = self.device
        idx = torch.tensor(slots, device=dev)
        # slots are taken lowest first, so the batch is usually a run: read the cache in place
        run = (
            slice(slots[0], slots[0] + len(slots))
            if slots == list(range(slots[0], slots[0] + len(slots)))
            else None
        )
        span = int(pos.max()) + 1
        keep = (
            torch.arange(span, device=dev)[None, :] <= pos[:, -1:]
        )  # [B, span]: valid cache positions
        causal = torch.arange(span, device=dev)[None, None, :] <= pos[:, :, None]  # [B, T, span]
        bias = attention_bias((keep[:, None, :] & causal)[:, None], x.dtype)  # [B, 1, T, span]
        for i, blk in enumerate(cast(list[Block], list(m.blocks))):
            y = blk.norm1(x)
            q = blk.q(y).view(b, t, blk.nh, blk.hd).transpose(1, 2)
            k, v = blk.kv(y).view(b, t, 2, blk.nkv, blk.hd).unbind(2)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            if t == 1:  # decode: every sequence's new position, in one scatter
                self.k[i, idx, :, pos[:, 0]] = k[:, :, 0].to(self.dtype)
                self.v[i, idx, :, pos[:, 0]] = v[:, :, 0].to(self.dtype)
            else:  # prefill: one sequence, a run of positions
                for j, s in enumerate(slots):
                    self.k[i, s, :, pos[j, 0] : pos[j, -1] + 1] = k[j]
                    self.v[i, s, :, pos[j, 0] : pos[j, -1] + 1] = v[j]
            if run is not None:  # contiguous slots: a view, no copy of the cache
                kc, vc = self.k[i, run, :, :span], self.v[i, run, :, :span]
            else:
                kc, vc = self.k[i, idx, :, :span], self.v[i, idx, :, :span]
            if t == 1:
                att = _decode_attention(q, kc, vc, bias)
            else:
                att = F.scaled_dot_product_attention(q, kc, vc, attn_mask=bias, enable_gqa=True)
            x = blk.mlp(x + blk.o(att.transpose(1, 2).reshape(b, t, blk.nh * blk.hd)))
        logits: torch.Tensor = m.head(m.norm(x))
        return logits

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Logits [B, T, vocab] for new tokens ``ids`` at ``pos`` [B, T], through the
        slots' caches: eager PyTorch, or the exported graph under the backend."""
        if self.backend is None:
            assert self.model is not None
            return self._layers(self.model.embed(ids).to(self.dtype), pos, slots)
        b, t = ids.shape
        start = pos[:, 0]
        # each sequence's cached positions are 0 .. start - 1; the graph is handed them
        # in whole blocks (masked past each sequence's end), so its input shapes change
        # once every GRAPH_BLOCK_TOKENS steps rather than every step
        past = min(-(-int(start.max()) // GRAPH_BLOCK_TOKENS) * GRAPH_BLOCK_TOKENS, self.max_len)
        idx = torch.tensor(slots)
        past_k = self.k[:, idx, :, :past].contiguous()
        past_v = self.v[:, idx, :, :past].contiguous()
        valid_past = torch.arange(past)[None, :] < start[:, None]  # [B, P]
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        valid = torch.cat(
            [valid_past[:, None, :].expand(b, t, past), causal[None].expand(b, t, t)], dim=-1
        )
        mask = torch.where(valid, 0.0, MASKED).to(torch.float32)[:, None]
        logits, new_k, new_v = self.backend.run(
            ids.numpy(), pos.numpy(), past_k.numpy(), past_v.numpy(), mask.numpy()
        )
        k, v = torch.from_numpy(new_k), torch.from_numpy(new_v)  # [L, B, KV, T, hd]
        for j, s in enumerate(slots):
            p0 = int(start[j])
            self.k[:, s, :, p0 : p0 + t] = k[:, j]
            self.v[:, s, :, p0 : p0 + t] = v[:, j]
        return torch.from_numpy(logits)

    def _sample(self, logits: torch.Tensor, r: Request) -> int:
        """One token for ``r`` from its row of logits: penalties and bias, temperature,
        nucleus (``top_p``), its own generator when seeded; log-probabilities recorded
        from the model's distribution (before temperature), as OpenAI reports them."""
        logits = logits.float()
        if r.presence_penalty or r.frequency_penalty:
            seen = torch.bincount(
                torch.tensor(r.out, dtype=torch.long), minlength=logits.shape[-1]
            ).to(logits.device, logits.dtype)[: logits.shape[-1]]
            logits = logits - r.frequency_penalty * seen - r.presence_penalty * (seen > 0)
        for tok, bias in r.logit_bias.items():
            logits[tok] += bias
        if r.temperature < MIN_TEMPERATURE:  # below it sampling is argmax, and 1/T overflows
            tok = int(logits.argmax())
        else:
            probs = torch.softmax(logits / r.temperature, dim=-1)
            if r.top_p < 1.0:  # keep the smallest set of tokens holding top_p of the mass
                sorted_p, order = probs.sort(descending=True)
                outside = (sorted_p.cumsum(-1) - sorted_p) >= r.top_p
                probs = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
            if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
                tok = int(logits.argmax())
            else:
                tok = int(torch.multinomial(probs.cpu(), 1, generator=r._gen))
        if r.logprobs is not None:
            logp = torch.log_softmax(logits, dim=-1)
            top = logp.topk(min(r.logprobs, logp.shape[-1])) if r.logprobs else None
            alts = dict(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else {}
            r.token_logprobs.append((float(logp[tok]), alts))
        return tok

    def _push(self, r: Request, tok: int) -> None:
        """Append ``tok``; end the request at a stop string (trimmed off, never streamed:
        a token is one byte, so a stop string completes exactly at its last token)."""
        if r.first_token_at is None:
            r.first_token_at = time.monotonic()
        r.out.append(tok)
        longest = max((len(s) for s in r.stop), default=0)
        tail = bytes(t % 256 for t in r.out[-longest:]) if longest else b""
        for s in r.stop:
            if tail.endswith(s):
                del r.out[len(r.out) - len(s) :]
                del r.token_logprobs[len(r.out) :]
                r.finish = "stop"
                return
        if r.on_token:
            r.on_token(tok)

    def _prefill(self, r: Request, slot: int) -> None:
        """Run the prompt through the model into ``slot``'s cache; sample its first token."""
        prompt = r.prompt[-(self.max_len - r.max_tokens) :] or [0]
        ids = torch.tensor([prompt], device=self.device)
        pos = torch.arange(len(prompt), device=self.device)[None]
        logits = self._forward(ids, pos, [slot])
        r.slot, r.length = slot, len(prompt)
        self._push(r, self._sample(logits[0, -1], r))

    # --- the loop ------------------------------------------------------------------
    def step(self) -> int:
        """Admit, prefill the newcomers, decode one token for every active sequence
        (through an exported graph, with PyTorch's own work on one thread:
        `onnx_lm.pytorch_on_one_thread`)."""
        with contextlib.nullcontext() if self.backend is None else pytorch_on_one_thread():
            return self._step()

    @torch.inference_mode()
    def _step(self) -> int:
        for r in [r for r in self.active.values() if r.done.cancelled()]:
            del self.active[r.slot]  # its client went away: the slot is free for the next
        free = [s for s in range(self.slots) if s not in self.active]
        while free and not self.waiting.empty():
            r = self.waiting.get()
            if r.done.cancelled():
                continue
            try:
                self._prefill(r, free[0])
            except Exception as exc:  # this request cannot run; the others go on
                log.exception("prefill failed")
                with contextlib.suppress(InvalidStateError):
                    r.done.set_exception(exc)
                continue
            self.active[free.pop(0)] = r
        if not self.active:
            return 0
        reqs = sorted(
            (r for r in self.active.values() if len(r.out) < r.max_tokens and not r.stopped),
            key=lambda r: r.slot,
        )
        if reqs:
            ids = torch.tensor([[r.out[-1]] for r in reqs], device=self.device)
            pos = torch.tensor([[r.length] for r in reqs], device=self.device)
            logits = self._forward(ids, pos, [r.slot for r in reqs])
            greedy = logits[:, -1].float().argmax(-1).tolist()  # one pass for all rows
            for j, r in enumerate(reqs):
                r.length += 1
                self._push(r, greedy[j] if r.greedy else self._sample(logits[j, -1], r))
            self.decoded.append((time.monotonic(), len(reqs)))
        for r in list(self.active.values()):
            if r.stopped or len(r.out) >= r.max_tokens or r.length + 1 >= self.max_len:
                self._finish(r)
        return len(reqs)

    def _finish(self, r: Request) -> None:
        del self.active[r.slot]
        self.requests_total += 1
        r.finished_at = time.monotonic()
        for hook in self.on_finish:
            try:
                hook(r)
            except Exception:  # a metrics hook never fails a request
                log.exception("on_finish hook failed")
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
            r.done.set_result(r)

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception as exc:  # one bad batch fails its requests, not the server
                log.exception("decode step failed; failing the requests in it")
                self._fail_active(exc)
                busy = 0
            if not busy:
                time.sleep(0.002)

    def _fail_active(self, exc: Exception) -> None:
        for r in list(self.active.values()):
            with contextlib.suppress(InvalidStateError):
                r.done.set_exception(exc)
        self.active.clear()

    def metrics(self, window_s: float = 5.0) -> dict[str, Any]:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self.decoded) if now - t <= window_s]
        used = sum(r.length for r in list(self.active.values()))
        span = (now - recent[0][0]) if len(recent) > 1 else 0.0
        return {
            "queue_length": self.waiting.qsize(),
            "in_flight": len(self.active),
            "kv_cache_used_tokens": used,
            "kv_cache_capacity_tokens": self.slots * self.max_len,
            "kv_cache_utilization": used / (self.slots * self.max_len),
            "decode_tokens_per_s": sum(n for _, n in recent[1:]) / span if span else 0.0,
            "requests_total": self.requests_total,
        }


def decode_rate(
    eng: Engine, batch: int, prompt_len: int, out_len: int, rounds: int = 3
) -> tuple[float, list[list[int]]]:
    """Measured decode tokens/s of ``eng`` with ``batch`` greedy sequences in flight (every
    prompt prefilled first, then decode alone timed): the median of its decode steps'
    rates over ``rounds`` rounds; and the last round's tokens.

    A step median, as the training workloads take theirs: a shared machine slows for a
    spell of a second now and then, and a round's mean rate took it in (the closing
    loop's bf16 decode measured 14 ms a step in one run, 11-12 in the others)."""
    if out_len < 2:  # the admission step decodes the first token: nothing left to time
        raise ValueError(f"decode_rate times decode steps: out_len must be >= 2, got {out_len}")
    rates: list[float] = []
    outs: list[list[int]] = []
    for _ in range(rounds):
        reqs = [Request([i % 200 + 32] * prompt_len, out_len, 0.0) for i in range(batch)]
        for r in reqs:
            eng.waiting.put(r)
        eng.step()  # admission: every prompt is prefilled
        while not all(r.done.done() for r in reqs):
            t0 = time.perf_counter()
            tokens = eng.step()
            if tokens:
                rates.append(tokens / (time.perf_counter() - t0))
        outs = [r.out for r in reqs]
    return statistics.median(rates), outs


def build(args: argparse.Namespace) -> Engine:
    # train_lm's heap settings: a step's buffers (through an engine, a fresh gather of
    # the cache) stay in the heap rather than page-faulting back in each step
    keep_freed_heap()
    device = getattr(args, "device", "cpu")
    precision = getattr(args, "precision", None) or getattr(args, "dtype", "auto")
    engine = getattr(args, "engine", "torch") or "torch"
    if engine != "torch":  # the exported graph runs fp32 on the CPU, its weights its own
        if device != "cpu":
            raise SystemExit(f"--engine {engine} runs on the CPU here; use --device cpu")
        if precision == "bf16":
            raise SystemExit(f"--engine {engine} serves the fp32 export; use --precision fp32")
        precision = "fp32"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA device here (try --device cpu)")
    arch = get_model(args.model)
    torch.manual_seed(args.seed)
    model = GPT(arch)
    if args.ckpt:
        state = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
    if engine != "torch":
        backend = runner_for(model, cast(OnnxEngine, engine), args.quantize)
        print(f"engine {engine} {backend.version}, weights {args.quantize}", flush=True)
        # the engine holds the weights now: the PyTorch copy goes
        return Engine(None, arch, args.slots, args.max_len, torch.float32, device, backend)
    if precision == "auto":
        chosen = choose_precision(device)
        precision = chosen.dtype
        print(f"precision {chosen.dtype}: {chosen.reason}", flush=True)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    if args.quantize == "int8":
        quantize_int8(model, dtype)
    return Engine(model, arch, args.slots, args.max_len, dtype, device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama-40m")
    ap.add_argument("--ckpt", default=None, help="a train_lm checkpoint (rank0.pt)")
    ap.add_argument("--quantize", choices=["none", "int8"], default="none")
    ap.add_argument(
        "--precision",
        "--dtype",
        dest="precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 where this device runs it faster than fp32 (measured), else fp32",
    )
    ap.add_argument(
        "--engine",
        choices=["torch", *ONNX_ENGINES],
        default="torch",
        help="torch: eager PyTorch; onnxruntime / openvino: the model exported to ONNX "
        "and run by that engine (CPU, fp32 or int8 weights)",
    )
    ap.add_argument("--slots", type=int, default=8, help="sequences decoded together")
    ap.add_argument("--max-len", type=int, default=512, help="tokens per sequence (cache)")
    ap.add_argument(
        "--host",
        # a service's replica (it requires the router's token) listens on its node's
        # address, where the router reaches it (loopback on this machine; the node's IP
        # on a Ray site); anything else, unguarded, stays on loopback
        default=(os.environ.get(NODE_ADDRESS_ENV) if os.environ.get(REPLICA_TOKEN_ENV) else None)
        or "127.0.0.1",
    )
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] where a GPU is")
    ap.add_argument(
        "--served-model-name",
        default=None,
        help="the name clients ask for in `model` (default: --model as given)",
    )
    ap.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests waiting for a slot beyond which new ones get 429 with Retry-After",
    )
    args = ap.parse_args(argv)
    import uvicorn

    from suanli.workloads.serve_app import app_for

    engine = build(args)
    threading.Thread(target=engine.run_forever, name="engine", daemon=True).start()
    name = args.served_model_name or args.model
    print(f"serve_lm {name} on http://{args.host}:{args.port}", flush=True)
    token = os.environ.get(REPLICA_TOKEN_ENV) or None
    app = app_for(engine, name, max_queue=args.max_queue, api_key=token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
