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
import datetime
import functools
import hashlib
import json
import logging
import math
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suanli.catalog.loader import accelerators
from suanli.errors import SuanliError
from suanli.run.attempt_log import save_attempt
from suanli.run.devices import catalog_name
from suanli.run.executor import (
    MAX_CORES,
    MAX_DEVICES,
    MAX_MEMORY_MIB,
    NO_REPLICAS_LABEL,
    NODE_LABEL,
    SHARES_LABEL,
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
#: NVIDIA GPU Feature Discovery's count of the node's physical GPUs
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
#: NVIDIA GPU Feature Discovery's product label, e.g. "NVIDIA-H100-80GB-HBM3"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
JOB_LABEL = "suanli.io/job"  # the suanli job a Volcano Job runs a member (or gang) of
SERVICE_LABEL = "suanli.io/service"  # which suanli service submitted it: strays are ours
TIMEOUT_S = (5.0, 10.0)  # connect, read: one call; the site layer times out the rest
LOG_REFRESH_S = 5.0  # a running job's pod logs are read at most this often
#: the first this much of each pod's log (one tenant's flood must not make the site's
#: calls time out; the rest is there for kubectl logs)
LOG_LIMIT_BYTES = 4 << 20
#: a container that will never start: the job's failure, said in its log
#: (not ErrImagePull or CreateContainerError: a first failed pull, a registry's 429 or a
#: slow runtime pass; the kubelet's back-off after them is the lasting state)
CANNOT_START = {
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
}
#: ends remembered after their Jobs are deleted (a second poll answers the same)
ENDED_KEPT = 10_000
#: a pod still there this long past its grace is deleted at once (a NotReady node)
OVERDUE_S = 60.0
#: a Job whose pods the cluster has left unplaced this long (as this process saw them:
#: a restarted service counts afresh) fails (125): the devices suanli placed it on are
#: someone else's now (a pod the cluster runs beside suanli, a node taken out), and a
#: job that waits there unseen holds them in suanli's books forever. Time to pull an
#: image is not counted: a scheduled pod has its node
PENDING_LIMIT_S = 600.0
#: what a container that could not run ends with (as ``docker run`` says it)
CONTAINER_CANNOT_RUN = 125
#: every read asks for the raw answer: it is parsed here, where nonsense is caught
RAW: dict[str, Any] = {"_preload_content": False, "_request_timeout": TIMEOUT_S}
#: what the token's role must allow (namespaced, but nodes need a ClusterRole)
RBAC_NEEDED = (
    "a ClusterRole allowing nodes: list, and a Role in the namespace allowing pods: get, "
    "list, delete, deletecollection; pods/log: get; jobs.batch.volcano.sh: create, get, "
    "list, delete"
)
#: a finished Volcano Job is deleted by the executor once it has read its end; this is
#: the backstop (a site may be away for up to 7 days, its grace, and still report)
TTL_S = 8 * 86_400
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
    node that is not Ready, is cordoned, repels pods with a taint (a control-plane node, a
    reserved pool: a pod without the toleration would stay Pending), or reports numbers
    no node has (a cluster's answer is a stranger's: it may not exhaust the service)."""
    from kubernetes.utils import parse_quantity

    meta, spec, status = node.get("metadata", {}), node.get("spec", {}), node.get("status", {})
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    repels = any(t.get("effect") in ("NoSchedule", "NoExecute") for t in spec.get("taints") or [])
    if not ready or spec.get("unschedulable") or repels:
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
        count = int(parse_quantity(amount))
        physical = labels.get(GPU_COUNT_LABEL, "")
        if key == NVIDIA_GPU and physical.isdigit() and int(physical) < count:
            # HAMi lists each GPU as its split count of virtual ones (10 by default); GFD's
            # label counts the cards, which is what the scheduler places devices on
            count = int(physical)
        if not 0 <= count <= MAX_DEVICES - len(devices):
            return None  # checked before any is made: a count of 1e9 makes none
        visible = "CUDA_VISIBLE_DEVICES" if key == NVIDIA_GPU else ""
        for _ in range(count):
            devices.append(DeviceInfo(len(devices), chip, catalog[chip].memory_mib, visible))
    cores = int(parse_quantity(allocatable.get("cpu", "0")))
    memory_mib = int(parse_quantity(allocatable.get("memory", "0")) / 2**20)
    if not (0 <= cores <= MAX_CORES and 0 <= memory_mib <= MAX_MEMORY_MIB):
        return None
    host = str(meta.get("name", ""))
    name = node_name(prefix, host)
    labels[NODE_LABEL] = name
    labels.setdefault(HOSTNAME_LABEL, host)
    labels[NO_REPLICAS_LABEL] = "true"  # a replica's pod is not reached at its node's address
    # a share of a GPU needs HAMi, which its operator says with this label (HAMi's own
    # resource is not a node resource Kubernetes lists); without it, no shares here
    if labels.get(SHARES_LABEL) != "hami":
        labels[SHARES_LABEL] = "none"
    address = next(
        (
            str(a.get("address", ""))
            for a in status.get("addresses") or []
            if a.get("type") == "InternalIP"
        ),
        "",
    )
    return NodeInfo(name, cores, memory_mib, devices, labels, address)


def node_name(prefix: str, node: str) -> str:
    """Our name for a cluster's node: a DNS label (``/v1/nodes/NAME`` and job names take
    it), the site's prefix, the node's name in the characters a label allows, and a
    digest of both, so that no two (site, node) pairs share one (``a-`` + ``b-x`` and
    ``a-b-`` + ``x`` differ, as do ``ip-10-0-1-5.ec2.internal`` and ``ip-10-0-1-5``)."""
    digest = hashlib.sha256(f"{prefix}\0{node}".encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9-]+", "-", (prefix + node).lower()).strip("-")
    return f"{readable[:54].rstrip('-')}-{digest}"


def volcano_job(
    launch: Launch,
    name: str,
    image: str,
    hostnames: list[str],
    resource: str | None,
    service: str,
    shares: bool = True,
) -> dict[str, Any]:
    """The Volcano Job that runs ``launch``: one task per member, each pinned to its node.

    A member that fails or is evicted terminates the whole Job (``TerminateJob``: without
    a policy Volcano only syncs, and the other members of a gang would wait in their
    collectives holding devices), and ``maxRetry: 1`` allows no restart: the service's
    loop, which knows the job's retries, checkpoints and other sites, decides what comes
    next, as on every other engine. A finished Job is deleted by Kubernetes after
    ``TTL_S`` (its pods, PodGroup and Service with it), long after the loop read its end.
    ``shares``: the node offers HAMi's share of a GPU (else a share takes the device)."""
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
        if not (resource and launch.devices):
            # no device asked: none seen, even where the image sets NVIDIA_VISIBLE_DEVICES
            # =all (CUDA images do) and NVIDIA's runtime is the node's default
            env["NVIDIA_VISIBLE_DEVICES"] = "void"
        if resource and launch.devices:
            if launch.share < 1 and resource == NVIDIA_GPU and shares:
                limits[resource] = "1"  # a share of one GPU is HAMi's, as `suanli export k8s`
                limits[HAMI_MEMORY_PERCENT] = str(math.ceil(launch.share * 100))
            else:  # without HAMi a share is a whole device (a pod asking HAMi's resource
                # there would stay Pending); another share's pod waits for it
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
            "ttlSecondsAfterFinished": TTL_S,
            "policies": [
                {"event": "PodFailed", "action": "TerminateJob"},
                {"event": "PodEvicted", "action": "TerminateJob"},
            ],
            "tasks": tasks,
        },
    }
    if members > 1:  # pod names under a headless service <job>, reachable before ready
        job["spec"]["plugins"] = {"svc": ["--publish-not-ready-addresses=true"]}
    return job


