"""The ``rounds`` Session action, in the replay simulator (the live loop runs the same)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from suanli.cluster.state import NodeSpec
from suanli.cluster.task import MILLI, Task
from suanli.run.local import LocalExecutor
from suanli.sched.policies import NAMED, PolicyFileError, parse_policy
from suanli.sched.round_action import RoundsConfig, checkpoint_costs
from suanli.service.loop import Loop
from suanli.sim.replay import replay_policy
from suanli.store import Store

FAST, SLOW = "h800-sxm", "mlu370-x8"


def _cluster() -> list[NodeSpec]:
    return [
        NodeSpec("fast-0", 64_000, 512 * 1024, 8, FAST),
        NodeSpec("slow-0", 64_000, 512 * 1024, 8, SLOW),
        NodeSpec("slow-1", 64_000, 512 * 1024, 8, SLOW),
    ]


def _jobs(n: int, gap_s: float, *, preemptible: bool = True) -> list[Task]:
    """Two kinds: 'big' gains 6x on the fast chip, 'small' only 1.5x (comparative advantage)."""
    out = []
    for i in range(n):
        kind = "big" if i % 2 == 0 else "small"
        out.append(
            Task(
                name=f"{kind}-{i}",
                cpu_milli=4000,
                memory_mib=16 * 1024,
                num_gpu=8,
                gpu_milli=MILLI,
                arrival_s=i * gap_s,
                work=3.6e4,
                kind="train",
                preemptible=preemptible,
                labels={"workload": kind, "model": "llama-2-7b"},
            )
        )
    return out


THROUGHPUT = {("big", FAST): 6.0, ("big", SLOW): 1.0, ("small", FAST): 1.5, ("small", SLOW): 1.0}


def _replay(named: str, tasks: list[Task], *, storage: str = "ddn-ai400x2-turbo", **kw):  # type: ignore[no-untyped-def]
    config = NAMED[named]
    if kw and config.rounds is not None:
        config = replace(config, rounds=replace(config.rounds, **kw))
    res, rounds = replay_policy(
        _cluster(), tasks, config, 0, throughput=THROUGHPUT, storage=storage
    )
    return res, rounds


def test_comparative_advantage_beats_type_blind_best_fit() -> None:
    tasks = _jobs(24, 1800.0)
    blind, _ = _replay("best-fit", tasks)
    aware, rounds = _replay("hetero", tasks)
    assert len(aware.jct_s) == len(blind.jct_s) == 24 and aware.unfinished == 0
    assert sum(aware.jct_s) < 0.9 * sum(blind.jct_s)
    # the fast chip went to the jobs that gain most there
    assert aware.gpu_seconds_by_type[FAST] > 0 and rounds is not None and rounds.rounds > 0


def test_a_job_on_a_slow_chip_moves_when_the_fast_one_frees_and_pays_for_its_checkpoint() -> None:
    # a big job starts on the slow chips because the fast node is busy, and moves there
    tasks = _jobs(1, 0.0)
    first = replace(tasks[0], name="big-first", work=1.2e5)
    late = replace(tasks[0], name="big-late", arrival_s=60.0, work=6e5)
    res, rounds = _replay("hetero", [first, late])
    assert rounds is not None and rounds.moves >= 1 and res.preemptions >= 1
    slow, _ = _replay("hetero", [first, late], storage="s3-standard")
    # the same moves, each saving and reading ~94 GB over S3 instead of the parallel FS
    assert max(slow.jct_s) > max(res.jct_s)
    stay, _ = _replay("best-fit", [first, late])
    assert max(res.jct_s) < max(stay.jct_s)


def test_gavel_time_slices_take_turns_and_every_job_finishes() -> None:
    tasks = _jobs(10, 0.0)
    res, rounds = _replay("gavel-rounds", tasks, round_s=600.0, reset_every_s=0.0)
    assert len(res.jct_s) == 10 and res.unfinished == 0
    assert res.preemptions > 0 and rounds is not None and rounds.rounds > 5


def test_jobs_that_do_not_checkpoint_are_left_to_the_ordinary_actions() -> None:
    tasks = _jobs(6, 600.0, preemptible=False)
    res, rounds = _replay("hetero", tasks)
    assert len(res.jct_s) == 6 and res.preemptions == 0
    assert rounds is not None and len(rounds.mech) == 0


def test_policy_files_set_the_rounds_and_refuse_what_is_wrong(tmp_path: Path) -> None:
    doc = {
        "actions": ["enqueue", "rounds", "allocate"],
        "rounds": {"policy": "gavel-max-min", "round_s": 60, "mode": "moves"},
        "tiers": [{"plugins": [{"name": "best-fit", "weight": 1}]}],
    }
    cfg = parse_policy(doc)
    assert cfg.rounds == RoundsConfig("gavel-max-min", 60.0, RoundsConfig.reset_every_s, "moves")
    bad = dict(doc, rounds={"policy": "fastest", "round_s": 0, "mode": "x", "every": 1})
    with pytest.raises(PolicyFileError) as err:
        parse_policy(bad)
    for says in ("rounds.policy", "rounds.round_s", "rounds.mode", "rounds.every"):
        assert says in str(err.value)
    with pytest.raises(PolicyFileError, match="not among the actions"):
        parse_policy(dict(doc, actions=["allocate"]))
    # no job spec has a deadline, so the SLO policy has nothing to meet
    with pytest.raises(PolicyFileError, match="needs each job's deadline"):
        parse_policy(dict(doc, rounds={"policy": "gavel-min-cost-slo"}))
    # a live job does not report its remaining work: the service refuses policies that
    # need it (the replay knows it: below)
    makespan = parse_policy(dict(doc, rounds={"policy": "gavel-min-makespan"}))
    with pytest.raises(PolicyFileError, match="needs each job's remaining work"):
        Loop(Store.sqlite(tmp_path), LocalExecutor(tmp_path / "runs"), policy=makespan)


def test_policies_that_need_remaining_work_run_in_the_replay() -> None:
    tasks = [replace(t, work=t.work * (1 + i % 3)) for i, t in enumerate(_jobs(10, 300.0))]
    out = {}
    for policy in ("gavel-max-min", "gavel-min-makespan", "gavel-finish-time-fairness"):
        res, rounds = _replay("gavel-rounds", tasks, policy=policy)
        assert len(res.jct_s) == 10 and res.unfinished == 0
        assert rounds is not None and rounds.mech.solves > 0
        out[policy] = res
    # in time slices, the makespan policy ends the last job first
    assert out["gavel-min-makespan"].makespan_s < out["gavel-max-min"].makespan_s


def test_a_node_local_drive_cannot_hold_a_checkpoint_that_moves() -> None:
    with pytest.raises(ValueError, match="on each node"):
        checkpoint_costs("local-nvme")


def test_the_cli_replays_with_rounds(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "suanli", *args], capture_output=True, text=True, timeout=300
        )

    cluster = tmp_path / "c.yaml"
    cluster.write_text(
        f"nodes:\n  - {{count: 1, gpu_type: {FAST}, gpus: 8, cpu: 64}}\n"
        f"  - {{count: 2, gpu_type: {SLOW}, gpus: 8, cpu: 64}}\n"
    )
    work = tmp_path / "w.yaml"
    work.write_text(
        "jobs:\n  - {name: ft, count: 6, model: llama-2-7b, tokens: 2e8, gpus: 8,"
        " arrival_rate_per_hour: 4, preemptible: true}\n"
    )
    args = ["simulate", "--mode", "replay", "--cluster", str(cluster), "--workload", str(work)]
    out = cli(*args, "--policy", "hetero", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["policy"] == "hetero"
    bad = cli(*args, "--policy", "hetero", "--storage", "floppy")
    assert bad.returncode == 2 and "unknown storage tier 'floppy'" in bad.stderr
