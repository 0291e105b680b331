"""Volcano-style actions: gangs, quotas, preemption with grace, reclaim, aging."""

from __future__ import annotations

from suanli.cluster import ClusterState, NodeSpec, Task
from suanli.sched.policies import NAMED, build
from suanli.sched.session import Job, Queue, Session


def state(nodes: int = 2, gpus: int = 4) -> ClusterState:
    return ClusterState([NodeSpec(f"n{i}", 64_000, 262_144, gpus, "A100") for i in range(nodes)])


def gpu_tasks(job: str, n: int, gpus: int = 1) -> list[Task]:
    return [
        Task(f"{job}-{i}", cpu_milli=1000, num_gpu=gpus, gpu_milli=1000, job=job) for i in range(n)
    ]


def session(st: ClusterState, pending: list[Job], running=None, queues=None, now=0.0):  # type: ignore[no-untyped-def]
    return Session(
        st, build(NAMED["best-fit"]), queues or [Queue("default")], pending, running or {}, now
    )


def test_gang_is_all_or_nothing() -> None:
    st = state(nodes=2, gpus=4)  # 8 devices
    big = Job("big", gpu_tasks("big", 3, gpus=4))  # needs 12 devices: cannot all fit
    res = session(st, [big]).run(["enqueue", "allocate"])
    assert res.bound == [] and "gang: 2 of 3" in res.unschedulable["big"]
    assert st.allocated_gpu_milli() == 0  # rolled back
    ok = Job("ok", gpu_tasks("ok", 2, gpus=4))
    res = session(st, [ok]).run(["enqueue", "allocate"])
    assert len(res.bound) == 2 and st.allocated_gpu_milli() == 8000


def test_a_gang_never_spans_sites_and_tries_each_site_whole() -> None:
    from suanli.cluster.state import Site

    nodes = [
        NodeSpec("east-0", 64_000, 262_144, 1, "A100", site="east"),
        NodeSpec("west-0", 64_000, 262_144, 1, "A100", site="west"),
        NodeSpec("west-1", 64_000, 262_144, 1, "A100", site="west"),
    ]
    st = ClusterState(nodes, [Site("east", "cn-east"), Site("west", "cn-west")])
    two = Job("two", gpu_tasks("two", 2))
    res = session(st, [two]).run(["enqueue", "allocate"])
    assert {st.specs[p.node].site for _, _, p in res.bound} == {"west"}
    # three devices are free across sites, but no one site has three: nothing starts
    st = ClusterState(nodes, [Site("east", "cn-east"), Site("west", "cn-west")])
    res = session(st, [Job("three", gpu_tasks("three", 3))]).run(["enqueue", "allocate"])
    assert res.bound == [] and "never spans sites" in res.unschedulable["three"]
    assert st.allocated_gpu_milli() == 0


def test_preemption_evicts_the_cheapest_victims_with_grace() -> None:
    st = state(nodes=1, gpus=4)
    s0 = session(
        st,
        [
            Job("low", gpu_tasks("low", 2), priority=1, preemptible=True, grace_s=60),
            Job("mid", gpu_tasks("mid", 2), priority=5, preemptible=True),
        ],
    )
    s0.run(["allocate"])
    running = s0.running
    service = Job("svc", gpu_tasks("svc", 2), priority=100, kind="serve")
    res = session(st, [service], running).run(["allocate", "preempt"])
    # only two devices are needed: the lowest-priority job goes, with its grace period
    assert [(e.job, e.grace_s) for e in res.evicted] == [("low", 60)]
    assert {name for name, _, _ in res.bound} == {"svc"}


def test_preemption_for_a_gang_evicts_within_the_one_site_that_will_hold_it() -> None:
    """Three devices free across two sites hold no gang of three. Evicting the cheapest
    victim (in the small site) would free three across sites and start nothing; the
    victim must be the one whose site then holds the whole gang."""
    from suanli.cluster.state import Site

    nodes = [
        NodeSpec("east-0", 64_000, 262_144, 2, "A100", site="east"),
        NodeSpec("west-0", 64_000, 262_144, 4, "A100", site="west"),
    ]
    st = ClusterState(nodes, [Site("east", "cn-east"), Site("west", "cn-west")])
    s0 = session(
        st,
        [
            Job("cheap", gpu_tasks("cheap", 1, gpus=2), priority=0, preemptible=True),
            Job("dear", gpu_tasks("dear", 3), priority=1, preemptible=True),
        ],
    )
    s0.run(["allocate"])
    where = {name: st.specs[p.node].site for name, _, p in s0.result.bound}
    assert where == {"cheap": "east", "dear": "west"}
    gang = Job("gang", gpu_tasks("gang", 3), priority=10)
    res = session(st, [gang], s0.running).run(["allocate", "preempt"])
    assert [e.job for e in res.evicted] == ["dear"]
    assert {st.specs[p.node].site for name, _, p in res.bound if name == "gang"} == {"west"}


