"""Services: ``/v1/services`` (create, list, show, update, scale, delete) and each one's
Prometheus series. The endpoint itself is `suanli.api.router`.

A service belongs to the token's owner; another tenant's is reported as absent. Its
replicas are jobs the services controller submits under the same owner, so they pass
the same admission (queue, quota, resources) as any job, checked here at creation.
"""

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as Path_
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from suanli.autoscale.service_spec import ServiceSpec, replica_command
from suanli.errors import SuanliError
from suanli.jobs.spec import JobSpecError, parse_job_spec
from suanli.service.mix import chip_of
from suanli.service.replicas import ReplicaBook
from suanli.service.services import make_scaler
from suanli.service.spot import is_spot, leaving, order_problem
from suanli.store.db import Store
from suanli.store.models import JobRow, ServiceRow, TokenRow

Name = Annotated[str, Path_(pattern="^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
LIVE = ("queued", "running", "preempted")


class ScaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    #: a fixed count (the autoscaler stands aside), or null: back to the autoscaler
    replicas: int | None = Field(ge=0, le=256)


HISTORY_FIELDS = ("at", "ready", "desired", "arrivals_per_s", "in_flight", "waiting")


def service_view(row: ServiceRow, book: ReplicaBook, jobs: list[JobRow]) -> dict[str, Any]:
    spec = ServiceSpec.model_validate(row.spec)
    probed = {r.job_id: r for r in book.of(row.name)}
    replicas = []
    for j in jobs:
        r = probed.get(j.id)
        replicas.append(
            {
                "job": j.id,
                "state": j.state,
                "stopping": leaving(j),
                "capacity": "spot" if is_spot(j, spec.spot) else "on-demand",
                "chip": chip_of(j) or None,
                "reclaimed": bool(j.preempt_reason),
                "ready": bool(r and r.ready),
                "in_flight": r.inflight if r else 0,
                "queue": (r.stats.get("queue_length") if r else None),
                "kv_use": (r.stats.get("kv_cache_utilization") if r else None),
            }
        )
    return {
        "name": row.name,
        "owner": row.owner,
        "endpoint": f"/s/{row.name}/v1",
        "model": spec.model,
        "engine": spec.engine,
        "policy": spec.autoscaler.policy,
        "min": spec.replicas.min,
        "max": spec.replicas.max,
        "pinned": row.pinned,
        "desired": row.desired,
        "status": row.status,
        # less the request sizes the controller keeps for a restart (kilobytes of counts)
        "observed": {k: v for k, v in (row.observed or {}).items() if k != "sizes"},
        "cost_usd": row.cost_usd,
        "device_hours": row.device_s / 3600,
        "slo": spec.slo.model_dump(),
        "replicas": replicas,
        "spec": row.spec,
        "created_at": row.created_at,
        # the last hour, one sample per 5 s, since this process started (in memory)
        "history": [
            dict(zip(HISTORY_FIELDS, h, strict=True))
            for h in list(book.traffic_of(row.name).history)
        ],
    }


def add_service_routes(
    app: FastAPI,
    store: Store,
    caller: Callable[..., TokenRow],
    book: ReplicaBook,
    admission: Callable[..., str | None],
) -> None:
    Caller = Annotated[TokenRow, Depends(caller)]

    def visible(s: DbSession, name: str, who: TokenRow) -> ServiceRow:
        row = s.get(ServiceRow, name)
        if row is None or (who.role != "admin" and row.owner != who.owner):
            raise HTTPException(404, detail=f"no service {name}")
        return row

    def check(spec: ServiceSpec, who: TokenRow, s: DbSession) -> JSONResponse | None:
        """A replica of this spec must be a job this owner may run."""
        if who.role == "provider":
            raise HTTPException(403, detail="providers manage nodes, not services")
        try:
            job = parse_job_spec(
                {
                    "name": f"{spec.name}-replica"[:63],
                    "kind": "serve",
                    "command": replica_command(spec, 1),
                    "resources": spec.resources.model_dump(exclude_none=True),
                    "queue": spec.queue,
                    "priority": spec.priority,
                }
            )
        except JobSpecError as exc:
            return JSONResponse(
                {"error": "invalid service spec", "problems": exc.problems}, status_code=422
            )
        problem = admission(job, s, who.owner)
        if problem is not None:
            problem = f"replicas: {problem}"
        elif spec.spot is not None:
            problem = order_problem(s, spec.spot, spec.resources, who.owner)
        if problem is None and spec.autoscaler.policy == "optimizer":
            try:  # the chips must hold the model and meet the SLO: said now, not at a tick
                make_scaler(spec)
            except (SuanliError, ValueError) as exc:
                problem = f"autoscaler.policy optimizer: {exc}"
        if problem is not None:
            return JSONResponse(
                {"error": "invalid service spec", "problems": [problem]}, status_code=422
            )
        return None

    def jobs_of(s: DbSession, name: str) -> list[JobRow]:
        q = select(JobRow).where(JobRow.service == name, JobRow.state.in_(LIVE))
        return list(s.scalars(q.order_by(JobRow.id)))

    @app.post("/v1/services", status_code=201)
    def create(spec: ServiceSpec, who: Caller) -> Any:
        now = time.time()
        with store.tx() as s:
            bad = check(spec, who, s)
            if bad is not None:
                return bad
            if s.get(ServiceRow, spec.name) is not None:
                raise HTTPException(409, detail=f"service {spec.name} exists (PUT to change it)")
            row = ServiceRow(
                name=spec.name,
                owner=who.owner,
                spec=spec.model_dump(),
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            return service_view(row, book, [])

    @app.put("/v1/services/{name}")
    def replace(name: Name, spec: ServiceSpec, who: Caller) -> Any:
        if spec.name != name:
            raise HTTPException(422, detail=f"the spec's name {spec.name!r} is not {name!r}")
        with store.tx() as s:
            row = visible(s, name, who)
            bad = check(spec, who, s)
            if bad is not None:
                return bad
            row.spec = spec.model_dump()
            row.updated_at = time.time()
            return service_view(row, book, jobs_of(s, name))

    @app.get("/v1/services")
    def list_services(who: Caller) -> list[dict[str, Any]]:
        with store.tx() as s:
            q = select(ServiceRow).order_by(ServiceRow.name)
            if who.role != "admin":
                q = q.where(ServiceRow.owner == who.owner)
            return [service_view(r, book, jobs_of(s, r.name)) for r in s.scalars(q)]

    @app.get("/v1/services/{name}")
    def show(name: Name, who: Caller) -> dict[str, Any]:
        with store.tx() as s:
            row = visible(s, name, who)
            return service_view(row, book, jobs_of(s, name))

    @app.post("/v1/services/{name}/scale")
    def scale(name: Name, body: ScaleBody, who: Caller) -> dict[str, Any]:
        with store.tx() as s:
            row = visible(s, name, who)
            spec = ServiceSpec.model_validate(row.spec)
            if body.replicas is not None and body.replicas > spec.replicas.max:
                raise HTTPException(
                    422, detail=f"{body.replicas} is above the spec's max {spec.replicas.max}"
                )
            row.pinned = body.replicas
            row.updated_at = time.time()
            return service_view(row, book, jobs_of(s, name))

    @app.delete("/v1/services/{name}")
    def delete(name: Name, who: Caller) -> dict[str, Any]:
        with store.tx() as s:
            row = visible(s, name, who)
            live = len(jobs_of(s, name))
            s.delete(row)
        book.forget(name)  # its counts and metrics are no one's: a new service starts anew
        # the controller stops the replicas at its next tick (they are orphans then)
        return {"deleted": name, "replicas_stopping": live}

    @app.get("/v1/services/{name}/metrics", include_in_schema=False)
    def metrics(name: Name, who: Caller) -> Response:
        with store.tx() as s:
            visible(s, name, who)
        data = generate_latest(book.traffic_of(name).registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)
