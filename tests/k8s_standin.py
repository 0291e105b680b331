"""A stand-in for a Kubernetes API server with Volcano: NOT the real thing.

No API server can run on these machines (kind, k3s and envtest need downloads or Docker),
so the Kubernetes executor's calls are driven against this: an HTTP server answering the
few endpoints the executor uses, with the real ``kubernetes`` client on the other end. It
checks what a real server would check of what it is sent — the bearer token, and every
Volcano Job against Volcano's own CRD schema (``../shared/schemas``) — and keeps Jobs and
their pods in memory. Nothing runs: a test says how a Job ends (`StandIn.finish`), as a
kubelet would report it. What this cannot show is how a real Volcano schedules, evicts or
restarts; that is said in the executor's docstring and the closing notes.
"""

from __future__ import annotations

import datetime
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import yaml

JOBS = "/apis/batch.volcano.sh/v1alpha1/namespaces/"


def volcano_schema(shared: Path) -> dict[str, Any]:
    crd = yaml.safe_load((shared / "schemas" / "batch.volcano.sh_jobs.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def gpu_node(name: str, gpus: int, product: str = "NVIDIA-A100-SXM4-80GB") -> dict[str, Any]:
    """A Ready node as the API server lists it, GPUs from NVIDIA's device plugin and GFD."""
    return {
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/region": "cn-k8s",
                "nvidia.com/gpu.product": product,
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "7910m", "memory": "64Gi", "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "10.1.0.7"}],
        },
    }


def _selected(labels: dict[str, str], selector: str) -> bool:
    pairs = [p.split("=", 1) for p in selector.split(",") if p]
    return all(labels.get(k) == v for k, v in pairs)


class StandIn:
    """The server, on 127.0.0.1 at a free port (``url``), in a thread."""

    def __init__(
        self,
        shared: Path,
        token: str,
        nodes: list[dict[str, Any]],
        namespace: str = "suanli",
        volcano: bool = True,
    ) -> None:
        self.schema = volcano_schema(shared)
        self.token, self.nodes, self.namespace, self.volcano = token, nodes, namespace, volcano
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, str] = {}
        self.calls: list[str] = []  # "METHOD path?query", each request
        #: a path fragment -> the answer every request to it gets instead (a test's fault)
        self.faults: dict[str, tuple[int, Any, bool]] = {}
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: Any, text: bool = False) -> None:
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with standin.lock:
                    standin.calls.append(f"{method} {url.path}?{url.query}")
                    if self.headers.get("Authorization") != f"Bearer {standin.token}":
                        self._answer(401, _status(401, "Unauthorized", "bad token"))
                        return
                    fault = next((f for p, f in standin.faults.items() if p in url.path), None)
                    if fault is not None:  # what an overloaded or broken server answers
                        code, out, text = fault
                    else:
                        code, out, text = standin.route(method, url.path, query, body)
                self._answer(code, out, text)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what a kubelet and Volcano would report ------------------------------------
    def finish(self, job: str, codes: list[int], log: str = "") -> None:
        """Job ``job``'s pods end with ``codes`` (one per pod, in name order), and Volcano
        reports the Job Completed (all 0) or Failed."""
        with self.lock:
            pods = sorted(n for n, p in self.pods.items() if p["job"] == job)
            for name, code in zip(pods, codes, strict=True):
                state = {"terminated": {"exitCode": code}}
                self.pods[name]["obj"]["status"] = {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "containerStatuses": [{"name": "main", "state": state}],
                }
                self.logs[name] = log
            phase = "Completed" if not any(codes) else "Failed"
            self.jobs[job]["status"] = {"state": {"phase": phase}}

    def fail_pod(self, pod: str, code: int) -> None:
        """One pod's container exits ``code``; the Job's phase is left as it was (a Volcano
        that has not acted on it yet)."""
        with self.lock:
            state = {"terminated": {"exitCode": code}}
            self.pods[pod]["obj"]["status"] = {
                "phase": "Failed",
                "containerStatuses": [{"name": "main", "state": state}],
            }

    def waiting(self, job: str, reason: str, message: str) -> None:
        """Every pod of ``job`` waits to start, for ``reason`` (ErrImagePull, ...)."""
        with self.lock:
            for p in self.pods.values():
                if p["job"] == job:
                    state = {"waiting": {"reason": reason, "message": message}}
                    p["obj"]["status"] = {
                        "phase": "Pending",
                        "containerStatuses": [{"name": "main", "state": state}],
                    }

    def unschedulable(self, job: str, message: str) -> None:
        """Every pod of ``job`` stays unplaced, as the scheduler reports one that fits no
        node (something beside suanli took the devices); Volcano says Pending."""
        with self.lock:
            for p in self.pods.values():
                if p["job"] == job:
                    cond = {"type": "PodScheduled", "status": "False"}
                    cond |= {"reason": "Unschedulable", "message": message}
                    p["obj"]["status"] = {"phase": "Pending", "conditions": [cond]}
            self.jobs[job]["status"] = {"state": {"phase": "Pending"}}

    def reap(self, job: str) -> None:
        """The pods of ``job`` being deleted have served their grace and are gone, and
        with them a Job deleted in the foreground."""
        with self.lock:
            for name, p in list(self.pods.items()):
                if p["job"] == job and p["obj"]["metadata"].get("deletionTimestamp"):
                    del self.pods[name]
            self._settle(job)

    def _settle(self, job: str) -> None:
        meta = self.jobs.get(job, {}).get("metadata", {})
        if meta.get("deletionTimestamp") and not any(p["job"] == job for p in self.pods.values()):
            del self.jobs[job]

    # --- the API --------------------------------------------------------------------
    def route(
        self, method: str, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any, bool]:
        if path == "/api/v1/nodes" and method == "GET":
            return 200, {"kind": "NodeList", "apiVersion": "v1", "items": self.nodes}, False
        if path.startswith(JOBS):
            if not self.volcano:
                return 404, _status(404, "NotFound", "the server could not find it"), False
            ns, _, rest = path[len(JOBS) :].partition("/")
            if ns != self.namespace:
                return 403, _status(403, "Forbidden", f"no access to namespace {ns}"), False
            return self._jobs(method, rest.removeprefix("jobs").strip("/"), query, body)
        pods = f"/api/v1/namespaces/{self.namespace}/pods"
        if path == pods and method == "GET":
            items = [
                p["obj"]
                for p in self.pods.values()
                if _selected(p["obj"]["metadata"]["labels"], query.get("labelSelector", ""))
            ]
            return 200, {"kind": "PodList", "apiVersion": "v1", "items": items}, False
        if path == pods and method == "DELETE":
            jobs = set()
            for name, p in list(self.pods.items()):
                if _selected(p["obj"]["metadata"]["labels"], query.get("labelSelector", "")):
                    if query.get("gracePeriodSeconds") == "0":
                        del self.pods[name]
                        jobs.add(p["job"])
                    else:
                        _deleting(p["obj"])
            for job in jobs:
                self._settle(job)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, False
        if path.startswith(pods + "/") and path.endswith("/log") and method == "GET":
            name = path[len(pods) + 1 : -len("/log")]
            if name not in self.pods:
                return 404, _status(404, "NotFound", f"pod {name} not found"), False
            if query.get("container") != "main":
                why = "a container name must be specified for pod with sidecars"
                return 400, _status(400, "BadRequest", why), False
            text = self.logs.get(name, "")
            limit = int(query.get("limitBytes", "0") or 0)
            return 200, text.encode()[:limit].decode(errors="ignore") if limit else text, True
        return 404, _status(404, "NotFound", f"{method} {path}: not served here"), False

    def _jobs(
        self, method: str, name: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any, bool]:
        if not name and method == "GET":
            items = [
                j
                for j in self.jobs.values()
                if _selected(j["metadata"].get("labels", {}), query.get("labelSelector", ""))
            ]
            return (
                200,
                {"kind": "JobList", "apiVersion": "batch.volcano.sh/v1alpha1", "items": items},
                False,
            )
        if not name and method == "POST":
            try:
                jsonschema.validate(body, self.schema)
            except jsonschema.ValidationError as exc:
                return 422, _status(422, "Invalid", exc.message), False
            job = str(body["metadata"]["name"])
            if job in self.jobs:
                return 409, _status(409, "AlreadyExists", f"jobs {job} already exists"), False
            body["status"] = {"state": {"phase": "Running"}}
            self.jobs[job] = body
            for task in body["spec"]["tasks"]:
                for i in range(int(task.get("replicas", 1))):
                    pod = f"{job}-{task['name']}-{i}"
                    labels = {**task["template"]["metadata"]["labels"], "volcano.sh/job-name": job}
                    obj = {
                        "metadata": {"name": pod, "labels": labels},
                        "spec": task["template"]["spec"],
                        "status": {"phase": "Running"},
                    }
                    self.pods[pod] = {"job": job, "obj": obj}
            return 201, body, False
        if name not in self.jobs:
            return 404, _status(404, "NotFound", f"jobs {name} not found"), False
        if method == "GET":
            return 200, self.jobs[name], False
        if method == "DELETE":
            # its pods go with it (owner references), after their grace (`reap`); in the
            # foreground the Job stays, marked, until they are gone; else it goes at once
            for p in self.pods.values():
                if p["job"] == name:
                    _deleting(p["obj"])
            if query.get("propagationPolicy") == "Foreground":
                self.jobs[name]["metadata"]["deletionTimestamp"] = _now()
                self._settle(name)
            else:
                del self.jobs[name]
            return 200, _status(200, "Success", "deleted"), False
        return 405, _status(405, "MethodNotAllowed", method), False


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _deleting(pod: dict[str, Any]) -> None:
    """Marked for deletion now, with its grace, as the API server marks a pod."""
    if not pod["metadata"].get("deletionTimestamp"):
        pod["metadata"]["deletionTimestamp"] = _now()
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        pod["metadata"]["deletionGracePeriodSeconds"] = grace


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }
