"""The services controller: each service's replicas are jobs of the one scheduler; this
keeps their number where the autoscaler (or a person's ``suanli scale``) wants it.

At each tick, for every service: the replica jobs that live are listed; the running
ones go to the replica book (the prober checks they answer, the router sends them
requests); the load is observed (router buffer, engines' queues and KV use, arrival
rate); at the policy's period the scaler decides; missing replicas are submitted as
jobs (their queue and priority are the service's, so a burst may preempt best-effort
training, with the jobs controller's grace) and surplus ones cancelled, queued ones
first, then the least loaded. A replica that dies is simply missing at the next tick
and is replaced. Replicas' device time is charged to the service as it runs.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from suanli.autoscale.hpa import HpaSpec
from suanli.autoscale.kinds import chip_fills, chip_optimizer, token_budget
from suanli.autoscale.kpa import KpaSpec
from suanli.autoscale.mix import SPOT_SUFFIX, NoMixError
from suanli.autoscale.predictive import PredictiveSpec
from suanli.autoscale.scalers import (
    Hpa,
    Kpa,
    Optimizer,
    Predictive,
    Scaler,
    Static,
    Window,
    measures_rate,
)
from suanli.autoscale.service_spec import ServiceSpec, replica_command
from suanli.autoscale.signals import Observation, Targets
from suanli.errors import SuanliError
from suanli.jobs.spec import parse_job_spec
from suanli.run.executor import ADDRESS_LABEL
from suanli.run.local import free_port
from suanli.service.groups import Group, mix_groups, spot_groups, with_spot
from suanli.service.kept import (
    HISTORY_POINTS,
    HISTORY_S,
    carry_traffic,
    forecasts,
    past_rates,
    recent_recommendations,
    stored_recommendations,
)
from suanli.service.mix import (
    cheapest,
    chip_of,
    chip_price,
    on_chips,
    rescale,
    shares_by_bucket,
    strongest,
    within_budget,
)
from suanli.service.replicas import BUCKETS, ReplicaBook, ServiceTraffic, record
from suanli.service.spot import (
    SpotCapacity,
    is_spot,
    lease_price_per_hour,
    leaving,
    spot_capacity,
)
from suanli.store.db import Store
from suanli.store.models import JobRow, NodeRow, ServiceRow, member_chips
from suanli.workloads.replica_auth import REPLICA_TOKEN_ENV

log = logging.getLogger("suanli.services")
LIVE = ("queued", "running", "preempted")
ADDRESS_ENV = "SUANLI_REPLICA_ADDRESS"  # where a replica listens (host:port)


def make_scaler(spec: ServiceSpec) -> Scaler:
    a, b = spec.autoscaler, spec.replicas
    targets = Targets(concurrency=a.target_concurrency)
    period = a.period_s or (2.0 if a.policy == "kpa" else 15.0)
    hpa_spec = HpaSpec(targets, b.min, b.max, down_window_s=a.down_window_s, period_s=period)
    scaler: Scaler
    if a.policy == "static":
        scaler = Static({spec.name: b.min})
    elif a.policy == "hpa":
        scaler = Hpa(spec.name, hpa_spec)
    elif a.policy == "optimizer":
        scaler = chip_optimizer(
            spec.model,
            spec.chips(),
            tp=spec.tp,
            ttft_slo_s=spec.slo.ttft_s,
            tpot_slo_s=spec.slo.tpot_s,
            utilization=a.utilization,
            max_replicas=spec.replicas.max,
            max_miss_share=1.0 - spec.slo.attainment,
            engine=spec.engine,
        )
    elif a.policy == "kpa":
        kpa = KpaSpec(
            a.target_concurrency,
            b.min,
            b.max,
            stable_window_s=a.stable_window_s,
            scale_to_zero_grace_s=a.scale_to_zero_grace_s,
        )
        scaler = Kpa(spec.name, kpa)
    else:
        assert a.capacity_rps is not None  # the spec's validator says so
        scaler = Predictive(
            spec.name, PredictiveSpec(a.capacity_rps, a.cold_start_s, period, hpa_spec)
        )
    if a.period_s is not None and not isinstance(scaler, Static):
        scaler.period_s = a.period_s
    return scaler


def replica_env_of(job: JobRow, name: str) -> str:
    """A variable the controller gave the replica: ``SUANLI_REPLICA_ADDRESS``, or its
    token (``REPLICA_TOKEN_ENV``; empty for a replica from before tokens)."""
    env = job.spec.get("env")
    return str(env.get(name, "")) if isinstance(env, dict) else ""


def replica_address(s: Session, job: JobRow, engine: str) -> str:
    """Where the router reaches a running replica: on its node's address (a Ray site's
    node has its own), at the port it was given. An SGLang replica started before SGLang
    replicas had keys listens on the loopback address it was given."""
    given = replica_env_of(job, ADDRESS_ENV)
    members = job.members or []
    if not members or ":" not in given:
        return given
    if engine == "sglang" and not replica_env_of(job, REPLICA_TOKEN_ENV):
        return given  # started on loopback, before SGLang replicas had keys
    node = s.get(NodeRow, str(members[0].get("node")))
    host = (node.labels or {}).get(ADDRESS_LABEL) if node is not None else None
    if not host:
        return given  # a node recorded before addresses were
    from suanli.api.site_address import refused  # here: the API imports this module

    if refused(host):  # a site's engine said its node is the metadata service
        log.warning("node %s reports address %s: not dialled", node.name, host)  # type: ignore[union-attr]
        return given
    port = given.rsplit(":", 1)[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def replica_env(spec: ServiceSpec, address: str) -> dict[str, str]:
    """Where the replica listens, and a token of its own it requires of the router: a
    replica listens on this machine, where another tenant's job could otherwise reach it
    and use the service for free. serve_lm and SGLang's wrapper
    (`suanli.workloads.sglang_keyed`) read ``SUANLI_REPLICA_TOKEN``, vLLM
    ``VLLM_API_KEY``; none is on the command line, which any local user can read."""
    token = secrets.token_urlsafe(24)
    env = {ADDRESS_ENV: address}
    if spec.engine in ("serve_lm", "sglang"):
        env[REPLICA_TOKEN_ENV] = token
    elif spec.engine == "vllm":
        env[REPLICA_TOKEN_ENV] = env["VLLM_API_KEY"] = token
    return env


def price_per_replica_hour(spec: ServiceSpec) -> float:
    """What a replica may cost per hour: its chip's price, or with several allowed chips
    the dearest one's (so that a budget is never exceeded whichever the scheduler picks)."""
    r = spec.resources
    chips: list[str | None] = [*r.accelerators] if r.accelerators else [r.accelerator]
    return max(chip_price(c, r.devices) for c in chips)


