"""The scheduling loop: reconcile processes with the store, then schedule queued jobs.

Each tick, in order:

1. Running jobs: a process that exited is recorded (succeeded on exit 0, else
   failed or re-queued while retries remain); a cancel request or an exceeded
   ``max_runtime_s`` stops it (SIGTERM, then SIGKILL after the grace period).
2. Queued jobs: a `Session` of the scheduler — the same code the simulator
   runs — places them on this machine's cluster state, rebuilt from what the
   store says is running; placed jobs are started and recorded.

On start, running jobs whose process is still alive (same pid *and* start
time) are re-attached; the rest were lost with the old service and are failed
or re-queued by their retry policy. Every transition is written in one
transaction, so a crash at any point loses no job.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

from suanli.cluster.state import ClusterState, NodeSpec
from suanli.cluster.task import MILLI, Task
from suanli.jobs.spec import JobSpec
from suanli.run.devices import Inventory
from suanli.run.local import Handle, Launch, LocalExecutor, alive
from suanli.sched.policies import NAMED, build
from suanli.sched.session import Job, Queue, Session
from suanli.store.db import Store
from suanli.store.models import JobRow, QueueRow

GRACE_S = 10.0


def _task(job_id: int, spec: JobSpec, device_type: str) -> Task:
    r = spec.resources
    gpus = 0 if (r.accelerator in (None, "cpu") and not r.vendor and not r.model) else r.devices
    milli = int(MILLI * r.fraction) if r.fraction else MILLI
    return Task(
        name=str(job_id),
        cpu_milli=int(r.cpu * 1000),
        memory_mib=int(r.memory_gb * 1024),
        num_gpu=gpus,
        gpu_milli=milli if gpus else 0,
        gpu_spec=frozenset({device_type}) if gpus else frozenset(),
        priority=spec.priority,
        preemptible=spec.preemptible,
        queue=spec.queue,
    )


class Loop:
    def __init__(
        self,
        store: Store,
        inventory: Inventory,
        log_dir: Path,
        policy: str = "priority",
        tick_s: float = 0.2,
    ) -> None:
        self.store = store
        self.inv = inventory
        self.executor = LocalExecutor(log_dir)
        self.framework = build(NAMED[policy])
        self.actions = [a for a in NAMED[policy].actions if a != "preempt"]
        self.tick_s = tick_s
        self._stop = threading.Event()
        self.device_type = inventory.devices[0].accelerator if inventory.devices else "local"
        self.node = NodeSpec(
            "local",
            inventory.cpu_cores * 1000,
            inventory.memory_mib,
            len(inventory.devices),
            self.device_type if inventory.devices else "",
        )
        self.recover()

    # --- lifecycle -----------------------------------------------------------------
    def run_forever(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.tick_s)

    def stop(self) -> None:
        self._stop.set()

    def recover(self) -> None:
        """Re-attach processes that survived the old service; settle those that did not."""
        with self.store.tx() as s:
            for row in s.scalars(select(JobRow).where(JobRow.state == "running")):
                if row.pid and row.start_time and alive(self._handle(row)):
                    self.store.event(s, row.id, "reattached", f"pid {row.pid}")
                    continue
                self._finish(s, row, None, "lost with the previous service")

    # --- one tick ------------------------------------------------------------------
    def tick(self) -> None:
        now = time.time()
        with self.store.tx() as s:
            for row in s.scalars(select(JobRow).where(JobRow.state == "running")):
                h = self._handle(row)
                spec = JobSpec.model_validate(row.spec)
                over = (
                    spec.max_runtime_s
                    and row.started_at
                    and now - row.started_at > (spec.max_runtime_s)
                )
                if row.cancel_requested or over:
                    code = self.executor.stop(h, GRACE_S)
                    if row.cancel_requested:
                        row.state, row.exit_code, row.updated_at = "cancelled", code, now
                        self.store.event(s, row.id, "cancelled", f"exit {code}")
                    else:
                        self._finish(s, row, code, f"exceeded max_runtime_s {spec.max_runtime_s}")
                    continue
                code = self.executor.poll(h)
                if code is not None:
                    self._finish(s, row, code, f"exit {code}")
        self._schedule()

    def _schedule(self) -> None:
        with self.store.tx() as s:
            queued = list(
                s.scalars(select(JobRow).where(JobRow.state == "queued").order_by(JobRow.id))
            )
            if not queued:
                return
            running = list(s.scalars(select(JobRow).where(JobRow.state == "running")))
            state = ClusterState([self.node])
            for row in running:
                t = _task(row.id, JobSpec.model_validate(row.spec), self.device_type)
                gpus = [(int(d), t.gpu_milli) for d in (row.devices or "").split(",") if d]
                state.allocate(0, t.cpu_milli, t.memory_mib, gpus)
            jobs = []
            for row in queued:
                spec = JobSpec.model_validate(row.spec)
                jobs.append(
                    Job(
                        str(row.id),
                        [_task(row.id, spec, self.device_type)],
                        queue=spec.queue,
                        priority=spec.priority,
                        preemptible=spec.preemptible,
                        arrival_s=row.created_at,
                    )
                )
            stored = {
                q.name: Queue(q.name, q.weight, dict(q.quota_milli), q.reclaimable)
                for q in s.scalars(select(QueueRow))
            }
            session = Session(
                state,
                self.framework,
                [stored.get(q, Queue(q)) for q in {j.queue for j in jobs}],
                jobs,
                {},
                time.time(),
                rng=np.random.default_rng(0),
            )
            result = session.run(self.actions)
            rows = {str(r.id): r for r in queued}
            for jname, _, placement in result.bound:
                row = rows[jname]
                spec = JobSpec.model_validate(row.spec)
                devices = tuple(g for g, _ in placement.gpus)
                visible = self.inv.devices[0].visible_env if self.inv.devices and devices else None
                h = self.executor.start(
                    Launch(
                        str(row.id), spec.argv, dict(spec.env), spec.working_dir, visible, devices
                    )
                )
                row.state, row.pid, row.start_time = "running", h.pid, h.start_time
                row.stdout_path, row.stderr_path = h.stdout, h.stderr
                row.devices = ",".join(str(d) for d in devices)
                row.attempts += 1
                row.started_at = row.updated_at = time.time()
                self.store.event(s, row.id, "started", f"pid {h.pid} devices [{row.devices}]")

    # --- helpers -------------------------------------------------------------------
    def _handle(self, row: JobRow) -> Handle:
        return Handle(
            str(row.id),
            row.pid or 0,
            row.start_time or 0.0,
            row.stdout_path or "",
            row.stderr_path or "",
        )

    def _finish(self, s: object, row: JobRow, code: int | None, why: str) -> None:
        spec = JobSpec.model_validate(row.spec)
        row.exit_code, row.updated_at = code, time.time()
        if code == 0:
            row.state = "succeeded"
        elif row.attempts <= spec.retries:
            row.state = "queued"  # retry
        else:
            row.state = "failed"
        row.pid = None
        self.store.event(s, row.id, row.state, why)  # type: ignore[arg-type]
