"""Cluster state bookkeeping and the scheduling framework, table-driven."""

from __future__ import annotations

import numpy as np
import pytest

from suanli.cluster import ClusterState, NodeSpec, Task
from suanli.sched.framework import Framework, Placement, Statement, Status, normalize
from suanli.sched.plugins_fit import BestFitGpu, ResourceFit
from suanli.sched.plugins_openb import (
    BestFitScore,
    DotProductScore,
    GpuClusteringScore,
    GpuPackingScore,
    PodClass,
    ShapeTable,
    fragmentation,
)


def cluster() -> ClusterState:
    return ClusterState(
        [
            NodeSpec("a", cpu_milli=96_000, memory_mib=393_216, gpu_count=8, gpu_type="G2"),
            NodeSpec("b", cpu_milli=64_000, memory_mib=262_144, gpu_count=2, gpu_type="T4"),
            NodeSpec("c", cpu_milli=32_000, memory_mib=131_072, gpu_count=0),
        ]
    )


def test_allocate_release_keeps_counters() -> None:
    s = cluster()
    s.allocate(0, 12_000, 1024, [(0, 500), (1, 1000)])
    assert s.full_free[0] == 6 and s.milli_free[0] == 6_500
    assert s.allocated_gpu_milli() == 1_500
    s.release(0, 12_000, 1024, [(0, 500), (1, 1000)])
    assert s.full_free[0] == 8 and s.milli_free[0] == 8_000 and s.cpu_free[0] == 96_000
    with pytest.raises(ValueError, match="over-allocation"):
        s.allocate(1, 0, 0, [(0, 1000), (0, 1)])
    c = s.copy()
    c.allocate(0, 1000, 0, [])
    assert s.cpu_free[0] == 96_000  # the copy is independent


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (Task("cpu", cpu_milli=40_000), [True, True, False]),  # c has only 32 cores
        (Task("share", cpu_milli=1000, num_gpu=1, gpu_milli=300), [True, True, False]),
        (Task("two", cpu_milli=1000, num_gpu=2, gpu_milli=1000), [True, True, False]),
        (Task("four", cpu_milli=1000, num_gpu=4, gpu_milli=1000), [True, False, False]),
        (
            Task("t4only", cpu_milli=1000, num_gpu=1, gpu_milli=1000, gpu_spec=frozenset({"T4"})),
            [False, True, False],
        ),
    ],
)
def test_resource_fit(task: Task, expected: list[bool]) -> None:
    assert ResourceFit().filter(cluster(), task, {}).tolist() == expected  # type: ignore[arg-type]


def test_baseline_scores_worked_by_hand() -> None:
    s = cluster()
    s.allocate(0, 48_000, 0, [(0, 700)])  # a: 48 cores and 7,300 milli left
    t = Task("p", cpu_milli=8_000, num_gpu=1, gpu_milli=500)
    nodes = np.array([0, 1])
    # BestFit: s = 0.5*(48000-8000)/128000 + 0.5*(7300-500)/8000 = 0.15625 + 0.425 = 0.58125
    #   -> int(100 * 0.41875) = 41;  b: 0.5*56000/128000 + 0.5*1500/8000 = 0.3125 -> 68
    assert BestFitScore().score(s, t, nodes, {}).tolist() == [41, 68]  # type: ignore[arg-type]
    # DotProd: a: (48000/128000)(8000/128000) + (7300/8000)(500/8000) = 0.0234375 + 0.05703
    #   = 0.08047 -> int(100 (1 - 0.0402)) = 95;  b: 0.5*0.0625 + 0.25*0.0625 = 0.046875 -> 97
    assert DotProductScore().score(s, t, nodes, {}).tolist() == [95, 97]  # type: ignore[arg-type]
    # GpuPacking: a has a used device with 300 left >= ... no: 300 < 500, so the share
    #   takes a fully free device on a used node: max(50 - 1, 33) = 49; b idle 2-GPU node:
    #   max(33 - 2, 2) = 31
    assert GpuPackingScore().score(s, t, nodes, {}).tolist() == [49, 31]  # type: ignore[arg-type]
    small = Task("q", cpu_milli=1_000, num_gpu=1, gpu_milli=200)
    # the 300-left device fits: 100 - floor(300*100/1000)//10 = 100 - 3 = 97
    assert GpuPackingScore().score(s, small, nodes, {})[0] == 97  # type: ignore[arg-type]


