"""The baselines of the FGD paper and FGD itself, as its published simulator scores them.

Formulas follow hkust-adsl/kubernetes-scheduler-simulator (the artifact of
Weng et al., USENIX ATC'23), re-derived here, not copied: integer scores (so
ties are common and broken at random by the framework), the fixed normalisers
128 cores and 8 GPUs of its BestFit and DotProduct, and FGD's fragmentation
measure. "Left" means free after what is already bound.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from suanli.cluster.state import ClusterState
from suanli.cluster.task import MILLI, Task
from suanli.sched.framework import CycleState, Placement
from suanli.sched.plugins_fit import BestFitGpu

CPU_NORM = 128_000.0  # milli-CPU: the simulator normalises by a 128-core node
GPU_NORM = 8_000.0  # GPU-milli: ... and by an 8-GPU node


def _req(task: Task) -> int:
    return task.num_gpu * task.gpu_milli


@dataclass
class BestFitScore:
    """score = int(100 (1 - s)), s = 0.5 (cpu left after) / 128 cores + 0.5 (GPU left after) / 8."""

    name: str = "best-fit"

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        s = (
            0.5 * (state.cpu_free[nodes] - task.cpu_milli) / CPU_NORM
            + 0.5 * (state.milli_free[nodes] - _req(task)) / GPU_NORM
        )
        return np.trunc(100 * (1 - s))


@dataclass
class DotProductScore:
    """score = int(100 (1 - n.p / 2)): node-left and request vectors over (CPU, GPU)."""

    name: str = "dot-product"

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        dot = (state.cpu_free[nodes] / CPU_NORM) * (task.cpu_milli / CPU_NORM) + (
            state.milli_free[nodes] / GPU_NORM
        ) * (_req(task) / GPU_NORM)
        return np.trunc(100 * (1 - dot / 2))


@dataclass
class GpuPackingScore:
    """Prefer partly used devices, then partly used nodes, then idle nodes.

    * no GPU asked: 0
    * node entirely idle: max(33 - free devices, free devices)
    * the devices it would take include a fully free one: max(50 - k, 33), k such devices
    * else (a share on a partly used device): max(100 - floor(left * 100 / 1000) // 10, 50)
    """

    name: str = "gpu-packing"

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        if _req(task) == 0:
            return np.zeros(nodes.size)
        free = state.gpu_free[nodes]
        count = state.gpu_count[nodes]
        idle = state.full_free[nodes] == count
        if task.shares_gpu:
            cand = np.where(free >= task.gpu_milli, free, MILLI + 1)
            left = cand.min(axis=1)  # the fullest device it fits on (best fit)
            partial = np.maximum(100 - (left * 100 // MILLI) // 10, 50)
            fresh = np.full(nodes.size, max(50 - 1, 33))
            s = np.where(left == MILLI, fresh, partial)
        else:
            s = np.full(nodes.size, max(50 - task.num_gpu, 33))
        return np.where(idle, np.maximum(33 - count, count), s).astype(float)


TAGS = 10  # share-gpu, 1-gpu .. 8-gpu, other


def _tag(task: Task) -> int:
    if _req(task) == 0:
        return -1
    return 0 if task.shares_gpu else min(task.num_gpu, TAGS - 1)


@dataclass
class GpuClusteringScore:
    """Keep pods of one GPU shape together.

    base = floor(25 (8000 - GPU left) / 8000), plus 75 if the node holds only this
    pod's shape, 50 if it holds it among others, 25 if it holds no GPU pods, 0 if
    only other shapes. No GPU asked: 0.
    """

    name: str = "gpu-clustering"
    counts: np.ndarray | None = None  # nodes x TAGS, pods of each shape bound there

    def _ensure(self, state: ClusterState) -> np.ndarray:
        if self.counts is None or self.counts.shape[0] != state.num_nodes:
            self.counts = np.zeros((state.num_nodes, TAGS), dtype=np.int64)
        return self.counts

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        tag = _tag(task)
        if tag < 0:
            return np.zeros(nodes.size)
        counts = self._ensure(state)[nodes]
        mine = counts[:, tag] > 0
        total = counts.sum(axis=1)
        others = total - counts[:, tag] > 0
        bonus = np.where(mine & ~others, 75, np.where(mine, 50, np.where(total == 0, 25, 0)))
        base = (25 * (GPU_NORM - state.milli_free[nodes])) // GPU_NORM
        return (base + bonus).astype(float)

    def bound(self, state: ClusterState, task: Task, placement: Placement) -> None:
        tag = _tag(task)
        if tag >= 0:
            self._ensure(state)[placement.node, tag] += 1

    def unbound(self, state: ClusterState, task: Task, placement: Placement) -> None:
        tag = _tag(task)
        if tag >= 0:
            self._ensure(state)[placement.node, tag] -= 1


@dataclass(frozen=True)
class PodClass:
    cpu_milli: int
    gpu_milli: int
    num_gpu: int
    gpu_spec: frozenset[str]
    weight: float


def typical_pods(pods: list[Task], coverage: float = 0.95) -> list[PodClass]:
    """The workload's pod shapes by popularity, the most common covering ``coverage``.

    Shapes are (CPU, GPU-milli, devices, allowed types); memory is not part of
    the shape. Weights are renormalised to sum to 1 over the kept shapes.
    """
    count = Counter((p.cpu_milli, p.gpu_milli, p.num_gpu, p.gpu_spec) for p in pods)
    ranked = sorted(count.items(), key=lambda kv: (-kv[1], -kv[0][2], -kv[0][1], -kv[0][0]))
    kept, total = [], 0
    for key, n in ranked:
        kept.append((key, n))
        total += n
        if total >= coverage * len(pods):
            break
    return [PodClass(c, g, n, spec, k / total) for (c, g, n, spec), k in kept]


@dataclass(frozen=True)
class ShapeTable:
    """The workload's pod shapes as arrays, and which device types each may use."""

    num: np.ndarray  # devices per pod
    need: np.ndarray  # milli needed on each device (0 for CPU-only)
    cpu: np.ndarray
    weight: np.ndarray
    type_masks: np.ndarray  # shapes x device types

    @classmethod
    def build(cls, classes: list[PodClass], types: list[str]) -> ShapeTable:
        return cls(
            num=np.array([c.num_gpu for c in classes]),
            need=np.array(
                [(c.gpu_milli if c.num_gpu == 1 else MILLI) if c.num_gpu else 0 for c in classes]
            ),
            cpu=np.array([c.cpu_milli for c in classes]),
            weight=np.array([c.weight for c in classes]),
            type_masks=np.array(
                [[not c.gpu_spec or t in c.gpu_spec for t in types] or [True] for c in classes],
                dtype=bool,
            ),
        )


def fragmentation(
    shapes: ShapeTable, cpu_left: np.ndarray, gpu_left: np.ndarray, gpu_type: np.ndarray
) -> np.ndarray:
    """Expected GPU-milli of each node that the workload's pods cannot use (FGD, Sec. 4).

    For a pod shape: a CPU-only shape, a type it may not use, or too little CPU or
    too few fitting devices make all the node's free GPU-milli fragment; otherwise
    the free milli on devices too small for the shape's share is fragment. All
    shapes are evaluated at once (nodes x shapes x devices) in one numpy pass.
    """
    total = gpu_left.sum(axis=1).astype(float)
    fits = gpu_left[:, None, :] >= shapes.need[None, :, None]
    enough = fits.sum(axis=2) >= shapes.num[None, :]
    ok = enough & (cpu_left[:, None] >= shapes.cpu[None, :]) & (shapes.num[None, :] > 0)
    ok &= (gpu_type >= 0)[:, None] & shapes.type_masks[:, np.maximum(gpu_type, 0)].T
    small = np.where(fits, 0, gpu_left[:, None, :]).sum(axis=2)
    return np.where(ok, small, total[:, None]) @ shapes.weight


@dataclass
class FragmentationScore:
    """FGD: place where the workload's expected fragmentation grows least.

    score = int(100 sigmoid((F_before - F_after) / 1000)). For a share, every
    device it fits on is tried and the best (lowest index on ties) is what the
    pod gets. Scores are cached per pod shape and node, and recomputed only for
    nodes whose state changed since (one per placement), which is what makes a
    decision cheap.
    """

    classes: list[PodClass]
    name: str = "fgd"
    _shapes: ShapeTable | None = None
    _types: list[str] = field(default_factory=list)
    _before: np.ndarray | None = None
    _before_ver: np.ndarray | None = None
    _cache: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )

    def _setup(self, state: ClusterState) -> None:
        if (
            self._shapes is not None
            and self._types == state.types
            and self._before is not None
            and self._before.size == state.num_nodes
        ):
            return
        self._types = list(state.types)
        self._shapes = ShapeTable.build(self.classes, state.types)
        self._before = np.zeros(state.num_nodes)
        self._before_ver = np.full(state.num_nodes, -1)
        self._cache.clear()

    def _frag(
        self, state: ClusterState, cpu: np.ndarray, gpu: np.ndarray, types: np.ndarray
    ) -> np.ndarray:
        assert self._shapes is not None
        return fragmentation(self._shapes, cpu, gpu, types)

    def before(self, state: ClusterState) -> np.ndarray:
        self._setup(state)
        assert self._before is not None and self._before_ver is not None
        stale = np.flatnonzero(self._before_ver != state.version)
        if stale.size:
            self._before[stale] = self._frag(
                state, state.cpu_free[stale], state.gpu_free[stale], state.gpu_type[stale]
            )
            self._before_ver[stale] = state.version[stale]
        return self._before

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        before = self.before(state)
        key = (task.cpu_milli, task.gpu_milli, task.num_gpu)
        entry = self._cache.get(key)
        if entry is None:
            entry = (
                np.zeros(state.num_nodes),
                np.zeros(state.num_nodes, dtype=np.int64),
                np.full(state.num_nodes, -1),
            )
            self._cache[key] = entry
        scores, choice, seen = entry
        stale = nodes[seen[nodes] != state.version[nodes]]
        if stale.size:
            s, g = self._after_scores(state, task, stale, before[stale])
            scores[stale], choice[stale], seen[stale] = s, g, state.version[stale]
        cycle[self.name] = choice
        return scores[nodes]

    def _after_scores(
        self, state: ClusterState, task: Task, nodes: np.ndarray, before: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores (and, for a share, the device) for ``nodes``, computed once per distinct
        node state: fragmentation ignores device order, and many nodes look alike."""
        cpu = state.cpu_free[nodes]
        gpu = state.gpu_free[nodes]
        types = state.gpu_type[nodes]
        perm = np.argsort(gpu, axis=1, kind="stable")
        sgpu = np.take_along_axis(gpu, perm, axis=1)
        uniq, inv = np.unique(np.column_stack([types, cpu, sgpu]), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        u_types, u_cpu, u_gpu = uniq[:, 0], uniq[:, 1], uniq[:, 2:]
        u_before = self._frag(state, u_cpu, u_gpu, u_types)
        u_cpu_after = u_cpu - task.cpu_milli
        if task.shares_gpu:
            n, g = u_gpu.shape
            # every (state, device) pair: the state with the share taken from that device
            trial = np.repeat(u_gpu[:, None, :], g, axis=1)
            idx = np.arange(g)
            trial[:, idx, idx] -= task.gpu_milli
            after = self._frag(
                state, np.repeat(u_cpu_after, g), trial.reshape(n * g, g), np.repeat(u_types, g)
            ).reshape(n, g)
            u_sc = np.trunc(100 / (1 + np.exp(-(u_before[:, None] - after) / 1000.0)))
            u_sc = np.where(u_gpu >= task.gpu_milli, u_sc, -1)
            # back to each node's own device order; the first device among equals wins
            rank = np.argsort(perm, axis=1)
            sc = np.take_along_axis(u_sc[inv], rank, axis=1)
            best = sc.argmax(axis=1)
            return sc[np.arange(nodes.size), best], best
        trial = u_gpu.copy()
        if task.num_gpu:
            # whole devices: fully free ones (sorted ascending, so the last columns)
            trial[:, trial.shape[1] - task.num_gpu :] = np.where(
                trial[:, trial.shape[1] - task.num_gpu :] == MILLI,
                0,
                trial[:, trial.shape[1] - task.num_gpu :],
            )
        after = self._frag(state, u_cpu_after, trial, u_types)
        u_sc = np.trunc(100 / (1 + np.exp(-(u_before - after) / 1000.0)))
        return u_sc[inv], np.zeros(nodes.size, dtype=np.int64)


@dataclass
class FragAwareScore:
    """Ours: FGD's fragmentation gradient first, then a principled tie-break.

    FGD's integer sigmoid leaves many nodes tied — every node where a pod
    changes the expected fragmentation by about the same amount, and for a
    CPU-only pod usually every node. Among the tied nodes:

    * a GPU pod goes to the best fit (fullest in CPU and devices), keeping
      emptier nodes whole for the pods that need them;
    * a CPU-only pod goes to the node with the least free GPU: its CPU is then
      least likely to be the CPU that stranded GPUs on that node will need.

    score = 1000 * FGD score + tie-break (the tie-break stays below 1000).
    """

    frag: FragmentationScore
    name: str = "frag-aware"

    def score(
        self, state: ClusterState, task: Task, nodes: np.ndarray, cycle: CycleState
    ) -> np.ndarray:
        primary = self.frag.score(state, task, nodes, cycle)
        if task.num_gpu == 0:
            tie = 500.0 - state.milli_free[nodes] / 64.0  # 0..8000 milli -> 500..375
        else:
            tie = BestFitScore().score(state, task, nodes, cycle)  # about 0..100
        return 1000.0 * primary + tie


@dataclass
class FragmentationGpu:
    """Device picker for FGD: the device its scorer chose for a share."""

    name: str = "frag-gpu"
    scorer: FragmentationScore | None = None

    def pick(
        self,
        state: ClusterState,
        task: Task,
        node: int,
        cycle: CycleState,
        rng: np.random.Generator,
    ) -> tuple[tuple[int, int], ...]:
        if task.shares_gpu:
            choice = cycle["fgd"]
            return ((int(choice[node]), task.gpu_milli),)
        return BestFitGpu().pick(state, task, node, cycle, rng)  # whole devices: same rule
