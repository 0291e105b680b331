"""Job specs (every problem named) and Kubernetes rendering validated offline.

No API server can run here: Volcano Jobs are validated against Volcano's CRD
schema in ../shared/schemas (and their pod templates against the Kubernetes
client models), Deployments against the Kubernetes client models. What a
rendering cannot carry is refused with a `K8sExportError` naming the field, or
warned about; a gang member's start line is run with a real /bin/sh.
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

from suanli.catalog import accelerators
from suanli.jobs import JobSpecError, load_job_spec, parse_job_spec
from suanli.jobs.spec import JobSpec
from suanli.run.k8s import MASTER_PORT, K8sExportError, Rendering, render, rendering
from tests.k8s_standin import volcano_schema

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: a placeholder reference: rendering never pulls it
IMAGE = "registry.example/suanli:0.1"

SMALLEST = {
    "name": "hello",
    "command": ["python3", "-c", "print('hello')"],
    "resources": {"accelerator": "cpu", "devices": 1},
}


def deserialize(obj: dict[str, Any], kind: str) -> Any:
    """The Kubernetes client's model of ``obj`` (its offline check of names and types)."""
    from kubernetes.client import ApiClient

    return ApiClient()._ApiClient__deserialize(obj, kind)


def valid(obj: dict[str, Any], shared: Path) -> dict[str, Any]:
    """``obj`` checked as what it claims to be: a Volcano Job against the CRD schema (and
    its pod template against the client's model), a Deployment against the client's."""
    if obj["kind"] == "Job":
        jsonschema.validate(obj, volcano_schema(shared))
        deserialize(obj["spec"]["tasks"][0]["template"], "V1PodTemplateSpec")
    else:
        assert obj["kind"] == "Deployment"
        deserialize(obj, "V1Deployment")
    return obj


def spec_of(**fields: Any) -> JobSpec:
    return parse_job_spec({**SMALLEST, "image": IMAGE, **fields})


def container(obj: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = pod_of(obj)["containers"][0]
    return c


def pod_of(obj: dict[str, Any]) -> dict[str, Any]:
    template = obj["spec"]["tasks"][0] if obj["kind"] == "Job" else obj["spec"]
    pod: dict[str, Any] = template["template"]["spec"]
    return pod


def env_of(obj: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(obj)["env"]}


def refused(spec: JobSpec) -> list[str]:
    with pytest.raises(K8sExportError) as info:
        render(spec)
    return info.value.problems


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command, args and env values, ported from
    third_party/forked/golang/expansion: ``$$`` is ``$``, ``$(NAME)`` is NAME's value
    (left as written if undefined), any other ``$`` stays."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            end = text.find(")", i + 2) if nxt == "(" else -1
            if nxt == "$":
                out.append("$")
            elif end != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, f"$({name})"))
                i = end + 1
                continue
            else:
                out.append("$" + nxt)
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


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
            "image": IMAGE,
            "name": "train-x",
            "kind": "train",
            "queue": "research",
            "priority": 5,
            "regions": ["cn-north"],
            "node_selector": {"suanli.io/node": "n1"},
            **extra,
        }
    )
    obj = valid(render(spec), shared_dir)
    pod = obj["spec"]["tasks"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "n1"}  # suanli names its nodes
    assert obj["kind"] == "Job" and obj["spec"]["queue"] == "research"
    # an elastic gang (min_gang) runs at its full size: see test_elastic_gang_...
    assert obj["spec"]["minAvailable"] == (spec.gang or 1)
    assert obj["spec"]["tasks"][0]["replicas"] == (spec.gang or 1)
    limits = obj["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    from suanli.catalog import get_accelerator

    name = resource or get_accelerator(spec.resources.accelerator or "cpu").k8s_resource
    assert limits[name] == count


def test_a_broken_render_would_fail_the_schema(shared_dir: Path) -> None:
    obj = render(spec_of(kind="train"))
    obj["spec"]["minAvailable"] = "all"  # the schema says integer
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, volcano_schema(shared_dir))