def test_gpu_clustering_prefers_nodes_of_the_same_shape() -> None:
    s = cluster()
    plugin = GpuClusteringScore()
    share = Task("s", num_gpu=1, gpu_milli=500)
    plugin.bound(s, share, Placement(0, ((0, 500),)))
    s.allocate(0, 0, 0, [(0, 500)])
    # a holds only shares: base floor(25*(8000-7500)/8000) = 1, +75 = 76;
    # b (2 devices, none used): base floor(25*(8000-2000)/8000) = 18, +25 = 43
    assert plugin.score(s, share, np.array([0, 1]), {}).tolist() == [76, 43]  # type: ignore[arg-type]
    whole = Task("w", num_gpu=1, gpu_milli=1000)
    assert plugin.score(s, whole, np.array([0, 1]), {}).tolist() == [1, 43]  # type: ignore[arg-type]


def test_fragmentation_worked_by_hand() -> None:
    # one node, two devices left 1000 and 300, 10 cores left; shapes: half a GPU with 4 cores
    # (weight 0.5), a whole GPU with 20 cores (0.25), a CPU pod (0.25)
    classes = [
        PodClass(4_000, 500, 1, frozenset(), 0.5),
        PodClass(20_000, 1000, 1, frozenset(), 0.25),
        PodClass(2_000, 0, 0, frozenset(), 0.25),
    ]
    shapes = ShapeTable.build(classes, ["G2"])
    f = fragmentation(shapes, np.array([10_000]), np.array([[1000, 300]]), np.array([0]))
    # half-GPU fits (CPU ok): the 300 device is fragment -> 0.5*300 = 150
    # whole GPU: CPU short (10 < 20 cores) -> all 1300 -> 0.25*1300 = 325
    # CPU pod: all free GPU is fragment to it -> 0.25*1300 = 325
    assert f.tolist() == [pytest.approx(800.0)]


def test_normalize_and_ties() -> None:
    assert normalize(np.array([2.0, 4.0, 6.0])).tolist() == [0, 50, 100]
    assert normalize(np.array([3.0, 3.0])).tolist() == [0, 0]
    fw = Framework([ResourceFit()], [(BestFitScore(), 1)], BestFitGpu(), tie_break="first")
    p = fw.place(cluster(), Task("x", cpu_milli=100), np.random.default_rng(0))
    assert isinstance(p, Placement)
    none = fw.place(cluster(), Task("big", num_gpu=16, gpu_milli=1000), np.random.default_rng(0))
    assert isinstance(none, Status) and not none.ok and none.reasons["resource-fit"] == 3


def test_statement_rolls_a_gang_back() -> None:
    s = cluster()
    st = Statement(s)
    st.allocate(
        Task("m0", cpu_milli=1000, num_gpu=2, gpu_milli=1000), Placement(0, ((0, 1000), (1, 1000)))
    )
    st.allocate(
        Task("m1", cpu_milli=1000, num_gpu=2, gpu_milli=1000), Placement(1, ((0, 1000), (1, 1000)))
    )
    assert s.allocated_gpu_milli() == 4000
    st.discard()
    assert s.allocated_gpu_milli() == 0 and s.cpu_free[0] == 96_000


def test_memory_sliced_sharing_like_hami_and_vnpu() -> None:
    # a 910B with 20 AI cores and 64 GB modelled as 1000 milli + 65,536 MiB per device;
    # vNPU template "2 cores, 6 GB" = 100 milli + 6,144 MiB
    s = ClusterState([NodeSpec("npu", 192_000, 1_572_864, 1, "910B", gpu_memory_mib=65_536)])
    fw = Framework([ResourceFit()], [(BestFitScore(), 1)], BestFitGpu(), tie_break="first")
    rng = np.random.default_rng(0)
    small = Task("v", num_gpu=1, gpu_milli=100, gpu_mem_mib=6_144)
    placed = 0
    while isinstance(p := fw.place(s, small, rng), Placement):
        fw.bind(s, small, p)
        placed += 1
    # memory binds first: floor(65,536 / 6,144) = 10 slices, though cores allow 10 as well
    assert placed == 10 and s.gpu_mem_free[0, 0] == 65_536 - 10 * 6_144
    fat = Task("f", num_gpu=1, gpu_milli=50, gpu_mem_mib=8_192)  # cores left, memory not
    assert isinstance(fw.place(s, fat, rng), Status)
    fw.unbind(s, small, Placement(0, ((0, 100),)))
    assert s.gpu_mem_free[0, 0] == 65_536 - 9 * 6_144
    # a whole device takes all of its memory
    s2 = ClusterState([NodeSpec("g", 64_000, 262_144, 2, "A100", gpu_memory_mib=81_920)])
    s2.allocate(0, 0, 0, [(1, 1000)])
    assert s2.gpu_mem_free[0].tolist() == [81_920, 0]
