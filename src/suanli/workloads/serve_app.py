"""serve_lm's FastAPI app: OpenAI's routes over ``openai_api.Server``, errors in OpenAI's
shape (never FastAPI's ``detail``), and Prometheus metrics fed by the engine.

The metric names follow vLLM's (``num_requests_waiting``, ``time_to_first_token``,
``time_per_output_token``) under suanli's prefix, so a dashboard or autoscaler written
for one reads the other with a rename.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from suanli.workloads.openai_api import Server
from suanli.workloads.openai_types import ChatBody, CompletionBody, OpenAIError
from suanli.workloads.replica_auth import token_proof
from suanli.workloads.serve_lm import Engine, Request

#: seconds: from tens of ms (a small model here) to a minute (a 70B prefill under load)
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)


def metrics_registry(engine: Engine, name: str) -> CollectorRegistry:
    """Gauges read from the engine when scraped; counters and histograms fed by it as each
    request finishes (``Engine.on_finish``, in the engine's thread: these are thread-safe)."""
    reg = CollectorRegistry()
    labels = {"model_name": name}

    def gauge(metric: str, doc: str, key: str) -> None:
        g = Gauge(metric, doc, list(labels), registry=reg).labels(**labels)
        g.set_function(lambda: float(engine.metrics()[key]))

    gauge("suanli_serve_num_requests_waiting", "Requests waiting for a slot.", "queue_length")
    gauge("suanli_serve_num_requests_running", "Requests being decoded.", "in_flight")
    gauge(
        "suanli_serve_kv_cache_usage_ratio",
        "Share of the KV cache's token slots in use (0-1).",
        "kv_cache_utilization",
    )
    gauge(
        "suanli_serve_generation_tokens_per_second",
        "Decode tokens/s over the last 5 s.",
        "decode_tokens_per_s",
    )
    finished = Counter(
        "suanli_serve_request_success",
        "Requests finished, by why they ended.",
        [*labels, "finished_reason"],
        registry=reg,
    )
    prompt_tokens = Counter(
        "suanli_serve_prompt_tokens", "Prompt tokens prefilled.", list(labels), registry=reg
    )
    gen_tokens = Counter(
        "suanli_serve_generation_tokens", "Tokens generated.", list(labels), registry=reg
    )
    ttft = Histogram(
        "suanli_serve_time_to_first_token_seconds",
        "From arrival to the first token, queueing included.",
        list(labels),
        buckets=LATENCY_BUCKETS_S,
        registry=reg,
    )
    tpot = Histogram(
        "suanli_serve_time_per_output_token_seconds",
        "Mean time between a request's output tokens after the first.",
        list(labels),
        buckets=TPOT_BUCKETS_S,
        registry=reg,
    )
    e2e = Histogram(
        "suanli_serve_e2e_request_latency_seconds",
        "From arrival to the last token.",
        list(labels),
        buckets=LATENCY_BUCKETS_S,
        registry=reg,
    )

    def observe(r: Request) -> None:
        finished.labels(**labels, finished_reason=r.finish).inc()
        prompt_tokens.labels(**labels).inc(len(r.prompt))
        gen_tokens.labels(**labels).inc(len(r.out))
        end = r.finished_at or time.monotonic()
        e2e.labels(**labels).observe(end - r.arrived)
        if r.first_token_at is not None:
            ttft.labels(**labels).observe(r.first_token_at - r.arrived)
            if len(r.out) > 1:
                tpot.labels(**labels).observe((end - r.first_token_at) / (len(r.out) - 1))

    engine.on_finish.append(observe)
    return reg


def app_for(
    engine: Engine, name: str | None = None, max_queue: int = 256, api_key: str | None = None
) -> Any:
    """``api_key``: requests under ``/v1/`` must carry it as a bearer token (a service's
    replica gets one from the services controller, so that only the router, not another
    tenant's process on the machine, can use it); ``/health``, ``/stats`` and
    ``/metrics`` stay open to the prober."""
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    server = Server(engine, name or engine.arch.name, max_queue)
    registry = metrics_registry(engine, server.name)
    app = FastAPI(title="suanli serve_lm", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def bearer(request: HTTPRequest, call_next: Any) -> Any:
        if api_key is not None and request.url.path.startswith("/v1/"):
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode()):
                err = OpenAIError(
                    401,
                    "Incorrect API key provided: this replica answers its service's router",
                    code="invalid_api_key",
                )
                return JSONResponse(err.body(), status_code=401)
        return await call_next(request)

    @app.exception_handler(OpenAIError)
    async def openai_error(_: HTTPRequest, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = loc[0] if loc else None
        where = ".".join(loc) or "the body"
        msg = f"{where}: {first.get('msg', 'invalid')}"
        if first.get("type") == "extra_forbidden":
            msg = f"{where}: this server does not support this field; remove it"
        elif first.get("type") == "json_invalid":
            msg = "the body is not valid JSON"
        return JSONResponse(OpenAIError(400, msg, param=param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: HTTPRequest, exc: HTTPException) -> JSONResponse:
        code = "unknown_url" if exc.status_code == 404 else None
        message = (
            f"no route {request.method} {request.url.path}"
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        err = OpenAIError(exc.status_code, message, code=code)
        return JSONResponse(err.body(), status_code=exc.status_code)

    async def answer(body: CompletionBody | ChatBody) -> Any:
        reqs = server.admit(body)
        if body.stream:
            return StreamingResponse(server.stream(body, reqs), media_type="text/event-stream")
        for _, r in reqs:
            engine.waiting.put(r)
        try:
            await asyncio.gather(*(asyncio.wrap_future(r.done) for _, r in reqs))
        except asyncio.CancelledError:
            for _, r in reqs:
                r.done.cancel()
            raise
        except Exception as exc:  # the engine failed this batch; it goes on with the next
            raise OpenAIError(500, f"decoding failed: {exc}", type_="server_error") from exc
        if isinstance(body, ChatBody):
            return server.chat(body, reqs)
        return server.completion(body, reqs)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> Any:
        return await answer(body)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody) -> Any:
        return await answer(body)

    def model_card() -> dict[str, Any]:
        return {
            "id": server.name,
            "object": "model",
            "created": server.created,
            "owned_by": "suanli",
            "max_model_len": engine.max_len,
        }

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    def model(model_id: str) -> dict[str, Any]:
        if model_id != server.name:
            raise OpenAIError(
                404, f"model {model_id!r} does not exist here", code="model_not_found"
            )
        return model_card()

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/stats")
    def stats(challenge: str | None = None) -> dict[str, Any]:
        out = engine.metrics()  # built fresh on each call
        if challenge is not None and api_key is not None:
            out["proof"] = token_proof(api_key, challenge[:128])
        return out

    @app.get("/health")
    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
