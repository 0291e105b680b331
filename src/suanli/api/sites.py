"""Sites and nodes: providers manage their own, admins all, users read.

A site is a place with power (region, PUE, carbon, price) and, where it has
an engine, a cluster suanli runs jobs on (`suanli.service.sites`); its
engine's address is shown only to its owner and admins. Nodes are learned from
engines, or registered by providers (``executor: agent``) with a heartbeat.
"""

import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as Path_
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from suanli.api import site_address
from suanli.catalog.loader import accelerators
from suanli.jobs.spec import catalog_enum
from suanli.store.db import Store
from suanli.store.models import JobRow, NodeRow, SiteRow, TokenRow
from suanli.store.vault import Vault

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
INT32 = 2**31 - 1  # integer columns on PostgreSQL
Name = Annotated[str, Path_(pattern="^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]


class SiteBody(BaseModel):
    model_config = STRICT
    region: str = Field(min_length=1, max_length=63)
    pue: float = Field(default=1.3, ge=1.0, le=3.0)  # power usage effectiveness
    carbon_g_per_kwh: float = Field(default=0.0, ge=0, le=5000)
    power_price_per_kwh: float = Field(default=0.0, ge=0, le=100)
    #: an engine suanli runs jobs with, or none: a Ray cluster (its dashboard at
    #: ``address``) or a Kubernetes cluster with Volcano (its API server at ``address``)
    engine: Literal["ray", "kubernetes"] | None = None
    address: str | None = Field(default=None, max_length=255)
    #: the Python a job's ``python`` means on a Ray cluster's nodes (default: the service's)
    python: str | None = Field(default=None, max_length=255, pattern=r"^/[^\s;&|$`]*$")
    grace_s: float = Field(default=300.0, ge=1.0, le=7 * 86_400)
    #: warning the site gives before it takes capacity back: stops there give at most
    #: this much grace (None: the service's own)
    preemption_notice_s: float | None = Field(default=None, ge=0, le=86_400)
    #: the engine's token (a Ray cluster started with RAY_AUTH_MODE=token, a Kubernetes
    #: service account's): sealed before it is stored, never shown; or ``token_env``, the
    #: service's environment variable that holds it. Neither given: the credential stored
    #: before stays.
    token: str | None = Field(default=None, min_length=1, max_length=8192, pattern=r"^\S+$")
    #: only variables named SUANLI_SITE_TOKEN_*: any other (the vault's key, a database
    #: password) would be sent to an address the attacher chose
    token_env: str | None = Field(default=None, pattern=r"^SUANLI_SITE_TOKEN_[A-Z0-9_]{1,46}$")
    #: Kubernetes only: the namespace suanli's Volcano Jobs go to ("default")
    namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    #: Kubernetes only, and needed there: the image a job runs in unless its spec names one
    #: (one holding suanli and the workloads: the README's Dockerfile builds it)
    image: str | None = Field(default=None, max_length=255, pattern=r"^[^\s]+$")
    #: Kubernetes only: the API server's CA certificate, PEM (default: the system's CAs)
    ca_cert: str | None = Field(
        default=None, max_length=16_384, pattern=r"^\s*-----BEGIN CERTIFICATE-----"
    )

    @model_validator(mode="after")
    def _engine_needs_address(self) -> "SiteBody":
        if self.engine is None and (self.address or self.python):
            raise ValueError("address and python need an engine (engine: ray or kubernetes)")
        if self.engine is None and (self.token or self.token_env):
            raise ValueError("token and token_env are an engine's (engine: ray or kubernetes)")
        if self.token and self.token_env:
            raise ValueError("give token or token_env, not both")
        if self.engine == "ray" and not RAY_ADDRESS.fullmatch(self.address or ""):
            raise ValueError(
                "address: a Ray cluster's dashboard as HOST:PORT (or http[s]://HOST:PORT), "
                "e.g. 10.0.0.5:8265"
            )
        k8s = ("namespace", "image", "ca_cert")
        if self.engine != "kubernetes" and any(getattr(self, k) for k in k8s):
            raise ValueError("namespace, image and ca_cert are a Kubernetes site's")
        if self.engine == "kubernetes":
            if not K8S_ADDRESS.fullmatch(self.address or ""):
                raise ValueError(
                    "address: the cluster's API server as https://HOST[:PORT], "
                    "e.g. https://10.0.0.5:6443"
                )
            if self.python:
                raise ValueError("python is a Ray site's; a Kubernetes job runs in its image")
            if not self.image:
                raise ValueError(
                    "image: a Kubernetes site needs the image jobs run in unless they name "
                    "their own (one with suanli and the workloads; the README's Dockerfile)"
                )
        return self


class DeviceBody(BaseModel):
    model_config = STRICT
    index: int = Field(ge=0, le=4095)
    accelerator: str = Field(max_length=63, json_schema_extra=catalog_enum(accelerators))
    memory_mib: int | None = Field(default=None, ge=0, le=INT32)  # default: the catalog's
    healthy: bool = True

    @field_validator("accelerator")
    @classmethod
    def _known(cls, v: str) -> str:
        if v.lower() not in accelerators():
            raise ValueError(f"unknown accelerator {v!r} (see `suanli catalog list`)")
        return v.lower()


class NodeBody(BaseModel):
    model_config = STRICT
    site: str | None = Field(default=None, max_length=63)
    cpu_cores: int = Field(ge=1, le=1_000_000)
    memory_mib: int = Field(ge=1, le=INT32)
    devices: list[DeviceBody] = Field(default_factory=list, max_length=4096)
    labels: dict[Annotated[str, Field(max_length=253)], Annotated[str, Field(max_length=63)]] = (
        Field(default_factory=dict, max_length=64)
    )

    @field_validator("devices")
    @classmethod
    def _unique(cls, v: list["DeviceBody"]) -> list["DeviceBody"]:
        seen = [d.index for d in v]
        if len(set(seen)) != len(seen):
            raise ValueError("device indexes must be unique")
        return v


class NodeSiteBody(BaseModel):
    model_config = STRICT
    site: str | None = Field(max_length=63)


class HeartbeatBody(BaseModel):
    model_config = STRICT
    unhealthy: list[Annotated[int, Field(ge=0, le=4095)]] = Field(
        default_factory=list, max_length=4096
    )  # device indexes now failing


PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"
RAY_ADDRESS = re.compile(r"(https?://)?[A-Za-z0-9.\-\[\]:]+:" + PORT)
#: an API server: EKS and GKE give no port (443)
K8S_ADDRESS = re.compile(r"https?://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:" + PORT + ")?")


def site_view(r: SiteRow, full: bool = True) -> dict[str, Any]:
    """A site as the API shows it; where its engine is (``address``, ``python``) only to
    its owner and admins (``full``)."""
    out: dict[str, Any] = {
        "name": r.name,
        "owner": r.owner,
        "region": r.region,
        "pue": r.pue,
        "carbon_g_per_kwh": r.carbon_g_per_kwh,
        "power_price_per_kwh": r.power_price_per_kwh,
        "engine": r.engine,
        "grace_s": r.grace_s,
        "preemption_notice_s": r.preemption_notice_s,
        "status": r.status,
        "seen_at": r.seen_at,
        "away_since": r.away_since,
    }
    if full:
        out["address"], out["python"] = r.address, r.python
        if r.engine == "kubernetes":
            out["namespace"], out["image"] = r.namespace, r.image
            out["ca_cert"] = "given" if r.ca_cert else None
        # what kind of credential there is, never the credential
        out["credential"] = (
            "sealed" if r.credential else f"env {r.credential_env}" if r.credential_env else None
        )
    return out


#: a node not heard of for this long is reported "lost": the loop refreshes an executor's
#: nodes every few seconds, so one it stopped reporting (a Ray node that died) ages past
#: this within a minute; a provider's own agent must heartbeat at least this often
NODE_LOST_S = 60.0


Held = dict[str, dict[int, list[str]]]  # node -> device index -> the jobs holding it


def holders(s: DbSession, who: TokenRow) -> Held:
    """Who holds each device now: the running jobs' members. Another tenant's job is shown
    as ``other`` (a user sees that a device is taken, never whose job takes it)."""
    held: Held = {}
    for job in s.scalars(select(JobRow).where(JobRow.state == "running")):
        mine = who.role == "admin" or job.owner == who.owner
        for m in job.members or []:
            per = held.setdefault(str(m.get("node", "")), {})
            devices: list[int] = list(m.get("devices") or [])  # type: ignore[call-overload]
            for d in devices:
                per.setdefault(int(d), []).append(str(job.id) if mine else "other")
    return held


def node_view(r: NodeRow, held: Held | None = None) -> dict[str, Any]:
    heard_s = time.time() - r.heartbeat_at
    taken = (held or {}).get(r.name, {})
    return {
        "name": r.name,
        "owner": r.owner,
        "site": r.site,
        "executor": r.executor,
        "cpu_cores": r.cpu_cores,
        "memory_mib": r.memory_mib,
        "devices": r.devices,
        "labels": r.labels,
        "heartbeat_at": r.heartbeat_at,
        "heartbeat_age_s": round(heard_s, 1),
        "state": "lost" if heard_s > NODE_LOST_S else "ready",
        # device index -> jobs holding it (a shared device: several), for the free ones none
        "allocation": [{"index": i, "jobs": taken[i]} for i in sorted(taken)],
    }


def add_site_routes(
    app: FastAPI, store: Store, caller: Callable[..., TokenRow], vault: Vault | None = None
) -> None:
    """``vault``: what seals an engine's token (None: tokens are refused, say so)."""
    site_address.allowed_networks()  # a wrong SUANLI_SITE_NETWORKS stops the start, not a PUT
    Caller = Annotated[TokenRow, Depends(caller)]

    # --- sites and nodes: providers manage their own, admins all, users read ------------
    def may_manage(who: TokenRow, owner: str | None, what: str) -> None:
        if who.role == "user":
            raise HTTPException(403, detail=f"users cannot manage {what}; use a provider token")
        if owner is not None and who.role != "admin" and owner != who.owner:
            raise HTTPException(403, detail=f"{what} belongs to another provider")

    def check_site(s: DbSession, who: TokenRow, name: str | None) -> None:
        """A node may be placed only in an existing site its owner manages."""
        if name is None:
            return
        site = s.get(SiteRow, name)
        if site is None:
            raise HTTPException(422, detail=f"site: no site {name!r} (PUT /v1/sites first)")
        may_manage(who, site.owner, f"site {name}")

    def sees_engine(who: TokenRow, row: SiteRow) -> bool:
        return who.role == "admin" or row.owner == who.owner

    @app.get("/v1/sites")
    def list_sites(who: Caller) -> list[dict[str, Any]]:
        with store.tx() as s:
            rows = s.scalars(select(SiteRow).order_by(SiteRow.name))
            return [site_view(r, sees_engine(who, r)) for r in rows]

    def site_or_404(s: DbSession, name: str) -> SiteRow:
        row = s.get(SiteRow, name)
        if row is None:
            raise HTTPException(404, detail=f"no site {name}")
        return row

    @app.get("/v1/sites/{name}")
    def get_site(name: Name, who: Caller) -> dict[str, Any]:
        with store.tx() as s:
            row = site_or_404(s, name)
            out = site_view(row, sees_engine(who, row))
            nodes = s.scalars(select(NodeRow).where(NodeRow.site == name).order_by(NodeRow.name))
            out["nodes"] = [n.name for n in nodes]
            return out

    @app.put("/v1/sites/{name}")
    def put_site(name: Name, body: SiteBody, who: Caller) -> dict[str, Any]:
        with store.tx() as s:
            row = s.get(SiteRow, name)
            may_manage(who, row.owner if row else None, f"site {name}")
            # the service will call the address: no SSRF (checked only for those who may
            # manage the site, so the resolver's answers reach no one else)
            if body.address and who.role != "admin":
                try:
                    site_address.check(body.address)
                except site_address.AddressRefused as err:
                    raise HTTPException(422, detail=str(err)) from None
                except ValueError as err:  # urlsplit's: "Invalid IPv6 URL" and the like
                    raise HTTPException(422, detail=f"address: {err}") from None
            if body.token_env is not None and who.role != "admin":
                # the service's environment is its operator's: a provider naming another
                # site's variable would have that site's token sent to its own address
                raise HTTPException(
                    403,
                    detail="token_env names the service's own environment, which only an "
                    "admin may; give the token itself (it is sealed): --token-file",
                )
            row = row or SiteRow(name=name, owner=who.owner)
            moved = row.address is not None and body.address != row.address
            # a CA stays with its address unless another is given (`site set` sends none)
            keep_ca = body.ca_cert is None and not moved and body.engine == row.engine
            for k, v in body.model_dump(exclude={"token", "token_env"}).items():
                if not (k == "ca_cert" and keep_ca):
                    setattr(row, k, v)
            if moved and body.token is None and body.token_env is None:
                # a credential goes only where it was given for: a new address, a new token
                row.credential = row.credential_env = None
            if body.token is not None:
                if vault is None:
                    raise HTTPException(
                        422, detail="token: this service keeps no secrets (no vault key)"
                    )
                row.credential, row.credential_env = vault.seal(body.token), None
            elif body.token_env is not None:
                row.credential, row.credential_env = None, body.token_env
            if body.engine is None:
                row.credential = row.credential_env = None
                row.status = row.seen_at = row.away_since = None
            elif row.status is None:
                row.status = "attaching"  # the sites controller connects within a tick
            row.updated_at = time.time()
            s.add(row)
            return site_view(row)

    @app.delete("/v1/sites/{name}")
    def delete_site(name: Name, who: Caller) -> dict[str, str]:
        with store.tx() as s:
            row = site_or_404(s, name)
            may_manage(who, row.owner, f"site {name}")
            nodes = list(s.scalars(select(NodeRow).where(NodeRow.site == name)))
            if row.engine is None and nodes:
                raise HTTPException(409, detail=f"site {name} still has nodes; delete them first")
            if row.engine is not None:  # its engine's nodes are learned: they go with it
                held = {n.name for n in nodes}
                running = [
                    j.id
                    for j in s.scalars(select(JobRow).where(JobRow.state == "running"))
                    if any(m.get("site") == name or m.get("node") in held for m in j.members or [])
                ]
                if running:
                    raise HTTPException(
                        409,
                        detail=f"site {name} runs jobs {running[:10]}; cancel them or wait "
                        "for them to end, then detach it",
                    )
                for n in nodes:
                    s.delete(n)
            s.delete(row)
        return {"deleted": name}

    @app.get("/v1/nodes")
    def list_nodes(who: Caller) -> list[dict[str, Any]]:
        with store.tx() as s:
            held = holders(s, who)
            rows = s.scalars(select(NodeRow).order_by(NodeRow.name))
            return [node_view(r, held) for r in rows]

    @app.put("/v1/nodes/{name}")
    def put_node(name: Name, body: NodeBody, who: Caller) -> dict[str, Any]:
        catalog = accelerators()
        with store.tx() as s:
            row = s.get(NodeRow, name)
            may_manage(who, row.owner if row else None, f"node {name}")
            if row is not None and row.executor != "agent":
                raise HTTPException(
                    409,
                    detail=f"node {name} is reported by the {row.executor} executor; "
                    f"only its site can be set (PUT /v1/nodes/{name}/site)",
                )
            check_site(s, who, body.site)
            row = row or NodeRow(name=name, owner=who.owner, executor="agent")
            row.site, row.cpu_cores, row.memory_mib = body.site, body.cpu_cores, body.memory_mib
            row.devices = [
                {
                    "index": d.index,
                    "accelerator": d.accelerator,
                    "memory_mib": d.memory_mib
                    if d.memory_mib is not None
                    else catalog[d.accelerator].memory_mib,
                    "healthy": d.healthy,
                }
                for d in body.devices
            ]
            row.labels, row.heartbeat_at = body.labels, time.time()
            s.add(row)
            return node_view(row)

    def managed_node(s: DbSession, who: TokenRow, name: str) -> NodeRow:
        row = s.get(NodeRow, name)
        if row is None:
            raise HTTPException(404, detail=f"no node {name}")
        may_manage(who, row.owner, f"node {name}")
        return row

    @app.put("/v1/nodes/{name}/site")
    def put_node_site(name: Name, body: NodeSiteBody, who: Caller) -> dict[str, Any]:
        """Place a node in a site (its region, power price, carbon) — executor nodes too."""
        with store.tx() as s:
            row = managed_node(s, who, name)
            check_site(s, who, body.site)
            row.site = body.site
            return node_view(row)

    @app.post("/v1/nodes/{name}/heartbeat")
    def heartbeat(name: Name, body: HeartbeatBody, who: Caller) -> dict[str, Any]:
        with store.tx() as s:
            row = managed_node(s, who, name)
            known = {int(str(d["index"])) for d in row.devices}
            if not set(body.unhealthy) <= known:
                raise HTTPException(
                    422, detail=f"unhealthy: node {name} has devices {sorted(known)}"
                )
            row.devices = [{**d, "healthy": d["index"] not in body.unhealthy} for d in row.devices]
            row.heartbeat_at = time.time()
            return node_view(row)

    @app.delete("/v1/nodes/{name}")
    def delete_node(name: Name, who: Caller) -> dict[str, str]:
        with store.tx() as s:
            row = managed_node(s, who, name)
            s.delete(row)
        return {"deleted": name}
