"""The scheduling framework: extension points, plugins, and one placement cycle.

Modelled on the Kubernetes scheduling framework, vectorised: a plugin sees
every node at once as numpy arrays (`ClusterState`), so one decision over
thousands of nodes costs microseconds per plugin instead of a Python loop.

One placement (``Framework.place``), in order:

1. **Filter** — each filter returns a boolean mask of nodes that can take the
   task; masks are AND-ed. Rejections are counted per plugin (the reasons an
   unschedulable task reports).
2. **Score** — each scorer returns a raw score per feasible node; each is
   normalised to 0..100 (min-max, so plugins with different units combine) and
   summed with its weight. The best node wins; ties go to a seeded random pick
   or the first node, as the configuration says.
3. **Pick devices** — the device picker chooses which devices (and shares) on
   that node the task gets.
4. **Reserve** — the caller commits the placement to the state, usually through
   a `Statement` so that a gang can be rolled back as a whole.

"Does not fit" is an outcome (`Status`), not an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from suanli.cluster.state import ClusterState
from suanli.cluster.task import Task

SUCCESS = "Success"
UNSCHEDULABLE = "Unschedulable"


@dataclass
class Status:
    """The outcome of a placement attempt; ``reasons`` counts nodes each plugin rejected."""

    code: str = SUCCESS
    reasons: dict[str, int] = field(default_factory=dict)
    plugin: str = ""
    message: str = ""  # a filter's own words for why (``CycleState[WHY]``), if it left any

    @property
    def ok(self) -> bool:
        return self.code == SUCCESS


@dataclass(frozen=True)
class Placement:
    node: int
    gpus: tuple[tuple[int, int], ...]  # (device index, milli)


class CycleState(dict[str, Any]):
    """Per-cycle data, keyed by plugin name: computed once (pre-score), read by many."""


#: the key under which a filter that rejects every node may leave a sentence saying why
WHY = "why"


class FilterPlugin(Protocol):
    name: str

    def filter(self, state: ClusterState, task: Task, cycle: CycleState) -> np.ndarray:
        """Boolean mask over all nodes: True where ``task`` can run."""
        ...


class ScorePlugin(Protocol):
    name: str

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        """Raw scores (higher is better) for the feasible ``nodes`` (indices)."""
        ...


class DevicePicker(Protocol):
    name: str

    def pick(
        self,
        state: ClusterState,
        task: Task,
        node: int,
        cycle: CycleState,
        rng: np.random.Generator,
    ) -> tuple[tuple[int, int], ...]:
        """Which devices of ``node`` the task takes: (index, milli) pairs.

        A scorer that already chose devices while scoring (FGD) leaves its choice
        in ``cycle`` for its picker.
        """
        ...


class BindListener(Protocol):
    """Plugins that keep their own view of placements (e.g. which pod kinds sit where)."""

    def bound(self, state: ClusterState, task: Task, placement: Placement) -> None: ...

    def unbound(self, state: ClusterState, task: Task, placement: Placement) -> None: ...


def normalize(raw: np.ndarray) -> np.ndarray:
    """Min-max to 0..100; a constant score carries no preference (all 0)."""
    lo = float(raw.min())
    hi = float(raw.max())
    if hi - lo < 1e-12:
        return np.zeros_like(raw, dtype=float)
    return (raw - lo) * (100.0 / (hi - lo))


@dataclass
class Framework:
    """Plugins per extension point, as a policy configuration composed them."""

    filters: Sequence[FilterPlugin]
    scorers: Sequence[tuple[ScorePlugin, float]]
    picker: DevicePicker
    tie_break: str = "random"  # or "first"
    sample_nodes: int = 0  # score at most this many feasible nodes (0 = all)
    listeners: Sequence[BindListener] = ()

    def place(
        self,
        state: ClusterState,
        task: Task,
        rng: np.random.Generator,
        within: np.ndarray | None = None,
    ) -> Placement | Status:
        """The best node and devices for ``task``; ``within`` (a node mask) narrows the
        search first (a gang's members, to one site)."""
        cycle = CycleState()
        mask = np.ones(state.num_nodes, dtype=bool) if within is None else within.copy()
        reasons: dict[str, int] = {}
        for f in self.filters:
            m = f.filter(state, task, cycle)
            newly = int(np.count_nonzero(mask & ~m))
            if newly:
                reasons[f.name] = newly
            mask &= m
        nodes = np.flatnonzero(mask)
        if nodes.size == 0:
            return Status(UNSCHEDULABLE, reasons, plugin="filter", message=cycle.get(WHY, ""))
        if self.sample_nodes and nodes.size > self.sample_nodes:
            nodes = np.sort(rng.choice(nodes, self.sample_nodes, replace=False))
        if len(self.scorers) == 1 and self.scorers[0][1] > 0:
            total = self.scorers[0][0].score(state, task, nodes, cycle).astype(float)
        else:
            total = np.zeros(nodes.size)
            for plugin, weight in self.scorers:
                if weight:
                    total += weight * normalize(plugin.score(state, task, nodes, cycle))
        best = np.flatnonzero(total >= total.max() - 1e-9)
        pick = best[0] if self.tie_break == "first" or best.size == 1 else rng.choice(best)
        node = int(nodes[pick])
        return Placement(node, self.picker.pick(state, task, node, cycle, rng))

    def begin(
        self, state: ClusterState, pending: Sequence[Any], running: dict[str, Any], now_s: float
    ) -> None:
        """Tell the plugins that look at the whole snapshot that a session starts: those
        with a ``begin`` method (Kubernetes' PreFilter sees one pod; these see the jobs,
        running ones and when they end, as `plugins_sites.SiteWait` needs)."""
        for plugin in [*self.filters, *(p for p, _ in self.scorers)]:
            if hasattr(plugin, "begin"):
                plugin.begin(state, pending, running, now_s)

    def bind(self, state: ClusterState, task: Task, placement: Placement) -> None:
        """Commit a placement to the state and tell the plugins that keep their own view."""
        state.allocate(
            placement.node, task.cpu_milli, task.memory_mib, placement.gpus, task.gpu_mem_mib
        )
        for listener in self.listeners:
            listener.bound(state, task, placement)

    def unbind(self, state: ClusterState, task: Task, placement: Placement) -> None:
        state.release(
            placement.node, task.cpu_milli, task.memory_mib, placement.gpus, task.gpu_mem_mib
        )
        for listener in self.listeners:
            listener.unbound(state, task, placement)


class Statement:
    """Tentative placements that are committed or discarded as a whole (Volcano's Statement)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.ops: list[tuple[Task, Placement]] = []

    def allocate(self, task: Task, placement: Placement) -> None:
        self.state.allocate(
            placement.node, task.cpu_milli, task.memory_mib, placement.gpus, task.gpu_mem_mib
        )
        self.ops.append((task, placement))

    def discard(self) -> None:
        """Undo every tentative allocation, newest first."""
        for task, p in reversed(self.ops):
            self.state.release(p.node, task.cpu_milli, task.memory_mib, p.gpus, task.gpu_mem_mib)
        self.ops.clear()

    def commit(self) -> list[tuple[Task, Placement]]:
        done, self.ops = self.ops, []
        return done
