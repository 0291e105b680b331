"""``GET /metrics``: the service in Prometheus' text format, every series named ``suanli_…``.

The endpoint asks for no token, as Prometheus scrapes without one. So it tells no
tenant's business: every series is an aggregate count by queue, job state, chip
type, executor, a fixed placement-failure reason, or an HTTP method, route
*template* and status. No job name, id, owner, command or raw path appears.

Two kinds of series:

* what the store holds (queue depth, jobs by state, devices allocated and free, the
  market's open offers, orders, leases and last spot prices, the services' replicas)
  is read from the store at each scrape (`StoreCollector`), so it is right after
  a restart and whoever wrote the rows;
* what happens (scheduling cycles, placement failures, job starts and failures,
  API requests) is counted as it happens, in a `Metrics` the loop and the app
  share (`suanli up` makes one and hands it to both).

Each app has its own `CollectorRegistry` (tests make several apps in one process).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import Match

from suanli.store.db import Store
from suanli.store.models import (
    JOB_STATES,
    JobRow,
    LeaseRow,
    NodeRow,
    OfferRow,
    OrderRow,
    PriceRow,
    QueueRow,
    ServiceRow,
    held_devices,
)

#: the placement-failure reasons a waiting job is counted under (never the free text)
REASONS = (
    "unknown_queue",  # its queue does not exist
    "quota",  # its queue's quota is used up
    "fair_share",  # its queue is at its deserved share
    "gang",  # not all members of its gang fit together
    "round",  # waiting for its turn in a scheduling round
    "lease",  # waiting for a market lease, or its lease is on nodes no executor here runs
    "region",  # no node in its allowed regions
    "node_selector",  # no node matches its node selector
    "devices",  # not enough devices of the type it asks for
    "cpu",  # not enough CPU cores
    "memory",  # not enough memory
    "priority",  # it fits, but waits behind jobs of its queue and priority
    "other",
)
_PATTERNS = (  # checked in order; the scheduler's own reason comes first in the text
    ("unknown queue", "unknown_queue"),
    ("quota exhausted", "quota"),
    ("deserved share", "fair_share"),
    ("gang:", "gang"),
    ("its turn", "round"),
    ("lease", "lease"),
    ("not in region", "region"),
    ("node selector", "node_selector"),
    ("reached by the router", "node_selector"),  # a node's label keeps replicas off it
    ("cannot share a device", "node_selector"),  # and shares
    ("cpu cores", "cpu"),
    ("memory", "memory"),
    ("have 0 ", "devices"),
    ("has 0 ", "devices"),
    ("no devices", "devices"),
    ("device free", "devices"),
    ("nodes are available", "devices"),
    ("waiting behind", "priority"),
)
#: seconds: a scheduling cycle is milliseconds on a small cluster, seconds on 10,000 jobs
CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "<unmatched>"  # the route label of a request no route answers (a 404)


def placement_reason(why: str) -> str:
    """The fixed label (one of `REASONS`) of the scheduler's reason why a job waits."""
    text = why.lower()
    return next((label for pattern, label in _PATTERNS if pattern in text), "other")