def replica_price(s: Session, spec: ServiceSpec, job: JobRow) -> float:
    """What a running replica costs per hour: a spot one its lease's price; otherwise the
    devices it holds, each at its own chip's price (as `api.app.job_usage` counts a job),
    else the spec's bound."""
    if is_spot(job, spec.spot):
        paid = lease_price_per_hour(s, job, spec.resources)
        if paid is not None:
            return paid
    chips = member_chips(s, job.members)
    if chips and all(c is not None for c in chips):
        return sum(chip_price(c, 1) for c in chips)
    return price_per_replica_hour(spec)


@dataclass
class _State:
    spec: dict[str, Any]
    scaler: Scaler
    window: Window
    created: float  # the row's created_at: a service deleted and made anew is another
    next_decision: float = 0.0
    last_tick: float | None = None
    period_arrivals_from: float = 0.0
    mix_want: dict[str, int] | None = None  # a chip-mix service: the optimizer's last word
    note: str = ""  # what the status adds (a load beyond the bounds)
    spot_note: str = ""  # a chip mix's: what is wrong with its spot order, each tick
    #: a chip-mix service: the sizes its last decision planned for, as the store keeps
    #: them (`SizeHistory.to_json`), written at each decision, not each tick
    sizes_kept: dict[str, Any] | None = None


