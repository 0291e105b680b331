"""``python -m suanli.workloads.serve_lm``: an OpenAI-compatible completions server.

It serves the GPT of ``train_lm`` (weights from a ``train_lm`` checkpoint, or
seeded random ones for load tests) with the three things that make LLM serving
fast: a KV cache (each sequence's keys and values are kept, so a new token
costs one position, not the whole prefix), continuous batching (every decode
step runs all active sequences together, and a finished sequence's slot takes
a waiting request at the next step, not when the whole batch is done), and
optional int8 weight-only quantization (weights stored in int8 with one scale
per output channel: half the bytes a decode step must read).

``POST /v1/completions`` takes ``{"prompt", "max_tokens", "temperature"}`` and
answers in OpenAI's ``text_completion`` shape; tokens are bytes, as in
training. ``GET /metrics`` reports what an autoscaler needs: queue length,
in-flight requests, KV-cache use, and decode tokens/s over the last seconds.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from suanli.catalog.loader import get_model
from suanli.device import choose_precision
from suanli.workloads.train_lm import GPT, Block, _rope

log = logging.getLogger("suanli.serve_lm")
MIN_TEMPERATURE = 1e-3  # a lower temperature samples as greedy decoding


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


def _decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """One new token per sequence against its cache, reading each KV head once per group
    (the GQA-reusing decode kernel the perf model assumes; 4x faster than SDPA here)."""
    b, nh, _, hd = q.shape
    nkv = k.shape[1]
    qg = q.view(b, nkv, nh // nkv, hd)
    scores = (qg @ k.transpose(-1, -2)) * hd**-0.5  # [B, KV, group, span]
    scores = scores.masked_fill(~mask.view(b, 1, 1, -1), float("-inf"))
    out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
    return out.view(b, nh, 1, hd)


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    temperature: float
    done: Future[dict[str, Any]] = field(default_factory=Future)
    out: list[int] = field(default_factory=list)
    slot: int = -1
    length: int = 0  # tokens in the cache
    on_token: Callable[[int], None] | None = None  # streaming: called with each new token
    arrived: float = field(default_factory=time.monotonic)


class Engine:
    """The batch loop: admit waiting requests into free cache slots, decode all, repeat."""

    def __init__(
        self,
        model: GPT,
        arch: Any,
        slots: int,
        max_len: int,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model, self.arch, self.dtype = model, arch, dtype
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
        self._stop = threading.Event()

    # --- the model with a cache ----------------------------------------------------
    def _layers(self, x: torch.Tensor, pos: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """x: [B, T, h] at positions pos [B, T]; reads and writes the slots' caches."""
        m = self.model
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
        mask = (keep[:, None, :] & causal)[:, None]  # [B, 1, T, span]
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
                att = _decode_attention(q, kc, vc, mask)
            else:
                att = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)
            x = blk.mlp(x + blk.o(att.transpose(1, 2).reshape(b, t, blk.nh * blk.hd)))
        logits: torch.Tensor = m.head(m.norm(x))
        return logits

    def _sample(self, logits: torch.Tensor, temperature: float) -> int:
        if temperature < MIN_TEMPERATURE:  # below it sampling is argmax, and 1/T overflows
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if not bool(torch.isfinite(probs).all()):
            return int(logits.argmax())
        return int(torch.multinomial(probs, 1))

    def _prefill(self, r: Request, slot: int) -> None:
        """Run the prompt through the model into ``slot``'s cache; sample its first token."""
        prompt = r.prompt[-(self.max_len - r.max_tokens) :] or [0]
        ids = torch.tensor([prompt], device=self.device)
        pos = torch.arange(len(prompt), device=self.device)[None]
        logits = self._layers(self.model.embed(ids).to(self.dtype), pos, [slot])
        r.slot, r.length = slot, len(prompt)
        r.out.append(self._sample(logits[0, -1], r.temperature))
        if r.on_token:
            r.on_token(r.out[-1])

    # --- the loop ------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> int:
        """Admit, prefill the newcomers, decode one token for every active sequence."""
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
            (r for r in self.active.values() if len(r.out) < r.max_tokens), key=lambda r: r.slot
        )
        if reqs:
            ids = torch.tensor([[r.out[-1]] for r in reqs], device=self.device)
            pos = torch.tensor([[r.length] for r in reqs], device=self.device)
            logits = self._layers(self.model.embed(ids).to(self.dtype), pos, [r.slot for r in reqs])
            greedy = logits[:, -1].float().argmax(-1).tolist()  # one pass for all rows
            for j, r in enumerate(reqs):
                r.length += 1
                tok = (
                    greedy[j]
                    if r.temperature < MIN_TEMPERATURE
                    else self._sample(logits[j, -1], r.temperature)
                )
                r.out.append(tok)
                if r.on_token:
                    r.on_token(tok)
            self.decoded.append((time.monotonic(), len(reqs)))
        for r in list(self.active.values()):
            if len(r.out) >= r.max_tokens or r.length + 1 >= self.max_len:
                del self.active[r.slot]
                self.requests_total += 1
                with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                    r.done.set_result(self._answer(r))
        return len(reqs)

    def _answer(self, r: Request) -> dict[str, Any]:
        return {
            "id": "cmpl-" + uuid.uuid4().hex[:12],
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.arch.name,
            "choices": [
                {
                    "index": 0,
                    "text": bytes(t % 256 for t in r.out).decode("utf-8", errors="replace"),
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": len(r.prompt),
                "completion_tokens": len(r.out),
                "total_tokens": len(r.prompt) + len(r.out),
            },
        }

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


def build(args: argparse.Namespace) -> Engine:
    arch = get_model(args.model)
    torch.manual_seed(args.seed)
    model = GPT(arch)
    if args.ckpt:
        state = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
    device = getattr(args, "device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA device here (try --device cpu)")
    precision = getattr(args, "precision", None) or getattr(args, "dtype", "auto")
    if precision == "auto":
        chosen = choose_precision(device)
        precision = chosen.dtype
        print(f"precision {chosen.dtype}: {chosen.reason}", flush=True)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    if args.quantize == "int8":
        quantize_int8(model, dtype)
    return Engine(model, arch, args.slots, args.max_len, dtype, device)


class Completion(BaseModel):
    """The OpenAI completions request fields this server honours."""

    model: str | None = None
    prompt: str = Field(max_length=100_000)
    max_tokens: int = Field(default=16, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    stream: bool = False  # server-sent events, a chunk per token, then [DONE]


async def _stream(engine: Engine, r: Request) -> AsyncIterator[str]:
    """OpenAI's streamed completion: one ``text_completion`` chunk per token (bytes
    decoded incrementally, so a character split over tokens arrives whole), a last
    chunk with the finish reason, then ``[DONE]``. A client that goes away cancels
    its request, and the engine gives its slot to the next."""
    import asyncio

    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue[int | None] = asyncio.Queue()

    def push(tok: int | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(tokens.put_nowait, tok)

    r.on_token = push
    r.done.add_done_callback(lambda _: push(None))
    engine.waiting.put(r)
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    head: dict[str, Any] = {"id": "cmpl-" + uuid.uuid4().hex[:12], "object": "text_completion"}
    head |= {"created": int(time.time()), "model": engine.arch.name}

    def chunk(text: str, finish: str | None) -> str:
        body = {**head, "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    try:
        while (tok := await tokens.get()) is not None:
            text = utf8.decode(bytes([tok % 256]))
            if text:
                yield chunk(text, None)
        if r.done.exception() is not None:
            err = {"error": {"message": f"decoding failed: {r.done.exception()}"}}
            yield f"data: {json.dumps(err)}\n\n"
        else:
            yield chunk(utf8.decode(b"", final=True), "length")
        yield "data: [DONE]\n\n"
    finally:
        r.done.cancel()  # no-op once done; frees the slot when the client left early


def app_for(engine: Engine) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="suanli serve_lm")

    @app.post("/v1/completions")
    async def complete(body: Completion) -> Any:
        import asyncio

        max_tokens = min(body.max_tokens, engine.max_len - 1)
        r = Request(list(body.prompt.encode()), max_tokens, body.temperature)
        if body.stream:
            return StreamingResponse(_stream(engine, r), media_type="text/event-stream")
        engine.waiting.put(r)
        try:
            return await asyncio.wrap_future(r.done)
        except Exception as exc:  # the engine failed this batch; it goes on with the next
            body_ = {"error": {"message": f"decoding failed: {exc}", "type": "server_error"}}
            return JSONResponse(body_, status_code=500)

    @app.get("/metrics")
    def metrics() -> dict[str, Any]:
        return engine.metrics()

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


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
    ap.add_argument("--slots", type=int, default=8, help="sequences decoded together")
    ap.add_argument("--max-len", type=int, default=512, help="tokens per sequence (cache)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] where a GPU is")
    args = ap.parse_args(argv)
    import uvicorn

    engine = build(args)
    threading.Thread(target=engine.run_forever, name="engine", daemon=True).start()
    print(f"serve_lm {args.model} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app_for(engine), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
