"""Job specs (every problem named) and Kubernetes rendering validated offline.

No API server can run here: Volcano Jobs are validated against Volcano's CRD
schema in ../shared/schemas, Deployments against the Kubernetes client models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from suanli.jobs import JobSpecError, parse_job_spec
from suanli.run.k8s import render

SMALLEST = {
    "name": "hello",
    "command": ["python3", "-c", "print('hello')"],
    "resources": {"accelerator": "cpu", "devices": 1},
}


def volcano_schema(shared: Path) -> dict[str, Any]:
    crd = yaml.safe_load((shared / "schemas" / "batch.volcano.sh_jobs.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_smallest_spec_and_defaults() -> None:
    spec = parse_job_spec(SMALLEST)
    assert spec.kind == "batch" and spec.argv == ["python3", "-c", "print('hello')"]
    assert parse_job_spec({**SMALLEST, "command": "echo hi"}).argv == ["/bin/sh", "-c", "echo hi"]


def test_every_problem_is_named_with_its_path() -> None:
    bad = {
        "name": "Bad_Name",
        "command": [],
        "resources": {"devices": 0, "cpu": -1, "accelerator": "h1000"},
        "colour": "red",
    }
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(bad, "job.yaml")
    text = "; ".join(info.value.problems)
    assert "name: must be lowercase" in text
    assert "command: must be a non-empty" in text
    assert "resources.cpu: Input should be greater than 0" in text
    assert "resources.accelerator: unknown accelerator 'h1000'" in text
    assert "colour: Extra inputs are not permitted" in text


@pytest.mark.parametrize(
    ("extra", "resource", "count"),
    [
        (
            {"resources": {"accelerator": "h100-sxm", "devices": 8}, "gang": 4},
            "nvidia.com/gpu",
            "8",
        ),
        ({"resources": {"accelerator": "ascend-910b", "devices": 4}}, "huawei.com/Ascend910", "4"),
        ({"resources": {"accelerator": "mlu370-x8", "devices": 2}}, None, "2"),
        (
            {
                "resources": {"accelerator": "h100-sxm", "devices": 8},
                "gang": 4,
                "min_gang": 2,
                "preemptible": True,
            },
            "nvidia.com/gpu",
            "8",
        ),
    ],
)
def test_volcano_jobs_validate_against_the_crd(
    shared_dir: Path, extra: dict[str, Any], resource: str | None, count: str
) -> None:
    spec = parse_job_spec(
        {
            **SMALLEST,
            "name": "train-x",
            "kind": "train",
            "queue": "research",
            "priority": 5,
            "regions": ["cn-north"],
            "node_selector": {"suanli.io/node": "n1"},
            **extra,
        }
    )
    obj = render(spec)
    jsonschema.validate(obj, volcano_schema(shared_dir))
    pod = obj["spec"]["tasks"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "n1"}  # suanli names its nodes
    assert obj["kind"] == "Job" and obj["spec"]["queue"] == "research"
    assert obj["spec"]["minAvailable"] == (spec.min_gang or spec.gang or 1)
    assert obj["spec"]["tasks"][0]["replicas"] == (spec.gang or 1)
    limits = obj["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    from suanli.catalog import get_accelerator

    name = resource or get_accelerator(spec.resources.accelerator or "cpu").k8s_resource
    assert limits[name] == count


def test_a_broken_render_would_fail_the_schema(shared_dir: Path) -> None:
    obj = render(parse_job_spec({**SMALLEST, "kind": "train"}))
    obj["spec"]["minAvailable"] = "all"  # the schema says integer
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, volcano_schema(shared_dir))


def test_services_render_as_deployments_the_client_accepts() -> None:
    from kubernetes.client import ApiClient

    spec = parse_job_spec(
        {
            **SMALLEST,
            "name": "chat",
            "kind": "serve",
            "replicas": 3,
            "resources": {"accelerator": "h20", "devices": 1},
            "node_selector": {"zone": "a"},
        }
    )
    obj = render(spec)
    dep = ApiClient()._ApiClient__deserialize(obj, "V1Deployment")  # offline model check
    assert dep.spec.replicas == 3 and dep.spec.template.spec.node_selector == {"zone": "a"}
    assert dep.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert dep.spec.selector.match_labels == dep.spec.template.metadata.labels
    # tenants' code runs unprivileged: never root, no escalation, no capabilities, no token
    pod = dep.spec.template.spec
    assert pod.security_context.run_as_non_root and pod.security_context.run_as_user != 0
    sc = pod.containers[0].security_context
    assert sc.allow_privilege_escalation is False and sc.capabilities.drop == ["ALL"]
    assert pod.automount_service_account_token is False


def test_export_cli(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({**SMALLEST, "resources": {"accelerator": "a100-80gb", "devices": 2}})
    )
    out = subprocess.run(
        [sys.executable, "-m", "suanli", "export", "k8s", str(job)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["apiVersion"] == "batch.volcano.sh/v1alpha1"
    job.write_text(json.dumps({"name": "x", "resources": {"devices": 0}}))
    bad = subprocess.run(
        [sys.executable, "-m", "suanli", "export", "k8s", str(job)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "command: Field required" in bad.stderr


def test_rules_across_fields_are_named_by_the_field_they_are_about() -> None:
    for extra, problem in (
        (
            {"resources": {"fraction": 0.5, "devices": 2}},
            "resources.fraction: a share is of one device; set devices: 1",
        ),
        ({"kind": "serve", "gang": 2}, "gang: services scale by replicas, not gangs"),
    ):
        with pytest.raises(JobSpecError) as info:
            parse_job_spec({**SMALLEST, **extra}, "job.yaml")
        assert info.value.problems == [problem]
