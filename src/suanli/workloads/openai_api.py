"""serve_lm's HTTP face: OpenAI's completions, chat completions and models, in OpenAI's
shapes and errors, so the official ``openai`` client and any OpenAI-compatible router
(suanli's own included) can sit in front of it.

Every request field is either honoured or refused with a 400 that names it: a client
that asks for ``n=3`` or a stop string and silently gets something else is worse off
than one told no. Unknown fields are refused for the same reason. Overload is a 429
with ``Retry-After`` (the engine's queue is bounded), never a timeout.

``GET /metrics`` is Prometheus' text format (``suanli_serve_…``: queue, running,
KV-cache use, tokens, TTFT/TPOT/latency histograms); ``GET /stats`` is the same
engine's snapshot as JSON, for a router or autoscaler that polls it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from suanli.workloads.openai_types import (
    CHAT_END,
    ChatBody,
    CompletionBody,
    OpenAIError,
    chat_prompt,
    refuse_unsupported,
)
from suanli.workloads.serve_lm import Engine, Request


class Server:
    """The engine behind OpenAI's routes: admission (model, context, queue) and shaping."""

    def __init__(self, engine: Engine, name: str, max_queue: int) -> None:
        self.engine, self.name, self.max_queue = engine, name, max_queue
        self.created = int(time.time())

    def admit(self, body: CompletionBody | ChatBody) -> list[tuple[list[int], Request]]:
        """The requests a body asks for, as (prompt tokens, request), one per choice."""
        if body.model != self.name:
            raise OpenAIError(
                404,
                f"model {body.model!r} does not exist here; this server serves {self.name!r}",
                param="model",
                code="model_not_found",
            )
        refuse_unsupported(body)
        vocab = self.engine.arch.vocab
        if body.logit_bias and any(not 0 <= t < vocab for t in body.logit_bias):
            raise OpenAIError(400, f"logit_bias token ids lie in [0, {vocab})", param="logit_bias")
        stops = tuple(s.encode() for s in body.stop or [])
        if isinstance(body, ChatBody):
            prompts = [list(chat_prompt(body.messages, body.continue_final_message).encode())]
            max_tokens = body.max_completion_tokens or body.max_tokens
            stops += (CHAT_END.encode(),)
            logprobs = (body.top_logprobs or 0) if body.logprobs else None
        else:
            prompts = _prompts(body.prompt, vocab)
            max_tokens = body.max_tokens
            logprobs = body.logprobs
        limit = self.engine.max_len - 1
        longest = max(len(p) for p in prompts)
        if max_tokens is None:  # chat without a bound: what the context leaves
            max_tokens = limit - longest
        if longest + max_tokens > limit:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {longest + max_tokens} tokens ({longest} in the prompt, "
                f"{max_tokens} for the completion). Shorten the prompt or max_tokens.",
                param="max_tokens" if longest < limit else "prompt",
                code="context_length_exceeded",
            )
        waiting = self.engine.waiting.qsize()
        if waiting + len(prompts) * body.n > self.max_queue:
            raise OpenAIError(
                429,
                f"{waiting} requests are waiting for this replica (at most {self.max_queue}); "
                "retry shortly or on another replica",
                type_="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        out = []
        for i, prompt in enumerate(prompts):
            for j in range(body.n):
                seed = None if body.seed is None else body.seed + i * body.n + j
                r = Request(
                    prompt,
                    max_tokens,
                    body.temperature,
                    top_p=body.top_p,
                    stop=stops,
                    logprobs=logprobs,
                    seed=seed,
                    presence_penalty=body.presence_penalty,
                    frequency_penalty=body.frequency_penalty,
                    logit_bias=dict(body.logit_bias or {}),
                )
                out.append((prompt, r))
        return out

    # --- answers ---------------------------------------------------------------------
    def completion(self, body: CompletionBody, reqs: list[tuple[list[int], Request]]) -> Any:
        choices = []
        for i, (prompt, r) in enumerate(reqs):
            text = r.text_bytes().decode("utf-8", errors="replace")
            if body.echo:
                text = _text(prompt) + text
            lp = _completion_logprobs(r, 0, len(r.out)) if r.logprobs is not None else None
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": r.finish})
        return {
            "id": "cmpl-" + uuid.uuid4().hex[:24],
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": _usage(reqs, body.n),
        }

    def chat(self, body: ChatBody, reqs: list[tuple[list[int], Request]]) -> Any:
        choices = []
        for i, (_, r) in enumerate(reqs):
            message = {"role": "assistant", "content": r.text_bytes().decode(errors="replace")}
            lp = {"content": _chat_logprobs(r, 0, len(r.out))} if r.logprobs is not None else None
            choices.append(
                {"index": i, "message": message, "logprobs": lp, "finish_reason": r.finish}
            )
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": _usage(reqs, body.n),
        }

    async def stream(
        self, body: CompletionBody | ChatBody, reqs: list[tuple[list[int], Request]]
    ) -> AsyncIterator[str]:
        """Server-sent events, OpenAI's way: chunks as tokens come, each choice's last chunk
        with its finish reason, a usage chunk when ``stream_options.include_usage``, then
        ``[DONE]``. Text that could begin a stop string is held back until it cannot; a
        client that goes away cancels its requests and the engine frees their slots."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, int | None]] = asyncio.Queue()
        chat = isinstance(body, ChatBody)
        hold = max((len(s) for _, r in reqs for s in r.stop), default=1) - 1
        head: dict[str, Any] = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.name,
        }

        def push(i: int, tok: int | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, (i, tok))

        for i, (_, r) in enumerate(reqs):
            r.on_token = lambda tok, i=i: push(i, tok)
            r.done.add_done_callback(lambda _, i=i: push(i, None))  # type: ignore[misc]
            self.engine.waiting.put(r)
        got: list[list[int]] = [[] for _ in reqs]
        sent = [0] * len(reqs)  # tokens fed to the decoder
        shown = [0] * len(reqs)  # tokens whose log-probabilities went out
        utf8 = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in reqs]

        def chunk(i: int, upto: int, finish: str | None) -> str | None:
            r, toks = reqs[i][1], got[i]
            text = utf8[i].decode(bytes(t % 256 for t in toks[sent[i] : upto]), final=bool(finish))
            if not text and finish is None:  # a character's first bytes: kept in the decoder
                sent[i] = upto
                return None
            choice: dict[str, Any] = {"index": i, "finish_reason": finish}
            lp = None
            if r.logprobs is not None:
                lp = (
                    {"content": _chat_logprobs(r, shown[i], upto)}
                    if chat
                    else _completion_logprobs(r, shown[i], upto)
                )
            if chat:
                choice["delta"] = {"content": text} if text or finish is None else {}
                if shown[i] == 0:
                    choice["delta"]["role"] = "assistant"
            else:
                choice["text"] = text
            choice["logprobs"] = lp
            sent[i] = shown[i] = upto
            return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

        try:
            if isinstance(body, CompletionBody) and body.echo:
                for i, (prompt, _) in enumerate(reqs):
                    echo = {"index": i, "text": _text(prompt), "logprobs": None}
                    echo["finish_reason"] = None
                    yield f"data: {json.dumps({**head, 'choices': [echo]})}\n\n"
            open_ = len(reqs)
            while open_:
                i, tok = await events.get()
                r = reqs[i][1]
                if tok is not None:
                    got[i].append(tok)
                    if (c := chunk(i, max(sent[i], len(got[i]) - hold), None)) is not None:
                        yield c
                    continue
                open_ -= 1
                if (exc := r.done.exception() if not r.done.cancelled() else None) is not None:
                    err = OpenAIError(500, f"decoding failed: {exc}", type_="server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    continue
                got[i] = list(r.out)  # the final tokens: a stop string trimmed off
                yield chunk(i, len(got[i]), r.finish) or ""
            if body.stream_options and body.stream_options.include_usage:
                usage = {**head, "choices": [], "usage": _usage(reqs, body.n)}
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for _, r in reqs:
                r.done.cancel()  # no-op once done; frees the slot when the client left early


def _prompts(prompt: str | list[str] | list[int] | list[list[int]], vocab: int) -> list[list[int]]:
    """OpenAI's four prompt shapes as token lists (a token is a byte)."""
    if isinstance(prompt, str):
        prompts = [list(prompt.encode())]
    elif not prompt:
        raise OpenAIError(400, "prompt is empty", param="prompt")
    elif all(isinstance(p, str) for p in prompt):
        prompts = [list(str(p).encode()) for p in prompt]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [[int(t) for t in prompt]]  # type: ignore[arg-type]
    else:
        prompts = [list(p) for p in prompt]  # type: ignore[arg-type]
    if len(prompts) > 64:
        raise OpenAIError(400, "at most 64 prompts per request", param="prompt")
    for p in prompts:
        if any(not 0 <= t < vocab for t in p):
            raise OpenAIError(400, f"prompt token ids lie in [0, {vocab})", param="prompt")
    return [p or [0] for p in prompts]


