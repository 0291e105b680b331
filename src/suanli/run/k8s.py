"""Render a job spec as Kubernetes objects: a Volcano Job, or a Deployment for a service.

No Kubernetes API server can run on suanli's development machines, so what is
tested is the rendering: Volcano Jobs against Volcano's CRD OpenAPI schema and
Deployments against the Kubernetes client's models. Applying them to a real
cluster (with Volcano and the vendors' device plugins installed) is
``kubectl apply -f``.

Devices are requested with the chip's device-plugin resource name from the
catalog (``nvidia.com/gpu``, ``huawei.com/Ascend910``, ``cambricon.com/mlu``,
…); a fractional share uses HAMi's ``nvidia.com/gpumem-percentage``-style
extension only for NVIDIA, and is otherwise rounded up to one device (stated).
"""

from __future__ import annotations

import math
from typing import Any

from suanli.catalog.loader import get_accelerator
from suanli.jobs.spec import JobSpec
from suanli.run.executor import NODE_LABEL

LABEL = "suanli.io/job"


def _container(spec: JobSpec) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, str] = {
        "cpu": f"{int(r.cpu * 1000)}m",
        "memory": f"{int(r.memory_gb * 1024)}Mi",
    }
    limits = dict(requests)
    if r.accelerator and r.accelerator != "cpu" and (r.devices or r.fraction):
        acc = get_accelerator(r.accelerator)
        if acc.kind != "cpu":
            if r.fraction is not None and acc.vendor == "nvidia":
                limits[acc.k8s_resource] = "1"
                limits["nvidia.com/gpumem-percentage"] = str(math.ceil(r.fraction * 100))
            else:
                limits[acc.k8s_resource] = str(max(1, r.devices))
    container: dict[str, Any] = {
        "name": "main",
        "image": spec.image,
        "command": spec.argv,
        "env": [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
        + [{"name": "SUANLI_JOB_NAME", "value": spec.name}],
        "resources": {"requests": requests, "limits": limits},
        # an untrusted tenant's code: never root, never more privilege than it started with
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    return container


JOB_UID = 65534  # "nobody": present in every base image, owns nothing


def _affinity(spec: JobSpec) -> dict[str, Any] | None:
    if not spec.regions:
        return None
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "topology.kubernetes.io/region",
                                "operator": "In",
                                "values": list(spec.regions),
                            }
                        ]
                    }
                ]
            }
        }
    }


def _pod_spec(spec: JobSpec, restart: str) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [_container(spec)],
        "restartPolicy": restart,
        # images often default to root (python:3.11-slim does): run as an unprivileged uid
        "securityContext": {"runAsNonRoot": True, "runAsUser": JOB_UID, "runAsGroup": JOB_UID},
        "automountServiceAccountToken": False,  # a job has no business with the API server
    }
    if spec.max_runtime_s:
        pod["activeDeadlineSeconds"] = int(spec.max_runtime_s)
    affinity = _affinity(spec)
    if affinity:
        pod["affinity"] = affinity
    if spec.node_selector:
        # suanli names every node by its own label; Kubernetes' equivalent is the hostname
        pod["nodeSelector"] = {
            ("kubernetes.io/hostname" if k == NODE_LABEL else k): v
            for k, v in spec.node_selector.items()
        }
    return pod


def render_volcano_job(spec: JobSpec) -> dict[str, Any]:
    """A ``batch.volcano.sh/v1alpha1`` Job: gang via ``minAvailable``, queue, priority."""
    members = spec.gang or spec.replicas
    job: dict[str, Any] = {
        "apiVersion": "batch.volcano.sh/v1alpha1",
        "kind": "Job",
        "metadata": {"name": spec.name, "labels": {LABEL: spec.name}},
        "spec": {
            "schedulerName": "volcano",
            "queue": spec.queue,
            # an elastic job (min_gang) runs once that many of its pods are placed
            "minAvailable": spec.min_gang or members,
            "maxRetry": spec.retries,
            "plugins": {"env": [], "svc": []},  # rank env vars and a headless service for gangs
            "policies": [{"event": "PodEvicted", "action": "RestartJob"}],
            "tasks": [
                {
                    "name": "worker",
                    "replicas": members,
                    "template": {
                        "metadata": {"labels": {LABEL: spec.name}},
                        "spec": _pod_spec(spec, "OnFailure"),
                    },
                }
            ],
        },
    }
    if spec.priority:
        job["spec"]["priorityClassName"] = f"suanli-priority-{spec.priority}"
    return job


def render_deployment(spec: JobSpec) -> dict[str, Any]:
    """An ``apps/v1`` Deployment for a service (``kind: serve``), scheduled by Volcano."""
    pod = _pod_spec(spec, "Always")
    pod["schedulerName"] = "volcano"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "labels": {LABEL: spec.name}},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {LABEL: spec.name}},
            "template": {
                "metadata": {
                    "labels": {LABEL: spec.name},
                    "annotations": {"scheduling.volcano.sh/queue-name": spec.queue},
                },
                "spec": pod,
            },
        },
    }


def render(spec: JobSpec) -> dict[str, Any]:
    """The Kubernetes object that runs ``spec``."""
    return render_deployment(spec) if spec.kind == "serve" else render_volcano_job(spec)
