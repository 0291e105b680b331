"""Gavel's round-based mechanism: realise a time-share allocation with whole placements.

A whole-cluster policy (`suanli.sched.gavel`) answers with ``X[j, k]``, the share
of time job ``j`` should run on device type ``k``. A device runs one job at a
time, so the share is realised over rounds (6 minutes by default, Gavel's
``time_per_iteration``). At the start of each round:

* job ``j``'s priority on type ``k`` is ``X[j, k]`` over the share of type ``k``'s
  time the job has received since the allocation was last reset;
* types are filled one after another (a fixed order for heterogeneity-aware
  policies, a seeded shuffle for type-blind ones, as Gavel does), each with its
  jobs in order of priority, then deficit, then share;
* a job runs on at most one type per round, and only where its whole gang fits;
* jobs with no share still fill devices nobody with a share can use: the
  mechanism is work-conserving, as Gavel's is.

The allocation is recomputed only when jobs arrived or left *and* at least
``reset_every_s`` has passed since the last reset (Gavel's
``minimum_time_between_allocation_resets``, 1,920 s). At a reset every job's
deficit grows by what it should have received minus what it got, and the
received times start again from half a round. A job that arrives between
resets has no share yet; it runs on what is left over until the next reset.

The same object serves the simulator (`suanli.sim.gavel_sim`) and the live
service (`suanli.sched.round_action`), so what is measured is what runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from suanli.sched.gavel import AllocationProblem, warm_starts

DEFAULT_ROUND_S = 360.0
DEFAULT_RESET_EVERY_S = 1920.0

Policy = Callable[[AllocationProblem], np.ndarray]


class RoundScheduler:
    """Priorities and per-round choices of Gavel's mechanism (module docstring).

    Per-job state lives in arrays, one row per live job in arrival order (a job
    that leaves is cut out), because a simulation runs tens of thousands of
    rounds over hundreds of jobs: views of the first ``len(self)`` rows cost
    nothing, where a dict of small arrays spent more time in Python than the LPs
    did in HiGHS.
    """

    def __init__(
        self,
        types: Sequence[str],
        capacity: Sequence[int] | np.ndarray,
        policy: Policy,
        *,
        round_s: float = DEFAULT_ROUND_S,
        reset_every_s: float = DEFAULT_RESET_EVERY_S,
        shuffle_types: bool = False,
        seed: int = 0,
        price_usd_per_hour: np.ndarray | None = None,
    ) -> None:
        if round_s <= 0:
            raise ValueError("round_s must be > 0")
        self.types = list(types)
        self.capacity = np.asarray(capacity, dtype=float)
        self.policy = policy
        self.round_s = float(round_s)
        self.reset_every_s = float(reset_every_s)
        self.shuffle_types = shuffle_types
        self._rng = np.random.default_rng(seed)
        self._price = price_usd_per_hour
        self._bases: dict[Any, Any] = {}  # LP warm starts of this scheduler only
        k = len(self.types)
        self.keys: list[Hashable] = []  # row -> job
        self.thr = np.zeros((64, k))
        self.scale = np.zeros(64, dtype=np.int64)
        self.weight = np.ones(64)
        self.arrival_s = np.zeros(64)
        self.deadline_s = np.full(64, np.inf)  # when each job's SLO falls due (inf: none)
        self.received_s = np.zeros((64, k))  # time run on each type since the last reset
        self.deficit_s = np.zeros((64, k))
        self.share = np.zeros((64, k))  # the allocation X (0 for jobs that arrived since)
        self.ident = np.full(64, -1, dtype=np.int64)  # the caller's integer id of each job
        self._type_time_s = np.zeros(k)  # all jobs' time per type since the reset
        self._last_reset_s: float | None = None
        self._dirty = False
        self.solves = 0
        #: The last plan placed every job on the first type in turn where it can run,
        #: refusing none for room: until a job arrives or leaves, every round's plan
        #: is the same whatever the priorities (a simulator may run such rounds in bulk).
        self.settled = False

    # --- membership ----------------------------------------------------------
    def _grow(self) -> None:
        n = 2 * len(self.scale)
        for name in _ARRAYS:
            old = getattr(self, name)
            new = np.zeros((n, *old.shape[1:]), dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.keys

    def row(self, key: Hashable) -> int:
        return self.keys.index(key)

    def add(
        self,
        key: Hashable,
        throughput: Sequence[float] | np.ndarray,
        scale: int,
        *,
        weight: float = 1.0,
        arrival_s: float = 0.0,
        ident: int = -1,
        deadline_s: float = math.inf,
    ) -> None:
        thr = np.asarray(throughput, dtype=float)
        if thr.shape != (len(self.types),):
            raise ValueError(f"job {key!r}: one throughput per type {self.types} expected")
        if key in self.keys:
            raise ValueError(f"job {key!r} is already scheduled in rounds")
        i = len(self.keys)
        if i == len(self.scale):
            self._grow()
        self.keys.append(key)
        self.thr[i] = thr
        self.scale[i] = int(scale)
        self.weight[i] = weight
        self.arrival_s[i] = arrival_s
        self.deadline_s[i] = deadline_s
        self.received_s[i] = self.round_s / 2
        self.deficit_s[i] = 0.0
        self.share[i] = 0.0
        self.ident[i] = ident
        self._dirty = True

    def remove(self, key: Hashable) -> None:
        if key not in self.keys:
            return
        i = self.keys.index(key)
        n = len(self.keys)
        for name in _ARRAYS:
            arr = getattr(self, name)
            arr[i : n - 1] = arr[i + 1 : n]
        del self.keys[i]
        self._dirty = True

    def set_throughput(self, key: Hashable, throughput: Sequence[float] | np.ndarray) -> None:
        """New measured rates for a job: the next reset takes them into account."""
        self.thr[self.row(key)] = np.asarray(throughput, dtype=float)
        self._dirty = True

    def record(self, key: Hashable, type_index: int, run_s: float) -> None:
        """``key`` ran ``run_s`` seconds on type ``type_index`` in the round just ended."""
        if key in self.keys:
            self.received_s[self.keys.index(key), type_index] += run_s
        self._type_time_s[type_index] += run_s

    def record_rows(self, rows: np.ndarray, types: np.ndarray, run_s: np.ndarray) -> None:
        """`record` for many jobs at once, by row (as `plan_rows` returns them)."""
        np.add.at(self.received_s, (rows, types), run_s)
        np.add.at(self._type_time_s, types, run_s)

    # --- the allocation ------------------------------------------------------
    def _reset(
        self, now_s: float, remaining_steps: Callable[[list[Hashable]], np.ndarray] | None
    ) -> None:
        n = len(self.keys)
        elapsed = now_s - (self._last_reset_s if self._last_reset_s is not None else now_s)
        half = self.round_s / 2
        self.deficit_s[:n] += self.share[:n] * elapsed - (self.received_s[:n] - half)
        self.received_s[:n] = half
        self._type_time_s = np.full(len(self.types), half * n)
        self._last_reset_s = now_s
        self._dirty = False
        if not n:
            return
        problem = AllocationProblem(
            throughput=self.thr[:n].copy(),
            scale=self.scale[:n].astype(float),
            capacity=self.capacity,
            weights=self.weight[:n].copy(),
            remaining_steps=remaining_steps(list(self.keys))
            if remaining_steps is not None
            else None,
            elapsed_s=now_s - self.arrival_s[:n],
            price_usd_per_hour=self._price,
            deadline_left_s=self.deadline_s[:n] - now_s,
        )
        with warm_starts(self._bases):
            x = np.clip(self.policy(problem), 0.0, 1.0)
        self.solves += 1
        self.share[:n] = x

    def refresh(
        self,
        now_s: float,
        *,
        remaining_steps: Callable[[list[Hashable]], np.ndarray] | None = None,
    ) -> None:
        """Recompute the allocation if jobs came or went and the reset interval has passed."""
        due = self._last_reset_s is None or now_s - self._last_reset_s >= self.reset_every_s
        if self._dirty and due:
            self._reset(now_s, remaining_steps)

    def next_reset_s(self) -> float:
        """When the allocation will next be recomputed (inf: no job arrived or left)."""
        if not self._dirty:
            return math.inf
        if self._last_reset_s is None:
            return -math.inf
        return self._last_reset_s + self.reset_every_s

    def shares(self) -> dict[Hashable, np.ndarray]:
        """The current allocation (jobs that arrived since the last reset have zeros)."""
        return {key: self.share[i].copy() for i, key in enumerate(self.keys)}

    def plan(
        self,
        now_s: float,
        *,
        remaining_steps: Callable[[list[Hashable]], np.ndarray] | None = None,
        fits: Callable[[Hashable, int, np.ndarray], bool] | None = None,
    ) -> dict[Hashable, int]:
        """Which job runs on which type in the round starting at ``now_s``.

        ``fits(key, type, left)`` may refuse a job a type for reasons the device
        count does not show (node shape, fractional devices); by default a job
        fits where ``left[type] >= scale``.
        """
        rows, types = self.plan_rows(now_s, remaining_steps=remaining_steps, fits=fits)
        return {self.keys[r]: int(k) for r, k in zip(rows.tolist(), types.tolist(), strict=True)}

    def plan_rows(
        self,
        now_s: float,
        *,
        remaining_steps: Callable[[list[Hashable]], np.ndarray] | None = None,
        fits: Callable[[Hashable, int, np.ndarray], bool] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`plan` as (rows, types) arrays; ``self.keys[row]`` names the job."""
        self.refresh(now_s, remaining_steps=remaining_steps)
        n = len(self.keys)
        self.settled = False
        if not n:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        share = self.share[:n]
        thr = self.thr[:n]
        with np.errstate(divide="ignore", invalid="ignore"):
            fraction = self.received_s[:n] / self._type_time_s
            priority = np.where(fraction > 0, share / fraction, share * 1e9)
        order = np.arange(len(self.types))
        if self.shuffle_types:
            self._rng.shuffle(order)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        # one sort for all types: by the type's turn, then priority, deficit, share
        rows, types = np.nonzero(thr > 0)
        ranked = np.lexsort(
            (-share[rows, types], -self.deficit_s[rows, types], -priority[rows, types], rank[types])
        )
        left = self.capacity.tolist()
        scale = self.scale[:n].tolist()
        smallest = min(scale)
        taken = [False] * n
        out_rows: list[int] = []
        out_types: list[int] = []
        refused = fits is not None or self.shuffle_types
        seq_rows = rows[ranked].tolist()
        seq_types = types[ranked].tolist()
        # the sorted entries come type by type: jump to the next type once one is full
        bounds = np.flatnonzero(np.diff(rank[types[ranked]])) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(seq_rows)]
        for start, end in zip(starts, ends, strict=True):
            k = seq_types[start]
            for pos in range(start, end):
                if left[k] < smallest:
                    if not refused:
                        refused = any(not taken[i] for i in seq_rows[pos:end])
                    break
                i = seq_rows[pos]
                if taken[i]:
                    continue
                if scale[i] > left[k]:
                    refused = True
                    continue
                if fits is not None and not fits(self.keys[i], k, np.array(left)):
                    continue
                taken[i] = True
                left[k] -= scale[i]
                out_rows.append(i)
                out_types.append(k)
            if len(out_rows) == n:
                break
        self.settled = not refused
        return np.array(out_rows, dtype=np.int64), np.array(out_types, dtype=np.int64)


_ARRAYS = (
    "thr",
    "scale",
    "weight",
    "arrival_s",
    "deadline_s",
    "received_s",
    "deficit_s",
    "share",
    "ident",
)
