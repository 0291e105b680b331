"""One OpenAI endpoint per service: ``/s/NAME/v1/completions``, ``/s/NAME/v1/chat/
completions`` and ``/s/NAME/v1/models`` (an OpenAI client's ``base_url`` is
``http://HOST:PORT/s/NAME/v1``).

Each request goes to the ready replica with the fewest outstanding requests. A replica
that refuses the connection, drops it, or answers 5xx before anything reached the
client is marked down and the request is sent to another; a stream that already
began cannot be replayed, so its client gets an OpenAI error event instead. With no
ready replica (scale from zero, or all failed) requests wait, up to the service's
``router.buffer`` of them for ``router.wait_s``; beyond, a 429 with ``Retry-After``:
an overloaded service says "later", never a 5xx. Errors are OpenAI's shape; a token
sees only its owner's services (another tenant's is a 404, as if absent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from suanli.api.resume import MAX_RESUMES, StreamLog, continuation, rewrite
from suanli.autoscale.service_spec import ServiceSpec
from suanli.service.replicas import Replica, ReplicaBook, ServiceTraffic
from suanli.store.db import Store
from suanli.store.models import ServiceRow
from suanli.workloads.openai_types import COMPLETION_MAX_TOKENS

POLL_S = 0.05
CONNECT_TIMEOUT_S = 2.0
MAX_TRIES = 4


def oai_error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


Reopened = tuple[httpx.Response, Replica]


@dataclass(frozen=True)
class Resume:
    """What a stream needs to go on elsewhere: its request, its kind, whether the engine
    counts a token a byte, and how to send a continuation to another replica."""

    payload: dict[str, Any]
    chat: bool
    byte_tokens: bool
    reopen: Callable[[dict[str, Any], int], Awaitable[Reopened | None]]


def add_router_routes(app: FastAPI, store: Store, book: ReplicaBook) -> None:
    client: dict[str, httpx.AsyncClient] = {}

    def http() -> httpx.AsyncClient:
        if "c" not in client:  # made inside the server's event loop, on first use
            client["c"] = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
                limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200),
            )
        return client["c"]

    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            try:
                yield state
            finally:  # the server stops: close the connections to replicas
                if "c" in client:
                    await client.pop("c").aclose()

    app.router.lifespan_context = lifespan

    def service_for(request: Request, name: str) -> tuple[ServiceSpec, str] | JSONResponse:
        auth = request.headers.get("authorization", "")
        tok = store.find_token(auth.removeprefix("Bearer ").strip()) if auth else None
        if tok is None:
            return oai_error(
                401,
                "missing or unknown bearer token (an API token of suanli)",
                "invalid_request_error",
                "invalid_api_key",
            )
        with store.tx() as s:
            row = s.get(ServiceRow, name)
            if row is None or (tok.role != "admin" and row.owner != tok.owner):
                return oai_error(
                    404, f"no service {name!r}", "invalid_request_error", "service_not_found"
                )
            return ServiceSpec.model_validate(row.spec), row.owner

    @app.get("/s/{name}/v1/models", include_in_schema=False)
    def models(name: str, request: Request) -> Any:
        found = service_for(request, name)
        if isinstance(found, JSONResponse):
            return found
        spec, owner = found
        card = {
            "id": spec.name,
            "object": "model",
            "created": 0,
            "owned_by": owner,
            "root": spec.model,
            "engine": spec.engine,
        }
        return {"object": "list", "data": [card]}

    async def open_stream(
        name: str,
        path: str,
        body: bytes,
        spec: ServiceSpec,
        tried: set[int],
        size: tuple[int, int],
        deadline: float,
        max_tries: int,
    ) -> Reopened | JSONResponse:
        """``body`` sent to the least loaded ready replica not tried yet, its answer
        opened as a stream (waiting for a replica as a request from zero does). A replica
        that refuses the connection or answers 5xx is marked down and another is tried;
        a JSONResponse (429) when none is left."""
        traffic = book.traffic_of(name)
        while True:
            rep = book.pick(name, tried, size)
            if rep is None:
                if len(tried) >= max_tries:
                    return _busy("replicas failed one after another", 5)
                waited = await _wait_for_replica(book, traffic, name, tried, spec, deadline)
                if waited is not None:
                    return waited
                continue
            resp: httpx.Response | None
            try:
                url = f"http://{rep.address}/v1/{path}"
                req = http().build_request("POST", url, content=body, headers=_headers(rep))
                resp = await http().send(req, stream=True)
            except httpx.TransportError:
                resp = None
            except BaseException:  # the client left meanwhile: give the slot back
                book.release(rep, failed=False, size=size)
                raise
            if resp is not None and resp.status_code < 500:
                return resp, rep
            book.release(rep, failed=True, size=size)  # before any await, as in `_relay`
            if resp is not None:  # the replica failed it: another one may not
                await resp.aclose()
            tried.add(rep.job_id)
            traffic.retries.inc()

    async def proxy(name: str, path: str, request: Request) -> Any:
        found = service_for(request, name)
        if isinstance(found, JSONResponse):
            return found
        spec, _ = found
        arrived = time.monotonic()
        traffic = book.traffic_of(name)
        traffic.arrived(time.time())
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError:
            return _answer(
                traffic, oai_error(400, "the body is not valid JSON", "invalid_request_error")
            )
        if not isinstance(payload, dict):
            return _answer(
                traffic, oai_error(400, "the body must be a JSON object", "invalid_request_error")
            )
        if payload.get("model") != spec.name:
            return _answer(
                traffic,
                oai_error(
                    404,
                    f"model {payload.get('model')!r}: this endpoint serves {spec.name!r}",
                    "invalid_request_error",
                    "model_not_found",
                ),
            )
        stream = bool(payload.get("stream"))
        size = request_size(payload)
        tried: set[int] = set()
        deadline = arrived + spec.router.wait_s
        while True:
            opened = await open_stream(name, path, body, spec, tried, size, deadline, MAX_TRIES)
            if isinstance(opened, JSONResponse):
                return _answer(traffic, opened)
            resp, rep = opened
            if not stream or resp.status_code != 200:
                try:
                    content = await resp.aread()
                except httpx.TransportError:  # died before it answered: send it again
                    book.release(rep, failed=True, size=size)
                    tried.add(rep.job_id)
                    traffic.retries.inc()
                    continue
                except BaseException:  # the client left meanwhile: give the slot back
                    book.release(rep, failed=False, size=size)
                    raise
                finally:
                    await resp.aclose()
                book.release(rep, failed=False, size=size)
                _judge(traffic, spec, arrived, content, resp.status_code, size)
                traffic.requests.labels(code=str(resp.status_code)).inc()
                headers = {
                    k: v
                    for k, v in resp.headers.items()
                    if k.lower() in ("content-type", "retry-after")
                }
                return Response(content, status_code=resp.status_code, headers=headers)
            traffic.requests.labels(code="200").inc()

            async def reopen(cont: dict[str, Any], dead: int) -> Reopened | None:
                """``cont`` sent to a replica not tried yet; None when none takes it."""
                tried.add(dead)
                until = time.monotonic() + spec.router.wait_s
                cap = MAX_TRIES + MAX_RESUMES
                got = await open_stream(
                    name, path, json.dumps(cont).encode(), spec, tried, size, until, cap
                )
                if isinstance(got, JSONResponse):
                    return None
                if got[0].status_code != 200:  # it refused the continuation: not another
                    book.release(got[1], failed=False, size=size)
                    await got[0].aclose()
                    return None
                return got

            resume = Resume(payload, path == "chat/completions", spec.engine == "serve_lm", reopen)
            started = _Started()

            async def abandon(resp: httpx.Response = resp, rep: Replica = rep) -> None:
                book.release(rep, failed=False, size=size)
                traffic.judge(False)
                await resp.aclose()

            relay = _relay(resp, rep, book, traffic, spec, arrived, size, resume, started)
            return _Relayed(relay, started, abandon)

    @app.post("/s/{name}/v1/completions", include_in_schema=False)
    async def completions(name: str, request: Request) -> Any:
        return await proxy(name, "completions", request)

    @app.post("/s/{name}/v1/chat/completions", include_in_schema=False)
    async def chat(name: str, request: Request) -> Any:
        return await proxy(name, "chat/completions", request)


@dataclass
class _Started:
    """Set by `_relay` as it begins: until then its ``finally`` cannot run."""

    yes: bool = False


class _Relayed(StreamingResponse):
    """A relayed stream that gives its replica's slot back however the client leaves.

    A client gone before the first byte (the response head cannot be sent, or the
    disconnect wins the race) leaves the relay unstarted, and an unstarted async
    generator's ``finally`` never runs: ``abandon`` does its work then. A relay
    suspended at a ``yield`` when the client leaves is closed here at once, not
    whenever the garbage collector gets to it.
    """

    def __init__(
        self,
        relay: AsyncIterator[bytes],
        started: _Started,
        abandon: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(relay, media_type="text/event-stream")
        self._relay = relay
        self._started = started
        self._abandon = abandon

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._relay, "aclose", None)
            if aclose is not None:
                await aclose()  # unstarted: marks it closed; suspended: runs its finally
            if not self._started.yes:
                await self._abandon()


def _headers(rep: Replica) -> dict[str, str]:
    """What the router sends a replica: JSON, and the replica's own token."""
    out = {"content-type": "application/json"}
    if rep.token:
        out["authorization"] = f"Bearer {rep.token}"
    return out


