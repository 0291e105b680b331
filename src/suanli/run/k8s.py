"""Render a job spec as Kubernetes objects: a Volcano Job, or a Deployment for a service.

No Kubernetes API server can run on suanli's development machines, so what is
tested is the rendering: Volcano Jobs against Volcano's CRD OpenAPI schema and
Deployments against the Kubernetes client's models. Applying them to a real
cluster (with Volcano and the vendors' device plugins installed) is
``kubectl apply -f``.

A rendering either means what the spec means or is refused: every field is
rendered, or named in a `K8sExportError` that says what to do, or — where the
rendering is a faithful but narrower reading (a whole device for a share, an
elastic gang at its full size) — named in a warning the CLI prints. Nothing is
dropped silently.

* Devices are requested with the device-plugin resource name the catalog gives
  each chip (``nvidia.com/gpu``, ``huawei.com/Ascend910``, ``cambricon.com/mlu``, …).
  A chip described instead of named (vendor, minimum memory, a model to fit)
  resolves through `suanli.jobs.resolve` to the catalog chips that satisfy it,
  exactly as the scheduler resolves it; those must share one resource name.
* A gang (``gang`` > 1) gets the torchrun variables train_lm reads
  (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``),
  from Volcano's ``env`` plugin (the task index) and ``svc`` plugin (a headless
  service giving each pod the DNS name ``<job>-worker-<i>.<job>``).
* The image comes from the spec; there is no default, since no published image
  holds suanli and torch (the README shows a Dockerfile that builds one).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from suanli.errors import SuanliError
from suanli.jobs.spec import JobSpec
from suanli.run.executor import NODE_LABEL
from suanli.run.jobenv import THREADS, cpu_threads
from suanli.run.k8s_devices import Devices, Notes, device_request

LABEL = "suanli.io/job"
TASK = "worker"  # the Volcano task every member belongs to: pods are <job>-worker-<i>
MASTER_PORT = 29500  # torchrun's default rendezvous port, the same in every pod
#: Kubernetes reserves higher PriorityClass values for system components
MAX_PRIORITY_CLASS_VALUE = 1_000_000_000
#: the images of Docker Hub's official ``python`` repository: they have no suanli, no torch
OFFICIAL_PYTHON = re.compile(r"^(docker\.io/)?(library/)?python(:[^/]*)?(@.*)?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
#: what starts each gang member. Kubernetes expands ``$(VAR)`` in an env value only from
#: variables listed *earlier* in the same container, and Volcano's env plugin appends
#: VK_TASK_INDEX after ours when it creates the pod (pkg/controllers/job/plugins/env),
#: so ``RANK: $(VK_TASK_INDEX)`` would stay literal, and not every Volcano release puts
#: the index in an annotation the downward API could read. A shell line reads the
#: plugin's variable at start on every release, fails loudly if the plugin is missing
#: (rather than every member training alone as rank 0), then execs the command with its
#: argv untouched. It needs /bin/sh in the image, which the README's image (and nearly
#: every image with Python, distroless ones aside) has.
RANK_FROM_TASK_INDEX = (
    'export RANK="${VK_TASK_INDEX:?is not set: Volcano env plugin missing}"; exec "$@"'
)
JOB_UID = 65534  # "nobody": present in every base image, owns nothing


class K8sExportError(SuanliError, ValueError):
    """A spec the Kubernetes rendering cannot carry faithfully; ``problems`` lists each as
    "field: what is wrong, what to do", all at once (as `JobSpecError` does)."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"cannot render job {name!r} for Kubernetes: " + "; ".join(problems))


@dataclass(frozen=True)
class Rendering:
    """The object that runs a spec, and what about it differs from running it under
    suanli's own scheduler (each a line the CLI prints as a warning)."""

    manifest: dict[str, Any]
    warnings: tuple[str, ...]


def literal(text: str) -> str:
    """``text`` as Kubernetes must be given it to pass it on unchanged: it expands
    ``$(VAR)`` in command, args and env values and turns ``$$`` into ``$``, so a ``$``
    before ``(`` or ``$`` is doubled (a spec's ``echo $(date)`` stays a shell's)."""
    return re.sub(r"\$(?=[$(])", "$$", text)