class Metrics:
    """The counters and histograms the loop and the API observe, in one registry.

    ``store``: also export what the store holds, read at each scrape."""

    def __init__(self, store: Store | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.schedule_cycle = Histogram(
            "suanli_schedule_cycle_seconds",
            "Time of one scheduling decision over the queued jobs",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.placement_failures = Counter(
            "suanli_placement_failures",
            "Jobs the scheduler could not place, by reason (a waiting job counts once per "
            "change of reason)",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:
            self.placement_failures.labels(reason=reason)
        self.job_starts = Counter(
            "suanli_job_starts", "Job attempts started, by executor", ["executor"], registry=r
        )
        self.job_failures = Counter(
            "suanli_job_failures",
            "Job attempts that failed (a non-zero exit, a lost member, a refused start, an "
            "exceeded max_runtime_s; a retried attempt counts too), by executor",
            ["executor"],
            registry=r,
        )
        self.api_request = Histogram(
            "suanli_api_request_seconds",
            "API request latency, by method, route template and status",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        if store is not None:
            r.register(StoreCollector(store))

    def executor(self, name: str) -> None:
        """Show an executor's start and failure counts from zero."""
        self.job_starts.labels(executor=name)
        self.job_failures.labels(executor=name)

    def placement_failed(self, why: str) -> None:
        self.placement_failures.labels(reason=placement_reason(why)).inc()


class StoreCollector(Collector):
    """Queue depth, jobs by state, devices by chip type and state: read from the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []  # nothing to describe up front: read at scrape time only

    def collect(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "suanli_queue_pending_jobs",
            "Jobs waiting to be placed (queued, or preempted and about to be), by queue",
            labels=["queue"],
        )
        jobs = GaugeMetricFamily("suanli_jobs", "Jobs by state", labels=["state"])
        devices = GaugeMetricFamily(
            "suanli_devices",
            "Devices of the registered nodes, by chip type and state (allocated, free, unhealthy)",
            labels=["chip", "state"],
        )
        queue = func.coalesce(JobRow.spec["queue"].as_string(), "default")
        with self.store.tx() as s:
            by_state: dict[str, int] = {
                state: n
                for state, n in s.execute(select(JobRow.state, func.count()).group_by(JobRow.state))
            }
            waiting: dict[str, int] = {
                str(q): n
                for q, n in s.execute(
                    select(queue, func.count())
                    .where(JobRow.state.in_(("queued", "preempted")))
                    .group_by(queue)
                )
            }
            queues = list(s.scalars(select(QueueRow.name)))
            held = held_devices(s.scalars(select(JobRow.members).where(JobRow.state == "running")))
            nodes = [
                (name, devs) for name, devs in s.execute(select(NodeRow.name, NodeRow.devices))
            ]
        for name in sorted({"default", *queues, *waiting}):
            pending.add_metric([name], waiting.get(name, 0))
        for state in sorted({*JOB_STATES, *by_state}):
            jobs.add_metric([state], by_state.get(state, 0))
        count: dict[tuple[str, str], int] = defaultdict(int)
        for node, devs in nodes:
            for d in devs or []:
                chip = str(d.get("accelerator") or "unknown")
                if not d.get("healthy", True):
                    state = "unhealthy"
                elif (node, int(d["index"])) in held:  # type: ignore[call-overload]
                    state = "allocated"
                else:
                    state = "free"
                count[chip, state] += 1
        for chip in sorted({c for c, _ in count}):
            for state in ("allocated", "free", "unhealthy"):
                devices.add_metric([chip, state], count[chip, state])
        yield pending
        yield jobs
        yield devices
        yield from self.market_and_services()

    def market_and_services(self) -> Iterator[Metric]:
        """The market's book and spot prices by chip, region and mode, and the services'
        replicas in all: aggregates that name no provider, buyer or service."""
        offers = GaugeMetricFamily(
            "suanli_market_open_offers",
            "Open market offers, by chip and mode",
            labels=["chip", "mode"],
        )
        orders = GaugeMetricFamily(
            "suanli_market_open_orders",
            "Open market orders, by chip and mode",
            labels=["chip", "mode"],
        )
        leases = GaugeMetricFamily(
            "suanli_market_leases",
            "Leases not yet ended (active or being reclaimed), by chip and mode",
            labels=["chip", "mode", "state"],
        )
        price = GaugeMetricFamily(
            "suanli_market_spot_price_usd_per_hour",
            "The last spot clearing price per unit-hour, by chip and region",
            labels=["chip", "region"],
        )
        services = GaugeMetricFamily("suanli_services", "Services (LLM endpoints)")
        desired = GaugeMetricFamily(
            "suanli_service_replicas_desired", "Replicas the autoscalers (or pins) want, in all"
        )
        replicas = GaugeMetricFamily(
            "suanli_service_replicas",
            "Replica jobs of all services, by job state",
            labels=["state"],
        )
        with self.store.tx() as s:
            for model, family in ((OfferRow, offers), (OrderRow, orders)):
                q = (
                    select(model.accelerator, model.mode, func.count())
                    .where(model.state == "open")
                    .group_by(model.accelerator, model.mode)
                )
                for chip, mode, n in s.execute(q):
                    family.add_metric([chip, mode], n)
            q2 = (
                select(LeaseRow.accelerator, LeaseRow.mode, LeaseRow.state, func.count())
                .where(LeaseRow.state != "ended")
                .group_by(LeaseRow.accelerator, LeaseRow.mode, LeaseRow.state)
            )
            for chip, mode, state, n in s.execute(q2):
                leases.add_metric([chip, mode, state], n)
            last = (
                select(func.max(PriceRow.id))
                .where(PriceRow.price_micro.is_not(None))
                .group_by(PriceRow.accelerator, PriceRow.region)
            )
            for row in s.scalars(select(PriceRow).where(PriceRow.id.in_(last))):
                price.add_metric([row.accelerator, row.region], (row.price_micro or 0) / 1e6)
            services.add_metric([], s.scalar(select(func.count()).select_from(ServiceRow)) or 0)
            desired.add_metric([], s.scalar(select(func.sum(ServiceRow.desired))) or 0)
            by_state = dict(
                s.execute(
                    select(JobRow.state, func.count())
                    .where(JobRow.service.is_not(None))
                    .group_by(JobRow.state)
                ).all()
            )
        for state in ("queued", "running"):
            replicas.add_metric([state], by_state.get(state, 0))
        yield from (offers, orders, leases, price, services, desired, replicas)


class RequestTimer:
    """ASGI middleware: each request's latency, labelled by its route template (never the
    raw path: ``/v1/jobs/{job_id}``, not ``/v1/jobs/42``), method and status."""

    def __init__(self, app: Any, metrics: Metrics, routes: Any) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    def route(self, scope: Any) -> str:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path", UNMATCHED))
        return UNMATCHED

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees when the app raises before it answers

        async def sent(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            self.metrics.api_request.labels(
                method=scope.get("method", ""), route=self.route(scope), status=str(status)
            ).observe(time.perf_counter() - start)


def add_metrics(app: FastAPI, metrics: Metrics) -> None:
    """``GET /metrics`` (no token: aggregates only, see above) and the request timer."""
    app.state.metrics = metrics
    app.add_middleware(RequestTimer, metrics=metrics, routes=lambda: app.router.routes)

    @app.get("/metrics", include_in_schema=False)
    def scrape() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