class Refused(SuanliError):
    """The API server refused a request as malformed or not allowed for it (a 4xx other
    than the credential's or the server's load): the request's fault, not the site's."""


class _NotFound(Exception):
    """The API server has no such object (404)."""


#: a malformed answer (a hostile or broken server): the site's fault, never a crash
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)


@dataclass
class _Tracked:
    """What this process knows of one Volcano Job until it has read the Job's end."""

    stopped: bool = False  # deleted by this process
    failed: int | None = None  # deleted because a member failed or cannot start: its code
    logs_at: float = 0.0  # monotonic time the pods' logs were last read
    pod_text: dict[str, str] = field(default_factory=dict)  # pod -> its log, last read
    capped: set[str] = field(default_factory=set)  # pods whose log passed the cap
    note: str = ""  # what the service adds to the log (why a container cannot start)
    unplaced_since: float | None = None  # monotonic time its pods were first seen unplaced


class KubernetesExecutor:
    """Runs members as Volcano Jobs in ``namespace`` of the cluster whose API server is at
    ``address``, in ``image`` (one with suanli and the workloads) unless a job names its own.

    Every answer is a stranger's: a failure to reach the server, an overloaded one (429)
    or one that answers nonsense makes the site away for the sites layer, never an error
    that stops the loop for other sites."""

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
        """``prefix`` goes into every node's name (its site's), so two clusters' nodes of
        the same name stay apart. Raises `KubernetesUnavailable` when the API server does
        not answer and `ExecutorUnavailable` when Volcano is not installed there."""
        from kubernetes import client

        self.address = address if "://" in address else f"https://{address}"
        self.image, self.namespace, self.service, self.prefix = image, namespace, service, prefix
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cfg = client.Configuration()
        cfg.host = self.address
        cfg.retries = False  # one try (and no redirect followed): failures are the site's
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
        self._shares: dict[str, bool] = {}  # our node name -> it offers HAMi's shares
        self._jobs: dict[str, _Tracked] = {}  # Volcano Job -> what is known of it here
        self._ended: dict[str, int] = {}  # Job -> how it ended, as read (then deleted)
        self.pending_limit_s = PENDING_LIMIT_S
        try:
            self._json(
                lambda: self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, limit=1, **RAW
                ),
                f"list Volcano Jobs in namespace {namespace}",
            )
        except _NotFound:
            raise ExecutorUnavailable(
                f"{self.address}: no Volcano Jobs API ({GROUP}/{VERSION}) in namespace "
                f"{namespace}: install Volcano (https://volcano.sh/en/docs/installation/) "
                "or name the namespace it serves"
            ) from None
        except Refused as exc:
            raise ExecutorUnavailable(str(exc)) from None

    # --- calls ---------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()``; a 404 is `_NotFound`, a refused credential, an overloaded or failing
        server and no answer are `ExecutorUnavailable` (the site's), any other 4xx is
        `Refused` (the request's)."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as exc:
            status = exc.status or 0
            if status == 404:
                raise _NotFound(what) from None
            if status in (401, 403):
                raise ExecutorUnavailable(
                    f"{self.address} refused to {what} ({status} {exc.reason}): the token "
                    f"needs {RBAC_NEEDED}"
                ) from None
            if 400 <= status < 500 and status not in (408, 429):
                raise Refused(f"{what}: {status} {exc.reason}: {_message(exc)}") from None
            raise KubernetesUnavailable(f"{self.address}: {what}: {status} {exc.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubernetesUnavailable(f"cannot reach {self.address} to {what}: {exc}") from None

    def _json(self, fn: Callable[[], Any], what: str) -> dict[str, Any]:
        """``fn()`` (a call made with ``_preload_content=False``) read as a JSON object."""
        raw = self._call(fn, what)
        try:
            data = json.loads(raw.data)
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
            data = None
        if not isinstance(data, dict):
            raise KubernetesUnavailable(f"{self.address}: {what}: the answer is not JSON")
        return data

    def _items(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        items = data.get("items")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    # --- nodes ---------------------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        listed = self._json(lambda: self.core.list_node(**RAW), "list nodes")
        out = []
        for item in self._items(listed):
            try:
                info = node_info(item, self.prefix)
            except MALFORMED as exc:  # one node's nonsense leaves that node out
                log.warning("%s: a node could not be read (%s): left out", self.address, exc)
                continue
            if info is None:
                continue
            self._hostname[info.name] = info.labels[HOSTNAME_LABEL]
            self._shares[info.name] = info.labels.get(SHARES_LABEL) == "hami"
            if info.devices:
                chip = accelerators()[info.devices[0].accelerator]
                self._resource[info.name] = chip.k8s_resource
            out.append(info)
        return out

    # --- members -------------------------------------------------------------------
    def start(self, launch: Launch) -> Handle:
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
            shares=self._shares.get(launch.node, False),
        )
        try:
            self._call(
                lambda: self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, body, **RAW
                ),
                f"create Volcano Job {name}",
            )
        except ExecutorUnavailable:
            # the server may have taken it without saying so: stopped if it did
            with contextlib.suppress(Exception):
                self._stop(name)
            raise
        except _NotFound:  # the namespace or Volcano went away: the site's trouble
            raise KubernetesUnavailable(
                f"{self.address}: no Volcano Jobs in namespace {self.namespace} any more"
            ) from None
        except Refused as exc:  # the cluster refused this job (an invalid image name...)
            raise SuanliError(f"{self.address} refused the job: {exc}") from None
        out = self.log_dir / f"{launch.job_id}.out"
        err = self.log_dir / f"{launch.job_id}.err"
        err.touch()
        return Handle(
            launch.job_id, 0, time.time(), str(out), str(err), launch.node, 0, launch.devices, name
        )

    def _track(self, ref: str) -> _Tracked:
        return self._jobs.setdefault(ref, _Tracked())

    def poll(self, h: Handle) -> int | None:
        """The Job's end once Kubernetes has carried it out: a Job being deleted (a stop,
        whose pods serve their grace) has not ended, and neither has one whose pods still
        run after it is gone. Unknown (the site unreachable, an answer that makes no sense)
        is not ended either: asked again next tick."""
        if h.ref in self._ended:  # read before, and its Job deleted since: the same answer
            return self._ended[h.ref]
        try:
            code = self._poll(h)
        except (ExecutorUnavailable, Refused, _NotFound) as exc:
            log.warning("%s: %s", self.address, exc)
            return None
        except MALFORMED as exc:
            log.warning("%s: the state of %s makes no sense (%s)", self.address, h.ref, exc)
            return None
        if code is not None:  # ended: nothing of it is needed here any more
            self._ended[h.ref] = code
            while len(self._ended) > ENDED_KEPT:
                self._ended.pop(next(iter(self._ended)))
            self._jobs.pop(h.ref, None)
        return code

    def _poll(self, h: Handle) -> int | None:
        try:
            job = self._json(
                lambda: self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, h.ref, **RAW
                ),
                f"read Volcano Job {h.ref}",
            )
        except _NotFound:
            # deleted (by a stop, or by someone else): ended once no pod of it still runs
            pods = self._pods(h.ref)
            running = [p for p in pods if not _finished(p)]
            if running:
                self._refresh_logs(h, pods)
                self._force_overdue(h.ref, running)
                return None
            known = self._jobs.get(h.ref, _Tracked())
            if known.failed is not None:
                return known.failed
            return -15 if known.stopped else -9
        meta = job.get("metadata") or {}
        pods = self._pods(h.ref)
        if meta.get("deletionTimestamp"):  # being deleted (foreground): pods still stopping
            self._refresh_logs(h, pods)
            self._force_overdue(h.ref, pods)
            return None
        phase = str(((job.get("status") or {}).get("state") or {}).get("phase") or "Pending")
        ended = phase in ENDED
        states = [
            c.get("state") or {}
            for pod in pods
            for c in (pod.get("status") or {}).get("containerStatuses") or []
        ]
        ends = [s.get("terminated") or {} for s in states]
        codes = [int(e.get("exitCode", 0)) for e in ends]
        # the member that failed, not a sibling stopped for it (SIGTERM 143, SIGKILL 137),
        # though a member the kernel killed for memory is the one that failed
        failed = next(
            (
                int(e.get("exitCode", 0))
                for e in ends
                if e.get("exitCode") not in (None, 0, 137, 143) or e.get("reason") == "OOMKilled"
            ),
            None,
        )
        failed = failed if failed is not None else next((c for c in codes if c), None)
        stuck = None if ended else self._cannot_start(h.ref, states, pods, phase)
        if stuck is not None:
            self._track(h.ref).note = f"\n[suanli] {stuck[:600]}\n"
        self._refresh_logs(h, pods, now=ended or failed is not None or stuck is not None)
        if not ended and (failed is not None or stuck is not None):
            # a member failed (or cannot start) and Volcano has not ended the Job yet: its
            # other members would wait in their collectives holding devices; stop them all
            self._track(h.ref).failed = CONTAINER_CANNOT_RUN if stuck else int(failed or 1)
            self._stop(h.ref)
            return None
        if not ended:
            return None
        known = self._jobs.get(h.ref, _Tracked())
        code = known.failed
        if code is None and phase == "Completed":
            code = 0
        if code is None:
            code = failed
        if code is None:
            # ended by the cluster (an eviction, a drain) or by our stop
            code = -15 if known.stopped else (1 if phase == "Failed" else -9)
        self._delete_ended(h.ref)
        return code

    def _cannot_start(
        self, ref: str, states: list[dict[str, Any]], pods: list[dict[str, Any]], phase: str
    ) -> str | None:
        """Why a Job that has not ended never will run (None: it may yet): a container
        the kubelet has given up starting, or pods the cluster has left unplaced for
        ``pending_limit_s``, timed from when this process first saw them so."""
        waiting = [s.get("waiting") or {} for s in states]
        stuck = next((w for w in waiting if w.get("reason") in CANNOT_START), None)
        if stuck is not None:
            return f"the container cannot start: {stuck.get('reason')}: {stuck.get('message', '')}"
        unplaced = _unplaced(pods, phase)
        if unplaced is None:
            if ref in self._jobs:
                self._jobs[ref].unplaced_since = None
            return None
        known = self._track(ref)
        now = time.monotonic()
        if known.unplaced_since is None:
            known.unplaced_since = now
        if now - known.unplaced_since < self.pending_limit_s:
            return None
        return (
            f"the cluster has not placed the job's pods in {self.pending_limit_s:.0f} s: {unplaced}"
        )

    def _pods(self, ref: str) -> list[dict[str, Any]]:
        try:
            listed = self._json(
                lambda: self.core.list_namespaced_pod(
                    self.namespace, label_selector=f"volcano.sh/job-name={ref}", **RAW
                ),
                f"list the pods of {ref}",
            )
        except _NotFound:  # the namespace itself is gone
            raise KubernetesUnavailable(
                f"{self.address}: namespace {self.namespace} is gone"
            ) from None
        return self._items(listed)

    def _refresh_logs(self, h: Handle, pods: list[dict[str, Any]], now: bool = False) -> None:
        """The pods' logs, at most every ``LOG_REFRESH_S`` (``now``: at once, as before a
        stop, so a failed member's last lines are kept)."""
        t = time.monotonic()
        known = self._track(h.ref)
        if now or t - known.logs_at > LOG_REFRESH_S:
            self._save_logs(h, pods)
            known.logs_at = t

    def _save_logs(self, h: Handle, pods: list[dict[str, Any]]) -> None:
        """Every member's pod log, in rank order, as this attempt's log; the job's log file
        is all its attempts (`save_attempt`). A pod gone or unreadable keeps the text last
        read from it (a failed member's pod may be removed while its siblings stop). At
        most the first ``LOG_LIMIT_BYTES`` of each, read as a capped stream (a server
        ignoring ``limitBytes`` sends no more), and a pod past the cap is not read again."""
        import urllib3

        known = self._track(h.ref)
        seen = known.pod_text
        for pod in pods:
            pod_name = str((pod.get("metadata") or {}).get("name", ""))
            if pod_name in known.capped:
                continue
            try:
                raw = self._call(
                    functools.partial(
                        self.core.read_namespaced_pod_log,
                        pod_name,
                        self.namespace,
                        container="main",
                        limit_bytes=LOG_LIMIT_BYTES,
                        **RAW,
                    ),
                    f"read the log of {pod_name}",
                )
            except (_NotFound, Refused, *MALFORMED):  # not started yet, or gone: as last read
                continue
            try:
                data = bytes(raw.read(LOG_LIMIT_BYTES + 1))
            except (urllib3.exceptions.HTTPError, OSError, *MALFORMED):
                raw.close()
                continue
            if len(data) > LOG_LIMIT_BYTES:
                raw.close()  # unread data stays behind: not a connection to hand back
            else:
                raw.release_conn()
            text = data[:LOG_LIMIT_BYTES].decode(errors="replace")
            if len(data) >= LOG_LIMIT_BYTES:
                text += f"\n[suanli] {pod_name}'s log is longer than {LOG_LIMIT_BYTES} bytes\n"
                known.capped.add(pod_name)
            seen[pod_name] = text
        note = known.note  # why it could not start, after what it wrote
        texts = [seen[n] for n in sorted(seen, key=_rank_of)]
        if texts or note:
            save_attempt(self.log_dir, h.job_id, h.ref, "".join(texts) + note, Path(h.stdout))

    def _delete(self, ref: str, policy: str) -> None:
        with contextlib.suppress(_NotFound, Refused):  # already gone (or going)
            self._call(
                lambda: self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, ref, propagation_policy=policy, **RAW
                ),
                f"delete Volcano Job {ref}",
            )

    def _stop(self, ref: str) -> None:
        """Delete the Volcano Job in the foreground: it stays, marked for deletion, until
        its pods have served their grace (`poll` waits for that, and forces pods still
        there past it)."""
        self._track(ref).stopped = True
        self._delete(ref, "Foreground")

    def _delete_ended(self, ref: str) -> None:
        """An ended Job, its end read, is deleted (its pods with it): the TTL is only the
        backstop for a service gone for days, whose Job must still say how it ended."""
        with contextlib.suppress(ExecutorUnavailable):
            self._delete(ref, "Background")

    def _force_overdue(self, ref: str, pods: list[dict[str, Any]]) -> None:
        """Pods still there well past their grace (a node gone NotReady never confirms a
        deletion) are deleted at once, whoever began the stop."""
        now = datetime.datetime.now(datetime.UTC)
        for pod in pods:
            meta = pod.get("metadata") or {}
            stamp = meta.get("deletionTimestamp")
            if not stamp:
                continue
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            since = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
            if (now - since).total_seconds() > grace + OVERDUE_S:
                self._kill_pods(ref)
                return

    def _kill_pods(self, ref: str) -> None:
        with contextlib.suppress(ExecutorUnavailable, _NotFound, Refused, *MALFORMED):
            self._call(
                lambda: self.core.delete_collection_namespaced_pod(
                    self.namespace,
                    label_selector=f"volcano.sh/job-name={ref}",
                    grace_period_seconds=0,
                    **RAW,
                ),
                f"delete the pods of {ref}",
            )

    def terminate(self, h: Handle) -> None:
        """Deleting the Volcano Job deletes its pods: SIGTERM, then SIGKILL after their
        ``terminationGracePeriodSeconds``. If the server is unreachable now, the loop asks
        again when the grace is over (``kill``)."""
        with contextlib.suppress(ExecutorUnavailable, *MALFORMED):
            self._stop(h.ref)

    def kill(self, h: Handle) -> None:
        """The Job is deleted first (so Volcano makes no new pod), then its pods at once."""
        self.terminate(h)
        self._kill_pods(h.ref)

    def stop_ref(self, ref: str) -> None:
        try:
            self._stop(ref)
        except MALFORMED as exc:
            raise KubernetesUnavailable(f"{self.address}: delete {ref}: {exc}") from None

    def strays(self, known: set[str]) -> list[str]:
        """This service's Volcano Jobs not yet ended (nor being deleted) that no running
        job's member holds: a job requeued while this cluster was away, or started by a
        service that crashed before it stored the start."""
        try:
            listed = self._json(
                lambda: self.custom.list_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    label_selector=f"{SERVICE_LABEL}={self.service}",
                    **RAW,
                ),
                "list Volcano Jobs",
            )
        except (_NotFound, Refused) as exc:
            raise KubernetesUnavailable(f"{self.address}: {exc}") from None
        found = []
        for job in self._items(listed):
            try:
                meta = job.get("metadata") or {}
                name = str(meta.get("name", ""))
                phase = ((job.get("status") or {}).get("state") or {}).get("phase") or "Pending"
                gone = meta.get("deletionTimestamp")
            except MALFORMED:  # one nonsensical entry is not a stray of ours
                continue
            if phase not in ENDED and not gone and name and name not in known:
                found.append(name)
        return found

    def is_alive(self, h: Handle) -> bool:
        return self.poll(h) is None

    def logs(self, h: Handle) -> str:
        if h.ref not in self._ended:  # an ended Job's logs were saved as it ended
            with contextlib.suppress(ExecutorUnavailable, Refused, _NotFound, *MALFORMED):
                self._save_logs(h, self._pods(h.ref))
        return Path(h.stdout).read_text(errors="replace") if Path(h.stdout).exists() else ""


def _finished(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _unplaced(pods: list[dict[str, Any]], phase: str) -> str | None:
    """Why the cluster has not placed the Job's pods (its scheduler's message), or None
    when it has. No pods at all while Volcano says Pending: its queue has not admitted
    the PodGroup, and the pods are made only once it has."""
    if not pods:
        admitted = phase != "Pending"
        return None if admitted else "Volcano has made no pod (its queue has not admitted it)"
    for pod in pods:
        status = pod.get("status") or {}
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return str(c.get("message") or c.get("reason") or "not scheduled")
        bound = (pod.get("spec") or {}).get("nodeName") or status.get("containerStatuses")
        if status.get("phase") == "Pending" and not bound:
            return "a pod is not scheduled"
    return None


def _rank_of(name: str) -> tuple[int, str]:
    """A pod's member rank from its name ``<job>-m<rank>-0`` (m10 after m2)."""
    found = re.search(r"-m(\d+)-\d+$", name)
    return (int(found.group(1)) if found else 0, name)


def _message(exc: Any) -> str:
    """The API server's own reason (a Status object's ``message``), short."""
    try:
        return str(json.loads(exc.body).get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return ""