def _check(spec: JobSpec, notes: Notes) -> None:
    """Refuse (or warn about) every field the rendering would otherwise drop or the API
    server would reject; the device request is checked by `device_request`."""
    p, w = notes.problems, notes.warnings
    if spec.image is None:
        p.append(
            "image: not set, and no published image holds suanli and torch; build one "
            '(a Dockerfile is in the README, "Jobs on Kubernetes"), push it and set image:'
        )
    elif OFFICIAL_PYTHON.match(spec.image) and any("suanli" in a for a in spec.argv):
        p.append(
            f"image: {spec.image} is the official Python image, without suanli or torch, but "
            'the command runs suanli; build one (a Dockerfile is in the README, "Jobs on '
            'Kubernetes"), push it and set image:'
        )
    if spec.order is not None:
        p.append(
            "order: a market lease is capacity suanli itself runs jobs on, which a "
            "Kubernetes cluster knows nothing of; drop order to export, or submit the job"
        )
    if len(spec.queue) > 63 or not DNS_SUBDOMAIN.match(spec.queue):
        p.append(f"queue: {spec.queue!r} is not a Volcano queue name (lowercase DNS name)")
    if spec.priority > MAX_PRIORITY_CLASS_VALUE:
        p.append(
            f"priority: Kubernetes reserves PriorityClass values above "
            f"{MAX_PRIORITY_CLASS_VALUE} for the system; use at most that"
        )
    elif spec.priority:
        name = _priority_class(spec)
        w.append(
            f"priority: pods name PriorityClass {name}, which must exist on the cluster "
            f"(kubectl create priorityclass {name} --value={spec.priority})"
        )
    for key, value in _node_selector(spec).items():
        prefix, _, label = key.rpartition("/")
        if (prefix and not DNS_SUBDOMAIN.match(prefix)) or not LABEL_NAME.match(label):
            p.append(f"node_selector: {key!r} is not a Kubernetes label key")
        if not LABEL_VALUE.match(value):
            p.append(f"node_selector.{key}: {value!r} is not a Kubernetes label value")
    if spec.kind == "serve":
        if spec.max_runtime_s:
            p.append(
                "max_runtime_s: a Deployment's pods cannot have a deadline (Kubernetes "
                "forbids activeDeadlineSeconds there); drop it, or run the service as kind: batch"
            )
        if spec.retries:
            w.append("retries: a Deployment restarts its pods without limit")
        return
    if spec.gang and spec.replicas > 1:
        p.append(
            "replicas: a gang's members are counted by gang; replicas > 1 beside it cannot "
            "be rendered (drop replicas, or submit one job per copy)"
        )
    n = _gang(spec)
    longest = f"{spec.name}-{TASK}-{n - 1}"
    if n > 1 and (len(longest) > 63 or not spec.name[0].isalpha()):
        p.append(
            f"name: a gang's pods are reached as <name>-{TASK}-<i>.<name>, so that pod name "
            f"must fit a DNS label ({longest!r} has {len(longest)} of at most 63 characters) "
            "and the service <name> must start with a letter; shorten or rename the job"
        )
    if n > 1 and spec.min_gang is not None and spec.min_gang < n:
        w.append(
            f"min_gang: rendered as a fixed gang of {n}: WORLD_SIZE is fixed when Volcano "
            "creates the pods, so members started early would wait for the rest holding "
            "their devices; Volcano does not resize a running job"
        )
    if spec.preemptible:
        w.append(
            "preemptible: Volcano restarts an evicted job, and each restart counts against "
            f"maxRetry ({spec.retries + 1}: retries + 1); checkpoints written inside a pod "
            "vanish with it unless the path is a mounted volume"
        )


def _priority_class(spec: JobSpec) -> str:
    return f"suanli-priority-{spec.priority}"


def _node_selector(spec: JobSpec) -> dict[str, str]:
    # suanli names every node by its own label; Kubernetes' equivalent is the hostname
    return {
        ("kubernetes.io/hostname" if k == NODE_LABEL else k): v
        for k, v in spec.node_selector.items()
    }


def _gang(spec: JobSpec) -> int:
    """Members started together with the torchrun variables (a gang of one is a job)."""
    return spec.gang if spec.gang and spec.gang > 1 and spec.kind != "serve" else 1


def _env(spec: JobSpec) -> list[dict[str, str]]:
    """The container's environment: the user's, then what the local executor also sets
    (thread counts for the cores given, a writable HOME), then a gang's torchrun
    variables (RANK comes from `RANK_FROM_TASK_INDEX`)."""
    env = dict(spec.env)
    env["SUANLI_JOB_NAME"] = spec.name
    # uid 65534's home (/nonexistent) is not writable; caches go to ~/.cache
    env.setdefault("HOME", "/tmp")
    for k in THREADS:  # a math library sizing its pool to the node's cores spins on a quota
        env.setdefault(k, str(cpu_threads(spec.resources.cpu)))
    n = _gang(spec)
    if n > 1:
        env |= {
            "WORLD_SIZE": str(n),
            # the svc plugin names pod i <job>-<task>-i, under a headless service <job>
            "MASTER_ADDR": f"{spec.name}-{TASK}-0.{spec.name}",
            "MASTER_PORT": str(MASTER_PORT),
            # one member per pod, which sees its own devices from index 0
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
        }
    return [{"name": k, "value": literal(v)} for k, v in env.items()]