def test_non_preemptible_jobs_are_never_victims() -> None:
    st = state(nodes=1, gpus=2)
    s0 = session(st, [Job("train", gpu_tasks("train", 2), priority=1, preemptible=False)])
    s0.run(["allocate"])
    res = session(st, [Job("svc", gpu_tasks("svc", 1), priority=100)], s0.running).run(
        ["allocate", "preempt"]
    )
    assert res.evicted == [] and "svc" in res.unschedulable


def test_quota_blocks_enqueue() -> None:
    st = state()
    q = Queue("team", quota_milli={"*": 2000})
    res = session(st, [Job("j", gpu_tasks("j", 3), queue="team")], queues=[q]).run(
        ["enqueue", "allocate"]
    )
    assert res.bound == [] and "quota" in res.unschedulable["j"]


def test_reclaim_takes_back_lent_capacity() -> None:
    st = state(nodes=1, gpus=4)
    queues = [Queue("a", weight=1), Queue("b", weight=1)]
    # queue a borrowed the whole node with preemptible work while b was idle
    s0 = session(st, [Job("a1", gpu_tasks("a1", 4), queue="a", preemptible=True)], queues=queues)
    s0.run(["backfill"])
    assert st.allocated_gpu_milli() == 4000
    res = session(st, [Job("b1", gpu_tasks("b1", 2), queue="b")], s0.running, queues=queues).run(
        ["enqueue", "allocate", "reclaim"]
    )
    assert [e.job for e in res.evicted] == ["a1"] and {n for n, _, _ in res.bound} == {"b1"}


def test_aging_lets_an_old_low_priority_job_go_first() -> None:
    st = state(nodes=1, gpus=1)
    old = Job("old", gpu_tasks("old", 1), priority=0, arrival_s=0.0)
    new = Job("new", gpu_tasks("new", 1), priority=5, arrival_s=99 * 3600.0)
    # after 100 hours the old job's effective priority is 100 > 5
    res = session(st, [new, old], now=100 * 3600.0).run(["allocate"])
    assert [name for name, _, _ in res.bound] == ["old"]


def test_quota_per_accelerator_type_steers_work_elsewhere() -> None:
    st = ClusterState(
        [NodeSpec("h", 64_000, 262_144, 4, "H800"), NodeSpec("a", 64_000, 262_144, 4, "910B")]
    )
    q = Queue("team", quota_milli={"H800": 1000})  # at most one H800 device
    jobs = [Job(f"j{i}", gpu_tasks(f"j{i}", 1), queue="team") for i in range(3)]
    res = session(st, jobs, queues=[q]).run(["enqueue", "allocate"])
    types = [st.types[st.gpu_type[p.node]] for _, _, p in res.bound]
    assert sorted(types) == ["910B", "910B", "H800"]


def test_overall_quota_counts_jobs_admitted_in_the_same_session() -> None:
    st = state(nodes=2, gpus=4)
    q = Queue("a", quota_milli={"*": 4000})
    jobs = [Job(f"j{i}", gpu_tasks(f"j{i}", 4), queue="a") for i in range(2)]
    res = session(st, jobs, queues=[q]).run(["enqueue", "allocate"])
    assert [n for n, _, _ in res.bound].count("j0") == 4 and "j1" in res.unschedulable
    assert st.allocated_gpu_milli() == 4000


def test_a_job_bound_in_this_session_is_never_a_victim() -> None:
    st = state(nodes=1, gpus=4)
    # cheap has waited 20 h (aging: effective priority 20), so allocate places it first
    cheap = Job("cheap", gpu_tasks("cheap", 2), priority=0, preemptible=True, arrival_s=0.0)
    big = Job("big", gpu_tasks("big", 4), priority=10, arrival_s=20 * 3600.0)
    s = session(st, [cheap, big], now=20 * 3600.0)
    res = s.run(["allocate", "preempt"])
    # big (priority 10 > 0) could preempt cheap, but cheap was bound in this very session
    assert res.evicted == [] and {n for n, _, _ in res.bound} == {"cheap"}