def _text(tokens: list[int]) -> str:
    return bytes(t % 256 for t in tokens).decode("utf-8", errors="replace")


def _token(t: int) -> str:
    return bytes([t % 256]).decode("utf-8", errors="backslashreplace")


def _completion_logprobs(r: Request, a: int, b: int) -> dict[str, Any]:
    rows = r.token_logprobs[a:b]
    toks = r.out[a:b]
    return {
        "tokens": [_token(t) for t in toks],
        "token_logprobs": [lp for lp, _ in rows],
        "top_logprobs": [{_token(k): v for k, v in alts.items()} for _, alts in rows],
        "text_offset": list(range(a, a + len(toks))),  # in bytes: a token is one
    }


def _chat_logprobs(r: Request, a: int, b: int) -> list[dict[str, Any]]:
    def entry(t: int, lp: float) -> dict[str, Any]:
        return {"token": _token(t), "logprob": lp, "bytes": [t % 256]}

    return [
        entry(t, lp) | {"top_logprobs": [entry(k, v) for k, v in alts.items()]}
        for t, (lp, alts) in zip(r.out[a:b], r.token_logprobs[a:b], strict=False)
    ]


def _usage(reqs: list[tuple[list[int], Request]], n: int) -> dict[str, int]:
    """A prompt counts once however many choices it has, as OpenAI bills it."""
    prompt = sum(len(p) for p, _ in reqs[::n])
    completion = sum(len(r.out) for _, r in reqs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
