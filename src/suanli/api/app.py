"""FastAPI application: jobs, nodes, tokens. Bad input is a 4xx with a JSON body, never a 500."""

import os
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as Path_
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from suanli.api import logs as job_logs
from suanli.api.docs import add_docs
from suanli.api.market import add_market_routes, owner_key
from suanli.api.metrics import Metrics, add_metrics
from suanli.api.router import add_router_routes
from suanli.api.services import add_service_routes
from suanli.api.sites import add_site_routes
from suanli.catalog.loader import accelerators
from suanli.cluster.state import ClusterState, NodeSpec, Site
from suanli.errors import SuanliError
from suanli.jobs import resolve
from suanli.jobs.spec import (
    REPLICAS_REFUSED,
    JobSpec,
)
from suanli.market.controller import MarketConfig
from suanli.run.executor import NODE_LABEL
from suanli.service.replicas import ReplicaBook
from suanli.store.db import OwnerRoleError, Store
from suanli.store.models import (
    JOB_STATES,
    JobRow,
    NodeRow,
    OrderRow,
    PerfRecordRow,
    QueueRow,
    SiteRow,
    TokenRow,
    member_chips,
)
from suanli.store.vault import Vault
from suanli.web import add_console, error_page

#: request bodies: unknown fields refused, no coercion (``true`` is not 1.0), finite numbers
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
INT32 = 2**31 - 1  # integer columns on PostgreSQL
JobId = Annotated[int, Path_(ge=1, le=INT32, description="a job id")]
Name = Annotated[str, Path_(pattern="^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]


class ErrorBody(BaseModel):
    """Every 4xx answer: what was wrong, and each problem (a field path and what to do)."""

    error: str
    problems: list[str]


class SubmitBody(BaseModel):
    model_config = STRICT
    spec: JobSpec = Field(description="a job spec (see suanli.jobs.spec)")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)


class QueueBody(BaseModel):
    model_config = STRICT
    name: str | None = Field(
        default=None,
        pattern="^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="optional; the path names the queue",
    )
    weight: float = Field(default=1.0, gt=0, le=1e6)
    quota_milli: dict[
        Annotated[str, Field(max_length=63)], Annotated[int, Field(ge=0, le=2**62)]
    ] = Field(default_factory=dict, max_length=256)
    reclaimable: bool = True


DNS_LABEL = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
CANCEL_TRIES = 5  # compare-and-set rounds; each lost round means the loop moved the job
LIVE_STATES = ("queued", "preempted", "running")


class TokenBody(BaseModel):
    model_config = STRICT
    role: str = Field(pattern="^(admin|provider|user)$")
    # no colon: names like "system:executor" belong to the service itself
    owner: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")


def admission_problem(spec: JobSpec, s: DbSession, owner: str | None = None) -> str | None:
    """What the store's state says against a valid spec (None: it may be queued)."""
    if spec.replicas > 1:
        return f"spec.replicas: {REPLICAS_REFUSED}"
    if spec.order is not None:
        order = s.get(OrderRow, spec.order)
        if order is None or (owner is not None and order.buyer != owner):
            return f"spec.order: no market order {spec.order} of yours (see GET /v1/market/orders)"
        if order.state not in ("open", "filled"):
            return f"spec.order: market order {spec.order} is {order.state}"
        return None  # its leases decide where it runs
    if spec.queue != "default" and s.get(QueueRow, spec.queue) is None:
        return f"spec.queue: no queue {spec.queue!r} (see GET /v1/queues)"
    return never_fits(spec, s)


def never_fits(spec: JobSpec, s: DbSession) -> str | None:
    """Why no node the executor runs could ever host the job (None: one could, or no node
    has been reported yet). Registered inventory (``executor: agent``) runs nothing yet."""
    # filtered in SQL: a provider's 1,500 registered nodes would otherwise be read and
    # decoded on every submission (55 ms each, measured by benchmarks/console_render.py)
    rows = list(s.scalars(select(NodeRow).where(NodeRow.executor != "agent")))
    if not rows:
        return None
    regions = {r.name: r.region for r in s.scalars(select(SiteRow))}
    specs = [
        NodeSpec(
            n.name,
            n.cpu_cores * 1000,
            n.memory_mib,
            len(n.devices),
            str(n.devices[0]["accelerator"]) if n.devices else "",
            site=n.site or "default",
            labels={**n.labels, NODE_LABEL: n.name},
        )
        for n in rows
    ]
    sites = [Site(name, region) for name, region in regions.items()]
    return resolve.never_fits(spec, ClusterState(specs, sites))


def job_usage(s: DbSession, row: JobRow) -> dict[str, Any]:
    """What the job's current (or last) attempt has held: device-seconds, and their cost
    at the catalog's list price per chip (a market job pays its leases instead: see
    ``/v1/ledger``). Earlier attempts are not counted: only the last one's start is kept."""
    if row.started_at is None or not row.members:
        return {"device_s": 0.0, "cost_usd": None, "basis": "not started"}
    held = member_chips(s, row.members)
    if not held:
        return {"device_s": 0.0, "cost_usd": None, "basis": "no devices held (CPU only)"}
    end = time.time() if row.state == "running" else row.updated_at
    held_s = max(0.0, end - row.started_at)
    catalog = accelerators()
    prices = [catalog[c].price_usd_per_hour if c in catalog else None for c in held]
    priced = all(p is not None for p in prices)
    return {
        "device_s": held_s * len(held),
        "cost_usd": held_s / 3600 * sum(p or 0.0 for p in prices) if priced else None,
        "basis": "catalog list price, this attempt" if priced else "no list price for a chip",
    }


def job_view(row: JobRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "state": row.state,
        "exit_code": row.exit_code,
        "attempts": row.attempts,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "started_at": row.started_at,
        "devices": row.devices,
        # where its members run (or last ran): the sites of their engines
        "sites": sorted({str(m["site"]) for m in row.members or [] if m.get("site")}),
        "cancel_requested": row.cancel_requested,
        "spec": row.spec,
    }


ERRORS: dict[int | str, dict[str, Any]] = {
    # JSON on every route, the plain-text log route's errors too
    code: {
        "description": what,
        "content": {"application/json": {"schema": ErrorBody.model_json_schema()}},
    }
    for code, what in (
        (400, "a request the service cannot act on"),
        (402, "the account's balance and credit limit cannot cover it"),
        (401, "no token, or an unknown one"),
        (403, "the token's role may not do this"),
        (404, "no such resource (or another tenant's)"),
        (405, "method not allowed here (the Allow header lists those that are)"),
        (409, "conflicts with the current state"),
        (413, "request body over the size limit"),
        (422, "invalid input: each problem names its field"),
    )
}
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_LOG_BYTES = 1 << 20  # of each log file a GET /logs answers with, unless asked
MAX_LOG_BYTES = 64 << 20


def error(
    status: int,
    message: str,
    problems: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": message, "problems": problems or [message]}
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """Size and NUL checks before any handler (plain ASGI, so the body it read is handed
    on): a body over the limit is 413, read no further than the limit; a NUL anywhere
    (path, query, body) is 422 — PostgreSQL cannot store one, and no name needs one."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = scope.get("raw_path", b"") + b"?" + scope.get("query_string", b"")
        if b"%00" in target or "\x00" in scope.get("path", ""):
            await error(422, "invalid request", ["NUL characters are not allowed"])(
                scope, receive, send
            )
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await error(413, f"request body over {self.limit} bytes")(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await error(413, f"request body over {self.limit} bytes")(scope, receive, send)
                return
        if b"\x00" in body or b"\\u0000" in body.lower():
            await error(422, "invalid request", ["NUL characters are not allowed"])(
                scope, receive, send
            )
            return
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(
    store: Store,
    multi_tenant: bool = True,
    max_body_bytes: int | None = None,
    market: MarketConfig | None = None,
    metrics: Metrics | None = None,
    book: ReplicaBook | None = None,
    vault: Vault | None = None,
) -> FastAPI:
    """``multi_tenant`` False: jobs would run as the service's own user (it is not root
    and was not started ``--single-user``), so only admin tokens are issued.
    ``max_body_bytes``: larger request bodies get 413 (default 1 MiB, or
    ``SUANLI_MAX_BODY_BYTES``). ``metrics``: what ``GET /metrics`` exports, shared with the
    loop (default: one of the app's own, reading the store). ``book``: the services'
    replicas, shared with the services controller that fills it. ``vault``: what seals
    the tokens of attached sites' engines (None: tokens are refused)."""
    limit = max_body_bytes or int(os.environ.get("SUANLI_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
    # /docs from this process, not a CDN (see suanli.api.docs); no ReDoc (it would load one)
    app = FastAPI(title="suanli", version="0.1.0", responses=ERRORS, docs_url=None, redoc_url=None)
    add_docs(app)

    app.add_middleware(Guard, limit=limit)
    add_metrics(app, metrics or Metrics(store))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        if request.url.path.startswith("/ui/"):  # a person at a browser: a page, not JSON
            return error_page(request, 422, problems)
        return error(422, "invalid request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method any route of this path takes, not one's
            methods: set[str] = set()
            for route in app.routes:
                match, _ = route.matches({**request.scope, "method": "GET"})
                if match != Match.NONE:
                    methods |= set(getattr(route, "methods", None) or ())
            headers["Allow"] = ", ".join(sorted(methods))
        if request.url.path.startswith("/ui/"):  # a console address: a page
            return error_page(request, exc.status_code, [str(exc.detail)], headers)
        return error(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(SuanliError)
    async def _user_error(_: Request, exc: SuanliError) -> JSONResponse:
        problems = getattr(exc, "problems", [str(exc)])
        return error(400, str(exc), problems)

    def caller(authorization: Annotated[str | None, Header()] = None) -> TokenRow:
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, detail="missing bearer token (set SUANLI_TOKEN)")
        tok = store.find_token(authorization.removeprefix("Bearer ").strip())
        if tok is None:
            raise HTTPException(401, detail="unknown token")
        return tok

    Caller = Annotated[TokenRow, Depends(caller)]

    def visible_job(job_id: int, who: TokenRow) -> JobRow:
        with store.tx() as s:
            row = s.get(JobRow, job_id)
        # another tenant's job is reported as missing, not as forbidden: no enumeration
        if row is None or (who.role != "admin" and row.owner != who.owner):
            raise HTTPException(404, detail=f"no job {job_id}")
        return row

    @app.post(
        "/v1/jobs",
        status_code=201,
        responses={200: {"description": "an earlier submission with this idempotency key"}},
    )
    def submit(body: SubmitBody, who: Caller) -> JSONResponse:
        if who.role == "provider":
            raise HTTPException(403, detail="providers manage nodes, not jobs")
        spec = body.spec  # validated whole, rules across fields included, by its model
        with store.tx() as s:
            problem = admission_problem(spec, s, who.owner)
        if problem is not None:
            return error(422, "invalid job spec", [problem])
        key = owner_key(who, body.idempotency_key)
        try:
            with store.tx() as s:
                if key is not None:
                    old = s.scalar(select(JobRow).where(JobRow.idempotency_key == key))
                    if old is not None:
                        return JSONResponse({"id": old.id, "duplicate": True}, status_code=200)
                job_id = store.add_job(s, spec.model_dump(), who.owner, key).id
        except IntegrityError:  # a concurrent submit with the same key won the race
            with store.tx() as s:
                old = s.scalar(select(JobRow).where(JobRow.idempotency_key == key))
            if old is None:
                raise
            return JSONResponse({"id": old.id, "duplicate": True}, status_code=200)
        return JSONResponse({"id": job_id}, status_code=201)

    def own(q: Any, who: TokenRow) -> Any:
        return q if who.role == "admin" else q.where(JobRow.owner == who.owner)

    @app.get("/v1/jobs")
    def list_jobs(
        who: Caller,
        response: Response,
        state: Annotated[
            str | None, Query(pattern="^(queued|running|preempted|succeeded|failed|cancelled)$")
        ] = None,
        limit: Annotated[int | None, Query(ge=1, le=10_000, description="at most N jobs")] = None,
        offset: Annotated[int, Query(ge=0, le=INT32, description="skip the first N")] = 0,
        newest_first: Annotated[bool, Query(description="highest id first")] = False,
    ) -> list[dict[str, Any]]:
        """The caller's jobs (an admin's: everyone's) by id, a page of them with ``limit``
        and ``offset``; ``X-Total-Count`` is how many match, all pages together."""
        with store.tx() as s:
            q = own(select(JobRow), who)
            if state:
                q = q.where(JobRow.state == state)
            total = s.scalar(select(func.count()).select_from(q.subquery()))
            q = q.order_by(JobRow.id.desc() if newest_first else JobRow.id).offset(offset)
            if limit is not None:
                q = q.limit(limit)
            response.headers["X-Total-Count"] = str(total)
            return [job_view(r) for r in s.scalars(q)]

    @app.get("/v1/jobs/counts")
    def job_counts(who: Caller) -> dict[str, int]:
        """How many of the caller's jobs (an admin's: all) are in each state."""
        with store.tx() as s:
            q = own(select(JobRow.state, func.count()), who).group_by(JobRow.state)
            counts = {state: 0 for state in JOB_STATES}
            counts.update({str(k): int(n) for k, n in s.execute(q)})
            return counts

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: JobId, who: Caller) -> dict[str, Any]:
        view = job_view(visible_job(job_id, who))
        view["events"] = [
            {"at": e.at, "kind": e.kind, "message": e.message} for e in store.events(job_id)
        ]
        with store.tx() as s:
            row = s.get(JobRow, job_id)
            assert row is not None
            view["usage"] = job_usage(s, row)
            view["perf"] = [
                {"chip": p.chip, "measured_step_s": p.measured_s, "predicted_step_s": p.predicted_s}
                for p in s.scalars(select(PerfRecordRow).where(PerfRecordRow.job_id == job_id))
            ]
        return view

    @app.post("/v1/jobs/{job_id}/cancel")
    def cancel(job_id: JobId, who: Caller) -> dict[str, Any]:
        visible_job(job_id, who)
        now = time.time()
        sync = {"synchronize_session": False}
        with store.tx() as s:
            # compare-and-set on the state, so a cancel and the loop starting (or requeueing)
            # the job cannot both win: a job that started meanwhile gets a cancel request.
            # Under PostgreSQL's read committed the loop can move the job between the two
            # statements (running -> queued for a retry), so both missing means: try again
            for _ in range(CANCEL_TRIES):
                ended = s.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.state.in_(("queued", "preempted")))
                    .values(state="cancelled", updated_at=now),
                    execution_options=sync,
                )
                if ended.rowcount:  # type: ignore[attr-defined]
                    store.event(s, job_id, "cancelled", f"by {who.owner} while it waited to run")
                    break
                asked = s.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.state == "running")
                    .values(cancel_requested=True, updated_at=now),
                    execution_options=sync,
                )
                if asked.rowcount:  # type: ignore[attr-defined]
                    store.event(s, job_id, "cancel-requested", f"by {who.owner}")
                    break
                row = s.get(JobRow, job_id, populate_existing=True)
                if row is None or row.state not in LIVE_STATES:
                    break  # it ended meanwhile: nothing to cancel
            else:  # the job kept moving under every try: say so, never a silent 200
                raise HTTPException(
                    409, detail=f"job {job_id} is changing state; send the cancel again"
                )
            row = s.get(JobRow, job_id, populate_existing=True)
            assert row is not None
            return job_view(row)

    @app.get("/v1/jobs/{job_id}/logs", response_class=PlainTextResponse)
    def logs(
        job_id: JobId,
        who: Caller,
        tail_bytes: Annotated[int, Query(ge=1, le=MAX_LOG_BYTES)] = DEFAULT_LOG_BYTES,
        offset: Annotated[
            str | None, Query(max_length=4096, description="X-Log-Offset of an earlier answer")
        ] = None,
        tail: Annotated[int | None, Query(ge=1, le=100_000, description="last N lines")] = None,
    ) -> PlainTextResponse:
        """The end of each member's output, at most ``tail_bytes`` of each file (a job may
        write gigabytes: the service never reads a whole log into memory); with ``offset``
        what was written since (at most ``tail_bytes`` of each file), with ``tail`` the last
        lines. ``X-Log-Offset`` is where the answer ends (see ``suanli.api.logs``)."""
        row = visible_job(job_id, who)  # another tenant's log stays a 404, whatever is asked
        if offset is not None and tail is not None:
            raise HTTPException(422, detail="offset and tail: pass one of them, not both")
        try:
            cursor = None if offset is None else job_logs.parse_cursor(offset)
        except job_logs.CursorError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        paths = job_logs.log_files(row.members)
        if cursor is not None:
            text, after = job_logs.read_from(paths, cursor, tail_bytes)
        elif tail is not None:
            text, after = job_logs.last_lines(paths, tail, tail_bytes)
        else:
            text, after = job_logs.last_bytes(paths, tail_bytes)
        return PlainTextResponse(text, headers=job_logs.cursor_header(after))

    add_site_routes(app, store, caller, vault)
    book = book if book is not None else ReplicaBook()  # `suanli up` shares its controller's
    add_service_routes(app, store, caller, book, admission_problem)
    add_router_routes(app, store, book)

    @app.get("/v1/queues")
    def queues(who: Caller) -> list[dict[str, Any]]:
        """Every queue; ``default`` too while it was never set (jobs naming no queue run
        in it, with the scheduler's defaults: weight 1, no quota, reclaimable)."""
        with store.tx() as s:
            rows = {
                q.name: {
                    "name": q.name,
                    "weight": q.weight,
                    "quota_milli": q.quota_milli,
                    "reclaimable": q.reclaimable,
                }
                for q in s.scalars(select(QueueRow))
            }
        rows.setdefault("default", {**QueueBody().model_dump(), "name": "default"})
        return [rows[name] for name in sorted(rows)]

    @app.put("/v1/queues/{name}")
    def put_queue(name: Name, body: QueueBody, who: Caller) -> dict[str, Any]:
        if who.role != "admin":
            raise HTTPException(403, detail="only an admin manages queues")
        if body.name is not None and body.name != name:
            raise HTTPException(422, detail="name: the path and the body name different queues")
        with store.tx() as s:
            row = s.get(QueueRow, name) or QueueRow(name=name)
            row.weight, row.quota_milli, row.reclaimable = (
                body.weight,
                body.quota_milli,
                body.reclaimable,
            )
            s.add(row)
        return {**body.model_dump(), "name": name}

    @app.delete("/v1/queues/{name}")
    def delete_queue(name: Name, who: Caller) -> dict[str, str]:
        if who.role != "admin":
            raise HTTPException(403, detail="only an admin manages queues")
        if name == "default":
            raise HTTPException(
                409, detail="the default queue cannot be deleted: jobs naming no queue run in it"
            )
        with store.tx() as s:
            row = s.get(QueueRow, name)
            if row is None:
                raise HTTPException(404, detail=f"no queue {name}")
            live = [
                j.id
                for j in s.scalars(select(JobRow).where(JobRow.state.in_(LIVE_STATES)))
                if j.spec.get("queue", "default") == name
            ]
            if live:
                raise HTTPException(
                    409,
                    detail=f"queue {name} has {len(live)} job(s) waiting or running "
                    f"({', '.join(map(str, live[:10]))}); cancel them or let them end first",
                )
            s.delete(row)
        return {"deleted": name}

    @app.post("/v1/tokens", status_code=201)
    def token(body: TokenBody, who: Caller) -> dict[str, str]:
        if who.role != "admin":
            raise HTTPException(403, detail="only an admin creates tokens")
        if not multi_tenant and body.role != "admin":
            raise HTTPException(
                409,
                detail="jobs here would run as the service's own user, so tokens for other "
                "tenants are refused: run suanli up as root (per-owner accounts) or with "
                "--single-user to accept one trust domain",
            )
        try:
            token = store.create_token(body.role, body.owner)
        except OwnerRoleError as exc:
            raise HTTPException(409, detail=str(exc)) from exc
        return {"token": token, "role": body.role, "owner": body.owner}

    @app.get("/v1/tokens")
    def list_tokens(who: Caller) -> list[dict[str, Any]]:
        """Tokens by id (never the secret: only its hash is stored); an admin sees all, a
        user or provider their own."""
        with store.tx() as s:
            q = select(TokenRow).order_by(TokenRow.id)
            if who.role != "admin":
                q = q.where(TokenRow.owner == who.owner)
            return [
                {"id": r.id, "role": r.role, "owner": r.owner, "created_at": r.created_at}
                for r in s.scalars(q)
            ]

    @app.delete("/v1/tokens/{token_id}")
    def revoke_token(
        token_id: Annotated[int, Path_(ge=1, le=INT32)], who: Caller
    ) -> dict[str, Any]:
        """Revoke a token: an admin any, others their own (another's is a 404). The last
        admin token cannot go: nobody could manage the service after it."""
        with store.tx() as s:
            row = s.get(TokenRow, token_id)
            if row is None or (who.role != "admin" and row.owner != who.owner):
                raise HTTPException(404, detail=f"no token {token_id}")
            if row.role == "admin":
                admins = s.scalars(select(TokenRow.id).where(TokenRow.role == "admin")).all()
                if len(admins) <= 1:
                    raise HTTPException(
                        409, detail="this is the last admin token; create another first"
                    )
            s.delete(row)
        return {"revoked": token_id}

    @app.get("/v1/corrections")
    def get_corrections(who: Caller) -> list[dict[str, Any]]:
        """Per (model family, chip): measured / predicted step time of finished jobs."""
        from suanli.calibration.feedback import stored_corrections

        with store.tx() as s:
            fixes = stored_corrections(s)
        return [
            {"family": fam, "chip": chip, "factor": v["factor"], "runs": v["runs"]}
            for (fam, chip), v in sorted(fixes.items())
        ]

    add_market_routes(app, store, caller, market or MarketConfig())

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    add_console(app, store)  # the pages at /ui, a client of the routes above
    return app