def _busy(why: str, retry_s: int) -> JSONResponse:
    return oai_error(
        429,
        f"the service is busy ({why}); retry in {retry_s} s",
        "rate_limit_exceeded",
        "rate_limit_exceeded",
        headers={"Retry-After": str(retry_s)},
    )


def _answer(traffic: ServiceTraffic, resp: JSONResponse) -> JSONResponse:
    traffic.requests.labels(code=str(resp.status_code)).inc()
    if resp.status_code == 429:
        traffic.judge(False)
    return resp


async def _wait_for_replica(
    book: ReplicaBook,
    traffic: ServiceTraffic,
    name: str,
    tried: set[int],
    spec: ServiceSpec,
    deadline: float,
) -> JSONResponse | None:
    """Hold the request until a replica it has not tried is ready (None), or say 429."""
    if traffic.buffered >= spec.router.buffer:
        return _busy(f"{traffic.buffered} requests already wait for a replica", 2)
    traffic.buffered += 1  # the controller sees it and starts a replica from zero
    try:
        while time.monotonic() < deadline:
            if any(r.ready and r.job_id not in tried for r in book.of(name)):
                return None
            await asyncio.sleep(POLL_S)
    finally:
        traffic.buffered -= 1
    return _busy(f"no replica became ready within {spec.router.wait_s:.0f} s", 10)