def test_services_render_as_deployments_the_client_accepts() -> None:
    from kubernetes.client import ApiClient

    spec = parse_job_spec(
        {
            **SMALLEST,
            "image": IMAGE,
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
        yaml.safe_dump(
            {**SMALLEST, "image": IMAGE, "resources": {"accelerator": "a100-80gb", "devices": 2}}
        )
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


# --- issue 17: "Kubernetes export must be runnable" ---------------------------------------


def test_a_vendor_only_spec_requests_its_device_plugin_resource(shared_dir: Path) -> None:
    """The reported case: no accelerator named, so no device was requested at all."""
    spec = spec_of(kind="train", resources={"vendor": "nvidia", "min_memory_gb": 80, "devices": 4})
    out = rendering(spec)
    obj = valid(out.manifest, shared_dir)
    assert container(obj)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    # the memory floor becomes a GPU Feature Discovery label constraint, said so
    term = pod_of(obj)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (expr,) = term["nodeSelectorTerms"][0]["matchExpressions"]
    assert expr["key"] == "nvidia.com/gpu.memory" and expr["operator"] == "Gt"
    floor_mib = int(expr["values"][0])
    catalog = accelerators()
    assert floor_mib < catalog["a100-80gb"].memory_mib  # every 80 GB chip passes ...
    assert floor_mib > catalog["l40s"].memory_mib  # ... a 48 GB one does not
    assert any("GPU Feature Discovery" in w for w in out.warnings)


def test_every_catalog_vendor_gets_its_one_resource_or_a_refusal() -> None:
    catalog = accelerators()
    for vendor in sorted({a.vendor for a in catalog.values()}):
        spec = spec_of(resources={"vendor": vendor, "devices": 2})
        chips = [a for a in catalog.values() if a.vendor == vendor and a.kind != "cpu"]
        names = {a.k8s_resource for a in chips}
        if len(names) == 1:
            assert container(render(spec))["resources"]["limits"][names.pop()] == "2", vendor
        else:  # several resources (huawei's 910/310P/310), or none (a CPU vendor)
            (problem,) = refused(spec)
            assert problem.startswith("resources.vendor: "), problem
            assert all(n in problem for n in names), problem
            assert names or "is a CPU, not a device" in problem


def test_a_constraint_narrows_a_vendor_to_one_resource_and_unknowns_are_refused() -> None:
    (problem,) = refused(spec_of(resources={"vendor": "huawei"}))
    assert "huawei.com/Ascend910" in problem and "huawei.com/Ascend310P" in problem
    assert "name the chip (accelerator:)" in problem
    out = rendering(spec_of(resources={"vendor": "huawei", "min_memory_gb": 50}))
    assert container(out.manifest)["resources"]["limits"]["huawei.com/Ascend910"] == "1"
    # the 32 GB 910B4 answers to the same resource and no standard label tells it apart
    assert any("ascend-910b4" in w and "node_selector" in w for w in out.warnings)
    (problem,) = refused(spec_of(resources={"vendor": "acme"}))
    assert problem.startswith("resources.vendor: no catalog chip is made by 'acme'")
    (problem,) = refused(spec_of(resources={"vendor": "nvidia", "min_memory_gb": 1000}))
    assert problem.startswith("resources.vendor: no catalog chip fits")


def test_cpu_slices_and_cpu_models_are_not_kubernetes_devices() -> None:
    (problem,) = refused(spec_of(resources={"vendor": "cpu-slice", "devices": 2}))
    assert problem.startswith("resources.vendor: cpu-slice is suanli's pseudo-device")
    assert "accelerator: cpu" in problem
    (problem,) = refused(spec_of(resources={"accelerator": "xeon-8480"}))
    assert problem.startswith("resources.accelerator: xeon-8480 is a CPU")


def test_a_ddp_gang_gets_the_torchrun_variables(shared_dir: Path) -> None:
    spec = spec_of(name="ddp", kind="train", gang=2, resources={"accelerator": "cpu", "cpu": 3})
    obj = valid(render(spec), shared_dir)
    assert obj["spec"]["minAvailable"] == 2 and obj["spec"]["tasks"][0]["replicas"] == 2
    assert set(obj["spec"]["plugins"]) == {"env", "svc"}  # VK_TASK_INDEX; DNS names
    env = env_of(obj)
    assert env["WORLD_SIZE"] == "2" and env["MASTER_PORT"] == str(MASTER_PORT)
    # the svc plugin names pod i <job>-<task>-i under the headless service <job>
    assert env["MASTER_ADDR"] == f"ddp-{obj['spec']['tasks'][0]['name']}-0.ddp"
    assert env["LOCAL_RANK"] == "0" and env["OMP_NUM_THREADS"] == "3"
    assert "RANK" not in env  # from the task index, at start: see the next test
    ports = container(obj)["ports"]
    assert [p["containerPort"] for p in ports] == [MASTER_PORT]


def test_a_gang_members_rank_is_its_volcano_task_index() -> None:
    """Run the rendered start line with a real /bin/sh, its arguments and environment
    expanded as the kubelet does, and VK_TASK_INDEX as Volcano's env plugin sets it."""
    show = "import os; print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['X'])"
    spec = spec_of(gang=2, command=[sys.executable, "-c", show], env={"X": "$(date) $$"})
    obj = render(spec)
    env = {k: kubelet_expand(v, env_of(obj)) for k, v in env_of(obj).items()}
    argv = [kubelet_expand(a, env) for a in container(obj)["command"]]
    ran = subprocess.run(
        argv, env={**env, "VK_TASK_INDEX": "1"}, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["1", "2", "$(date)", "$$"]  # the user's env unchanged
    # no env plugin: the member fails, saying why, rather than train alone as rank 0
    alone = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert alone.returncode != 0 and "VK_TASK_INDEX" in alone.stderr


def test_a_job_that_is_not_a_gang_gets_no_rank_wiring(shared_dir: Path) -> None:
    for spec in (spec_of(), spec_of(gang=1), spec_of(replicas=3)):
        obj = valid(render(spec), shared_dir)
        assert "plugins" not in obj["spec"] and "ports" not in container(obj)
        assert container(obj)["command"] == spec.argv
        assert not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} & set(env_of(obj))
        assert obj["spec"]["minAvailable"] == 1  # replicas are independent copies
        assert obj["spec"]["tasks"][0]["replicas"] == spec.replicas


def test_kubernetes_passes_commands_and_env_on_as_written() -> None:
    """The kubelet expands ``$(VAR)`` and ``$$``; a spec's text must survive it."""
    tricky = ["echo $(date) $$ $HOME $(SUANLI_JOB_NAME) $$(x) cost$", "$", "$(", "a$$$(b)"]
    spec = spec_of(command=tricky, env={"A": "$(SUANLI_JOB_NAME)-$$", "B": "$(A)"})
    obj = render(spec)
    env = env_of(obj)
    assert [kubelet_expand(a, env) for a in container(obj)["command"]] == tricky
    assert kubelet_expand(env["A"], env) == "$(SUANLI_JOB_NAME)-$$"
    assert kubelet_expand(env["B"], env) == "$(A)"


def test_the_image_comes_from_the_spec_and_none_is_refused() -> None:
    assert parse_job_spec(SMALLEST).image is None  # no default to fall back on
    (problem,) = refused(parse_job_spec(SMALLEST))
    assert problem.startswith("image: not set") and "Dockerfile" in problem
    assert container(render(spec_of()))["image"] == IMAGE
    workload = "python3 -m suanli.workloads.train_lm --steps 1"
    (problem,) = refused(spec_of(image="python:3.11-slim", command=workload))
    assert "official Python image, without suanli or torch" in problem
    # a command that needs only Python may use the official image
    assert container(render(spec_of(image="python:3.11-slim")))["image"] == "python:3.11-slim"
    with pytest.raises(JobSpecError, match="image"):
        spec_of(image="my image")


def test_every_field_the_rendering_cannot_carry_is_refused_by_name() -> None:
    problems = refused(
        spec_of(
            order=7,
            queue="Research_Q",
            priority=2_000_000_000,
            node_selector={"bad key!": "x", "zone": "not ok"},
        )
    )
    fields = [p.split(":")[0] for p in problems]
    assert fields == ["order", "queue", "priority", "node_selector", "node_selector.zone"]
    (problem,) = refused(spec_of(kind="serve", max_runtime_s=60))
    assert problem.startswith("max_runtime_s: a Deployment's pods cannot have a deadline")
    (problem,) = refused(spec_of(gang=2, replicas=2))
    assert problem.startswith("replicas: ")
    for name in ("x" * 55, "9lives"):  # a pod name past 63; a service name not a letter first
        (problem,) = refused(spec_of(name=name, gang=2))
        assert problem.startswith("name: a gang's pods are reached as"), problem


def test_retries_preemption_priority_and_deadline_are_rendered(shared_dir: Path) -> None:
    spec = spec_of(retries=2, preemptible=True, priority=5, max_runtime_s=90.5)
    out = rendering(spec)
    obj = valid(out.manifest, shared_dir)
    # pods never restart in place; a failure restarts the job, at most `retries` times
    assert pod_of(obj)["restartPolicy"] == "Never"
    assert {"event": "PodFailed", "action": "RestartJob"} in obj["spec"]["policies"]
    assert obj["spec"]["maxRetry"] == 3  # Volcano fails the job when restarts reach it
    assert valid(render(spec_of()), shared_dir)["spec"]["maxRetry"] == 1  # 0: Volcano's 3
    template = obj["spec"]["tasks"][0]["template"]
    assert template["metadata"]["annotations"]["volcano.sh/preemptable"] == "true"
    assert "priorityClassName" not in pod_of(render(spec_of()))  # priority 0: none named
    assert render(spec_of())["spec"]["tasks"][0]["template"]["metadata"]["annotations"] == {
        "volcano.sh/preemptable": "false"
    }
    assert obj["spec"]["priorityClassName"] == pod_of(obj)["priorityClassName"]
    assert pod_of(obj)["activeDeadlineSeconds"] == 91
    assert any(
        "kubectl create priorityclass suanli-priority-5 --value=5" in w for w in out.warnings
    )
    assert any(w.startswith("preemptible: ") for w in out.warnings)


def test_a_service_carries_priority_preemption_and_its_queue() -> None:
    spec = spec_of(kind="serve", priority=3, preemptible=True, queue="online", retries=1)
    out = rendering(spec)
    dep = deserialize(out.manifest, "V1Deployment")
    assert dep.spec.template.spec.priority_class_name == "suanli-priority-3"
    assert dep.spec.template.metadata.annotations == {
        "volcano.sh/preemptable": "true",
        "scheduling.volcano.sh/queue-name": "online",
    }
    assert "retries: a Deployment restarts its pods without limit" in out.warnings


def test_an_elastic_gang_runs_at_its_full_size_and_says_so(shared_dir: Path) -> None:
    out = rendering(spec_of(gang=4, min_gang=2, preemptible=True))
    obj = valid(out.manifest, shared_dir)
    assert obj["spec"]["minAvailable"] == 4 and env_of(obj)["WORLD_SIZE"] == "4"
    assert any(w.startswith("min_gang: rendered as a fixed gang of 4") for w in out.warnings)


def test_a_share_of_a_device_is_visible(shared_dir: Path) -> None:
    out = rendering(spec_of(resources={"accelerator": "a100-80gb", "fraction": 0.5}))
    limits = container(valid(out.manifest, shared_dir))["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and limits["nvidia.com/gpumem-percentage"] == "50"
    assert any("HAMi" in w for w in out.warnings)
    out = rendering(spec_of(resources={"accelerator": "ascend-910b", "fraction": 0.25}))
    assert container(out.manifest)["resources"]["limits"]["huawei.com/Ascend910"] == "1"
    assert (
        "resources.fraction: huawei.com/Ascend910 has no shares; the job gets a whole device"
        in (out.warnings)
    )


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_examples_render_or_are_refused_never_dropped(path: Path, shared_dir: Path) -> None:
    spec = load_job_spec(path)
    # as shipped they name no image, and none is assumed
    (problem,) = refused(spec)
    assert problem.startswith("image: ")
    out: Rendering = rendering(spec.model_copy(update={"image": IMAGE}))
    obj = valid(out.manifest, shared_dir)
    assert obj["kind"] == ("Deployment" if spec.kind == "serve" else "Job")
    wiring = {"WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= set(env_of(obj))
    assert wiring == bool(spec.gang and spec.gang > 1), path.name


def test_export_cli_prints_warnings_and_refuses_without_a_traceback(tmp_path: Path) -> None:
    def export(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "suanli", "export", "k8s", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {**SMALLEST, "image": IMAGE, "resources": {"vendor": "nvidia", "min_memory_gb": 80}}
        )
    )
    out = export(str(job))
    assert out.returncode == 0, out.stderr
    assert "warning: resources.vendor: only nodes labelled nvidia.com/gpu.memory" in out.stderr
    assert container(yaml.safe_load(out.stdout))["resources"]["limits"]["nvidia.com/gpu"] == "1"
    strict = export("--strict", str(job))
    assert strict.returncode == 2 and "(--strict)" in strict.stderr
    job.write_text(yaml.safe_dump({**SMALLEST, "resources": {"vendor": "cpu-slice"}}))
    bad = export(str(job))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and not bad.stdout
    assert "image: not set" in bad.stderr and "resources.vendor: cpu-slice" in bad.stderr
