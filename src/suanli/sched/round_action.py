"""The ``rounds`` action: heterogeneity-aware time shares, realised by real placements.

What Gavel does in its own simulator, done by the one `Session` that both the
live service and the replay simulator run:

* Jobs it manages: preemptible jobs that ask for devices (they checkpoint when
  stopped, so moving them costs a save and a restore, not their work). Other
  jobs are placed by the ordinary actions and keep their devices; the devices
  they hold are taken out of the capacity the rounds share.
* Every ``round_s`` (6 minutes by default) the `RoundScheduler` computes each
  managed job's share of each device type from a throughput matrix (a
  whole-cluster policy of `suanli.sched.gavel`) and picks who runs where in the
  coming round. Each pick is checked by placing the whole gang on real nodes
  of that type (fractional devices and node shapes included); a running job
  that stays on its type keeps its own nodes when they are still free (Gavel's
  lease extension), so only real moves cost a checkpoint.
* An elastic job (``min_gang``: `Job.min_available` below its members) starts
  with the members that fit and, in "moves" mode, grows at a round when all of
  them fit on its type and the extra members repay the checkpoint.
* Jobs that lose their turn or move to another type are evicted with a grace
  period to checkpoint (``checkpoint_s(job, write=True)`` when given: the time
  to save it to the storage tier); a moved job is then started on its new type as soon as
  the devices are free. A waiting job without a turn waits for the next round.

The throughput matrix comes from ``throughput[(workload, type)]`` (perf with the
service's measured corrections, or a measured table); a job with no known rate
anywhere is taken as equally fast on every type it may use (type-blind).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from suanli.cluster.state import ClusterState
from suanli.cluster.task import MILLI, Task
from suanli.errors import SuanliError
from suanli.sched.framework import Placement, Statement
from suanli.sched.gavel import POLICIES
from suanli.sched.rounds import DEFAULT_RESET_EVERY_S, DEFAULT_ROUND_S, RoundScheduler

if TYPE_CHECKING:
    from suanli.sched.session import Job, Session

ROUND = "round"  # the `by` of an eviction the rounds decided
MODES = ("slices", "moves")
#: the whole-cluster policies the rounds can run
ROUND_POLICIES = (
    "gavel-max-min",
    "gavel-max-min-agnostic",
    "gavel-max-throughput",
    "gavel-cost-throughput",
    "gavel-min-makespan",
    "gavel-finish-time-fairness",
)
#: those that need each job's remaining work: the replay knows it, a live job does not
#: report it (so the live service refuses them)
NEEDS_REMAINING = ("gavel-min-makespan", "gavel-finish-time-fairness")


@dataclass(frozen=True)
class RoundsConfig:
    """``rounds:`` of a policy file."""

    policy: str = "gavel-max-min"
    round_s: float = DEFAULT_ROUND_S
    reset_every_s: float = DEFAULT_RESET_EVERY_S
    #: "slices": Gavel's time slices (jobs take turns every round); "moves": the
    #: shares choose each job's chip type, jobs run on, and move only when a
    #: faster type pays back the checkpoint within a round
    mode: str = "slices"


def live_refusal(config: RoundsConfig) -> str:
    return (
        f"round policy {config.policy!r} needs each job's remaining work, which running "
        "jobs do not report to the service; it runs in the simulator's replay "
        f"(`suanli simulate --mode replay`). Live, use one of "
        f"{', '.join(p for p in ROUND_POLICIES if p not in NEEDS_REMAINING)}"
    )


DEFAULT_STORAGE = "ddn-ai400x2-turbo"


def checkpoint_costs(
    tier: str = DEFAULT_STORAGE, *, optimizer: str = "adam"
) -> Callable[[Job, bool], float]:
    """``checkpoint_s(job, write)``: seconds to save (or read back) a job's training
    checkpoint on a storage tier of the catalog, its nodes writing in parallel.

    The size is that of the model its tasks name (label ``model``); a job without one
    costs nothing to move (its checkpoint size is unknown, and said so nowhere else).
    """
    from suanli.catalog.loader import get_model, get_storage_tier, storage_tiers
    from suanli.perf.checkpoint import checkpoint_bytes, checkpoint_seconds

    store = get_storage_tier(tier)
    if not store.shared:
        raise ValueError(
            f"storage tier {tier!r} is on each node: a job moved to other nodes cannot read "
            "its checkpoint back; give a parallel file system or object storage"
        )
    try:  # a tier that needs more (a provisioned size) says so now, not mid-run
        checkpoint_seconds(1.0, store)
    except SuanliError as exc:
        fixed = [t.name for t in storage_tiers().values() if t.shared and t.aggregate_gbs]
        raise type(exc)(f"{exc}; tiers usable here: {', '.join(fixed)}") from exc
    memo: dict[tuple[str, int, bool], float] = {}

    def cost(job: Job, write: bool) -> float:
        model = job.tasks[0].labels.get("model") if job.tasks else None
        if not model:
            return 0.0
        nodes = max(1, len(job.tasks))
        key = (model, nodes, write)
        if key not in memo:
            size = checkpoint_bytes(get_model(model), optimizer=optimizer)
            memo[key] = checkpoint_seconds(size, store, nodes=nodes, write=write)
        return memo[key]

    return cost


def _prices(types: Sequence[str]) -> np.ndarray:
    """Reference USD per device-hour of each type (the catalog's; 1 where it has none)."""
    from suanli.catalog.loader import accelerators

    acc = accelerators()
    return np.array(
        [
            acc[t].price_usd_per_hour if t in acc and acc[t].price_usd_per_hour else 1.0
            for t in types
        ]
    )


class Rounds:
    """State of the rounds across sessions (a `Session` lives for one decision)."""

    def __init__(
        self,
        types: Sequence[str],
        throughput: dict[tuple[str, str], float],
        config: RoundsConfig = RoundsConfig(),
        *,
        checkpoint_s: Callable[[Job, bool], float] | None = None,
        remaining: Callable[[str], float] | None = None,
    ) -> None:
        if config.mode not in MODES:
            raise ValueError(f"unknown rounds mode {config.mode!r}; one of {', '.join(MODES)}")
        if config.policy not in POLICIES:
            raise ValueError(
                f"unknown round policy {config.policy!r}; one of {', '.join(POLICIES)}"
            )
        self.types = list(types)
        self.throughput = throughput  # shared: the live service refreshes it
        self.config = config
        self.mech = RoundScheduler(
            self.types,
            np.zeros(len(self.types)),
            POLICIES[config.policy],
            round_s=config.round_s,
            reset_every_s=config.reset_every_s,
            price_usd_per_hour=_prices(self.types),
        )
        self.checkpoint_s = checkpoint_s
        #: work a job has left, in the units of its throughput (for makespan and
        #: finish-time fairness); given by the replay
        self.remaining = remaining
        self.next_round_s: float | None = None
        self.last_round_s: float | None = None
        self.assigned: dict[str, int] = {}  # job -> type index for the current round
        self.moves = 0
        self.rounds = 0
        #: relative speed of each type for a job no rate is known for (default: alike)
        self.type_speed: dict[str, float] = {}
        self._free = np.zeros(len(self.types))

    # --- what the rounds manage ------------------------------------------------
    @staticmethod
    def manages(job: Job) -> bool:
        return job.preemptible and job.gpu_milli > 0

    def rates(self, job: Job) -> np.ndarray:
        task = job.tasks[0]
        key = task.labels.get("workload", task.job or task.name)
        allowed = [not task.gpu_spec or t in task.gpu_spec for t in self.types]
        known = np.array([self.throughput.get((key, t), 0.0) for t in self.types])
        if known.any():
            return known * np.array(allowed)
        # nothing known of the job: the types' own speeds, else type-blind
        speed = np.array([self.type_speed.get(t, 1.0) for t in self.types])
        return speed * np.array(allowed)

    @staticmethod
    def devices(job: Job) -> float:
        return sum(t.gpu_request_milli for t in job.tasks) / MILLI

    def due(self, now_s: float) -> bool:
        return self.next_round_s is None or now_s >= self.next_round_s

    # --- the action ------------------------------------------------------------
    def act(self, session: Session) -> None:
        now = session.now
        pool = session.candidates
        waiting = {j.name: j for j in pool if self.manages(j) and j.name not in session.running}
        running = {n: jb for n, jb in session.running.items() if self.manages(jb[0])}
        self._sync(waiting, running)
        if self.config.mode == "moves":
            self._moves(session, waiting, running)
            return
        if self.due(now):
            self._round(session, waiting, running)
        # between rounds (and after one): a waiting job runs only on the type of its turn
        held, allowed = [], {}
        for name, job in waiting.items():
            k = self.assigned.get(name)
            if k is None:
                held.append(name)
                session.result.unschedulable[name] = (
                    f"waiting for its turn: the next scheduling round is at "
                    f"{self.next_round_s:.0f} s"
                    if self.next_round_s is not None
                    else "waiting"
                )
            else:
                typ = frozenset({self.types[k]})
                allowed[name] = replace(job, tasks=[replace(t, gpu_spec=typ) for t in job.tasks])
        session.admitted = [allowed.get(j.name, j) for j in session.admitted if j.name not in held]
        session.set_pending([allowed.get(j.name, j) for j in session.pending if j.name not in held])

    def _sync(
        self, waiting: dict[str, Job], running: dict[str, tuple[Job, list[tuple[Task, Placement]]]]
    ) -> None:
        present = set(waiting) | set(running)
        for key in list(self.mech.keys):
            if key not in present:
                self.mech.remove(key)
                self.assigned.pop(str(key), None)
        for name, job in {**waiting, **{n: j for n, (j, _) in running.items()}}.items():
            if name not in self.mech:
                rates = self.rates(job)
                if rates.any():
                    self.mech.add(
                        name, rates, math.ceil(self.devices(job) - 1e-9), arrival_s=job.arrival_s
                    )

    def _save_s(self, job: Job) -> float | None:
        """Seconds to save the job's checkpoint (None: the job's own grace)."""
        return self.checkpoint_s(job, True) if self.checkpoint_s is not None else None

    def _move_cost_s(self, job: Job) -> float:
        """Seconds a stop costs the job: saving its checkpoint and reading it back."""
        if self.checkpoint_s is None:
            return 0.0
        return self.checkpoint_s(job, True) + self.checkpoint_s(job, False)

    @staticmethod
    def _release(trial: ClusterState, binds: list[tuple[Task, Placement]]) -> None:
        for task, p in binds:
            trial.release(p.node, task.cpu_milli, task.memory_mib, p.gpus, task.gpu_mem_mib)

    def _gang_on(self, session: Session, trial: ClusterState, job: Job, k: int) -> bool:
        """Place every member of ``job`` on type ``k`` in ``trial`` (all or none)."""
        st = Statement(trial)
        typ = frozenset({self.types[k]})
        for task in job.tasks:
            res = session.fw.place(trial, replace(task, gpu_spec=typ), session.rng)
            if not isinstance(res, Placement):
                st.discard()
                return False
            st.allocate(task, res)
        st.commit()
        return True

    def _type_of(self, session: Session, p: Placement) -> int:
        g = session.state.gpu_type[p.node]
        return self.types.index(session.state.types[g]) if g >= 0 else -1

    def _round(
        self,
        session: Session,
        waiting: dict[str, Job],
        running: dict[str, tuple[Job, list[tuple[Task, Placement]]]],
    ) -> None:
        now = session.now
        state = session.state
        since = self.last_round_s
        for name, (job, binds) in running.items():
            k = self._type_of(session, binds[0][1]) if binds else -1
            start = job.started_s if job.started_s is not None else now
            if k >= 0 and name in self.mech:
                self.mech.record(name, k, max(0.0, now - max(start, since or start)))
        self.mech.capacity = self._capacity(session, running)
        trial = state.copy()
        for _, binds in running.values():
            self._release(trial, binds)
        jobs = {**waiting, **{n: j for n, (j, _) in running.items()}}
        kept: set[str] = set()

        def fits(key: object, k: int, left: np.ndarray) -> bool:
            name = str(key)
            binds = running[name][1] if name in running else []
            if binds and all(self._type_of(session, p) == k for _, p in binds):
                st = Statement(trial)  # it stays where it is if its own nodes are still free
                try:
                    for task, p in binds:
                        st.allocate(task, p)
                except ValueError:
                    st.discard()
                else:
                    st.commit()
                    kept.add(name)
                    return True
            return self._gang_on(session, trial, jobs[name], k)

        plan = self.mech.plan(now, fits=fits, remaining_steps=self._remaining())
        self.assigned = {str(k): t for k, t in plan.items() if str(k) not in kept}
        self.next_round_s = now + self.config.round_s
        self.last_round_s = now
        self.rounds += 1
        for name, (job, _) in running.items():
            if name in kept:
                continue
            to = plan.get(name)
            if to is None:
                why = "round: its time share goes to other jobs this round"
            else:
                why = f"round: its time share moves it to {self.types[to]}"
                self.moves += 1
            session.evict(name, why, ROUND, grace_s=self._save_s(job))

    def _remaining(self) -> Callable[[list[Hashable]], np.ndarray] | None:
        if self.remaining is None:
            if self.config.policy in NEEDS_REMAINING:
                raise ValueError(live_refusal(self.config))
            return None
        left = self.remaining
        return lambda keys: np.array([max(left(str(k)), 0.0) for k in keys])

    def _free_milli(self, session: Session) -> np.ndarray:
        """Device-milli free on each type now."""
        state = session.state
        free = np.zeros(len(self.types))
        for g, typ in enumerate(state.types):
            if typ in self.types:
                free[self.types.index(typ)] = state.gpu_free[state.gpu_type == g].sum()
        return free

    def _capacity(
        self, session: Session, running: dict[str, tuple[Job, list[tuple[Task, Placement]]]]
    ) -> np.ndarray:
        """Devices per type the rounds share: what is free plus what managed jobs hold
        (what other jobs hold, and sick devices, are not theirs to share)."""
        cap_milli = self._free_milli(session)
        for _, binds in running.values():
            for task, p in binds:
                k = self._type_of(session, p)
                if k >= 0:
                    cap_milli[k] += task.gpu_request_milli
        return np.maximum(cap_milli / MILLI, 0.0)

    # --- "moves": shares choose the type; jobs run on -----------------------------
    def _moves(
        self,
        session: Session,
        waiting: dict[str, Job],
        running: dict[str, tuple[Job, list[tuple[Task, Placement]]]],
    ) -> None:
        now = session.now
        if self.due(now):
            self.mech.capacity = self._capacity(session, running)
            self.mech.refresh(now, remaining_steps=self._remaining())
            self.next_round_s = now + self.config.round_s
            self.last_round_s = now
            self.rounds += 1
            self._migrate(session, running)
        shares = self.mech.shares()
        self._free = self._free_milli(session)  # kept as jobs land
        unplaced = []
        for job in session.ordered(list(waiting.values())):
            share = shares.get(job.name)
            rates = self.rates(job)
            want = self.assigned.pop(job.name, None)
            first = [want] if want is not None else []
            good = [k for k in self._by_share(share, rates) if k not in first]
            if not any(self._place(session, job, k) for k in first + good):
                unplaced.append(job)
        # work-conserving: what waits for its types takes any other it can run on,
        # and moves at a round when its own type frees up and the move pays
        for job in unplaced:
            rates = self.rates(job)
            order = sorted(np.flatnonzero(rates > 0), key=lambda k: -rates[k])
            if not any(self._place(session, job, int(k)) for k in order):
                session.result.unschedulable.setdefault(job.name, "no chip type has room")
        done = set(waiting)
        session.admitted = [j for j in session.admitted if j.name not in done]
        session.set_pending([j for j in session.pending if j.name not in done])

    @staticmethod
    def _by_share(share: np.ndarray | None, rates: np.ndarray) -> list[int]:
        """Types the allocation gives the job a share of, largest share first (no
        allocation yet: none, the job arrived since the last one)."""
        if share is None or not share.any():
            return []
        ks = [int(k) for k in np.flatnonzero((share > 1e-6) & (rates > 0))]
        return sorted(ks, key=lambda k: (-share[k], -rates[k]))

    def _place(self, session: Session, job: Job, k: int) -> bool:
        need = job.gpu_milli * job.gang_size / max(1, len(job.tasks))  # elastic: its least
        if self._free[k] < need:  # not enough free on the whole type: no node search
            return False
        typ = frozenset({self.types[k]})
        if session.try_job(replace(job, tasks=[replace(t, gpu_spec=typ) for t in job.tasks])):
            self._free[k] -= need
            return True
        return False

    def _grow(
        self,
        session: Session,
        running: dict[str, tuple[Job, list[tuple[Task, Placement]]]],
        trial: ClusterState,
    ) -> None:
        """An elastic job running with fewer members than it may have grows when all of
        them fit on its chip type now and the extra members' work over one round repays
        the checkpoint (it restarts at the larger world size, from its checkpoint)."""
        for name, (job, binds) in sorted(running.items()):
            have, most = len(binds), len(job.tasks)
            if have >= most or not binds:
                continue
            here = self._type_of(session, binds[0][1])
            if here < 0 or (most / have - 1.0) * self.config.round_s <= self._move_cost_s(job):
                continue
            self._release(trial, binds)  # its own members' room counts toward the larger gang
            if not self._gang_on(session, trial, job, here):
                for task, p in binds:
                    trial.allocate(
                        p.node, task.cpu_milli, task.memory_mib, list(p.gpus), task.gpu_mem_mib
                    )
                continue
            self.assigned[name] = here
            self.moves += 1
            why = f"round: grows from {have} to {most} members on {self.types[here]}"
            session.evict(name, why, ROUND, grace_s=self._save_s(job))

    def _migrate(
        self, session: Session, running: dict[str, tuple[Job, list[tuple[Task, Placement]]]]
    ) -> None:
        """Move a running job to the type of its largest share when that type has room
        now and its speed-up there repays saving and restoring the checkpoint within
        one round."""
        shares = self.mech.shares()
        trial = session.state.copy()
        self._grow(session, running, trial)
        for name, (job, binds) in sorted(running.items()):
            if name not in session.running:
                continue  # stopped to grow
            share = shares.get(name)
            if share is None or not share.any() or not binds:
                continue
            here = self._type_of(session, binds[0][1])
            rates = self.rates(job)
            best = self._by_share(share, rates)
            if not best or best[0] == here or here < 0 or rates[here] <= 0:
                continue
            to = best[0]
            gain = (rates[to] / rates[here] - 1.0) * self.config.round_s
            if gain <= self._move_cost_s(job) or share[to] <= share[here]:
                continue
            # placed in the trial: the room is spoken for, the next mover does not count it
            if not self._gang_on(session, trial, job, to):
                continue
            self.assigned[name] = to
            self.moves += 1
            why = (
                f"round: moves to {self.types[to]}, {rates[to] / rates[here]:.2f}x its speed "
                f"on {self.types[here]}, where its share is larger"
            )
            session.evict(name, why, ROUND, grace_s=self._save_s(job))
