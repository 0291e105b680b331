"""Simulators: the openb protocol and the time-driven replay, on small and real inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from suanli.cluster import NodeSpec, Task
from suanli.sched.policies import NAMED, PluginContext, PolicyFileError, build, parse_policy
from suanli.sim.openb import checkpoint_ratio, run_openb, tune
from suanli.sim.replay import run_replay
from suanli.sim.traces import TraceError, read_openb_nodes, read_openb_pods

NODES = [
    NodeSpec(f"n{i}", cpu_milli=32_000, memory_mib=65_536, gpu_count=2, gpu_type="T4")
    for i in range(4)
]


def test_tune_grows_to_the_target_and_stops_on_the_share() -> None:
    pods = [Task(f"p{i}", num_gpu=1, gpu_milli=500) for i in range(4)]  # 2,000 milli
    out = tune(pods, 4_000, 1.3, np.random.default_rng(0))
    total = sum(p.num_gpu * p.gpu_milli for p in out)
    # target 5,200: appends 500s while total + 500 <= 5200 -> stops at 5,000
    assert total == 5_000 and len(out) == 10
    shrunk = tune(
        [Task(f"q{i}", num_gpu=1, gpu_milli=1000) for i in range(10)],
        4_000,
        1.3,
        np.random.default_rng(0),
    )
    assert sum(p.gpu_milli for p in shrunk) == 5_000  # removed until <= 5,200


def test_checkpoint_ratio_uses_rounded_arrivals() -> None:
    events = [(99.4, 90.0), (99.6, 91.0), (100.4, 93.0), (101.0, 95.0)]
    # rounds to 100: 99.6 and 100.4 -> mean(91, 93) = 92
    assert checkpoint_ratio(events, 100) == 92.0
    assert checkpoint_ratio(events, 130) == 95.0  # none near 130: the last value


def test_openb_run_is_deterministic_for_a_seed() -> None:
    pods = [
        Task(f"p{i:03d}", cpu_milli=4_000, num_gpu=1, gpu_milli=(300 + 70 * i) % 1000 or 1000)
        for i in range(40)
    ]
    fw = build(NAMED["frag-aware"], PluginContext(workload=pods))
    a = run_openb(NODES, pods, fw, "frag-aware", 7)
    b = run_openb(
        NODES, pods, build(NAMED["frag-aware"], PluginContext(workload=pods)), "frag-aware", 7
    )
    assert a.allocation_ratio == b.allocation_ratio
    assert 0 < a.allocation_ratio["130"] <= 1


def test_replay_waits_then_runs() -> None:
    # one 2-GPU node; three 2-GPU tasks of 100 s arriving at 0, 10, 20: they queue
    nodes = [NodeSpec("n", cpu_milli=8000, memory_mib=8192, gpu_count=2, gpu_type="T4")]
    tasks = [
        Task(f"t{i}", num_gpu=2, gpu_milli=1000, arrival_s=10.0 * i, duration_s=100.0)
        for i in range(3)
    ]
    r = run_replay(nodes, tasks, build(NAMED["best-fit"]), "best-fit")
    # starts at 0, 100, 200 -> JCT 100, 190, 280; waits 0, 90, 180
    assert sorted(r.jct_s) == [100.0, 190.0, 280.0]
    assert sorted(r.wait_s) == [0.0, 90.0, 180.0]
    assert r.makespan_s == pytest.approx(300.0)
    assert r.utilization["T4"] == pytest.approx(1.0)


def test_replay_durations_follow_the_chip() -> None:
    nodes = [NodeSpec("fast", 8000, 8192, 1, "H100"), NodeSpec("slow", 8000, 8192, 1, "T4")]
    thr = {("job", "H100"): 10.0, ("job", "T4"): 1.0}
    t = Task("a", num_gpu=1, gpu_milli=1000, work=100.0, labels={"workload": "job"})
    ctx = PluginContext(throughput=thr)
    fast = run_replay(nodes, [t], build(NAMED["perf-affinity"], ctx), "pa", throughput=thr)
    assert fast.jct_s == [10.0]


def test_real_openb_files(shared_dir: Path) -> None:
    nodes = read_openb_nodes(shared_dir / "data" / "openb_node_list_gpu_node.csv")
    assert len(nodes) == 1213 and sum(n.gpu_count for n in nodes) == 6212
    pods = read_openb_pods(shared_dir / "data" / "openb_pod_list_default.csv")
    assert len(pods) == 8152
    multi = read_openb_pods(shared_dir / "data" / "openb_pod_list_multigpu50.csv")
    assert multi[0].duration_s == 0.0  # no time columns in this variant


def test_bad_trace_and_policy_files(tmp_path: Path) -> None:
    bad = tmp_path / "nodes.csv"
    bad.write_text("sn,cpu_milli\nx,1\n")
    with pytest.raises(TraceError, match="missing column"):
        read_openb_nodes(bad)
    with pytest.raises(PolicyFileError) as info:
        parse_policy(
            {
                "actions": ["allocate", "dance"],
                "tiers": [{"plugins": [{"name": "best-fit", "weight": -1}, {"name": "nope"}]}],
            }
        )
    msg = str(info.value)
    assert "actions[1]" in msg and "weight: must be >= 0" in msg and "unknown plugin 'nope'" in msg
    ok = parse_policy(
        {
            "tiers": [{"plugins": [{"name": "priority"}, {"name": "fgd", "weight": 1}]}],
            "device_picker": "frag-gpu",
        }
    )
    assert ok.scorers == [("fgd", 1.0)] and "resource-fit" in ok.filters


def test_cluster_yaml_prices_and_errors(tmp_path: Path) -> None:
    from suanli.cli.simulate_cmd import cost_and_energy
    from suanli.sim.spec import SpecError, read_cluster_yaml

    good = tmp_path / "c.yaml"
    good.write_text(
        "nodes:\n  - {count: 2, gpu_type: h800-sxm, gpus: 8, usd_per_gpu_hour: 2.0}\n"
        "  - {count: 1, gpu_type: mlu370-x8, gpus: 8}\n"
    )
    nodes, _ = read_cluster_yaml(good)
    assert len(nodes) == 3 and nodes[0].labels["usd_per_gpu_hour"] == "2.0"
    # 1 h on an H800 at the node's 2.0 USD + 2 h on an MLU370 (no public price: 0)
    cost, energy = cost_and_energy(nodes, {"h800-sxm": 3600.0, "mlu370-x8": 7200.0})
    assert cost == 2.0 and energy == 3600.0 * 700 + 7200.0 * 250
    bad = tmp_path / "b.yaml"
    bad.write_text("nodes:\n  - {count: 1, gpu_type: h900, gpus: 8}\n")
    with pytest.raises(SpecError, match=r"nodes\[0\]: unknown accelerator 'h900'"):
        read_cluster_yaml(bad)


def test_v2026_inventory_and_gavel_traces(shared_dir: Path) -> None:
    from suanli.sim.traces import read_gavel_trace, read_nodes

    nodes = read_nodes(shared_dir / "data" / "alibaba_v2026_spot_gpu_node_info.csv")
    # README: 4,278 nodes, 10,412 GPUs; catalog names where the model is disclosed
    assert len(nodes) == 4278 and sum(n.gpu_count for n in nodes) == 10412
    assert {"a100-80gb", "h800-sxm", "a10", "a800-80gb"} <= {n.gpu_type for n in nodes}
    philly = read_gavel_trace(shared_dir / "data" / "gavel_philly_vc_2869ce_seed0.trace")
    assert len(philly) == 533 and philly[0] == ("Transformer (batch size 128)", 4, 5352613.0, 0.0)
    physical = read_gavel_trace(shared_dir / "data" / "gavel_physical_artifact_evaluation.trace")
    assert len(physical) == 15 and physical[0][:3] == ("ResNet-50 (batch size 64)", 1, 2931.0)


def test_carbon_follows_site_intensity_and_pue() -> None:
    from suanli.cli.simulate_cmd import carbon_kg
    from suanli.cluster import Site

    sites = [
        Site("clean", pue=1.1, carbon_g_per_kwh=50),
        Site("coal", pue=1.5, carbon_g_per_kwh=900),
    ]
    # one H800 (700 W) for an hour: 0.7 kWh x PUE x intensity
    assert carbon_kg(sites, {("clean", "h800-sxm"): 3600.0}) == pytest.approx(0.7 * 1.1 * 0.05)
    assert carbon_kg(sites, {("coal", "h800-sxm"): 3600.0}) == pytest.approx(0.7 * 1.5 * 0.9)


def test_replay_preempts_training_for_a_service_and_resumes_it() -> None:
    nodes = [NodeSpec("n", cpu_milli=8000, memory_mib=8192, gpu_count=2, gpu_type="T4")]
    train = Task(
        "train", num_gpu=2, gpu_milli=1000, duration_s=100.0, preemptible=True, kind="train"
    )
    serve = Task(
        "svc", num_gpu=2, gpu_milli=1000, duration_s=50.0, arrival_s=20.0, priority=10, kind="serve"
    )
    cfg = NAMED["priority"]
    r = run_replay(
        nodes, [train, serve], build(cfg), "priority", actions=cfg.actions, ordering=cfg.ordering
    )
    # the service takes the node at 20 and leaves at 70; training checkpointed at 20
    # (80 s of work left), is requeued after its 30 s grace and restarts at 70 -> 150
    assert r.preemptions == 1
    assert sorted(r.jct_s) == [50.0, 150.0]
    # FIFO never preempts: the service waits for the training to finish at 100
    fifo = NAMED["fifo"]
    f = run_replay(
        nodes, [train, serve], build(fifo), "fifo", actions=fifo.actions, ordering=fifo.ordering
    )
    assert f.preemptions == 0 and sorted(f.jct_s) == [100.0, 130.0]


def test_replay_places_a_gang_whole_or_not_at_all() -> None:
    nodes = [NodeSpec(f"n{i}", 8000, 8192, 2, "T4") for i in range(2)]
    gang = [
        Task(
            f"g{i}",
            num_gpu=2,
            gpu_milli=1000,
            job="gang",
            min_available=2,
            duration_s=10.0,
            arrival_s=1.0,
        )
        for i in range(2)
    ]
    blocker = Task("b", num_gpu=2, gpu_milli=1000, duration_s=5.0)
    r = run_replay(nodes, [blocker, *gang], build(NAMED["best-fit"]), "best-fit")
    # the gang needs both nodes: it waits for the blocker (leaves at 5), then runs 5 -> 15
    assert sorted(r.jct_s) == [5.0, 14.0]


def test_an_elastic_job_with_fewer_members_runs_longer() -> None:
    def elastic() -> list[Task]:
        return [
            Task(f"e{i}", num_gpu=1, gpu_milli=1000, job="e", min_available=1, duration_s=10.0)
            for i in range(2)
        ]

    one = [NodeSpec("n", 8000, 8192, 1, "T4")]
    two = [NodeSpec("n", 8000, 8192, 2, "T4")]
    # the full gang (2 members) takes 10 s; on one device it starts anyway, at half speed
    assert run_replay(two, elastic(), build(NAMED["best-fit"]), "best-fit").jct_s == [10.0]
    assert run_replay(one, elastic(), build(NAMED["best-fit"]), "best-fit").jct_s == [20.0]


def test_sia_readers(shared_dir: Path) -> None:
    from suanli.sim.traces import (
        read_sia_peak_throughput,
        read_sia_step_times,
        read_sia_workload,
    )

    d = shared_dir / "data"
    peak = read_sia_peak_throughput(d / "sia_single_gpu_peak_throughput.csv")
    assert peak[("cifar10", "a100-40gb")] == 10062.55 and peak[("bert", "t4")] == 13.02
    steps = read_sia_step_times(d / "sia_placements_all.csv")
    assert len(steps) == 14001 and {s["gpu"] for s in steps} >= {"t4", "v100-32gb", "a100-40gb"}
    apps = {"cifar10": 5e6, "bert": 1e6, "deepspeech2": 1e6, "imagenet": 1e7, "yolov3": 1e6}
    tasks = read_sia_workload(d / "sia_philly_workload-1.csv", apps)
    first = [t for t in tasks if t.job == "cifar10-0"]
    assert len(first) == 6 and all(t.min_available == 6 and t.arrival_s == 107 for t in first)
    with pytest.raises(TraceError, match="no training length"):
        read_sia_workload(d / "sia_philly_workload-1.csv", {"cifar10": 1.0})


def test_replay_counts_gangs_that_can_never_fit() -> None:
    nodes = [NodeSpec("n", 64_000, 262_144, 8, "A100")]
    gang = [
        Task(f"g{i}", num_gpu=8, gpu_milli=1000, job="g", min_available=2, duration_s=5.0)
        for i in range(2)
    ]
    ok = Task("ok", num_gpu=1, gpu_milli=1000, duration_s=5.0)
    r = run_replay(nodes, [*gang, ok], build(NAMED["best-fit"]), "best-fit")
    assert r.unplaceable == 1 and r.jct_s == [5.0] and r.unfinished == 0


def test_restart_on_another_chip_resumes_by_work_not_seconds() -> None:
    # training starts on the slow chip (the fast one is busy), is preempted halfway by a
    # service there, and resumes on the fast chip: half the work at 10x speed
    nodes = [NodeSpec("slow", 8000, 8192, 1, "T4"), NodeSpec("fast", 8000, 8192, 1, "H100")]
    thr = {("w", "T4"): 1.0, ("w", "H100"): 10.0}
    blocker = Task("blk", num_gpu=1, gpu_milli=1000, duration_s=60.0, gpu_spec=frozenset({"H100"}))
    train = Task(
        "tr",
        num_gpu=1,
        gpu_milli=1000,
        work=100.0,
        preemptible=True,
        arrival_s=1.0,
        labels={"workload": "w"},
    )
    svc = Task(
        "svc",
        num_gpu=1,
        gpu_milli=1000,
        duration_s=500.0,
        priority=10,
        arrival_s=51.0,
        gpu_spec=frozenset({"T4"}),
    )
    cfg = NAMED["priority"]
    r = run_replay(
        nodes,
        [blocker, train, svc],
        build(cfg, PluginContext(throughput=thr)),
        "p",
        actions=cfg.actions,
        ordering=cfg.ordering,
        throughput=thr,
    )
    # train runs 1..51 on T4 (50 of 100 units), requeues at 81 (30 s grace), runs on the
    # H100 (free since 60): 50 units / 10 per s = 5 s -> done at 86, JCT 85
    assert r.preemptions == 1
    assert 85.0 in r.jct_s
