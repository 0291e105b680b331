"""Load on `suanli up` over loopback: submissions from concurrent clients, then a SIGKILL.

    python benchmarks/api_load.py [--jobs 2000] [--clients 32]

Phase 1: ``--jobs`` submissions from ``--clients`` concurrent clients (each with an
idempotency key, each retried once on a connection error), plus status polling;
reports throughput and p50/p99 latency, and checks that every accepted
submission is stored exactly once. Phase 2: the same with the service SIGKILLed
and restarted halfway: every submission the API acknowledged must still be
there after the restart, and retried ones must not be duplicated.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

SPEC = {
    "name": "noop",
    "command": ["true"],
    "resources": {"accelerator": "cpu", "devices": 1, "cpu": 0.01, "memory_gb": 0.01},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(data: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "suanli", "up", "--port", str(port), "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(400):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit("suanli up did not start")


def run(jobs: int, clients: int, kill_at: int | None) -> dict[str, float]:
    data = Path(tempfile.mkdtemp())
    port = free_port()
    svc = [start(data, port)]
    token = (data / "admin.token").read_text().strip()
    base = f"http://127.0.0.1:{port}"
    acked: dict[str, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    done = [0]

    def submit(i: int) -> None:
        key = f"load-{i}"
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as c:
            for _ in range(40):
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/jobs", json={"spec": SPEC, "idempotency_key": key})
                except httpx.HTTPError:
                    time.sleep(0.25)  # the service may be restarting: retry with the same key
                    continue
                if r.status_code in (200, 201):
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        acked[key] = r.json()["id"]
                        done[0] += 1
                        if kill_at is not None and done[0] == kill_at:
                            svc[0].send_signal(signal.SIGKILL)
                            svc[0].wait()
                            svc[0] = start(data, port)
                    if i % 10 == 0:
                        # status polling; best effort while the service restarts
                        with contextlib.suppress(httpx.HTTPError):
                            c.get(f"/v1/jobs/{r.json()['id']}")
                    return
                errors.append(f"{r.status_code} {r.text[:120]}")
                return
            errors.append(f"{key}: gave up after retries")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(submit, range(jobs)))
    wall = time.perf_counter() - t0
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        stored = c.get("/v1/jobs").json()
    svc[0].send_signal(signal.SIGTERM)
    svc[0].wait(timeout=30)
    keys = [r["spec"]["name"] for r in stored]
    ids = {r["id"] for r in stored}
    lost = [k for k, v in acked.items() if v not in ids]
    lat = sorted(latencies)
    return {
        "submitted": jobs,
        "acknowledged": len(acked),
        "stored": len(stored),
        "lost": len(lost),
        "duplicated": len(stored) - len(set(acked.values())),
        "errors": len(errors),
        "wall_s": wall,
        "per_s": len(acked) / wall,
        "p50_ms": 1e3 * statistics.median(lat),
        "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))],
        "names": len(keys),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    ok = True
    for label, kill in (("steady", None), ("SIGKILL + restart at half", args.jobs // 2)):
        r = run(args.jobs, args.clients, kill)
        print(
            f"{label:26s} acknowledged {r['acknowledged']:.0f}/{r['submitted']:.0f}, stored "
            f"{r['stored']:.0f}, lost {r['lost']:.0f}, duplicated {r['duplicated']:.0f}, "
            f"errors {r['errors']:.0f}; {r['per_s']:.0f} submissions/s, p50 {r['p50_ms']:.1f} ms,"
            f" p99 {r['p99_ms']:.1f} ms"
        )
        ok &= (
            r["lost"] == 0
            and r["duplicated"] == 0
            and r["errors"] == 0
            and (r["acknowledged"] == r["submitted"])
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
