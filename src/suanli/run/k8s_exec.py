"""The Kubernetes executor: jobs on a cluster with Volcano, as Volcano Jobs applied with the
official ``kubernetes`` client.

Kubernetes is the authority on its cluster: the nodes, their cores and their chips come
from the API server (a node's allocatable device-plugin resources, named per chip in the
catalog), and every start is one ``batch.volcano.sh/v1alpha1`` Job. suanli's scheduler
still decides where each member runs — fair share, priority, gangs and preemption are
the same code as on this machine — and the decision is carried by a node selector on
each member's ``kubernetes.io/hostname``; Volcano places the gang whole (``minAvailable``)
or not at all, so a member never waits alone holding devices.

A gang is one Volcano Job with one task per member, each pinned to its member's node and
given its torchrun variables directly (``RANK`` is the task's, not Volcano's task index);
Volcano's ``svc`` plugin names rank 0 ``<job>-m0-0.<job>``, which is ``MASTER_ADDR``.
Stopping deletes the Job: Volcano deletes its pods, which get SIGTERM and
``terminationGracePeriodSeconds`` (the service's grace) before SIGKILL, as Ray's members do.

Only a bearer token authenticates (a service account's: ``kubectl create token``); a
kubeconfig's exec plugins and file references would run programs or read files on the
service's machine at a stranger's choosing, so the CLI refuses them.

What this is tested against: no Kubernetes API server can run on suanli's development
machines (kind, k3s and envtest need downloads or Docker), so the tests validate every
Job this renders against Volcano's CRD schema and drive the client against a stand-in
server that speaks the few endpoints used (``tests/k8s_standin.py``). It has not been run
against a real cluster here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from suanli.catalog.loader import accelerators
from suanli.errors import SuanliError
from suanli.run.devices import catalog_name
from suanli.run.executor import (
    NODE_LABEL,
    DeviceInfo,
    ExecutorUnavailable,
    Handle,
    Launch,
    NodeInfo,
)
from suanli.run.jobenv import THREADS, cpu_threads
from suanli.run.k8s import JOB_UID, MASTER_PORT, literal
from suanli.run.k8s_devices import HAMI_MEMORY_PERCENT, NVIDIA_GPU

log = logging.getLogger("suanli.k8s")
GROUP, VERSION, PLURAL = "batch.volcano.sh", "v1alpha1", "jobs"
HOSTNAME_LABEL = "kubernetes.io/hostname"
#: the catalog chip of a node's devices, set by the cluster's operator; wins over guesses
CHIP_LABEL = "suanli.io/accelerator"
#: NVIDIA GPU Feature Discovery's product label, e.g. "NVIDIA-H100-80GB-HBM3"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
JOB_LABEL = "suanli.io/job"  # the suanli job a Volcano Job runs a member (or gang) of
SERVICE_LABEL = "suanli.io/service"  # which suanli service submitted it: strays are ours
TIMEOUT_S = (5.0, 10.0)  # connect, read: one call; the site layer times out the rest
LOG_REFRESH_S = 1.0
ENDED = {"Completed", "Failed", "Terminated", "Aborted"}
UNFINISHED = {"Pending", "Running", "Restarting", "Completing", "Aborting", "Terminating"}


class KubernetesUnavailable(ExecutorUnavailable):
    """The API server cannot be reached, or answers with a server error."""


def chip_of(resource: str, labels: dict[str, str]) -> str | None:
    """The catalog chip behind a node's device-plugin ``resource``: its operator's
    ``suanli.io/accelerator`` label, NVIDIA's product label, or the one chip answering to
    that resource; None where it cannot be told (the node's devices are then not offered:
    a guess would price and place work on the wrong chip)."""
    catalog = accelerators()
    named = labels.get(CHIP_LABEL, "").lower()
    if named in catalog and catalog[named].k8s_resource == resource:
        return named
    answering = [a for a in catalog.values() if a.k8s_resource == resource and a.kind != "cpu"]
    product = labels.get(GPU_PRODUCT_LABEL, "")
    if resource == NVIDIA_GPU and product:
        guess = catalog_name(product.replace("-", " "), "nvidia")
        if guess in catalog:
            return guess
    return answering[0].name if len(answering) == 1 else None


def node_info(node: dict[str, Any], prefix: str) -> NodeInfo | None:
    """A Kubernetes node (as the API server's JSON) as the scheduler sees it; None for a
    node that is not Ready or is cordoned."""
    from kubernetes.utils import parse_quantity

    meta, spec, status = node.get("metadata", {}), node.get("spec", {}), node.get("status", {})
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not ready or spec.get("unschedulable"):
        return None
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    allocatable = status.get("allocatable") or {}
    devices: list[DeviceInfo] = []
    catalog = accelerators()
    resources = {a.k8s_resource for a in catalog.values() if a.kind != "cpu"}
    for key, amount in sorted(allocatable.items()):
        if key not in resources:
            continue
        chip = chip_of(key, labels)
        if chip is None:
            log.warning(
                "node %s offers %s, but which chip it is cannot be told: label it %s=<chip>",
                meta.get("name"),
                key,
                CHIP_LABEL,
            )
            continue
        visible = "CUDA_VISIBLE_DEVICES" if key == NVIDIA_GPU else ""
        for _ in range(int(parse_quantity(amount))):
            devices.append(DeviceInfo(len(devices), chip, catalog[chip].memory_mib, visible))
    name = node_name(prefix, str(meta.get("name", "")))
    labels[NODE_LABEL] = name
    labels.setdefault(HOSTNAME_LABEL, str(meta.get("name", "")))
    address = next(
        (a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"),
        "",
    )
    return NodeInfo(
        name,
        int(parse_quantity(allocatable.get("cpu", "0"))),
        int(parse_quantity(allocatable.get("memory", "0")) / 2**20),
        devices,
        labels,
        address,
    )


def node_name(prefix: str, node: str) -> str:
    """Our name for a cluster's node: its site's prefix before it, within the 63
    characters a node's name (and a label value) may have."""
    name = prefix + node
    if len(name) <= 63:
        return name
    return f"{name[:54]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def volcano_job(
    launch: Launch,
    name: str,
    image: str,
    hostnames: list[str],
    resource: str | None,
    service: str,
) -> dict[str, Any]:
    """The Volcano Job that runs ``launch``: one task per member, each pinned to its node.

    ``maxRetry: 1`` and no restart policies: a member that fails ends the Job, and the
    service's loop — which knows the job's retries, checkpoints and other sites — decides
    what comes next, as it does on every other engine."""
    members = max(1, launch.gang)
    argv = list(launch.argv)
    if argv and argv[0] == sys.executable:  # the service's own Python: the image's here
        argv[0] = "python"
    tasks = []
    for rank in range(members):
        env = {
            **launch.env,
            "SUANLI_JOB_ID": launch.job_id,
            "HOME": "/tmp",  # uid 65534's home (/nonexistent) is not writable
            **{k: str(cpu_threads(launch.cpu)) for k in THREADS if k not in launch.env},
        }
        if members > 1:
            env |= {
                "RANK": str(rank),
                "WORLD_SIZE": str(members),
                "MASTER_ADDR": f"{name}-m0-0.{name}",
                "MASTER_PORT": str(MASTER_PORT),
                "LOCAL_RANK": "0",  # one member per pod, which sees its devices from 0
                "LOCAL_WORLD_SIZE": "1",
            }
        requests = {
            "cpu": f"{math.ceil(launch.cpu * 1000)}m",
            "memory": f"{launch.memory_mib}Mi",
        }
        limits = dict(requests)
        if resource and launch.devices:
            if launch.share < 1 and resource == NVIDIA_GPU:
                limits[resource] = "1"  # a share of one GPU is HAMi's, as `suanli export k8s`
                limits[HAMI_MEMORY_PERCENT] = str(math.ceil(launch.share * 100))
            else:
                limits[resource] = str(len(launch.devices))
        container: dict[str, Any] = {
            "name": "main",
            "image": image,
            "command": [literal(a) for a in argv],
            "env": [{"name": k, "value": literal(v)} for k, v in env.items()],
            "resources": {"requests": requests, "limits": limits},
            # an untrusted tenant's code: never root, never more privilege than it started with
            "securityContext": {
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
        if members > 1:
            container["ports"] = [{"name": "torch-dist", "containerPort": MASTER_PORT}]
        if launch.cwd:
            container["workingDir"] = launch.cwd
        pod = {
            "containers": [container],
            "restartPolicy": "Never",
            "nodeSelector": {HOSTNAME_LABEL: hostnames[rank]},
            "terminationGracePeriodSeconds": math.ceil(launch.grace_s),
            "securityContext": {"runAsNonRoot": True, "runAsUser": JOB_UID, "runAsGroup": JOB_UID},
            "automountServiceAccountToken": False,  # a job has no business with the API server
        }
        labels = {JOB_LABEL: launch.job_id, SERVICE_LABEL: service}
        template = {"metadata": {"labels": labels}, "spec": pod}
        tasks.append({"name": f"m{rank}", "replicas": 1, "template": template})
    job: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Job",
        "metadata": {"name": name, "labels": {JOB_LABEL: launch.job_id, SERVICE_LABEL: service}},
        "spec": {
            "schedulerName": "volcano",
            "minAvailable": members,
            "maxRetry": 1,
            "tasks": tasks,
        },
    }
    if members > 1:  # pod names under a headless service <job>, reachable before ready
        job["spec"]["plugins"] = {"svc": ["--publish-not-ready-addresses=true"]}
    return job


class KubernetesExecutor:
    """Runs members as Volcano Jobs in ``namespace`` of the cluster whose API server is at
    ``address``, in ``image`` (one with suanli and the workloads) unless a job names its own."""

    name = "kubernetes"
    gang_native = True  # a gang is started by one call (one Volcano Job, placed whole)

    def __init__(
        self,
        address: str,
        log_dir: Path,
        *,
        token: str | None,
        image: str,
        namespace: str = "default",
        ca_cert: str | None = None,
        service: str = "",
        prefix: str = "",
    ) -> None:
        """``prefix`` goes before every node's name (its site's), so two clusters' nodes of
        the same name stay apart. Raises `KubernetesUnavailable` when the API server does
        not answer and `ExecutorUnavailable` when Volcano is not installed there."""
        from kubernetes import client

        self.address = address if "://" in address else f"https://{address}"
        self.image, self.namespace, self.service, self.prefix = image, namespace, service, prefix
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cfg = client.Configuration()
        cfg.host = self.address
        cfg.retries = False  # one try: a site that fails is the site layer's to handle
        if token:
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        if ca_cert:
            # the client reads a CA from a file; this one holds no secret, and is named by
            # its content so reconnecting writes no new file
            digest = hashlib.sha256(ca_cert.encode()).hexdigest()[:16]
            path = self.log_dir / f"k8s-ca-{digest}.pem"
            if not path.exists():
                path.write_text(ca_cert)
            cfg.ssl_ca_cert = str(path)
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self._hostname: dict[str, str] = {}  # our node name -> its kubernetes.io/hostname
        self._resource: dict[str, str] = {}  # our node name -> its chips' resource name
        self._stopped: set[str] = set()  # Volcano Jobs this process deleted
        self._logs_at: dict[str, float] = {}
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(
                lambda: self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, limit=1, _request_timeout=TIMEOUT_S
                ),
                f"list Volcano Jobs in namespace {namespace}",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise ExecutorUnavailable(f"{self.address}: {exc.status} {exc.reason}") from None
            raise ExecutorUnavailable(
                f"{self.address}: no Volcano Jobs API ({GROUP}/{VERSION}) in namespace "
                f"{namespace}: install Volcano (https://volcano.sh/en/docs/installation/) "
                "or name the namespace it serves"
            ) from None

    def _call(self, fn: Any, what: str) -> Any:
        """``fn()``, its failures said as the site's: unreachable, refused credentials or a
        5xx is an outage (`ExecutorUnavailable`); any other 4xx is raised as it is."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as exc:
            if exc.status in (401, 403):
                raise ExecutorUnavailable(
                    f"{self.address} refused to {what} ({exc.status} {exc.reason}): the token "
                    "needs a role allowing it (nodes: list; pods and pods/log: get, list, "
                    f"delete; jobs.batch.volcano.sh: create, get, list, delete in {self.namespace})"
                ) from None
            if exc.status is not None and exc.status < 500:
                raise
            raise KubernetesUnavailable(
                f"{self.address}: {what}: {exc.status} {exc.reason}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubernetesUnavailable(f"cannot reach {self.address} to {what}: {exc}") from None

    # --- nodes ---------------------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        listed = self._call(
            lambda: self.core.list_node(_request_timeout=TIMEOUT_S, _preload_content=False),
            "list nodes",
        )
        out = []
        for item in json.loads(listed.data).get("items", []):
            info = node_info(item, self.prefix)
            if info is None:
                continue
            self._hostname[info.name] = info.labels[HOSTNAME_LABEL]
            if info.devices:
                chip = accelerators()[info.devices[0].accelerator]
                self._resource[info.name] = chip.k8s_resource
            out.append(info)
        return out

    # --- members -------------------------------------------------------------------
    def start(self, launch: Launch) -> Handle:
        from kubernetes.client.exceptions import ApiException

        nodes = list(launch.member_nodes) or [launch.node]
        missing = [n for n in nodes if n not in self._hostname]
        if missing:
            raise KubernetesUnavailable(f"node {missing[0]} is not in the cluster any more")
        name = f"suanli-{launch.job_id}-{uuid.uuid4().hex[:8]}"
        body = volcano_job(
            launch,
            name,
            launch.image or self.image,
            [self._hostname[n] for n in nodes],
            self._resource.get(launch.node),
            self.service,
        )
        try:
            self._call(
                lambda: self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=TIMEOUT_S
                ),
                f"create Volcano Job {name}",
            )
        except KubernetesUnavailable:
            # the server may have taken it without saying so: stopped if it did
            with contextlib.suppress(Exception):
                self.stop_ref(name)
            raise
        except ApiException as exc:  # a 4xx: the cluster refused this job, the job's failure
            raise SuanliError(
                f"{self.address} refused Volcano Job {name}: {exc.status} {exc.reason}: "
                f"{_message(exc)}"
            ) from None
        out = self.log_dir / f"{launch.job_id}.out"
        err = self.log_dir / f"{launch.job_id}.err"
        err.touch()
        return Handle(
            launch.job_id, 0, time.time(), str(out), str(err), launch.node, 0, launch.devices, name
        )

    def _job(self, ref: str) -> dict[str, Any] | None:
        """The Volcano Job; None when the API server says there is none (404)."""
        from kubernetes.client.exceptions import ApiException

        try:
            got: dict[str, Any] = self._call(
                lambda: self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, ref, _request_timeout=TIMEOUT_S
                ),
                f"read Volcano Job {ref}",
            )
            return got
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubernetesUnavailable(f"{self.address}: read {ref}: {exc.status}") from None

    def _pods(self, ref: str) -> list[dict[str, Any]]:
        got = self._call(
            lambda: self.core.list_namespaced_pod(
                self.namespace,
                label_selector=f"volcano.sh/job-name={ref}",
                _request_timeout=TIMEOUT_S,
                _preload_content=False,
            ),
            f"list the pods of {ref}",
        )
        items: list[dict[str, Any]] = json.loads(got.data).get("items", [])
        return items

    def poll(self, h: Handle) -> int | None:
        try:
            job = self._job(h.ref)
        except KubernetesUnavailable as exc:  # unknown is not ended: ask again next tick
            log.warning("%s", exc)
            return None
        if job is None:  # deleted: by our stop, or by someone else
            return -15 if h.ref in self._stopped else -9
        phase = str(((job.get("status") or {}).get("state") or {}).get("phase") or "Pending")
        now = time.monotonic()
        done = phase in ENDED
        if done or now - self._logs_at.get(h.ref, 0.0) > LOG_REFRESH_S:
            with contextlib.suppress(ExecutorUnavailable):
                self._save_logs(h)
            self._logs_at[h.ref] = now
        if not done:
            return None
        self._logs_at.pop(h.ref, None)
        if phase == "Completed":
            return 0
        codes = [
            int(((c.get("state") or {}).get("terminated") or {}).get("exitCode", 0))
            for pod in self._safe_pods(h.ref)
            for c in (pod.get("status") or {}).get("containerStatuses") or []
        ]
        failed = next((c for c in codes if c), None)
        if failed is not None:
            return failed
        return -15 if phase in ("Terminated", "Aborted") else 1

    def _safe_pods(self, ref: str) -> list[dict[str, Any]]:
        try:
            return self._pods(ref)
        except ExecutorUnavailable:
            return []

    def _save_logs(self, h: Handle) -> None:
        """Every member's pod log, rank order, into the job's log file."""
        from kubernetes.client.exceptions import ApiException

        texts = []
        for pod in sorted(self._pods(h.ref), key=lambda p: str(p["metadata"]["name"])):
            pod_name = str(pod["metadata"]["name"])
            try:
                text = self._call(
                    lambda n=pod_name: self.core.read_namespaced_pod_log(
                        n, self.namespace, _request_timeout=TIMEOUT_S
                    ),
                    f"read the log of {pod_name}",
                )
            except ApiException:  # a pod not started yet has no log
                continue
            texts.append(str(text or ""))
        if texts:
            path = Path(h.stdout)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(texts))
            os.replace(tmp, path)  # a reader sees the old or the new text, never half

    def terminate(self, h: Handle) -> None:
        """Deleting the Volcano Job deletes its pods: SIGTERM, then SIGKILL after their
        ``terminationGracePeriodSeconds``. If the server is unreachable now, the loop asks
        again when the grace is over (``kill``)."""
        with contextlib.suppress(ExecutorUnavailable):
            self.stop_ref(h.ref)

    def kill(self, h: Handle) -> None:
        """Its pods are deleted at once (grace 0), then the Job."""
        with contextlib.suppress(ExecutorUnavailable):
            self._call(
                lambda: self.core.delete_collection_namespaced_pod(
                    self.namespace,
                    label_selector=f"volcano.sh/job-name={h.ref}",
                    grace_period_seconds=0,
                    _request_timeout=TIMEOUT_S,
                ),
                f"delete the pods of {h.ref}",
            )
        self.terminate(h)

    def stop_ref(self, ref: str) -> None:
        from kubernetes.client.exceptions import ApiException

        self._stopped.add(ref)
        try:
            self._call(
                lambda: self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, ref, _request_timeout=TIMEOUT_S
                ),
                f"delete Volcano Job {ref}",
            )
        except ApiException as exc:
            if exc.status != 404:  # already gone is stopped
                raise

    def strays(self, known: set[str]) -> list[str]:
        """This service's Volcano Jobs not yet ended that no running job's member holds: a
        job requeued while this cluster was away, or started by a service that crashed
        before it stored the start."""
        listed = self._call(
            lambda: self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                label_selector=f"{SERVICE_LABEL}={self.service}",
                _request_timeout=TIMEOUT_S,
            ),
            "list Volcano Jobs",
        )
        found = []
        for job in listed.get("items", []):
            name = str(job["metadata"]["name"])
            phase = ((job.get("status") or {}).get("state") or {}).get("phase") or "Pending"
            if phase not in ENDED and name not in known:
                found.append(name)
        return found

    def is_alive(self, h: Handle) -> bool:
        return self.poll(h) is None

    def logs(self, h: Handle) -> str:
        with contextlib.suppress(ExecutorUnavailable):
            self._save_logs(h)
        return Path(h.stdout).read_text(errors="replace") if Path(h.stdout).exists() else ""


def _message(exc: Any) -> str:
    """The API server's own reason (a Status object's ``message``), short."""
    try:
        return str(json.loads(exc.body).get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return ""
