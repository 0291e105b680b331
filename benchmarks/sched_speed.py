"""Placement decisions per second, and openb run times, on one core.

    python benchmarks/sched_speed.py

Targets (issue: scheduler): >= 2,000 placement decisions/s in pure Python on a
5,000-node heterogeneous cluster with fractional GPUs (Kubernetes' scheduler CI
expects 680 pods/s at 5,000 nodes, 180 pods/s with extended resources), and a
full openb default run (8,152 pods, plus the protocol's top-up to 130%) in
under 10 s per seed.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from suanli.cluster import NodeSpec, Task
from suanli.cluster.state import ClusterState
from suanli.sched.framework import Placement
from suanli.sched.policies import NAMED, PluginContext, build
from suanli.sim.openb import run_openb
from suanli.sim.traces import read_openb_nodes, read_openb_pods, shared_data_dir

TARGET_PER_S = 2000


def synthetic_cluster(n: int, rng: np.random.Generator) -> list[NodeSpec]:
    kinds = [
        ("h800-sxm", 8, 128_000),
        ("ascend-910b", 8, 192_000),
        ("a100-80gb", 8, 128_000),
        ("mlu370-x8", 8, 64_000),
        ("t4", 2, 64_000),
        ("l40s", 4, 96_000),
    ]
    out = []
    for i in range(n):
        t, g, cpu = kinds[int(rng.integers(len(kinds)))]
        out.append(NodeSpec(f"n{i}", cpu, 1_048_576, g, t, switch=f"s{i // 32}"))
    return out


def synthetic_pods(n: int, rng: np.random.Generator) -> list[Task]:
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.4:
            out.append(
                Task(
                    f"p{i}",
                    cpu_milli=4000,
                    memory_mib=8192,
                    num_gpu=1,
                    gpu_milli=int(rng.choice([250, 300, 500, 700])),
                )
            )
        elif r < 0.85:
            out.append(Task(f"p{i}", cpu_milli=8000, memory_mib=16384, num_gpu=1, gpu_milli=1000))
        elif r < 0.95:
            out.append(
                Task(
                    f"p{i}",
                    cpu_milli=32000,
                    memory_mib=65536,
                    num_gpu=int(rng.choice([2, 4, 8])),
                    gpu_milli=1000,
                )
            )
        else:
            out.append(Task(f"p{i}", cpu_milli=4000, memory_mib=4096))
    return out


def main() -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rng = np.random.default_rng(0)
    nodes = synthetic_cluster(5000, rng)
    pods = synthetic_pods(6000, rng)
    ok = True
    for policy in ("best-fit", "gpu-packing", "frag-aware"):
        state = ClusterState(nodes)
        fw = build(NAMED[policy], PluginContext(workload=pods))
        prng = np.random.default_rng(1)
        t0 = time.perf_counter()
        placed = 0
        for p in pods:
            res = fw.place(state, p, prng)
            if isinstance(res, Placement):
                fw.bind(state, p, res)
                placed += 1
        wall = time.perf_counter() - t0
        rate = len(pods) / wall
        print(
            f"{policy:12s} 5,000 nodes: {rate:8,.0f} decisions/s ({rate / TARGET_PER_S:.1f}x the "
            f"{TARGET_PER_S:,}/s target), {placed:,}/{len(pods):,} placed"
        )
        ok &= rate >= TARGET_PER_S
    d = shared_data_dir()
    if d is None:
        print("SKIP openb timing: ../shared/data not found")
        return 0 if ok else 1
    onodes = read_openb_nodes(d / "openb_node_list_gpu_node.csv")
    opods = read_openb_pods(d / "openb_pod_list_default.csv")
    for policy in ("best-fit", "fgd", "frag-aware"):
        run = run_openb(
            onodes, opods, build(NAMED[policy], PluginContext(workload=opods)), policy, 42
        )
        print(
            f"openb default {policy:10s}: {run.decisions:,} pods in {run.wall_s:.1f} s "
            f"({run.decisions / run.wall_s:,.0f} decisions/s; target < 10 s per seed)"
        )
        ok &= run.wall_s < 10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
