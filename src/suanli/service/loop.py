"""The scheduling loop: reconcile members with the store, then schedule queued jobs.

Each tick, in order:

1. Nodes: the executor says which nodes it can run on (this machine, or the
   nodes of a Ray cluster); they are recorded with a fresh heartbeat.
2. Running jobs: when every member has exited the job is recorded (succeeded
   on exit 0, else failed or re-queued while retries remain); a member that
   fails stops its gang. A cancel request, an exceeded ``max_runtime_s`` or a
   preemption *begins* a stop — SIGTERM to every member, the deadline stored —
   and a later tick kills what is still alive past the deadline. The loop
   never sleeps through a grace period, and a restarted service finishes a
   stop the old one began.
3. Queued jobs: a `Session` of the scheduler — the same code the simulator
   runs — places them on the nodes, rebuilt from what the store says runs
   there. Evictions it decides become stops with reason ``preempt:<job>``;
   the preemptor waits until its victims are gone, so nothing runs on a
   device another job still holds.

On start, running jobs whose members are still alive (pid *and* start time,
or the Ray job) are re-attached; the rest were lost with the old service and
are failed or re-queued by their retry policy. Every transition is written
in one transaction, so a crash at any point loses no job.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session as DbSession

from suanli.api.metrics import Metrics
from suanli.calibration import feedback
from suanli.cluster.state import ClusterState, NodeSpec, Site
from suanli.cluster.task import MILLI, Task
from suanli.jobs.resolve import granted_milli, member_task
from suanli.jobs.spec import JobSpec, Resources
from suanli.market import capacity
from suanli.run.executor import (
    ADDRESS_LABEL,
    NODE_ADDRESS_ENV,
    NODE_LABEL,
    Executor,
    ExecutorUnavailable,
    Handle,
    Launch,
    NodeInfo,
)
from suanli.run.local import free_port
from suanli.run.sites import SITE_LABEL
from suanli.sched.explain import why_unschedulable
from suanli.sched.framework import Placement
from suanli.sched.policies import PolicyConfig, PolicyFileError, build, load_policy
from suanli.sched.round_action import NEEDS_REMAINING, ROUND, Rounds, live_refusal
from suanli.sched.session import Job, Queue, Session, SessionResult
from suanli.service.controllers import Controller, run_controllers
from suanli.service.logs import Outage, transition
from suanli.store.db import Store
from suanli.store.models import SYSTEM_OWNER, JobRow, NodeRow, QueueRow, SiteRow

log = logging.getLogger("suanli.loop")
GRACE_S = 10.0
NODE_REFRESH_S = 2.0
CANCEL = "cancel"  # stop reasons: "cancel", "timeout", "member-failed:<code>",
PREEMPT = "preempt:"  # "preempt:<by job>"; a cancel during another stop: "cancel+<reason>"
LEASE = "lease"  # "preempt:lease": its lease ended or was reclaimed (see preempt_reason)
RETRY_START_S = 5.0  # an executor that could not be reached is asked again this much later,
MAX_UNAVAILABLE_STARTS = 10  # doubling each time; then the start counts as the job's failure
MAX_QUEUED_PER_TICK = 500  # queued jobs one scheduling session considers (oldest first)
EXPLAIN_PER_TICK = 100  # waiting jobs whose reason is worked out in one tick


def backoff_s(attempts: int) -> float:
    """Wait before retry ``attempts`` + 1: 1, 2, 4, ... seconds, at most a minute."""
    return float(min(60, 2 ** max(0, attempts - 1)))


def _members(row: JobRow) -> list[Handle]:
    return [Handle.from_dict(m) for m in row.members or []]


class Loop:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        policy: str | PolicyConfig = "priority",
        tick_s: float = 0.2,
        grace_s: float = GRACE_S,
        data_dir: Path | None = None,
        calibrate_new_nodes: bool = False,
        controllers: Sequence[Controller] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        #: what it counts for ``GET /metrics`` (``suanli up`` shares it with the app)
        self.metrics = metrics or Metrics()
        self.metrics.executor(executor.name)
        self.outage = Outage(executor.name, log)  # its executor's outage, told once
        self._tick_error: str | None = None  # the error of failing ticks, logged once
        #: the other resource kinds' controllers (the market), run at the start of each tick
        self.controllers = list(controllers)
        self._failing: dict[str, str] = {}  # controller -> the error last logged
        self.executor = executor
        self.data_dir = data_dir  # where measured device profiles are (None: the default)
        self.calibrate_new_nodes = calibrate_new_nodes
        config = load_policy(policy) if isinstance(policy, str) else policy
        self.actions = list(config.actions)
        # a job's allowed regions and node selector bind live, whatever the policy says
        extra = [f for f in ("region", "node-selector") if f not in config.filters]
        config = replace(config, filters=[*config.filters, *extra])
        self.framework = build(config)
        #: the ``rounds`` action's state, across ticks (made when the device types are known)
        self.round_config = config.rounds
        if config.rounds is not None and config.rounds.policy in NEEDS_REMAINING:
            raise PolicyFileError(live_refusal(config.rounds))
        self.rounds: Rounds | None = None
        self._round_rates: dict[tuple[str, str], float] = {}
        self.tick_s = tick_s
        self.grace_s = grace_s
        self._stop = threading.Event()
        self.nodes: list[NodeInfo] = []
        self.node_sites: dict[str, Site] = {}
        #: node -> its site's preemption notice: a stop there gives at most this much grace
        self.node_notice: dict[str, float] = {}
        self._specs: dict[int, JobSpec] = {}
        self._fixes: dict[tuple[str, str], dict[str, object]] | None = None  # corrections
        self._unavailable: dict[int, int] = {}  # job -> starts refused by an absent executor
        self._why: dict[int, str] = {}  # job -> the unschedulable reason last reported
        self._nodes_at = 0.0
        self._decided = False  # whether this tick's `_decide` ran a session
        self.recover()

    # --- lifecycle -----------------------------------------------------------------
    def run_forever(self) -> None:
        while not self._stop.is_set():
            if not self.safe_tick():
                self._stop.wait(1.0)
            self._stop.wait(self.tick_s)

    def safe_tick(self) -> bool:
        """A tick that never raises: False when it failed. An absent executor is told as
        an outage (`Outage`); any other error (the database away) is logged with its
        traceback once, then again only when it changes, and its end is said."""
        try:
            self.tick()
        except _ExecutorAway:
            return False
        except Exception as exc:  # a bad tick must not end the loop
            said = f"{type(exc).__name__}: {exc}"
            if said != self._tick_error:
                self._tick_error = said
                log.exception("scheduling tick failed; retrying (logged once until it changes)")
            return False
        if self._tick_error is not None:
            log.info("scheduling ticks succeed again after: %s", self._tick_error)
            self._tick_error = None
        return True

    def stop(self) -> None:
        self._stop.set()

    def recover(self) -> None:
        """Re-attach members that survived the old service; settle jobs that did not; stop
        processes of starts the old service never recorded (found by their cgroups)."""
        with self.store.tx() as s:
            known = {
                h.group
                for row in s.scalars(select(JobRow).where(JobRow.state == "running"))
                for h in _members(row)
                if h.group
            }
        orphans: list[str] = getattr(self.executor, "orphans", lambda _known: [])(known)
        for key in orphans:
            log.warning("stopping processes of %s: started, never recorded", key)
            self.executor.stop_orphan(key)  # type: ignore[attr-defined]
        with self.store.tx() as s:
            for row in s.scalars(select(JobRow).where(JobRow.state == "running")):
                members = _members(row)
                if members and any(self.executor.is_alive(h) for h in members):
                    where = ", ".join(f"{h.node}/{h.ref or h.pid}" for h in members)
                    self.store.event(s, row.id, "reattached", where)
                    continue
                if row.stop_reason:
                    continue  # the stop finished while we were down: the tick settles it
                codes = [self.executor.poll(h) for h in members]
                recorded = [c for c in codes if c is not None and c != -9]
                if members and len(recorded) == len(members):
                    continue  # they all ended and said how: the tick records it
                if not members:  # started, never recorded: its wrappers may have said how
                    world = (self._spec(row).gang or 1) if row.spec else 1
                    ended = getattr(self.executor, "exit_codes", lambda *_: [None])(
                        str(row.id), world, row.started_at or 0.0
                    )
                    if ended and all(c is not None for c in ended):
                        bad = next((c for c in ended if c != 0), 0)
                        self._finish(s, row, bad, f"ended while the service was down: {ended}")
                        continue
                self._finish(s, row, None, "lost with the previous service")

    # --- one tick ------------------------------------------------------------------
    def tick(self) -> None:
        now = time.time()
        if now - self._nodes_at > NODE_REFRESH_S:
            self._sync_nodes(now)
        run_controllers(self.controllers, now, self._failing)
        with self.store.tx() as s:
            for row in s.scalars(select(JobRow).where(JobRow.state == "running")):
                self._reconcile(s, row, now)
            s.flush()
            # a cancel the API asked for while the job was being requeued (a retry, a
            # preemption) ends it here: a queued job is never claimed while cancel_requested
            for old in ("queued", "preempted"):  # one state at a time, so the log says which
                cancelled = s.execute(
                    update(JobRow)
                    .where(JobRow.state == old, JobRow.cancel_requested)
                    .values(state="cancelled", updated_at=now, not_before=None)
                    .returning(JobRow.id, JobRow.spec),
                    execution_options={"synchronize_session": False},
                ).all()
                for job_id, spec in cancelled:
                    self._specs.pop(job_id, None)
                    why = "by request, before it ran again"
                    self.store.event(s, job_id, "cancelled", why)
                    transition(log, job_id, _queue(spec), old, "cancelled", why)
            # the sweep above ended every job with a cancel request; one the API writes from
            # here on finds the job preempted or queued, and cancels it itself
            requeued = s.execute(
                update(JobRow)
                .where(JobRow.state == "preempted")
                .values(state="queued", updated_at=now)
                .returning(JobRow.id, JobRow.spec),
                execution_options={"synchronize_session": False},
            ).all()
            for job_id, spec in requeued:
                self.store.event(s, job_id, "requeued", "after preemption")
                transition(log, job_id, _queue(spec), "preempted", "queued", "after preemption")
        self._schedule()

    def _sync_nodes(self, now: float) -> None:
        """Record the executor's nodes; a device an admin marked unhealthy stays so."""
        try:
            reported = self.executor.nodes()
        except Exception as exc:  # Ray's dashboard away: the tick ends here, told as an outage
            self.outage.failed(f"{type(exc).__name__}: {exc}", "nodes")
            raise _ExecutorAway(str(exc)) from exc
        self.outage.answered("nodes")
        self.nodes = []
        self.node_sites = {}
        self.node_notice = {}
        self._nodes_at = now
        with self.store.tx() as s:
            sites = {r.name: r for r in s.scalars(select(SiteRow))}
            for n in reported:
                row = s.get(NodeRow, n.name)
                # a site's engine places its own nodes; an admin places the others
                engine_site = n.labels.get(SITE_LABEL, "")
                kind = getattr(self.executor, "kind_of", lambda _n: self.executor.name)(n.name)
                if row is None:
                    # an attached site's nodes are its provider's (to run on, and to sell
                    # on the market); the executor's own, the operator's
                    site = sites.get(engine_site)
                    own = engine_site in getattr(self.executor, "own", ())
                    attached = site is not None and bool(site.address) and not own
                    owner = site.owner if site is not None and attached else SYSTEM_OWNER
                    row = NodeRow(name=n.name, owner=owner, site=None)
                    # measured where the job can write to this service's data directory:
                    # not in a Kubernetes pod, whose filesystem is its own
                    if self.calibrate_new_nodes and kind != "kubernetes":
                        self._calibration_job(s, n)
                sick = {d["index"] for d in row.devices or [] if not d.get("healthy", True)}
                n = replace(
                    n,
                    devices=[
                        replace(d, healthy=d.healthy and d.index not in sick) for d in n.devices
                    ],
                )
                self.nodes.append(n)
                if engine_site in sites:
                    row.site = engine_site
                site = sites.get(row.site or "")
                if site is not None and site.preemption_notice_s is not None:
                    self.node_notice[n.name] = site.preemption_notice_s
                if site is not None:
                    self.node_sites[n.name] = Site(
                        site.name,
                        site.region,
                        site.pue,
                        site.carbon_g_per_kwh,
                        site.power_price_per_kwh,
                    )
                row.executor = kind
                row.cpu_cores, row.memory_mib = n.cpu_cores, n.memory_mib
                row.devices = [
                    {
                        "index": d.index,
                        "accelerator": d.accelerator,
                        "memory_mib": d.memory_mib,
                        "healthy": d.healthy,
                    }
                    for d in n.devices
                ]
                row.labels = {**n.labels, ADDRESS_LABEL: n.address}
                row.heartbeat_at = now
                s.add(row)

    def _reconcile(self, s: DbSession, row: JobRow, now: float) -> None:
        members = _members(row)
        if not members:
            # claimed, but its members were never stored (the store failed after the start,
            # whose processes were then killed): nothing runs, so it is lost, not succeeded
            self._finish(s, row, None, "lost during start")
            return
        codes = self._poll(members)
        done = all(c is not None for c in codes)
        first_bad = next((c for c in codes if c not in (None, 0)), None)
        if row.stop_reason:
            if row.cancel_requested and not row.stop_reason.startswith(CANCEL):
                # a cancel outranks a preemption or timeout already under way: the job ends
                # cancelled, not requeued; the SIGKILL deadline stays as it was, and so does
                # the reason under it, so a preemptor still waits for this victim
                self.store.event(
                    s, row.id, "stopping", f"cancel requested during {row.stop_reason}"
                )
                row.stop_reason = f"{CANCEL}+{row.stop_reason}"
            if done:
                self._settle_stop(s, row, codes, now)
            elif row.stop_deadline is not None and now > row.stop_deadline:
                self._each(members, codes, self.executor.kill)
            return
        spec = self._spec(row)
        over = spec.max_runtime_s and row.started_at and now - row.started_at > spec.max_runtime_s
        if done:  # it ended on its own, even if a cancel came in the same tick
            self._finish(s, row, first_bad if first_bad is not None else 0, f"exit {codes}")
        elif row.cancel_requested:
            self._begin_stop(s, row, CANCEL, f"by request; SIGTERM, {self.grace_s:g} s grace")
        elif row.preempt_reason:  # another controller's (a reclaimed lease): its grace
            grace = row.preempt_grace_s if row.preempt_grace_s is not None else self.grace_s
            why = f"{row.preempt_reason}; SIGTERM, {grace:g} s grace to checkpoint"
            self._begin_stop(s, row, f"{PREEMPT}{LEASE}", why, grace)
        elif over:
            self._begin_stop(s, row, "timeout", f"exceeded max_runtime_s {spec.max_runtime_s}")
        elif first_bad is not None:
            self._begin_stop(
                s, row, f"member-failed:{first_bad}", f"a member exited {first_bad}: stop the gang"
            )

    def _poll(self, members: list[Handle]) -> list[int | None]:
        """Each member's exit code; members an executor runs as one (a Ray gang) asked once."""
        seen: dict[str, int | None] = {}
        for h in members:
            if _key(h) not in seen:
                seen[_key(h)] = self.executor.poll(h)
        return [seen[_key(h)] for h in members]

    @staticmethod
    def _each(
        members: list[Handle], codes: list[int | None], act: Callable[[Handle], None]
    ) -> None:
        """``act`` on every member still running, once per executor process."""
        done: set[str] = set()
        for h, c in zip(members, codes, strict=True):
            if c is None and _key(h) not in done:
                done.add(_key(h))
                act(h)

    def _begin_stop(
        self, s: DbSession, row: JobRow, reason: str, why: str, grace_s: float | None = None
    ) -> None:
        members = _members(row)
        self._each(members, [None] * len(members), self.executor.terminate)
        asked = self.grace_s if grace_s is None else grace_s
        grace = self._grace_on([h.node for h in members], asked)
        if grace < asked:
            why += f" (cut to {grace:g} s: the site's preemption notice)"
        row.stop_reason, row.stop_deadline = reason, time.time() + grace
        row.updated_at = time.time()
        self._moved(s, row, "running", "stopping", why, to="stopping")

    def _grace_on(self, nodes: list[str], grace_s: float) -> float:
        """``grace_s``, or less where a node's site gives less notice before it takes its
        capacity back: a job there must checkpoint within the site's notice."""
        return min([grace_s, *(self.node_notice[n] for n in nodes if n in self.node_notice)])

    def _settle_stop(self, s: DbSession, row: JobRow, codes: list[int | None], now: float) -> None:
        reason = row.stop_reason or ""
        code = codes[0] if codes else None
        row.stop_reason = row.stop_deadline = None
        row.updated_at = now
        if reason.startswith(CANCEL) or row.cancel_requested:
            row.state, row.exit_code = "cancelled", code
            self._specs.pop(row.id, None)
            self._moved(
                s, row, "running", "cancelled", f"exit {code}", said=f"{reason}; exit {code}"
            )
        elif reason.startswith(PREEMPT):
            # a preemption is not the job's failure: it does not use up a retry
            row.state, row.exit_code = "preempted", None
            row.attempts = max(0, row.attempts - 1)
            by = reason.split(":", 1)[1]
            what = (
                row.preempt_reason
                if by == LEASE
                else (
                    "by the scheduling round (moved or its turn ended)"
                    if by == ROUND
                    else f"by job {by}"
                )
            )
            row.preempt_reason = row.preempt_grace_s = None
            self._moved(s, row, "running", "preempted", f"{what}; exit {code}")
        elif reason.startswith("member-failed:"):
            self._finish(s, row, int(reason.split(":", 1)[1]), "a gang member failed")
        else:
            # a deadline is the job's limit, not a transient fault: no retry (as Kubernetes'
            # activeDeadlineSeconds), and failed even if the job exited 0 on SIGTERM
            row.state, row.exit_code = "failed", code
            self._specs.pop(row.id, None)
            self._moved(s, row, "running", "failed", f"exceeded max_runtime_s; exit {code}")
            self.metrics.job_failures.labels(executor=self.executor.name).inc()

    # --- scheduling ----------------------------------------------------------------
    def _schedule(self) -> None:
        """Decide in one transaction; then start each bound job in its own.

        Starting a process cannot be rolled back, so no start happens inside a
        transaction that a later failure could undo: a job is claimed (queued ->
        running, unless a cancel got there first), started, and its members stored,
        each step committed. A job that cannot start fails or retries alone.
        """
        if not self.nodes:
            return
        start, self._decided = time.perf_counter(), False
        with self.store.tx() as s:
            bound = self._decide(s)
        if self._decided:  # a session ran (not a tick with nothing to decide)
            self.metrics.schedule_cycle.observe(time.perf_counter() - start)
        for job_id, placements in bound.items():
            try:
                self._launch(job_id, placements)
            except Exception:  # the store went away mid-launch: the next tick reconciles
                log.exception("starting job %s failed", job_id)

    def _decide(self, s: DbSession) -> dict[int, list[Placement]]:
        """Run a scheduler session over the stored jobs; begin the evictions it decides."""
        # a tick looks at a bounded number of waiting jobs, oldest first: one tenant's
        # flood of submissions cannot make every tick long
        queued = list(
            s.scalars(
                select(JobRow)
                .where(JobRow.state == "queued")
                .order_by(JobRow.id)
                .limit(MAX_QUEUED_PER_TICK)
            )
        )
        for row in list(queued):
            try:
                self._spec(row)
            except ValueError as exc:  # stored before a bound it breaks: never schedulable
                queued.remove(row)
                row.state, row.updated_at = "failed", time.time()
                msg = " ".join(str(exc).split())[:500]
                self._moved(s, row, "queued", "failed", f"its stored spec is refused now: {msg}")
        queued_ids = {row.id for row in queued}  # what ended or started says nothing more
        self._why = {k: v for k, v in self._why.items() if k in queued_ids}
        round_due = self.rounds is not None and self.rounds.due(time.time())
        if not queued and not round_due:
            return {}
        self._decided = True
        running = list(s.scalars(select(JobRow).where(JobRow.state == "running")))
        state, index = self._state()
        types = [t for t in state.types if t]
        # leased units are their buyers': blocked here, scheduled per order below
        caps = capacity.load(s)
        capacity.block(state, index, self.nodes, list(caps.values()))
        clusters = {
            o: capacity.lease_cluster(cap, index, self.nodes, self.node_sites)
            for o, cap in caps.items()
        }
        held: dict[str, tuple[Job, list[tuple[Task, Placement]]]] = {}
        stopping: dict[str, tuple[Job, list[tuple[Task, Placement]]]] = {}
        held_in: dict[int, dict[str, tuple[Job, list[tuple[Task, Placement]]]]] = defaultdict(dict)
        waiting_for_victims = set()
        for row in running:
            try:
                job = self._job(row, types)
            except ValueError:  # started before a bound it breaks: it runs on, unaccounted
                continue
            order = self._spec(row).order
            in_lease = order in caps  # its units are blocked above: count it in its lease
            cluster = clusters.get(order) if order is not None else None
            binds = []
            for task, h in zip(job.tasks, _members(row), strict=False):
                node = index.get(h.node)
                if node is None:
                    continue  # its node left the cluster: the member will be lost
                target, devs = state, list(h.devices)
                if in_lease:
                    local = cluster.to_local(node, h.devices) if cluster else None
                    if local is None:
                        continue  # on a closing lease's units: blocked already
                    target = cluster.state  # type: ignore[union-attr]
                    node, devs = local
                gpus = tuple((d, task.gpu_milli) for d in devs)
                try:
                    target.allocate(node, task.cpu_milli, task.memory_mib, list(gpus))
                except ValueError:  # the node shrank under a re-attached job: keep it
                    continue
                binds.append((task, Placement(node, gpus)))
            if row.stop_reason:
                if PREEMPT in row.stop_reason:  # "preempt:<by>", or "cancel+preempt:<by>"
                    waiting_for_victims.add(row.stop_reason.split(PREEMPT, 1)[1])
                if not in_lease:  # its devices free by its stop's deadline
                    job.ends_by_s = row.stop_deadline
                    stopping[job.name] = (job, binds)
            elif in_lease:
                held_in[order][job.name] = (job, binds)  # type: ignore[index]
            else:
                held[job.name] = (job, binds)
        pending = []
        pending_in: dict[int, list[Job]] = defaultdict(list)
        now = time.time()
        for row in queued:
            if str(row.id) in waiting_for_victims:
                continue  # its victims are still stopping: do not evict more
            if row.not_before is not None and now < row.not_before:
                continue  # a retry waits out its backoff
            order = self._spec(row).order
            if order is None:
                pending.append(self._job(row, types))
            elif clusters.get(order) is not None:
                pending_in[order].append(self._job(row, types))
            elif order in caps:  # leased, but on registered inventory no executor here runs
                why = f"the leases of market order {order} are on nodes no executor here runs"
                self._say_why(s, row.id, why)
            else:
                self._say_why(s, row.id, f"waiting for a lease of market order {order}")
        self._affinity(s, [self._spec(r) for r in queued + running], types)
        rounds = self._rounds(types)
        stored = {
            q.name: Queue(q.name, q.weight, dict(q.quota_milli), q.reclaimable)
            for q in s.scalars(select(QueueRow))
        }

        def run(
            st: ClusterState,
            jobs: list[Job],
            on: dict[str, tuple[Job, list[tuple[Task, Placement]]]],
            queues: dict[str, Queue],
            rounds: Rounds | None = None,
            ending: dict[str, tuple[Job, list[tuple[Task, Placement]]]] | None = None,
        ) -> SessionResult:
            names = {j.queue for j in jobs} | {j.queue for j, _ in on.values()}
            session = Session(
                st,
                self.framework,
                [queues.get(q, Queue(q)) for q in names],
                jobs,
                on,
                time.time(),
                rng=np.random.default_rng(0),
                rounds=rounds,
                stopping=ending,
            )
            result = session.run(self.actions)
            self._explain(s, jobs, result, st)
            return result

        result = run(state, pending, held, stored, rounds, stopping)
        evicted = list(result.evicted)
        bound_all = [(j, p) for j, _, p in result.bound]
        for order, jobs in pending_in.items():
            cluster = clusters[order]
            assert cluster is not None
            # the buyer's own capacity: its queues' quotas and weights do not apply there
            res = run(cluster.state, jobs, held_in.get(order, {}), {})
            evicted += res.evicted
            bound_all += [(j, cluster.to_real(p)) for j, _, p in res.bound]
        rows = {str(r.id): r for r in queued + running}
        if evicted:
            # victims first; what was bound in the same session waits one tick, so
            # nothing starts on a device a stopping job still holds
            for ev in evicted:
                victim = rows[ev.job]
                why = ev.reason + f"; SIGTERM, {self.grace_s:g} s grace to checkpoint"
                self._begin_stop(s, victim, f"{PREEMPT}{ev.by}", why)
            return {}
        bound: dict[int, list[Placement]] = defaultdict(list)
        for jname, placement in bound_all:
            bound[int(jname)].append(placement)
        return bound

    def _explain(
        self, s: DbSession, pending: list[Job], result: SessionResult, state: ClusterState
    ) -> None:
        """An ``unschedulable`` event, with the reason node by node, for each job that did
        not start this tick — when its reason changed, so a waiting job says why once."""
        bound = {name for name, _, _ in result.bound}
        for job in pending[:EXPLAIN_PER_TICK]:
            if job.name in bound or not job.tasks:
                continue
            detail = why_unschedulable(state, job.tasks[0])
            said = result.unschedulable.get(job.name)
            if said and said.startswith("gang:") and len(job.tasks) == 1:
                said = None  # "0 of 1 members fit" says less than the nodes' reasons
            why = "; ".join(x for x in (said, detail) if x)
            self._say_why(s, int(job.name), why or "waiting behind jobs of its queue and priority")

    def _say_why(self, s: DbSession, job_id: int, why: str) -> None:
        """An ``unschedulable`` event, once per change of reason."""
        if self._why.get(job_id) != why:
            self._why[job_id] = why
            self.store.event(s, job_id, "unschedulable", why)
            self.metrics.placement_failed(why)

    def _state(self) -> tuple[ClusterState, dict[str, int]]:
        specs = []
        for n in self.nodes:
            healthy = [d for d in n.devices if d.healthy]
            typ = healthy[0].accelerator if healthy else ""
            site = self.node_sites.get(n.name)
            specs.append(
                NodeSpec(
                    n.name,
                    n.cpu_cores * 1000,
                    n.memory_mib,
                    len(n.devices),
                    typ,
                    site=site.name if site else n.labels.get(SITE_LABEL, "default"),
                    labels={**n.labels, NODE_LABEL: n.name},
                )
            )
        sites = {s.name: s for s in self.node_sites.values()}
        state = ClusterState(specs, list(sites.values()))
        for i, n in enumerate(self.nodes):  # an unhealthy device is held, never offered
            sick = [(d.index, MILLI) for d in n.devices if not d.healthy]
            if sick:
                state.allocate(i, 0, 0, sick)
        return state, {n.name: i for i, n in enumerate(self.nodes)}

    def _spec(self, row: JobRow) -> JobSpec:
        """The job's validated spec; a stored spec never changes, so it is parsed once.

        Specs stored before ``owner`` left the spec still carry the key: it is ignored.
        One stored before a bound it breaks raises ValueError (`_decide` fails it)."""
        spec = self._specs.get(row.id)
        if spec is None:
            data = {k: v for k, v in (row.spec or {}).items() if k != "owner"}
            try:
                spec = JobSpec.model_validate(data)
            except ValueError:
                if row.state == "queued":
                    raise
                # already running or done: tracked to its end with default limits
                spec = JobSpec(name="stored-before-its-bounds", command=["true"])
            self._specs[row.id] = spec
        return spec

    def _job(self, row: JobRow, types: list[str]) -> Job:
        spec = self._spec(row)
        r = spec.resources
        task = member_task(spec, types, str(row.id))
        if r.model:
            task = replace(task, labels={"workload": feedback.family_of(r.model)})
        members = spec.gang or 1
        return Job(
            str(row.id),
            [replace(task, name=f"{row.id}/{i}") for i in range(members)],
            queue=spec.queue,
            priority=spec.priority,
            min_available=spec.min_gang or 0,  # elastic: runs with what fits, down to this
            preemptible=spec.preemptible,
            kind=spec.kind,
            arrival_s=row.created_at,
            started_s=row.started_at,
            grace_s=self.grace_s,
            ends_by_s=(
                row.started_at + spec.max_runtime_s
                if row.started_at is not None and spec.max_runtime_s
                else None
            ),
        )

    def _launch(self, job_id: int, placements: list[Placement]) -> None:
        now = time.time()
        with self.store.tx() as s:
            claimed = s.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.state == "queued",
                    JobRow.cancel_requested.is_(False),
                )
                .values(
                    state="running",
                    members=[],
                    attempts=JobRow.attempts + 1,
                    started_at=now,
                    updated_at=now,
                    not_before=None,
                    exit_code=None,
                ),
                execution_options={"synchronize_session": False},
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return  # cancelled since the decision
            row = s.get(JobRow, job_id, populate_existing=True)
            assert row is not None
            spec, owner = self._spec(row), row.owner
        handles: list[Handle] = []
        try:
            self._start_members(job_id, spec, owner, placements, handles)
        except Exception as exc:
            self._kill_all(handles)
            self._start_failed(job_id, exc)
            return
        self._unavailable.pop(job_id, None)
        try:
            with self.store.tx() as s:
                row = s.get(JobRow, job_id, populate_existing=True)
                assert row is not None
                row.members = [h.to_dict() for h in handles]
                row.devices = " ".join(
                    f"{h.node}:{','.join(map(str, h.devices))}" if h.devices else h.node
                    for h in handles
                )[:64]
                where = ", ".join(f"rank {h.rank} {h.node}/{h.ref or h.pid}" for h in handles)
                why = f"{where} devices [{row.devices}]"
                self._moved(s, row, "queued", "started", why, said=f"devices [{row.devices}]")
            self.metrics.job_starts.labels(executor=self.executor.name).inc()
            self.outage.answered()
        except Exception:
            # members nobody knows of would run on devices the scheduler thinks free: stop
            # them; the row (running, no members) is settled as lost by the next tick
            self._kill_all(handles)
            raise

    def _start_failed(self, job_id: int, exc: Exception) -> None:
        """An executor that could not be reached (Ray's dashboard restarting) is not the
        job's fault: the job goes back to the queue without using up a retry, waiting
        longer each time, until the limit makes it the job's failure. Anything else (a
        bad working_dir, a command that does not exist) fails or retries this job only."""
        now = time.time()
        tries = self._unavailable.pop(job_id, 0) + 1
        if isinstance(exc, ExecutorUnavailable):
            self.outage.failed(str(exc), "start")
        with self.store.tx() as s:
            row = s.get(JobRow, job_id, populate_existing=True)
            assert row is not None
            if not isinstance(exc, ExecutorUnavailable) or tries >= MAX_UNAVAILABLE_STARTS:
                self._finish(s, row, None, f"could not start: {exc}")
                return
            wait_s = min(60.0, RETRY_START_S * 2 ** (tries - 1))
            row.state, row.members, row.started_at = "queued", [], None
            row.attempts = max(0, row.attempts - 1)
            row.not_before, row.updated_at = now + wait_s, now
            why = f"executor unavailable ({tries} of {MAX_UNAVAILABLE_STARTS}): {exc}"
            self._moved(s, row, "running", "requeued", f"{why}; again in {wait_s:g} s")
        self._unavailable[job_id] = tries

    def _kill_all(self, handles: list[Handle]) -> None:
        self._each(handles, [None] * len(handles), self.executor.kill)

    def _start_members(
        self,
        job_id: int,
        spec: JobSpec,
        owner: str,
        placements: list[Placement],
        handles: list[Handle],
    ) -> None:
        """Start every member (appending to ``handles`` as they start, so a failure part-way
        leaves the started ones to be stopped)."""
        world = len(placements)
        master = self.nodes[placements[0].node]
        port = free_port() if world > 1 else None  # local gangs; a Ray gang picks on rank 0
        native_at = getattr(self.executor, "gang_native_at", None)  # several sites: per node
        gang_native = (
            bool(native_at(master.name))
            if native_at is not None
            else bool(getattr(self.executor, "gang_native", False))
        )
        names = [self.nodes[p.node].name for p in placements]
        milli = granted_milli(spec.resources)
        for rank, p in enumerate(placements):
            node = self.nodes[p.node]
            devices = tuple(g for g, _ in p.gpus)
            if gang_native and rank > 0:
                # one executor job runs the whole gang: every member is recorded with its own
                # node and devices (the loop reserves them), all sharing rank 0's executor id
                handles.append(replace(handles[0], rank=rank, node=node.name, devices=devices))
                continue
            visible = next((d.visible_env for d in node.devices if d.visible_env), None)
            launch = Launch(
                str(job_id),
                spec.argv,
                {**spec.env, NODE_ADDRESS_ENV: node.address},
                spec.working_dir,
                visible if devices else None,
                devices,
                share=milli / MILLI,  # what the scheduler granted, in its thousandths
                rank=rank,
                world_size=world,
                master_port=port,
                master_addr=master.address,
                node=node.name,
                cpu=spec.resources.cpu,
                accelerator=node.devices[0].accelerator if devices else None,
                gang=world if gang_native else 1,
                member_nodes=tuple(names),
                grace_s=self._grace_on(names, self.grace_s),
                local_rank=names[:rank].count(node.name),
                owner=owner,
                memory_mib=int(spec.resources.memory_gb * 1024),
                image=spec.image,
            )
            handles.append(self.executor.start(launch))

    # --- closing the loop ------------------------------------------------------------
    def _calibration_job(self, s: DbSession, node: NodeInfo) -> None:
        """A node seen for the first time gets measured: `suanli calibrate` as a real job."""
        argv = [sys.executable, "-m", "suanli", "calibrate", "--quick", "--save", "--json"]
        if self.data_dir is not None:
            argv += ["--data-dir", str(self.data_dir)]
        spec = JobSpec(
            name=f"calibrate-{node.name}"[:63].rstrip("-"),
            command=argv,
            resources=Resources(accelerator="cpu", cpu=float(node.cpu_cores), memory_gb=2),
            priority=100,  # before user work: the measured profile improves every estimate
            node_selector={NODE_LABEL: node.name},  # it measures this node, so it runs there
        )
        s.flush()
        self.store.add_job(s, spec.model_dump(), SYSTEM_OWNER)

    def _record_perf(self, s: DbSession, row: JobRow) -> None:
        """Measured vs predicted, if the job reported a summary; never fails the tick."""
        rank0 = next((h for h in _members(row) if h.rank == 0), None)
        if rank0 is None:
            return
        try:
            feedback.record(self.store, s, row.id, self.executor.logs(rank0), self.data_dir)
        except Exception as exc:  # a job's odd summary must not stop the scheduler
            log.exception("perf record of job %s failed", row.id)
            self.store.event(s, row.id, "perf", f"not recorded: {exc}")
            return
        s.flush()
        self._fixes = feedback.stored_corrections(s)  # only this loop writes records

    def _rounds(self, types: list[str]) -> Rounds | None:
        """The rounds' state for these device types (new types: a new allocation)."""
        if self.round_config is None:
            return None
        if self.rounds is None or self.rounds.types != types:
            self.rounds = Rounds(types, self._round_rates, self.round_config)
        # CPU slices differ by their threads; the rounds know no better rate for a job
        # that names no catalog model
        self.rounds.type_speed = {
            d.accelerator: float(d.threads) for n in self.nodes for d in n.devices if d.threads
        }
        return self.rounds

    def _affinity(self, s: DbSession, specs: list[JobSpec], types: list[str]) -> None:
        """Feed perf x correction to a performance-affinity scorer and to the rounds."""
        plugin = next((p for p, _ in self.framework.scorers if p.name == "perf-affinity"), None)
        models = {sp.resources.model for sp in specs if sp.resources.model}
        if (plugin is None and self.round_config is None) or not models:
            return
        if self._fixes is None:  # first use: what earlier runs of the service learned
            self._fixes = feedback.stored_corrections(s)
        fixes = self._fixes
        for model in models:
            for chip in types:
                rate = feedback.throughput(model, chip, fixes)
                if rate:
                    key = (feedback.family_of(model), chip)
                    self._round_rates[key] = rate
                    if plugin is not None:
                        plugin.throughput[key] = rate  # type: ignore[attr-defined]

    # --- helpers -------------------------------------------------------------------
    def _finish(self, s: DbSession, row: JobRow, code: int | None, why: str) -> None:
        spec = self._spec(row)
        now = time.time()
        old = row.state
        row.exit_code, row.updated_at = code, now
        row.stop_reason = row.stop_deadline = None
        row.preempt_reason = row.preempt_grace_s = None
        if code == 0:
            row.state = "succeeded"
            self._record_perf(s, row)
        elif row.cancel_requested:
            row.state = "cancelled"  # it failed while a cancel was on its way: no retry
        elif row.attempts <= spec.retries:
            row.state = "queued"  # retry, after a backoff
            row.not_before = now + backoff_s(row.attempts)
            why += f"; retry {row.attempts} of {spec.retries} in {backoff_s(row.attempts):g} s"
        else:
            row.state = "failed"
        if row.state != "queued":
            self._specs.pop(row.id, None)  # over: its spec is not needed again
        self._moved(s, row, old, row.state, why)
        if code != 0 and row.state != "cancelled":  # a retried attempt counts too
            self.metrics.job_failures.labels(executor=self.executor.name).inc()

    def _moved(
        self,
        s: DbSession,
        row: JobRow,
        old: str,
        event: str,
        why: str,
        *,
        to: str | None = None,
        said: str | None = None,
    ) -> None:
        """The job moved from ``old`` to its state (or ``to``): its ``event`` in the store
        and one log line (``said``, when the log needs other words than the event)."""
        self.store.event(s, row.id, event, why)
        nodes = dict.fromkeys(str(m["node"]) for m in row.members or [] if m.get("node"))
        where = ",".join(nodes)
        transition(log, row.id, _queue(row.spec), old, to or row.state, said or why, where)


def _queue(spec: dict[str, object] | None) -> str:
    return str((spec or {}).get("queue") or "default")


class _ExecutorAway(Exception):
    """The executor did not answer this tick (already told as an outage)."""


def _key(h: Handle) -> str:
    """What identifies the executor's process: a Ray gang's members share one Ray job."""
    return h.ref or f"{h.node}/{h.pid}/{h.start_time}"
