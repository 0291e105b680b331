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
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from suanli.autoscale.hpa import HpaSpec
from suanli.autoscale.kinds import chip_fills, chip_optimizer, token_budget
from suanli.autoscale.kpa import KpaSpec
from suanli.autoscale.mix import SPOT_SUFFIX, NoMixError, ReplicaKind
from suanli.autoscale.predictive import PredictiveSpec
from suanli.autoscale.scalers import Hpa, Kpa, Optimizer, Predictive, Scaler, Static, Window
from suanli.autoscale.service_spec import ServiceSpec, replica_command
from suanli.autoscale.signals import Observation, Targets
from suanli.catalog.loader import accelerators
from suanli.errors import SuanliError
from suanli.jobs.spec import parse_job_spec
from suanli.run.executor import ADDRESS_LABEL
from suanli.run.local import free_port
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
    on_chips,
    rescale,
    shares_by_bucket,
    strongest,
    within_budget,
)
from suanli.service.replicas import BUCKETS, ReplicaBook, ServiceTraffic, record
from suanli.service.spot import (
    is_spot,
    lease_price_per_hour,
    leaving,
    live_leases,
    order_jobs_elsewhere,
    order_problem,
    split,
    spot_price_per_replica,
    spot_slots,
)
from suanli.store.db import Store
from suanli.store.models import JobRow, NodeRow, OrderRow, ServiceRow, member_chips
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


def chip_price(chip: str | None, devices: int) -> float:
    """The catalog price of ``devices`` of a chip per hour (0: no price, or a CPU)."""
    acc = accelerators().get(chip or "")
    price = acc.price_usd_per_hour if acc is not None else None
    return (price or 0.0) * max(1, devices)


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


@dataclass(frozen=True)
class Group:
    """Replicas of one kind (a chip, spot or on demand) and how many of it are wanted."""

    jobs: list[JobRow]
    want: int
    why: str  # said on a replica stopped as surplus
    usd_per_hour: float  # one replica's
    order: int | None = None  # on this market order's leases
    chip: str | None = None  # on this chip only


