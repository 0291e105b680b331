"""``resources.accelerators``: a job (a service's replicas) that accepts any of several
chips, resolved like every other request, exported to Kubernetes, and priced per chip."""

from __future__ import annotations

import time

import pytest

from suanli.api.app import job_usage
from suanli.autoscale.service_spec import ServiceSpec
from suanli.jobs.resolve import describe, eligible_types, wants_devices
from suanli.jobs.spec import JobSpec, JobSpecError, parse_job_spec
from suanli.run.k8s_devices import Notes, device_request
from suanli.service.services import price_per_replica_hour, replica_price
from suanli.store import Store
from suanli.store.models import NodeRow, member_chips

BASE = {"name": "j", "command": ["true"]}


def spec(**resources: object) -> JobSpec:
    return parse_job_spec({**BASE, "resources": resources})


def test_a_list_of_chips_is_checked_and_resolved_like_one_chip() -> None:
    r = spec(accelerators=["A100-80GB", "h100-sxm", "a100-80gb"]).resources
    assert r.accelerators == ["a100-80gb", "h100-sxm"] and wants_devices(r)
    have = ["a100-80gb", "a10", "h100-sxm", "cpu-slice-fast"]
    assert eligible_types(r, have) == {"a100-80gb", "h100-sxm"}
    narrowed = spec(accelerators=["a100-40gb", "a100-80gb"], min_memory_gb=60).resources
    assert eligible_types(narrowed, ["a100-40gb", "a100-80gb"]) == {"a100-80gb"}
    assert describe(narrowed) == "chip one of a100-40gb, a100-80gb, >= 60 GB"
    for bad, said in (
        ({"accelerators": ["h100-sxm", "nope"]}, "unknown accelerator 'nope'"),
        ({"accelerators": ["cpu"]}, "cpu is not one"),
        ({"accelerators": []}, "resources.accelerators"),
        ({"accelerator": "a10", "accelerators": ["a10"]}, "not both"),
    ):
        with pytest.raises(JobSpecError, match=said):
            spec(**bad)


def test_kubernetes_export_asks_for_the_plugin_and_narrows_to_the_listed_chips() -> None:
    notes = Notes()
    got = device_request(spec(accelerators=["a100-80gb", "h100-sxm"], devices=2), notes)
    assert got.limits == {"nvidia.com/gpu": "2"} and not notes.problems and got.node_match
    mixed = Notes()
    device_request(spec(accelerators=["a100-80gb", "ascend-910b"]), mixed)
    assert mixed.problems and mixed.problems[0].startswith("resources.accelerators:")


def test_a_replica_is_charged_for_the_chip_it_landed_on(store: Store) -> None:
    svc = ServiceSpec.model_validate(
        {"name": "chat", "model": "tiny", "resources": {"accelerators": ["a10", "a100-80gb"]}}
    )
    assert price_per_replica_hour(svc) == pytest.approx(1.79)  # the dearest: the budget's bound
    now = time.time()
    with store.tx() as s:
        a10 = [{"index": 0, "accelerator": "a10", "memory_mib": 24_000}]
        s.add(NodeRow(name="n1", owner="system", site=None, executor="local", cpu_cores=8,
                      memory_mib=64_000, labels={}, heartbeat_at=now, devices=a10))  # fmt: skip
        job = store.add_job(s, {**BASE, "resources": {"accelerators": ["a10"]}}, "alice")
        job.state, job.members = "running", [{"node": "n1", "devices": [0]}]
        s.flush()
        assert replica_price(s, svc, job) == pytest.approx(0.75)  # an A10, not an A100
        job.started_at, job.members = now - 3600, [{"node": "n1", "devices": [0]},
                                                   {"node": "gone", "devices": [3]}]  # fmt: skip
        assert member_chips(s, job.members) == ["a10", None]
        usage = job_usage(s, job)  # a device on a node no longer known: no price for it
        assert usage["device_s"] == pytest.approx(7200, rel=0.01) and usage["cost_usd"] is None
        job.members = [{"node": "n1", "devices": [0]}]
        assert job_usage(s, job)["cost_usd"] == pytest.approx(0.75, rel=0.01)
        job.members = []
        assert replica_price(s, svc, job) == pytest.approx(1.79)  # unknown: the bound
