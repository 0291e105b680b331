"""Kill the service again and again under real jobs: is every job recorded as it ended?

    python benchmarks/kill_restart.py [--jobs 300] [--kills 6]

`suanli up` (local executor, SQLite, per-owner accounts when run as root) gets
``--jobs`` short jobs from one tenant. Each job writes a start marker, sleeps a
random 0.05-0.6 s and writes a done marker, then exits 0 (``retries: 3``, so one
lost to a crash runs again). While they run the service is SIGKILLed ``--kills``
times — each time once a few more jobs have finished, so the kills land at
different moments of the jobs' lives (being claimed, started, recorded, ended)
— and restarted at once. At the end it checks, from the markers and the store:

- misrecorded: a job whose done marker exists but is not ``succeeded``, or one
  ``succeeded`` with no done marker;
- run twice: a job whose command completed (done marker) more than once;
- orphans: any process left with a ``SUANLI_JOB_ID`` in its environment, and any
  member cgroup still holding a process, once the service has stopped.

Prints the figures (and p50/p99 of submit latency). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.progress import Progress

JOB = (
    "import os, random, time\n"
    "d, j = os.environ['MARKS'], os.environ['SUANLI_JOB_ID']\n"
    "open(os.path.join(d, f'{j}.start.{os.getpid()}'), 'w').close()\n"
    "time.sleep(random.uniform(0.05, 0.6))\n"
    "open(os.path.join(d, f'{j}.done.{os.getpid()}'), 'w').close()\n"
)


def start(data: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """`suanli up` on ``data``; returns once it answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "suanli",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        time.sleep(0.05)
    raise SystemExit(f"suanli up did not start (exit {proc.poll()})")


def jobs_left(c: httpx.Client) -> tuple[int, list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = c.get("/v1/jobs").json()
    return sum(r["state"] in ("queued", "running", "preempted") for r in rows), rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    console = Console()
    data = Path(tempfile.mkdtemp(prefix="suanli-kill-"))
    marks = Path(tempfile.mkdtemp(prefix="suanli-marks-"))
    marks.chmod(0o1777)  # jobs run as their owner's account
    from suanli.run.local import free_port

    port = free_port()
    svc = start(data, port)
    admin = (data / "admin.token").read_text().strip()
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as c:
        user = c.post("/v1/tokens", json={"role": "user", "owner": "tenant"}).json()["token"]
    c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {user}"}, timeout=30)
    spec = {
        "name": "short",
        "command": ["python3", "-c", JOB],
        "env": {"MARKS": str(marks)},
        "retries": 3,
        "resources": {"accelerator": "cpu", "cpu": 0.1, "memory_gb": 0.1},
    }
    latencies = []
    kills = 0
    t0 = time.monotonic()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("submitting", total=args.jobs)
        for i in range(args.jobs):
            body = {"spec": spec, "idempotency_key": f"k{i}"}
            while True:
                t = time.perf_counter()
                try:
                    r = c.post("/v1/jobs", json=body)
                    latencies.append(time.perf_counter() - t)
                    r.raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)  # the service is restarting: the key makes a retry safe
            bar.advance(task)
            # kill at random points of the submission stream too
            if kills < args.kills // 2 and rng.random() < (args.kills / 2) / args.jobs:
                svc.send_signal(signal.SIGKILL)
                svc.wait()
                svc, kills = start(data, port), kills + 1
        bar.update(task, description="running (killing the service now and then)", total=None)
        done_at_kill = 0
        while True:
            try:
                left, rows = jobs_left(c)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if left == 0:
                break
            finished = args.jobs - left
            if kills < args.kills and finished >= done_at_kill + rng.randint(5, 40):
                svc.send_signal(signal.SIGKILL)
                svc.wait()
                svc, kills = start(data, port), kills + 1
                done_at_kill = finished
            if time.monotonic() - t0 > 1800:
                raise SystemExit("jobs did not finish in 30 minutes")
            time.sleep(0.2)
    wall = time.monotonic() - t0
    _, rows = jobs_left(c)
    c.close()
    svc.send_signal(signal.SIGTERM)
    svc.wait(timeout=30)
    time.sleep(0.5)
    done: dict[str, int] = {}
    started: dict[str, int] = {}
    for f in marks.iterdir():
        jid, kind, _ = f.name.split(".")
        seen = done if kind == "done" else started
        seen[jid] = seen.get(jid, 0) + 1
    misrecorded = [r["id"] for r in rows if (str(r["id"]) in done) != (r["state"] == "succeeded")]
    twice = [jid for jid, n in done.items() if n > 1]
    orphans = []  # this run's jobs only (their MARKS), whoever they run as
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get("MARKS") == str(marks):
                orphans.append(p.pid)
    from suanli.run.local import LocalExecutor

    prefix = LocalExecutor(data / "logs").group_prefix  # this service's member cgroups
    groups = [
        g
        for root in (Path("/sys/fs/cgroup/memory/suanli"), Path("/sys/fs/cgroup/suanli"))
        if root.is_dir()
        for g in root.iterdir()
        if g.name.startswith(prefix) and (g / "cgroup.procs").read_text().strip()
    ]
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    lat = sorted(latencies)
    console.print(
        f"{args.jobs} jobs, {kills} SIGKILLs of the service, {wall:.0f} s: states {states}; "
        f"commands started {sum(started.values())} times, completed {sum(done.values())}"
    )
    console.print(
        f"misrecorded {len(misrecorded)} {misrecorded[:10]}; completed twice {len(twice)} "
        f"{twice[:10]}; orphan processes {len(orphans)}; member cgroups with processes "
        f"{len(groups)}"
    )
    console.print(
        f"submit latency p50 {statistics.median(lat) * 1e3:.0f} ms, "
        f"p99 {lat[int(0.99 * (len(lat) - 1))] * 1e3:.0f} ms"
    )
    ok = not misrecorded and not twice and not orphans and not groups
    console.print("OK" if ok else "FAILED")
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(marks, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