def mix_groups(spec: ServiceSpec, live: list[JobRow], want: dict[str, int]) -> list[Group]:
    """A chip-mix service's replicas, chip by chip (a chip no longer wanted included)."""
    return [
        Group(
            [j for j in live if chip_of(j) == chip],
            want.get(chip, 0),
            f"the mix wants {want.get(chip, 0)} on {chip}",
            chip_price(chip, spec.resources.devices),
            chip=chip,
        )
        for chip in sorted(set(want) | {chip_of(j) for j in live})
    ]


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
    return chip_fills(spec.model, chips, spec.tp, spec.slo.ttft_s, spec.slo.tpot_s).batches


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
        if isinstance(st.scaler, Optimizer):
            want = self._decide_mix(s, row, spec, st, st.scaler, jobs, traffic, now)
            desired = sum(want.values())
            live = [j for j in jobs if not leaving(j)]
            self._converge(s, row, spec, self._mix_groups(s, row, spec, live, want), now)
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
            self._converge(s, row, spec, self._groups(s, row, spec, jobs, desired), now)
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
        The first decision of a new controller comes at once, after no period at all:
        it measures no rate (one request in its last millisecond would read as 1,000/s,
        and stay in the forecasts' past for an hour)."""
        period = st.scaler.period_s
        span = now - st.period_arrivals_from
        if span >= min(period, 60.0) / 2:
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
        s: Session,
        row: ServiceRow,
        spec: ServiceSpec,
        st: _State,
        opt: Optimizer,
        jobs: list[JobRow],
        traffic: ServiceTraffic,
        now: float,
    ) -> dict[str, int]:
        """Replicas per kind: the optimizer's mix at its period, for the sizes the router
        saw; then a pin, the spec's min/max and the budget, in the mix's proportions.
        With a spot order, the order's chip on its leases is a kind of its own for the
        ILP (`_spot_twin`, ``CHIP:spot``), as the simulator's spot twins are."""
        current = Counter(chip_of(j) for j in jobs if not leaving(j))
        if st.mix_want is None:  # a new controller (or spec): what runs is where it starts
            st.mix_want = {c: current.get(c, 0) for c in spec.chips()}
        if row.pinned is None and now >= st.next_decision:
            self._period(row, st, traffic, now)
            st.window.sizes = traffic.sizes()
            st.sizes_kept = st.window.sizes.to_json(now)
            base = opt.kinds
            running = dict(current)
            twin = self._spot_twin(s, row, spec, base)
            if twin is not None:
                chip = twin.name.removesuffix(SPOT_SUFFIX)
                on_spot = sum(
                    1
                    for j in jobs
                    if not leaving(j) and chip_of(j) == chip and is_spot(j, spec.spot)
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
            spot_usd = self._spot_usd(s, spec)
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

    def _spot_usd(self, s: Session, spec: ServiceSpec) -> float | None:
        """What a replica on the spot order's live leases costs per hour (None: none)."""
        if spec.spot is None:
            return None
        return spot_price_per_replica(live_leases(s, spec.spot.order), spec.resources)

    def _spot_twin(
        self, s: Session, row: ServiceRow, spec: ServiceSpec, kinds: Sequence[ReplicaKind]
    ) -> ReplicaKind | None:
        """The spot order's chip on its live leases, as a kind for the ILP: the chip's
        capacity, the dearest lease's price, and as many replicas as the leases hold
        (None: no order, no lease, or a chip the mix does not run)."""
        if spec.spot is None or order_problem(s, spec.spot, spec.resources, row.owner):
            return None
        order = s.get(OrderRow, spec.spot.order)
        kind = next((k for k in kinds if order is not None and k.name == order.accelerator), None)
        leases = live_leases(s, spec.spot.order)
        price = spot_price_per_replica(leases, spec.resources)
        if kind is None or price is None:
            return None
        others = order_jobs_elsewhere(s, spec.spot.order, row.name)
        slots = spot_slots(leases, spec.resources, others)
        if slots <= 0:
            return None
        return replace(
            kind, name=kind.name + SPOT_SUFFIX, usd_per_hour=price, available=slots, spot=True
        )

    def _groups(
        self, s: Session, row: ServiceRow, spec: ServiceSpec, jobs: list[JobRow], desired: int
    ) -> list[Group]:
        """One kind of replica, or with ``spot`` two: on the order's leases where they
        hold them, on demand otherwise (`suanli.service.spot`)."""
        live = [j for j in jobs if not leaving(j)]
        price = price_per_replica_hour(spec)
        if spec.spot is None:
            return [Group(live, desired, f"scaled down to {desired}", price)]
        self._state[row.name].note = self._spot_note(s, row, spec)
        return self._spot_split(s, row, spec, live, desired, price)

    def _spot_note(self, s: Session, row: ServiceRow, spec: ServiceSpec) -> str:
        """An order cancelled or lapsed since the spec was accepted leases nothing again:
        say so where the owner looks (`suanli service NAME`), not only on each replica."""
        assert spec.spot is not None
        problem = order_problem(s, spec.spot, spec.resources, row.owner)
        if not problem:
            return ""
        return problem + (
            "; its spot replicas run on demand (fallback)"
            if spec.spot.fallback
            else "; its spot replicas cannot start (no fallback)"
        )

    def _spot_split(
        self,
        s: Session,
        row: ServiceRow,
        spec: ServiceSpec,
        live: list[JobRow],
        desired: int,
        price: float,
        chip: str | None = None,
        spot_cap: int | None = None,
        spot_price: float | None = None,
    ) -> list[Group]:
        """``desired`` replicas (of ``chip``, in a mix) on the spot order's leases where
        they hold them, at most ``spot_cap`` (what the ILP chose), the rest on demand
        (SkyServe's fallback)."""
        assert spec.spot is not None
        others = order_jobs_elsewhere(s, spec.spot.order, row.name)
        slots = spot_slots(live_leases(s, spec.spot.order), spec.resources, others)
        want = split(desired, spec.spot, slots)
        spot = want.spot if spot_cap is None else min(want.spot, spot_cap)
        on_spot = [j for j in live if is_spot(j, spec.spot)]
        on_demand = [j for j in live if not is_spot(j, spec.spot)]
        why = f"{spot} spot replicas wanted (the order's live leases hold {slots})"
        od = desired - spot
        return [
            Group(
                on_spot,
                spot,
                why,
                price if spot_price is None else spot_price,
                order=spec.spot.order,
                chip=chip,
            ),
            Group(on_demand, od, f"{od} on-demand replicas wanted", price, chip=chip),
        ]

    def _mix_groups(
        self,
        s: Session,
        row: ServiceRow,
        spec: ServiceSpec,
        live: list[JobRow],
        want: dict[str, int],
    ) -> list[Group]:
        """A chip mix's replicas chip by chip (``want`` by kind: a spot twin counted
        with its chip). With a spot order, those the mix wants on the order's chip run on
        its leases where they hold them, as many as the ILP put on the twin (with no twin
        in the plan yet, as many as the leases hold), the rest on demand, as a single-chip
        service's do: a reclaim falls back to on-demand replicas of the same chip at the
        next tick, within the notice, without waiting for the optimizer's next period."""
        groups = mix_groups(spec, live, on_chips(want))
        if spec.spot is None:
            return groups
        st = self._state[row.name]
        st.spot_note = self._spot_note(s, row, spec)
        order = s.get(OrderRow, spec.spot.order)
        spot_chip = order.accelerator if order is not None and order.buyer == row.owner else None
        usable = {k.name for k in st.scaler.kinds} if isinstance(st.scaler, Optimizer) else set()
        if spot_chip is not None and spot_chip not in usable and not st.spot_note:
            st.spot_note = (
                f"spot.order: market order {spec.spot.order} buys {spot_chip}, which "
                "cannot hold the model: its leases are not used"
            )
        out: list[Group] = []
        for g in groups:
            if g.chip is not None and g.chip == spot_chip:
                out += self._spot_split(
                    s,
                    row,
                    spec,
                    g.jobs,
                    g.want,
                    g.usd_per_hour,
                    g.chip,
                    spot_cap=want.get(g.chip + SPOT_SUFFIX),
                    spot_price=self._spot_usd(s, spec),
                )
            else:
                out.append(g)
        return out

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
