"""The console's routes: sign-in, cluster, jobs, a job, submit, services, market.

The planner and simulator pages are in ``suanli.web.planner``. Every page reads
through ``Api`` with the viewer's token; the store is used only to look the token up.
"""

import time
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from suanli.jobs.spec import JobSpecError, parse_yaml
from suanli.store.db import Store
from suanli.web import views
from suanli.web.client import Api, ApiError
from suanli.web.planner import add_planner
from suanli.web.render import HERE, page
from suanli.web.session import COOKIE, BadForm, SignInNeeded, Viewer, check_form, form

JOB_STATES = ("queued", "running", "preempted", "succeeded", "failed", "cancelled")
LOG_LINES = 200
EXAMPLE_SPEC = """\
name: hello
command: >-
  python3 -c "import time; [print('step', i, flush=True) or time.sleep(0.2)
  for i in range(10)]"
resources: {accelerator: cpu, cpu: 1, memory_gb: 1}
"""


def add_console(app: FastAPI, store: Store) -> None:
    """The console's pages under ``/ui`` (``/`` leads there) and their static files."""
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")

    def viewer(request: Request) -> Viewer:
        token = request.cookies.get(COOKIE)
        row = store.find_token(token) if token else None
        if row is None:
            raise SignInNeeded(request.url.path)
        return Viewer(token or "", row.role, row.owner)

    Who = Annotated[Viewer, Depends(viewer)]

    def api(who: Viewer) -> Api:
        return Api(app, who.token)

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, exc: SignInNeeded) -> Response:
        if request.method == "GET" and not request.headers.get("hx-request"):
            return RedirectResponse(f"/ui/signin?next={quote(str(exc))}", status_code=303)
        return page(
            request,
            "error.html",
            401,
            who=None,
            title="Sign in",
            problems=["you are not signed in (or your token was revoked): sign in again"],
        )

    @app.exception_handler(BadForm)
    async def _bad_form(request: Request, exc: BadForm) -> Response:
        return page(request, "error.html", 403, who=None, title="Refused", problems=[str(exc)])

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return page(
            request, "error.html", exc.status, who=None, title=exc.message, problems=exc.problems
        )

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/cluster", status_code=307)

    @app.get("/ui", include_in_schema=False)
    def _ui() -> RedirectResponse:
        return RedirectResponse("/ui/cluster", status_code=307)

    # --- signing in ---------------------------------------------------------------------
    @app.get("/ui/signin", include_in_schema=False)
    def signin_form(request: Request, next: str = "/ui/cluster") -> HTMLResponse:
        return page(request, "signin.html", who=None, next=safe_next(next), problems=[])

    @app.post("/ui/signin", include_in_schema=False)
    async def signin(request: Request) -> Response:
        fields = await form(request)
        token = fields.get("token", "").strip()
        target = safe_next(fields.get("next", "/ui/cluster"))
        if not token or await run_in_threadpool(store.find_token, token) is None:
            return page(
                request,
                "signin.html",
                401,
                who=None,
                next=target,
                problems=["unknown token: paste a token from `suanli up` or POST /v1/tokens"],
            )
        out = RedirectResponse(target, status_code=303)
        out.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/ui",
        )
        return out

    @app.post("/ui/signout", include_in_schema=False)
    async def signout(request: Request) -> Response:
        """Forget the cookie; it needs the form token of the cookie's token, not a live
        one, so that a viewer whose token was revoked can sign out too."""
        token = request.cookies.get(COOKIE, "")
        check_form(Viewer(token, "", ""), await form(request))
        out = RedirectResponse("/ui/signin", status_code=303)
        out.delete_cookie(COOKIE, path="/ui")
        return out

    # --- the cluster ----------------------------------------------------------------------
    @app.get("/ui/cluster", include_in_schema=False)
    async def cluster(
        request: Request,
        who: Who,
        page_no: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
        chip: Annotated[str | None, Query(max_length=63)] = None,
    ) -> HTMLResponse:
        """The summary counts every node; the list shows one chip's nodes with ``chip``,
        nodes with devices first, a page at a time."""
        t0 = time.perf_counter()
        async with api(who) as a:
            nodes = await a.get("/v1/nodes")
            sites = await a.get("/v1/sites")
        view = views.cluster(nodes, sites)
        listed = views.ordered(view["nodes"], chip)
        pages = views.Pages.of(page_no, views.NODES_PER_PAGE, len(listed))
        shown = listed[pages.offset : pages.offset + pages.per_page]
        by_site: dict[str, list[views.NodeCells]] = {}
        for n in shown:
            by_site.setdefault(n.site, []).append(n)
        return page(
            request,
            "cluster.html",
            who=who,
            title="Cluster",
            view=view,
            sites=sites,
            by_site=by_site,
            pages=pages,
            chip=chip,
            chips=views.chip_classes(nodes),
            built_ms=(time.perf_counter() - t0) * 1000,
        )

    # --- jobs -----------------------------------------------------------------------------
    @app.get("/ui/jobs", include_in_schema=False)
    async def jobs(
        request: Request,
        who: Who,
        state: Annotated[str | None, Query(pattern="^(" + "|".join(JOB_STATES) + ")$")] = None,
        page_no: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
    ) -> HTMLResponse:
        per = views.JOBS_PER_PAGE
        async with api(who) as a:
            counts = await a.get("/v1/jobs/counts")
            total = sum(counts.values()) if state is None else counts.get(state, 0)
            pages = views.Pages.of(page_no, per, total)
            rows = await a.get(
                "/v1/jobs", state=state, limit=per, offset=pages.offset, newest_first=True
            )
            queues = await a.get("/v1/queues")
            running = await a.get("/v1/jobs", state="running")
        return page(
            request,
            "jobs.html",
            who=who,
            title="Jobs",
            jobs=rows,
            counts=counts,
            state=state,
            pages=pages,
            queues=views.queue_usage(queues, running),
            timeline=views.timeline(rows),
            now=time.time(),
        )

    @app.get("/ui/jobs/new", include_in_schema=False)
    def new_job(request: Request, who: Who) -> HTMLResponse:
        return page(
            request, "submit.html", who=who, title="Submit a job", spec=EXAMPLE_SPEC, problems=[]
        )

    @app.post("/ui/jobs", include_in_schema=False)
    async def submit(request: Request, who: Who) -> Response:
        fields = await form(request)
        check_form(who, fields)
        text = fields.get("spec", "")
        problems: list[str] = []
        try:  # in a thread: a large spec is parsed off the loop that serves everyone
            spec = await run_in_threadpool(parse_yaml, text, "spec")
        except JobSpecError as exc:
            problems = exc.problems
        else:
            if not isinstance(spec, dict):
                problems = ["the spec must be a YAML mapping (name:, command:, resources: ...)"]
        if not problems:
            try:
                async with api(who) as a:
                    made = await a.post("/v1/jobs", {"spec": spec})
                return RedirectResponse(f"/ui/jobs/{made['id']}", status_code=303)
            except ApiError as exc:
                problems = exc.problems
        return page(
            request, "submit.html", 422, who=who, title="Submit a job", spec=text, problems=problems
        )

    async def job_and_log(who: Viewer, job_id: int) -> tuple[dict[str, Any], str]:
        async with api(who) as a:
            job = await a.get(f"/v1/jobs/{job_id}")
            log = await a.get(f"/v1/jobs/{job_id}/logs", tail=LOG_LINES)
        return job, str(log)

    @app.get("/ui/jobs/{job_id}", include_in_schema=False)
    async def job(request: Request, who: Who, job_id: int) -> HTMLResponse:
        job, log = await job_and_log(who, job_id)
        return page(
            request, "job.html", who=who, title=f"Job {job_id}", job=job, log=log, now=time.time()
        )

    @app.get("/ui/jobs/{job_id}/live", include_in_schema=False)
    async def job_live(request: Request, who: Who, job_id: int) -> HTMLResponse:
        """The parts of a job page that change while it runs (htmx polls this)."""
        job, log = await job_and_log(who, job_id)
        return page(request, "job_live.html", who=who, job=job, log=log, now=time.time())

    @app.post("/ui/jobs/{job_id}/cancel", include_in_schema=False)
    async def cancel(request: Request, who: Who, job_id: int) -> Response:
        check_form(who, await form(request))
        async with api(who) as a:
            await a.post(f"/v1/jobs/{job_id}/cancel")
        return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)

    # --- services and the market -------------------------------------------------------------
    @app.get("/ui/services", include_in_schema=False)
    async def services(request: Request, who: Who) -> HTMLResponse:
        async with api(who) as a:
            rows = await a.get("/v1/services")
        now = time.time()
        for s in rows:
            s["chip_mix"] = chip_mix(s)
            h = s.get("history") or []
            s["chart"] = {
                "kind": "lines",
                "title": "replicas and load, the last hour",
                "x_title": "minutes before now",
                "y_title": "replicas / requests",
                "series": {
                    name: [{"x": round((p["at"] - now) / 60, 2), "y": p[key]} for p in h]
                    for name, key in (
                        ("ready replicas", "ready"),
                        ("desired", "desired"),
                        ("arrivals/s", "arrivals_per_s"),
                        ("in flight", "in_flight"),
                        ("waiting", "waiting"),
                    )
                },
            }
        return page(request, "services.html", who=who, title="Services", services=rows)

    @app.get("/ui/market", include_in_schema=False)
    async def market(request: Request, who: Who) -> HTMLResponse:
        async with api(who) as a:
            summary = await a.get("/v1/market")
            book = await a.get("/v1/market/book")
            prices = await a.get("/v1/market/prices", limit=500)
            leases = await a.get("/v1/market/leases")
            ledger = await a.get("/v1/ledger")
            entries = await a.get("/v1/ledger/entries", limit=50)  # the viewer's own account
            month = time.strftime("%Y-%m", time.gmtime())
            invoice = await a.get(f"/v1/invoices/{quote(who.owner)}/{month}")
        series: dict[str, list[dict[str, float]]] = {}
        for p in reversed(prices):
            if p["price_usd_per_hour"] is not None:
                key = f"{p['accelerator']} {p['region']}"
                series.setdefault(key, []).append({"x": p["at"], "y": p["price_usd_per_hour"]})
        return page(
            request,
            "market.html",
            who=who,
            title="Market",
            summary=summary,
            book=book,
            prices={"kind": "prices", "series": series},
            leases=leases,
            ledger=ledger,
            entries=entries,
            invoice=invoice,
        )

    add_planner(app, Who)


def error_page(
    request: Request, status: int, problems: list[str], headers: dict[str, str] | None = None
) -> HTMLResponse:
    """A console address's error (a page number that is not one, no such page), as a page."""
    out = page(request, "error.html", status, who=None, title="Not understood", problems=problems)
    out.headers.update(headers or {})
    return out


def chip_mix(service: dict[str, Any]) -> str:
    """The chips a service's replicas ask for (one resource shape per service today)."""
    res = (service.get("spec") or {}).get("resources") or {}
    chip = res.get("accelerator") or res.get("vendor")
    return str(chip) if chip else "any chip the scheduler picks"


def safe_next(target: str) -> str:
    """Only a console path: ``next`` must not send a signed-in viewer to another site."""
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/cluster"