def _container(spec: JobSpec, devices: Devices) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, str] = {
        "cpu": f"{math.ceil(r.cpu * 1000)}m",
        "memory": f"{math.ceil(r.memory_gb * 1024)}Mi",
    }
    argv = spec.argv
    if _gang(spec) > 1:
        argv = ["/bin/sh", "-c", RANK_FROM_TASK_INDEX, "suanli-member", *argv]
    container: dict[str, Any] = {
        "name": "main",
        "image": spec.image,
        "command": [literal(a) for a in argv],
        "env": _env(spec),
        "resources": {"requests": requests, "limits": requests | devices.limits},
        # an untrusted tenant's code: never root, never more privilege than it started with
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if _gang(spec) > 1:
        container["ports"] = [{"name": "torch-dist", "containerPort": MASTER_PORT}]
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    return container


def _affinity(spec: JobSpec, devices: Devices) -> dict[str, Any] | None:
    match = list(devices.node_match)
    if spec.regions:
        match.append(
            {"key": "topology.kubernetes.io/region", "operator": "In", "values": list(spec.regions)}
        )
    if not match:
        return None
    term = {"nodeSelectorTerms": [{"matchExpressions": match}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}


def _pod_spec(spec: JobSpec, restart: str, devices: Devices) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [_container(spec, devices)],
        "restartPolicy": restart,
        # images often default to root (python:3.11-slim does): run as an unprivileged uid
        "securityContext": {"runAsNonRoot": True, "runAsUser": JOB_UID, "runAsGroup": JOB_UID},
        "automountServiceAccountToken": False,  # a job has no business with the API server
    }
    if spec.priority:
        pod["priorityClassName"] = _priority_class(spec)
    if spec.max_runtime_s:
        pod["activeDeadlineSeconds"] = math.ceil(spec.max_runtime_s)
    affinity = _affinity(spec, devices)
    if affinity:
        pod["affinity"] = affinity
    if spec.node_selector:
        pod["nodeSelector"] = _node_selector(spec)
    return pod


def _pod_metadata(spec: JobSpec) -> dict[str, Any]:
    # Volcano's default when unset changed between releases (false, later true): say it
    preempt = {"volcano.sh/preemptable": "true" if spec.preemptible else "false"}
    return {"labels": {LABEL: spec.name}, "annotations": preempt}


def _volcano_job(spec: JobSpec, devices: Devices) -> dict[str, Any]:
    """A ``batch.volcano.sh/v1alpha1`` Job. A gang is placed whole (``minAvailable``);
    plain replicas are copies that need not start together (``minAvailable: 1``). Pods
    never restart in place: a failed or evicted pod restarts the whole job (a gang cannot
    go on without a member), at most ``retries`` times — Volcano fails the job once its
    restart count reaches ``maxRetry``, and reads 0 as its default 3, so ``retries + 1``."""
    n = _gang(spec)
    job: dict[str, Any] = {
        "apiVersion": "batch.volcano.sh/v1alpha1",
        "kind": "Job",
        "metadata": {"name": spec.name, "labels": {LABEL: spec.name}},
        "spec": {
            "schedulerName": "volcano",
            "queue": spec.queue,
            "minAvailable": n,
            "maxRetry": spec.retries + 1,
            "policies": [
                {"event": "PodEvicted", "action": "RestartJob"},
                {"event": "PodFailed", "action": "RestartJob"},
            ],
            "tasks": [
                {
                    "name": TASK,
                    "replicas": n if n > 1 else spec.replicas,
                    "template": {
                        "metadata": _pod_metadata(spec),
                        "spec": _pod_spec(spec, "Never", devices),
                    },
                }
            ],
        },
    }
    if n > 1:
        # env: VK_TASK_INDEX in each pod; svc: hostname/subdomain and the headless service
        # behind MASTER_ADDR, published before readiness so early members can resolve it
        job["spec"]["plugins"] = {"env": [], "svc": ["--publish-not-ready-addresses=true"]}
    if spec.priority:
        job["spec"]["priorityClassName"] = _priority_class(spec)
    return job


def _deployment(spec: JobSpec, devices: Devices) -> dict[str, Any]:
    """An ``apps/v1`` Deployment for a service (``kind: serve``), scheduled by Volcano."""
    pod = _pod_spec(spec, "Always", devices)
    pod["schedulerName"] = "volcano"
    meta = _pod_metadata(spec)
    meta["annotations"]["scheduling.volcano.sh/queue-name"] = spec.queue
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "labels": {LABEL: spec.name}},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {LABEL: spec.name}},
            "template": {"metadata": meta, "spec": pod},
        },
    }


def rendering(spec: JobSpec) -> Rendering:
    """The Kubernetes object that runs ``spec``, with warnings; `K8sExportError` naming
    every field that cannot be rendered."""
    notes = Notes()
    _check(spec, notes)
    wanted = device_request(spec, notes)
    if notes.problems:
        raise K8sExportError(spec.name, notes.problems)
    build = _deployment if spec.kind == "serve" else _volcano_job
    return Rendering(build(spec, wanted), tuple(notes.warnings))


def render(spec: JobSpec) -> dict[str, Any]:
    """The Kubernetes object that runs ``spec`` (`rendering` without its warnings)."""
    return rendering(spec).manifest
