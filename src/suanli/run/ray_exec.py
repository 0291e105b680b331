"""The Ray executor: jobs on an existing Ray cluster, through the Ray Jobs API.

Ray is the authority on its cluster: the nodes and their accelerators come
from Ray's cluster state (custom resources named after catalog chips, e.g.
``ascend-910b``; ``GPU`` mapped through its ``accelerator_type``), and every
job is a Ray job with entrypoint resources. suanli's scheduler still decides
which node each member runs on — fair share, priority, gangs, preemption are
the same code as on this machine — and the decision is enforced with a label
selector on the node id (``ray.io/node-id``). Ray custom resources carry
counts, not device indexes: which physical device a member gets is Ray's
choice (``GPU`` resources are pinned by Ray through ``CUDA_VISIBLE_DEVICES``).

A gang is one Ray job whose driver (``suanli.run.ray_gang``) reserves a
placement group — one bundle per member, packed within a node first — and runs
every member there with the torchrun environment; stopping the Ray job stops
the whole gang. The service talks to Ray only over the dashboard's HTTP API
(no driver in the service process), so a Ray restart never takes it down.
Logs are fetched from Ray into the job's log file while it runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

from suanli.catalog.loader import accelerators
from suanli.run.attempt_log import save_attempt
from suanli.run.executor import (
    MAX_DEVICES,
    DeviceInfo,
    ExecutorUnavailable,
    Handle,
    Launch,
    NodeInfo,
)

NODE_ID_LABEL = "ray.io/node-id"
LOG_REFRESH_S = 1.0
LOG_WAIT_S = 5.0  # how long a finished job waits for Ray to serve its log
log = logging.getLogger("suanli.ray")
RESERVED = {"CPU", "memory", "object_store_memory", "GPU"}


class RayUnavailable(ExecutorUnavailable):
    """The Ray cluster cannot be reached."""


def _http_status(exc: RuntimeError) -> int:
    """The HTTP status in Ray's client errors ("Request failed with status code 503: ..."),
    0 when it names none."""
    found = re.search(r"status code (\d{3})", str(exc))
    return int(found.group(1)) if found else 0


def _devices(resources: dict[str, float], labels: dict[str, str]) -> list[DeviceInfo] | None:
    """Chips a Ray node offers: custom resources named after catalog chips, and GPUs; None
    for a count no node has (an attached cluster's report: 10^9 must not exhaust us)."""
    catalog = accelerators()
    out: list[DeviceInfo] = []
    for key, amount in sorted(resources.items()):
        name = key.lower()
        if key == "GPU":
            kind = labels.get("ray.io/accelerator-type", "").lower()
            name = next((n for n in catalog if kind and kind.replace("_", "-") in n), "gpu")
        elif (
            key in RESERVED or name not in catalog or key.startswith(("node:", "accelerator_type"))
        ):
            continue
        mem = catalog[name].memory_mib if name in catalog else 0
        if not 0 <= amount <= MAX_DEVICES - len(out):  # checked before any is made
            return None
        for _ in range(int(amount)):
            out.append(
                DeviceInfo(len(out), name, mem, "CUDA_VISIBLE_DEVICES" if key == "GPU" else "")
            )
    return out


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: Ray's own log lines: "2026-12-03 19:40:01,123\tINFO worker.py:1821 -- Connecting to ..."
RAY_INFO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+(?:INFO|DEBUG)\s+\S+:\d+ -- ")


#: the line Ray's job supervisor writes before the entrypoint's own output
RAY_ENTRYPOINT = re.compile(r"^Running entrypoint for job \S+: ")


def clean_log(text: str) -> str:
    """A Ray job's log as the job wrote it: without colour codes and without Ray's own
    INFO lines (a gang's driver connecting, its placement group, the supervisor's
    "Running entrypoint" line); warnings stay."""
    lines = ANSI.sub("", text).splitlines(keepends=True)
    return "".join(
        line for line in lines if not RAY_INFO.match(line) and not RAY_ENTRYPOINT.match(line)
    )


class RayExecutor:
    """Runs members as Ray jobs on the cluster whose dashboard is at ``address``."""

    name = "ray"
    gang_native = True  # a gang is started by one call (one Ray job, one placement group)

    def __init__(
        self,
        address: str,
        log_dir: Path,
        python: str | None = None,
        service: str = "",
        token: str | None = None,
    ) -> None:
        """``token``: the cluster's (one started with ``RAY_AUTH_MODE=token``), sent as a
        bearer token on every Jobs and State API call."""
        from ray.job_submission import JobSubmissionClient

        #: the Python a job's ``python`` means on this cluster's nodes (default: this one's,
        #: right where the cluster runs from the same install, as on one machine)
        self.python = python or sys.executable
        #: which suanli service submitted a Ray job (its metadata): `strays` stops only ours
        self.service = service

        self.address = address if "://" in address else f"http://{address}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else None
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.client = JobSubmissionClient(self.address, headers=self.headers)
        except Exception as exc:
            raise RayUnavailable(
                f"cannot reach the Ray dashboard at {self.address} ({exc}); "
                "start Ray with `ray start --head` or give --ray-address"
            ) from exc
        self._node_ids: dict[str, str] = {}  # our node name -> Ray node id
        self._resource: dict[str, str] = {}  # our node name -> resource key of its chips
        self._logs_at: dict[str, float] = {}
        self._done_at: dict[str, float] = {}
        # submissions whose answer was lost (a 5xx, a dropped connection): Ray may have
        # accepted them, and the loop will start the job again, so they are stopped
        self._unanswered: set[str] = set()

    # --- nodes ---------------------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, NodeState, StateResource

        self.stop_unanswered()
        out = []
        state = StateApiClient(self.address, headers=self.headers)
        listed = cast(
            "list[NodeState]",
            state.list(
                StateResource.NODES, ListApiOptions(detail=True), raise_on_missing_output=False
            ),
        )
        for n in listed:
            if n.state != "ALIVE":
                continue
            total = dict(n.resources_total or {})
            labels = {str(k): str(v) for k, v in (n.labels or {}).items()}
            name = "ray-" + n.node_id[:12]
            devices = _devices(total, labels)
            if devices is None:
                log.warning("Ray node %s reports more devices than a node has", n.node_id)
                continue
            self._node_ids[name] = n.node_id
            chips = [k for k in total if k == "GPU" or k.lower() in accelerators()]
            if chips:
                self._resource[name] = chips[0]
            labels.setdefault(NODE_ID_LABEL, n.node_id)
            out.append(
                NodeInfo(
                    name,
                    int(total.get("CPU", 0)),
                    int(total.get("memory", 0) / 2**20),
                    devices,
                    labels,
                    n.node_ip,
                )
            )
        return out

    # --- members -------------------------------------------------------------------
    def start(self, launch: Launch) -> Handle:
        node_id = self._node_ids.get(launch.node)
        if node_id is None:
            raise RayUnavailable(f"node {launch.node} is not in the Ray cluster any more")
        chip = self._resource.get(launch.node) if launch.devices else None
        per_member: dict[str, float] = {"CPU": launch.cpu}
        if chip:
            # a fraction asks Ray for the same share suanli's scheduler granted
            per_member[chip] = len(launch.devices) * launch.share
        env = {
            **launch.env,
            # a spec means the same on every site: its ``python`` is the one with suanli and
            # the workloads (the local executor puts that venv first on PATH too); Ray expands
            # ${PATH} on the node, so the rest of the node's PATH stays
            "PATH": f"{Path(self.python).parent}:${{PATH}}",
            "SUANLI_JOB_ID": launch.job_id,
            # Ray's own SIGTERM-to-SIGKILL wait, so a member gets its full grace to checkpoint
            "RAY_JOB_STOP_WAIT_TIME_S": str(int(launch.grace_s) + 5),  # Ray wants an int
            "RAY_DEDUP_LOGS": "0",  # every member's lines, not "[repeated 2x across cluster]"
        }
        sid = f"suanli-{launch.job_id}-{uuid.uuid4().hex[:8]}"
        if launch.gang > 1:
            gang = {
                "argv": launch.argv,
                "cwd": launch.cwd,
                "members": launch.gang,
                "bundle": per_member,
                "node_ids": [self._node_ids[m] for m in launch.member_nodes or [launch.node]],
                "grace_s": launch.grace_s,
            }
            env["SUANLI_GANG"] = json.dumps(gang)
            entrypoint = shlex.join([self.python, "-m", "suanli.run.ray_gang"])
            kwargs: dict[str, Any] = {"entrypoint_num_cpus": 0}
        else:
            cmd = shlex.join(launch.argv)
            entrypoint = f"cd {shlex.quote(launch.cwd)} && {cmd}" if launch.cwd else cmd
            kwargs = {
                "entrypoint_num_cpus": launch.cpu,
                "entrypoint_resources": {k: v for k, v in per_member.items() if k != "CPU"} or None,
            }
            if chip == "GPU":
                kwargs["entrypoint_num_gpus"] = kwargs["entrypoint_resources"].pop("GPU")
        import requests

        try:
            self.client.submit_job(
                entrypoint=entrypoint,
                submission_id=sid,
                runtime_env={"env_vars": env},
                entrypoint_label_selector={NODE_ID_LABEL: node_id},
                metadata={"suanli_job": launch.job_id, "suanli_service": self.service},
                **kwargs,
            )
        except requests.RequestException as exc:
            self._unanswered.add(sid)
            raise RayUnavailable(
                f"cannot reach the Ray dashboard at {self.address}: {exc}"
            ) from exc
        except RuntimeError as exc:
            if _http_status(exc) // 100 == 5:
                self._unanswered.add(sid)
                raise RayUnavailable(f"Ray could not take job {sid}: {exc}") from exc
            raise  # a 4xx: Ray refused this job (a bad runtime env): the job's failure
        out = self.log_dir / f"{launch.job_id}.out"  # every attempt's log, see _save_logs
        err = self.log_dir / f"{launch.job_id}.err"
        err.touch()
        return Handle(
            launch.job_id, 0, time.time(), str(out), str(err), launch.node, 0, launch.devices, sid
        )

    def stop_unanswered(self) -> None:
        """Stop every submission Ray may have taken without saying so; forget those Ray
        answers for (stopped, or never there). Asked again while the dashboard fails."""
        for sid in sorted(self._unanswered):
            try:
                stopped = self.client.stop_job(sid)
            except RuntimeError as exc:
                if _http_status(exc) != 404:
                    continue  # still failing: ask again at the next refresh
                stopped = False
            except Exception:  # the dashboard is still away
                continue
            self._unanswered.discard(sid)
            if stopped:
                log.warning("stopped Ray job %s: taken while the dashboard failed", sid)

    def _info(self, h: Handle) -> Any | None:
        """The Ray job's details; None only when Ray says it does not know the job (404:
        its cluster was restarted). Any other failure is an outage, not a lost job."""
        import requests

        try:
            return self.client.get_job_info(h.ref)
        except RuntimeError as exc:
            if _http_status(exc) == 404:
                return None
            raise RayUnavailable(f"Ray could not report job {h.ref}: {exc}") from exc
        except requests.RequestException as exc:
            raise RayUnavailable(
                f"cannot reach the Ray dashboard at {self.address}: {exc}"
            ) from exc

    def poll(self, h: Handle) -> int | None:
        try:
            info = self._info(h)
        except RayUnavailable as exc:  # unknown is not ended: ask again next tick
            log.warning("%s", exc)
            return None
        if info is None:
            return -9
        status = str(info.status.value if hasattr(info.status, "value") else info.status)
        done = status in ("SUCCEEDED", "FAILED", "STOPPED")
        now = time.monotonic()
        if done or now - self._logs_at.get(h.ref, 0.0) > LOG_REFRESH_S:
            saved = self._save_logs(h)
            self._logs_at[h.ref] = now
            if done and not saved and now - self._done_at.setdefault(h.ref, now) < LOG_WAIT_S:
                return None  # Ray has not served the finished job's log yet: keep it a moment
        if not done:
            return None
        self._logs_at.pop(h.ref, None)
        self._done_at.pop(h.ref, None)
        if status == "SUCCEEDED":
            return 0
        if status == "STOPPED":
            return -15
        code = info.driver_exit_code
        return int(code) if code is not None else 1

    def _save_logs(self, h: Handle) -> bool:
        """Copy the Ray job's log into the job's log file; False if Ray had none to give."""
        import requests

        try:
            text = self.client.get_job_logs(h.ref)
        except (RuntimeError, requests.RequestException):
            return False
        if not text:
            return False
        # Ray keeps one log per Ray job (= attempt); the job's log file is all of them
        save_attempt(self.log_dir, h.job_id, h.ref, clean_log(text), Path(h.stdout))
        return True

    def terminate(self, h: Handle) -> None:
        """Ray sends SIGTERM to the entrypoint, then SIGKILL after its own grace. If Ray is
        unreachable now, the loop asks again when the grace is over (``kill``)."""
        import requests

        with contextlib.suppress(RuntimeError, requests.RequestException):
            self.client.stop_job(h.ref)

    def kill(self, h: Handle) -> None:
        self.terminate(h)  # Ray escalates to SIGKILL itself (RAY_JOB_STOP_WAIT_TIME_S)

    def strays(self, known: set[str]) -> list[str]:
        """This service's Ray jobs still pending or running whose submission id no running
        job's member holds: a job requeued while this cluster was away, or started by a
        service that crashed before it stored the start."""
        found = []
        for job in self.client.list_jobs():  # the state API's list leaves metadata out
            meta = job.metadata or {}
            sid = job.submission_id or ""
            status = str(getattr(job.status, "value", job.status))
            if (
                status in ("PENDING", "RUNNING")
                and meta.get("suanli_service") == self.service
                and sid not in known
            ):
                found.append(sid)
        return found

    def stop_ref(self, ref: str) -> None:
        self.client.stop_job(ref)

    def is_alive(self, h: Handle) -> bool:
        return self.poll(h) is None

    def logs(self, h: Handle) -> str:
        self._save_logs(h)
        return Path(h.stdout).read_text(errors="replace") if Path(h.stdout).exists() else ""