def request_size(payload: dict[str, Any]) -> tuple[int, int]:
    """A request's (prompt, output) tokens before it is served: the prompt at about four
    characters a token (OpenAI's rule of thumb for English), the output at what it asks
    for (``max_tokens``, OpenAI's default 16). Only the chip-mix routing and the size
    distribution of streamed requests rest on it; usage replaces it where an answer has
    one."""
    parts: list[Any] = []
    prompt = payload.get("prompt")
    parts += prompt if isinstance(prompt, list) else [prompt]
    messages = payload.get("messages")
    for m in messages if isinstance(messages, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        parts += content if isinstance(content, list) else [content]
    chars = sum(len(_text(p)) for p in parts)
    asked = payload.get("max_tokens") or payload.get("max_completion_tokens")
    return max(1, chars // 4), max(1, asked if isinstance(asked, int) else COMPLETION_MAX_TOKENS)


def _text(part: Any) -> str:
    """A prompt, or a message's text part (``{"type": "text", "text": ...}``)."""
    if isinstance(part, str):
        return part
    return str(part.get("text", "")) if isinstance(part, dict) else ""


def _judge(
    traffic: ServiceTraffic,
    spec: ServiceSpec,
    arrived: float,
    content: bytes,
    status: int,
    size: tuple[int, int],
) -> None:
    """An answer whole at once: within the SLO if it came by the time its first token
    and the rest at the TPOT would have (it cannot show when the first token was)."""
    if status != 200:
        return
    took = time.monotonic() - arrived
    traffic.ttft.observe(took)
    try:
        usage = json.loads(content)["usage"]
        tokens = int(usage["completion_tokens"])
        size = (int(usage["prompt_tokens"]), tokens)
    except (ValueError, KeyError, TypeError, OverflowError):  # a replica is a tenant's code
        tokens = 1
    traffic.sized(time.time(), *size)
    traffic.judge(took <= spec.slo.ttft_s + max(0, tokens - 1) * spec.slo.tpot_s)


async def _relay(
    resp: httpx.Response,
    rep: Replica,
    book: ReplicaBook,
    traffic: ServiceTraffic,
    spec: ServiceSpec,
    arrived: float,
    size: tuple[int, int],
    resume: Resume,
    started: _Started,
) -> AsyncIterator[bytes]:
    """The replica's events as they come; TTFT and TPOT measured on the way. A replica
    that dies mid-stream is replaced where the stream can go on (`suanli.api.resume`)."""
    first: float | None = None
    chunks = 0
    failed = False
    log = StreamLog(chat=resume.chat)
    resumes = 0
    held = True  # ``rep`` holds one of the router's slots until released
    started.yes = True  # from here the ``finally`` below gives it back
    try:
        while True:
            # the first replica's events go out whole as they complete; a replacement's
            # are made the first stream's (its id, no second role header) on the way
            sub = log if resumes == 0 else StreamLog(chat=resume.chat)
            try:
                async for piece in resp.aiter_raw():
                    for event in sub.take(piece):
                        out = event if sub is log or sub.raw else rewrite(event[:-2], log)
                        if out is None:
                            continue
                        if sub is not log:
                            log.note(out)
                        first = first or time.monotonic()
                        chunks += out.count(b"data: ")
                        yield out
                tail = sub.rest()
                if tail:
                    yield tail
                break
            except httpx.TransportError as exc:  # the replica died mid-stream
                book.release(rep, failed=True, size=size)
                held = False
                await resp.aclose()
                cont = continuation(resume.payload, log, resume.byte_tokens)
                can = cont is not None and resumes < MAX_RESUMES
                got = await resume.reopen(cont, rep.job_id) if cont is not None and can else None
                if got is None:  # say so, OpenAI's way
                    failed = True
                    err = {
                        "error": {
                            "message": f"the replica serving this stream failed ({exc}); "
                            "send the request again",
                            "type": "server_error",
                            "param": None,
                            "code": "replica_failed",
                        }
                    }
                    yield f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()
                    return
                resp, rep = got
                held = True
                resumes += 1
                traffic.resumed.inc()
    finally:
        if held:  # given back before any await: a cancelled stream's awaits may not return
            book.release(rep, failed=False, size=size)
        end = time.monotonic()
        if first is not None and not failed:
            ttft = first - arrived
            traffic.ttft.observe(ttft)
            tokens = max(1, chunks - 1)  # less [DONE]
            traffic.sized(time.time(), size[0], tokens)
            tpot = (end - first) / max(1, tokens - 1)
            if tokens > 1:
                traffic.tpot.observe(tpot)
            traffic.judge(ttft <= spec.slo.ttft_s and (tokens <= 1 or tpot <= spec.slo.tpot_s))
        else:
            traffic.judge(False)
        if held:
            await resp.aclose()