def mix_batches(spec: ServiceSpec) -> Mapping[str, Sequence[int]] | None:
    """A chip-mix service's SLO batch per chip and size bucket: what its router fills a
    replica by, and spills over from a full chip (`suanli.autoscale.routing`)."""
    if spec.autoscaler.policy != "optimizer":
        return None
    chips = tuple(spec.chips())
    return chip_fills(
        spec.model, chips, spec.tp, spec.slo.ttft_s, spec.slo.tpot_s, spec.engine
    ).batches


class ServicesController:
    name = "services"

    def __init__(self, store: Store, book: ReplicaBook, host: str = "127.0.0.1") -> None:
        self.store, self.book, self.host = store, book, host
        self._state: dict[str, _State] = {}

    def reconcile(self, now: float) -> None:
        with self.store.tx() as s:
            rows = {r.name: r for r in s.scalars(select(ServiceRow))}
            for gone in set(self._state) - set(rows):
                self._state.pop(gone)
                self.book.forget(gone)
            # replicas of services deleted: stop them (the API deletes the row first)
            orphans = s.scalars(
                select(JobRow).where(
                    JobRow.service.is_not(None),
                    JobRow.service.not_in(list(rows) or [""]),
                    JobRow.state.in_(LIVE),
                )
            )
            for job in orphans:
                self._cancel(s, job, "its service was deleted", now)
        # each service in its own transaction: one's failure (a bug, a catalog change) is
        # its own status, and the others' replicas are still started, stopped and charged
        for name in sorted(rows):
            try:
                with self.store.tx() as s:
                    row = s.get(ServiceRow, name)
                    if row is not None:
                        self._reconcile_one(s, row, now)
            except Exception as exc:
                log.exception("service %s: reconcile failed", name)
                with self.store.tx() as s:
                    row = s.get(ServiceRow, name)
                    if row is not None:
                        row.status = f"controller error: {exc}"[:255]

    def _reconcile_one(self, s: Session, row: ServiceRow, now: float) -> None:
        spec = ServiceSpec.model_validate(row.spec)
        st = self._state.get(row.name)
        if st is not None and st.created != row.created_at:  # deleted, made anew: not it
            self._state.pop(row.name)
            self.book.forget(row.name)
            st = None
        if st is None or st.spec != row.spec:  # new, or its spec changed: a fresh scaler
            try:
                scaler = make_scaler(spec)
            except (SuanliError, ValueError) as exc:  # the catalog changed under it
                row.status = f"cannot scale: {exc}"[:255]
                return
            past = past_rates(row, now, scaler.period_s) if forecasts(scaler) else []
            if isinstance(scaler, Hpa | Predictive):
                # the recommendations within its scale-down window: those of the scaler
                # it replaces (a changed spec), or those the store kept (a restart), so
                # it holds what the one before would have, no longer
                before = st.scaler if st is not None else None
                kept = before.history if isinstance(before, Hpa | Predictive) else None
                scaler.history = recent_recommendations(
                    kept if kept is not None else stored_recommendations(row.observed),
                    now,
                    scaler.spec.down_window_s,
                )
            carry_traffic(self.book.traffic_of(row.name), row.observed, now)
            st = _State(row.spec, scaler, Window(Observation(now, 0), rates=past), row.created_at)
            st.period_arrivals_from = now
            self._state[row.name] = st
        jobs = list(
            s.scalars(select(JobRow).where(JobRow.service == row.name, JobRow.state.in_(LIVE)))
        )
        running = {j.id: replica_address(s, j, spec.engine) for j in jobs if j.state == "running"}
        self.book.sync(
            row.name,
            running,
            {j.id: chip_of(j) for j in jobs},
            {j.id: replica_env_of(j, REPLICA_TOKEN_ENV) for j in jobs},
            proves=spec.engine == "serve_lm",
            batches=mix_batches(spec),
        )
        replicas = self.book.of(row.name)
        traffic = self.book.traffic_of(row.name)
        ready = [r for r in replicas if r.ready]
        kv = [float(r.stats.get("kv_cache_utilization", 0)) for r in ready]
        kv_use = sum(kv) / len(kv) if kv else 0.0
        obs = Observation(
            t_s=now,
            ready=len(ready),
            starting=len(jobs) - len(ready),
            waiting=traffic.buffered + sum(float(r.stats.get("queue_length", 0)) for r in ready),
            running=sum(max(r.inflight, int(r.stats.get("in_flight", 0))) for r in ready),
            kv_use=kv_use,
            tokens_per_s=sum(float(r.stats.get("decode_tokens_per_s", 0)) for r in ready),
            arrivals_per_s=traffic.rate(now, 10.0),
        )
        st.window.obs = obs
        st.window.concurrency.append((now, obs.concurrency))
        st.window.concurrency = st.window.concurrency[-256:]
        cap = (
            spot_capacity(s, spec.spot, spec.resources, row.owner, row.name)
            if spec.spot is not None
            else None
        )
        if isinstance(st.scaler, Optimizer):
            want = self._decide_mix(row, spec, st, st.scaler, jobs, traffic, now, cap)
            desired = sum(want.values())
            live = [j for j in jobs if not leaving(j)]
            groups = mix_groups(spec, live, on_chips(want))
            if cap is not None:
                st.spot_note = cap.note({k.name for k in st.scaler.kinds})
                groups = with_spot(groups, cap, want)
            self._converge(s, row, spec, groups, now)
        else:
            traffic.shares = None  # routed by load alone (a spec that left the optimizer)
            desired = row.desired
            if row.pinned is not None:
                desired = row.pinned
            elif now >= st.next_decision:
                self._period(row, st, traffic, now)
                desired = st.scaler.decide(st.window, {row.name: len(jobs)}).get(row.name, 0)
            desired = max(spec.replicas.min, min(spec.replicas.max, desired))
            if obs.ready == 0 and traffic.buffered > 0:
                desired = max(desired, 1)  # a request waits at the router: wake it now
            price = price_per_replica_hour(spec)
            if spec.budget_usd_per_hour is not None and price > 0:
                desired = min(desired, int(spec.budget_usd_per_hour // price))
            live = [j for j in jobs if not leaving(j)]
            if cap is None:
                groups = [Group(live, desired, f"scaled down to {desired}", price)]
            else:
                st.note = cap.note()
                groups = spot_groups(cap, live, desired, price)
            self._converge(s, row, spec, groups, now)
        # charge the running replicas' time since the last tick
        if st.last_tick is not None:
            dt = now - st.last_tick
            live = [j for j in jobs if j.state == "running"]
            row.device_s += len(live) * dt * max(1, spec.resources.devices)
            row.cost_usd += sum(replica_price(s, spec, j) for j in live) * dt / 3600
        st.last_tick = now
        row.desired = desired
        row.status = (
            f"{len(ready)}/{desired} ready"
            + (f", {traffic.buffered} waiting at the router" if traffic.buffered else "")
            + "".join(f"; {n}" for n in (st.note, st.spot_note) if n)
        )
        sizes_before = (row.observed or {}).get("sizes")
        row.observed = {
            "at": now,
            "ready": obs.ready,
            "starting": obs.starting,
            "waiting": obs.waiting,
            "running": obs.running,
            "kv_use": obs.kv_use,
            "tokens_per_s": obs.tokens_per_s,
            "arrivals_per_s": obs.arrivals_per_s,
            "slo_attainment": traffic.attainment,
            "requests_judged": traffic.judged,
            "requests_met": traffic.met,
        }
        if isinstance(st.scaler, Hpa | Predictive):  # what a restarted controller holds
            row.observed["recommendations"] = [
                [t, r]
                for t, r in recent_recommendations(
                    st.scaler.history, now, st.scaler.spec.down_window_s
                )
            ]
        if isinstance(st.scaler, Optimizer):  # the sizes its mix is planned for
            # (those the store had, until this controller's first decision: a pin holds
            # the decisions, and a restart while pinned must not lose them)
            sizes = st.sizes_kept if st.sizes_kept is not None else sizes_before
            if sizes is not None:
                row.observed["sizes"] = sizes
        row.updated_at = now
        record(traffic, now, obs.ready, desired, obs.arrivals_per_s, obs.running, obs.waiting)
        traffic.queue.set(obs.waiting)
        traffic.in_flight.set(obs.running)
        traffic.kv_use.set(obs.kv_use)
        traffic.tokens.set(obs.tokens_per_s)
        traffic.replicas.labels(state="ready").set(obs.ready)
        traffic.replicas.labels(state="starting").set(obs.starting)

    def _period(self, row: ServiceRow, st: _State, traffic: ServiceTraffic, now: float) -> None:
        """A decision is due: the arrival rate of the period that ends (kept in the
        store too where the policy forecasts, for a restarted controller), and the next.
        The first decision of a new controller comes at once, after no period at all, and
        measures no rate (`measures_rate`)."""
        period = st.scaler.period_s
        span = now - st.period_arrivals_from
        if measures_rate(span, period):
            rate = traffic.rate(now, min(span, 60.0))
            st.window.rates.append(rate)
            st.window.rates = st.window.rates[-HISTORY_POINTS:]
            if forecasts(st.scaler):
                kept = [p for p in row.rates or [] if now - p[0] < HISTORY_S]
                row.rates = [*kept[-(HISTORY_POINTS - 1) :], [now, rate, period]]
        st.period_arrivals_from = now
        st.next_decision = now + (period if math.isfinite(period) else 1e12)

    def _decide_mix(
        self,
        row: ServiceRow,
        spec: ServiceSpec,
        st: _State,
        opt: Optimizer,
        jobs: list[JobRow],
        traffic: ServiceTraffic,
        now: float,
        cap: SpotCapacity | None,
    ) -> dict[str, int]:
        """Replicas per kind: the optimizer's mix at its period, for the sizes the router
        saw; then a pin, the spec's min/max and the budget, in the mix's proportions.
        With a spot order, the order's chip on its leases is a kind of its own for the
        ILP (`SpotCapacity.twin`, ``CHIP:spot``), as the simulator's spot twins are."""
        current = Counter(chip_of(j) for j in jobs if not leaving(j))
        if st.mix_want is None:  # a new controller (or spec): what runs is where it starts
            st.mix_want = {c: current.get(c, 0) for c in spec.chips()}
        if row.pinned is None and now >= st.next_decision:
            self._period(row, st, traffic, now)
            st.window.sizes = traffic.sizes()
            st.sizes_kept = st.window.sizes.to_json(now)
            base = opt.kinds
            running = dict(current)
            twin = cap.twin(base) if cap is not None else None
            if twin is not None:  # the replicas on the leases are the twin's
                chip = twin.name.removesuffix(SPOT_SUFFIX)
                on_spot = sum(
                    not leaving(j) and chip_of(j) == chip and is_spot(j, spec.spot) for j in jobs
                )
                running[chip] = running.get(chip, 0) - on_spot
                running[twin.name] = on_spot
                opt.kinds = [*base, twin]
            try:
                st.mix_want, st.note = opt.decide(st.window, running), ""
            except NoMixError:  # more load than max replicas serve: as many as allowed
                st.mix_want = {strongest(base): spec.replicas.max}
                st.note = "the load exceeds what replicas.max serve within the SLO"
            finally:
                opt.kinds = base
            if opt.mix is not None:
                traffic.shares = shares_by_bucket(opt.mix, BUCKETS)
        want = dict(st.mix_want)
        total = row.pinned if row.pinned is not None else sum(want.values())
        total = max(spec.replicas.min, min(spec.replicas.max, total))
        if st.window.obs.ready == 0 and traffic.buffered > 0:
            total = max(total, 1)  # a request waits at the router: wake it now
        want = rescale(want, total, cheapest(opt.kinds))
        if spec.budget_usd_per_hour is not None:
            spot_usd = cap.usd_per_replica if cap is not None else None
            price = {
                c: (
                    spot_usd
                    if c.endswith(SPOT_SUFFIX) and spot_usd is not None
                    else chip_price(c.removesuffix(SPOT_SUFFIX), spec.resources.devices)
                )
                for c in want
            }
            want = within_budget(want, price, spec.budget_usd_per_hour)
        return want

    def _converge(
        self, s: Session, row: ServiceRow, spec: ServiceSpec, groups: list[Group], now: float
    ) -> None:
        """Each group's replicas toward its ``want``, making before breaking: a surplus
        replica still queued or starting goes at once, a ready one only while the service
        keeps as many ready replicas as it wants in all (a mix that swaps chips, an
        on-demand replica standing in until spot is ready, serves meanwhile), and never
        past the budget."""
        replicas = self.book.of(row.name)
        ready = {r.job_id for r in replicas if r.ready}
        load = {r.job_id: r.inflight for r in replicas}
        have = sum(j.id in ready for g in groups for j in g.jobs)
        drain = max(0, have - sum(g.want for g in groups))
        surplus: list[tuple[JobRow, Group]] = []
        for g in groups:
            for _ in range(g.want - len(g.jobs)):
                self._start(s, row, spec, g.order, g.chip)
            by = sorted(g.jobs, key=lambda j: (j.id in ready, load.get(j.id, 0), -j.id))
            for job in by[: max(0, len(g.jobs) - g.want)]:
                if job.id in ready:
                    surplus.append((job, g))
                else:
                    self._cancel(s, job, g.why, now)
        surplus.sort(key=lambda p: load.get(p[0].id, 0))
        if spec.budget_usd_per_hour is not None:  # kept replicas never break the budget
            kept = sum(g.usd_per_hour * g.want for g in groups)
            kept += sum(g.usd_per_hour for _, g in surplus[drain:])
            while drain < len(surplus) and kept > spec.budget_usd_per_hour + 1e-9:
                kept -= surplus[drain][1].usd_per_hour  # one pass, not a sum per step
                drain += 1
        for job, g in surplus[:drain]:
            self._cancel(s, job, g.why, now)

    def _start(
        self,
        s: Session,
        row: ServiceRow,
        spec: ServiceSpec,
        order: int | None,
        chip: str | None = None,
    ) -> None:
        port = free_port()
        address = f"{self.host}:{port}"
        resources = spec.resources.model_dump(exclude_none=True)
        if chip is not None:  # a chip-mix replica: on this chip only
            resources.pop("accelerators", None)
            resources["accelerator"] = chip
        # a vLLM replica on a known chip runs the token budget its SLO sizes, where the
        # spec gives an SLO or plans on it (not vLLM's own default under a default SLO)
        on = resources.get("accelerator")
        sized = "slo" in spec.model_fields_set or spec.autoscaler.policy == "optimizer"
        budget = (
            token_budget(spec.model, on, spec.tp, spec.slo.tpot_s)
            if spec.engine == "vllm" and sized and on  # None on a chip it does not know
            else None
        )
        job = parse_job_spec(
            {
                "name": f"{row.name}-replica"[:63],
                "kind": "serve",
                "command": replica_command(spec, port, budget),
                "resources": resources,
                "queue": spec.queue,
                "priority": spec.priority,
                "env": replica_env(spec, address),
                **({"order": order} if order is not None else {}),
            }
        )
        new = self.store.add_job(s, job.model_dump(), row.owner)
        new.service = row.name
        where = f"spot, on the leases of market order {order}" if order else "on demand"
        where += f", on {chip}" if chip else ""
        # serve_lm listens on whatever node it lands on (`replica_address`), at this port
        self.store.event(s, new.id, "replica", f"of service {row.name}, port {port} ({where})")
        log.info(
            "service %s: replica job %d, port %d (%s)",
            row.name,
            new.id,
            port,
            where,
            extra={"job": new.id},
        )

    def _cancel(self, s: Session, job: JobRow, why: str, now: float) -> None:
        sync = {"synchronize_session": False}
        ended = s.execute(
            update(JobRow)
            .where(JobRow.id == job.id, JobRow.state.in_(("queued", "preempted")))
            .values(state="cancelled", updated_at=now),
            execution_options=sync,
        )
        if not ended.rowcount:  # type: ignore[attr-defined]
            s.execute(
                update(JobRow)
                .where(JobRow.id == job.id, JobRow.state == "running")
                .values(cancel_requested=True, updated_at=now),
                execution_options=sync,
            )
        self.store.event(s, job.id, "cancel-requested", why)
