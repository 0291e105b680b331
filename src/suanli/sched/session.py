"""A scheduling session: Volcano's actions over jobs, queues and gangs.

One session works on a snapshot: pending jobs, running jobs, queues. Its
behaviour is the list of actions the policy configures, run in order:

* **enqueue** — admit pending jobs whose queue still has quota for them.
* **allocate** — queues in order of dominant share over deserved share (DRF /
  proportion), jobs by priority plus aging (a waiting job gains
  ``aging_per_hour`` points an hour, so none starves), each job's tasks placed
  through a `Statement`: a gang that cannot get ``min_available`` members is
  rolled back as a whole.
* **backfill** — jobs that may borrow (preemptible) get leftover capacity even
  beyond their queue's deserved share.
* **preempt** — a job that still cannot be placed evicts lower-priority
  preemptible jobs, cheapest first (lowest priority, then least run time lost),
  with a grace period so they can checkpoint; services preempt training.
* **reclaim** — a queue below its deserved share takes back capacity lent to
  queues above theirs (reclaimable queues only).
* **rounds** — heterogeneity-aware time shares realised in rounds (Gavel's
  mechanism; `suanli.sched.round_action`): preemptible device jobs run where and
  when their share says, and move between chip types with a checkpoint.

Evictions are returned as decisions (job, grace); the executor delivers them.
The same session runs live and in simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from suanli.cluster.state import ClusterState
from suanli.cluster.task import Task
from suanli.sched.framework import Framework, Placement, Statement

if TYPE_CHECKING:
    from suanli.sched.round_action import Rounds

DEFAULT_GRACE_S = 30.0


@dataclass
class Queue:
    """A share of the cluster: weight, optional GPU-milli quota per device type ("*" = all)."""

    name: str
    weight: float = 1.0
    quota_milli: dict[str, int] = field(default_factory=dict)
    reclaimable: bool = True


@dataclass
class Job:
    name: str
    tasks: list[Task]
    queue: str = "default"
    priority: int = 0
    min_available: int = 0  # 0 = all tasks (a gang)
    preemptible: bool = False
    kind: str = "batch"
    arrival_s: float = 0.0
    started_s: float | None = None
    grace_s: float = DEFAULT_GRACE_S
    #: when a running job will have ended (the simulator knows; live, its start plus its
    #: max_runtime_s); None: unknown. What a site's queueing delay is estimated from
    ends_by_s: float | None = None

    @property
    def gang_size(self) -> int:
        return self.min_available or len(self.tasks)

    @property
    def gpu_milli(self) -> int:
        return sum(t.gpu_request_milli for t in self.tasks)


@dataclass
class Eviction:
    job: str
    grace_s: float
    reason: str
    by: str = ""  # the job that preempted or reclaimed it


@dataclass
class SessionResult:
    bound: list[tuple[str, Task, Placement]] = field(default_factory=list)
    evicted: list[Eviction] = field(default_factory=list)
    unschedulable: dict[str, str] = field(default_factory=dict)
    admitted: list[str] = field(default_factory=list)


class Session:
    """One cycle over a snapshot (module docstring). Mutates ``state`` as it binds/evicts."""

    def __init__(
        self,
        state: ClusterState,
        framework: Framework,
        queues: list[Queue],
        pending: list[Job],
        running: dict[str, tuple[Job, list[tuple[Task, Placement]]]],
        now_s: float,
        *,
        aging_per_hour: float = 1.0,
        rng: np.random.Generator | None = None,
        rounds: Rounds | None = None,
        stopping: dict[str, tuple[Job, list[tuple[Task, Placement]]]] | None = None,
    ) -> None:
        """``stopping``: jobs given their stop, still holding devices until ``ends_by_s``
        (neither candidates nor victims; what frees when, for the plugins that ask)."""
        self.state = state
        self.fw = framework
        self.queues = {q.name: q for q in queues} or {"default": Queue("default")}
        self.pending = list(pending)
        self.running = dict(running)
        self.now = now_s
        self.aging = aging_per_hour
        self.rng = rng or np.random.default_rng(0)
        self.rounds = rounds
        self.result = SessionResult()
        self.admitted: list[Job] = []
        self._enqueued = False  # without an enqueue action every pending job is admitted
        self._used: dict[str, dict[str, int]] | None = None  # memo of used_milli
        self._active: set[str] | None = None  # memo: the queues with work (deserved_milli)
        framework.begin(state, self.pending, {**(stopping or {}), **self.running}, now_s)
        self._bound_now: set[str] = set()  # jobs started in this session: never victims
        self._admitted_milli: dict[str, int] = {}  # per queue, admitted but not yet running

    def set_pending(self, jobs: list[Job]) -> None:
        """Replace the pending jobs (an action that holds some back or finishes them)."""
        self.pending = jobs
        self._active = None

    # --- accounting ------------------------------------------------------------
    def _type_of(self, p: Placement) -> str:
        t = self.state.gpu_type[p.node]
        return self.state.types[t] if t >= 0 else ""

    def used_milli(self, queue: str) -> dict[str, int]:
        """GPU-milli the queue's running jobs hold, per device type (memoised per change)."""
        if self._used is None:
            used: dict[str, dict[str, int]] = {}
            for job, binds in self.running.values():
                per = used.setdefault(job.queue, {})
                for task, p in binds:
                    typ = self._type_of(p)
                    per[typ] = per.get(typ, 0) + task.gpu_request_milli
            self._used = used
        return dict(self._used.get(queue, {}))

    def deserved_milli(self, queue: str) -> float:
        """Capacity x weight / sum of weights of queues with work (proportion plugin)."""
        if self._active is None:  # the ordering asks once per job: not rebuilt each time
            self._active = {j.queue for j in self.pending}
            self._active |= {j.queue for j, _ in self.running.values()}
        active = self._active | {queue}
        total_w = sum(self.queues[q].weight for q in active if q in self.queues)
        share = self.queues[queue].weight / total_w if total_w else 1.0
        return share * self.state.total_gpu_milli

    def share(self, queue: str) -> float:
        used = sum(self.used_milli(queue).values())
        return used / max(self.deserved_milli(queue), 1.0)

    def _quota_allows(self, job: Job) -> bool:
        q = self.queues.get(job.queue)
        if q is None or not q.quota_milli:
            return True
        cap = q.quota_milli.get("*")
        held = sum(self.used_milli(job.queue).values()) + self._admitted_milli.get(job.queue, 0)
        return cap is None or held + job.gpu_milli <= cap

    def _within_type_quota(self, job: Job, task: Task, extra: dict[str, int]) -> Task | None:
        """The task limited to device types where its queue still has quota (None: none left)."""
        q = self.queues.get(job.queue)
        per_type = {t: v for t, v in (q.quota_milli if q else {}).items() if t != "*"}
        if not per_type or task.gpu_request_milli == 0:
            return task
        used = self.used_milli(job.queue)
        allowed = {
            t
            for t in self.state.types
            if t not in per_type
            or used.get(t, 0) + extra.get(t, 0) + task.gpu_request_milli <= per_type[t]
        }
        if task.gpu_spec:
            allowed &= set(task.gpu_spec)
        if not allowed:
            return None
        return replace(task, gpu_spec=frozenset(allowed))

    def _effective_priority(self, job: Job) -> float:
        return job.priority + self.aging * max(0.0, self.now - job.arrival_s) / 3600

    # --- actions ---------------------------------------------------------------
    def run(self, actions: list[str]) -> SessionResult:
        for action in actions:
            getattr(self, f"_{action}")()
        return self.result

    def _enqueue(self) -> None:
        self._enqueued = True
        for job in self.pending:
            if job.queue not in self.queues:
                self.result.unschedulable[job.name] = f"unknown queue {job.queue!r}"
            elif self._quota_allows(job):
                self.admitted.append(job)
                self.result.admitted.append(job.name)
                self._admitted_milli[job.queue] = (
                    self._admitted_milli.get(job.queue, 0) + job.gpu_milli
                )
            else:
                self.result.unschedulable[job.name] = f"queue {job.queue} quota exhausted"

    @property
    def candidates(self) -> list[Job]:
        """Jobs that may be placed: those admitted, or every pending one without an
        enqueue action."""
        return self.admitted if self._enqueued else self.pending

    def ordered(self, jobs: list[Job]) -> list[Job]:
        """Jobs in the order this session serves them: fair share of the queue, priority
        (with aging), arrival."""
        return sorted(
            jobs,
            key=lambda j: (self.share(j.queue), -self._effective_priority(j), j.arrival_s, j.name),
        )

    def try_job(self, job: Job) -> bool:
        """Place the whole job (its gang) now, or nothing; say whether it was placed.

        A gang never spans sites: its members talk over a fast fabric, and one engine
        starts them together. With several sites, the site where its first member would
        go is tried first, then the others in turn."""
        q = self.queues.get(job.queue)
        cap = q.quota_milli.get("*") if q else None
        if cap is not None and sum(self.used_milli(job.queue).values()) + job.gpu_milli > cap:
            self.result.unschedulable[job.name] = f"queue {job.queue} quota exhausted"
            return False
        masks = self._site_masks(job)
        if masks == [None]:
            return self._try_within(job, None)
        first = self.fw.place(self.state, job.tasks[0], self.rng)
        if isinstance(first, Placement):  # its first member's best site first
            masks.sort(key=lambda m: m is None or not m[first.node])
        for within in masks:
            if self._try_within(job, within):
                return True
        self.result.unschedulable[job.name] = (
            f"gang: no one site fits {job.gang_size} members (a gang never spans sites)"
        )
        return False

    def _site_masks(self, job: Job) -> list[np.ndarray | None]:
        """Where the job may be placed whole: one mask of nodes per site for a gang on
        several sites (a gang never spans sites), else [None] (anywhere)."""
        sites = np.unique(self.state.site)
        if len(job.tasks) < 2 or sites.size < 2:
            return [None]
        return [self.state.site == s for s in sites]

    def _try_within(self, job: Job, within: np.ndarray | None) -> bool:
        st = Statement(self.state)
        binds: list[tuple[Task, Placement]] = []
        extra: dict[str, int] = {}  # this job's tentative use per type
        said = ""  # a filter's own account of why a member waits (a site it waits for)
        for task in job.tasks:
            limited = self._within_type_quota(job, task, extra)
            if limited is None:
                continue
            res = self.fw.place(self.state, limited, self.rng, within)
            if isinstance(res, Placement):
                st.allocate(task, res)
                binds.append((task, res))
                typ = self._type_of(res)
                extra[typ] = extra.get(typ, 0) + task.gpu_request_milli
            elif res.message:
                said = res.message
        if len(binds) < job.gang_size:
            st.discard()
            self.result.unschedulable[job.name] = said or (
                f"gang: {len(binds)} of {job.gang_size} members fit"
            )
            return False
        st.commit()
        for task, p in binds:
            for listener in self.fw.listeners:
                listener.bound(self.state, task, p)
            self.result.bound.append((job.name, task, p))
        job.started_s = self.now
        self.running[job.name] = (job, binds)
        self._bound_now.add(job.name)
        self._used = self._active = None
        self.result.unschedulable.pop(job.name, None)
        return True

    def _allocate(self, borrow: bool = False) -> None:
        if not self._enqueued:
            self.admitted = list(self.pending)
        for job in self.ordered(self.admitted):
            if job.name in self.running:
                continue
            over = self.share(job.queue) >= 1.0 and len(self.queues) > 1
            if over and not (borrow and job.preemptible):
                self.result.unschedulable[job.name] = f"queue {job.queue} at its deserved share"
                continue
            self.try_job(job)

    def _backfill(self) -> None:
        self._allocate(borrow=True)

    def evict(self, name: str, reason: str, by: str = "", grace_s: float | None = None) -> None:
        """Stop a running job (its devices are free in this session at once)."""
        job, binds = self.running.pop(name)
        self._used = self._active = None
        for task, p in binds:
            self.fw.unbind(self.state, task, p)
        grace = job.grace_s if grace_s is None else grace_s
        self.result.evicted.append(Eviction(name, grace, reason, by))

    def _rounds(self) -> None:
        if self.rounds is not None:
            self.rounds.act(self)

    def _could_run(self, job: Job) -> bool:
        """Whether the job's queue quotas leave room for it at all (else no victim helps)."""
        q = self.queues.get(job.queue)
        cap = q.quota_milli.get("*") if q else None
        if cap is not None and sum(self.used_milli(job.queue).values()) + job.gpu_milli > cap:
            return False
        return all(self._within_type_quota(job, t, {}) is not None for t in job.tasks)

    def _victims_for(self, job: Job, candidates: list[Job]) -> list[Job] | None:
        """Cheapest set of ``candidates`` whose eviction lets ``job`` fit (tried on a copy).

        A gang never spans sites, so with several sites the victims come from one site,
        the one that then holds the whole gang: evictions that free enough devices only
        across sites would stop work and start nothing. Of the sites that would do, the
        one with the fewest victims (then the lowest priorities) is chosen."""
        masks = self._site_masks(job)
        if masks == [None]:
            return self._victims_within(job, candidates, None)
        best: list[Job] | None = None
        for within in masks:
            assert within is not None
            here = [
                v for v in candidates if any(within[p.node] for _, p in self.running[v.name][1])
            ]
            chosen = self._victims_within(job, here, within) if here else None
            if chosen is not None and (best is None or _victim_cost(chosen) < _victim_cost(best)):
                best = chosen
        return best

    def _victims_within(
        self, job: Job, candidates: list[Job], within: np.ndarray | None
    ) -> list[Job] | None:
        """The greedy: lowest priority, then the most recently started, until ``job`` fits
        (on the nodes ``within`` marks, or anywhere)."""
        order = sorted(candidates, key=lambda v: (v.priority, -(v.started_s or 0.0), v.name))
        trial = self.state.copy()
        chosen: list[Job] = []
        for v in order:
            _, binds = self.running[v.name]
            for task, p in binds:
                trial.release(p.node, task.cpu_milli, task.memory_mib, p.gpus, task.gpu_mem_mib)
            chosen.append(v)
            st = Statement(trial)
            placed = 0
            for task in job.tasks:
                res = self.fw.place(trial, task, self.rng, within)
                if isinstance(res, Placement):
                    st.allocate(task, res)
                    placed += 1
            st.discard()
            if placed >= job.gang_size:
                return chosen
        return None

    def _preempt(self) -> None:
        pool = self.candidates
        waiting = [j for j in self.ordered(pool) if j.name not in self.running]
        for job in sorted(waiting, key=lambda j: -self._effective_priority(j)):
            if not self._could_run(job):
                continue  # evicting others would not help: its queue has no quota left
            cands = [
                v
                for v, _ in self.running.values()
                if v.preemptible and v.priority < job.priority and v.name not in self._bound_now
            ]
            victims = self._victims_for(job, cands) if cands else None
            if not victims:
                continue
            for v in victims:
                self.evict(v.name, f"preempted by {job.name} (priority {job.priority})", job.name)
            self.try_job(job)

    def _reclaim(self) -> None:
        pool = self.candidates
        waiting = [j for j in pool if j.name not in self.running]
        for job in self.ordered(waiting):
            if self.share(job.queue) >= 1.0 or not self._could_run(job):
                continue
            cands = [
                v
                for v, _ in self.running.values()
                if v.queue != job.queue
                and v.preemptible
                and v.name not in self._bound_now
                and self.queues.get(v.queue, Queue(v.queue)).reclaimable
                and self.share(v.queue) > 1.0
            ]
            victims = self._victims_for(job, cands) if cands else None
            if not victims:
                continue
            for v in victims:
                self.evict(v.name, f"reclaimed by queue {job.queue}", job.name)
            self.try_job(job)


def _victim_cost(victims: list[Job]) -> tuple[int, int]:
    """Fewer evictions first, then lower priorities."""
    return len(victims), sum(v.priority for v in victims)
