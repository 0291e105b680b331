"""How long the console takes on a big cluster: the openb cluster (1,523 nodes) and
10,000 jobs, loaded through the API, then the cluster and jobs pages rendered.

    python benchmarks/console_render.py [--jobs 10000] [--no-browser]

The nodes come from ``../shared/data/openb_node_list_all_node.csv`` and are registered
with ``PUT /v1/nodes``, as a provider would. openb's GPU types that the catalog lacks
(P100, and the anonymised G2/G3) are registered as the catalog chip named below, with
the trace's device count: only the page's size matters here, not the chip. Jobs are
submitted with ``POST /v1/jobs`` (before the nodes: an agent node that sends no heartbeat
for 60 s is shown as lost); 60% of the GPU nodes are then marked as held by a
running job (written to the store as the scheduler would), so that the page draws
held and free devices. Prints the server's time per page (median of 5) and, with
Chromium present, the time until the browser has the page loaded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from rich.progress import Progress

from suanli.api.app import create_app
from suanli.run.local import free_port
from suanli.sim.traces import read_openb_nodes
from suanli.store.db import Store
from suanli.store.models import JobRow

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHIP = {"T4": "t4", "A10": "a10", "V100M32": "v100-32gb", "V100M16": "v100-32gb"}
STAND_IN = "t4"  # for P100, G2, G3: not in the catalog
CHROMIUM = "/usr/bin/chromium"
OUT = Path(__file__).parent / "out"  # a screenshot of each page the browser loads


def load(c: httpx.Client, store: Store, jobs: int) -> tuple[float, float]:
    nodes = read_openb_nodes(DATA / "openb_node_list_all_node.csv")
    with Progress() as bar:
        # jobs first: a registered node that sends no heartbeat for 60 s is shown as lost,
        # and the pages are timed right after the nodes are in
        t0 = time.perf_counter()
        task = bar.add_task("POST /v1/jobs", total=jobs)
        spec = {"name": "bench", "command": ["true"], "resources": {"accelerator": "cpu"}}
        for _ in range(jobs):
            c.post("/v1/jobs", json={"spec": spec}).raise_for_status()
            bar.advance(task)
        jobs_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        task = bar.add_task("PUT /v1/nodes", total=len(nodes))
        for n in nodes:
            chip = CHIP.get(n.gpu_type, STAND_IN)
            devices = [{"index": i, "accelerator": chip} for i in range(n.gpu_count)]
            body = {
                "cpu_cores": n.cpu_milli // 1000,
                "memory_mib": n.memory_mib,
                "devices": devices,
            }
            r = c.put(f"/v1/nodes/{n.name.lower()}", json=body)
            r.raise_for_status()
            bar.advance(task)
        nodes_s = time.perf_counter() - t0
    gpu_nodes = [n for n in nodes if n.gpu_count]
    with store.tx() as s:  # what the scheduler would write for the jobs it started
        for job_id, n in zip(
            range(1, jobs + 1), gpu_nodes[: int(0.6 * len(gpu_nodes))], strict=False
        ):
            row = s.get(JobRow, job_id)
            assert row is not None
            held = list(range(max(1, n.gpu_count // 2)))
            row.state, row.started_at = "running", time.time() - 600
            row.members = [{"node": n.name.lower(), "devices": held}]
            row.devices = f"{n.name.lower()}:{','.join(map(str, held))}"
    return nodes_s, jobs_s


def timed(c: httpx.Client, path: str, runs: int = 5) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        r = c.get(path)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        size = len(r.content)
    return statistics.median(times), size


def browser_load(url: str, token: str, paths: list[str]) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        ctx = b.new_context(viewport={"width": 1280, "height": 1000})
        page = ctx.new_page()
        page.goto(url + "/ui/signin")
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        for path in paths:
            t0 = time.perf_counter()
            page.goto(url + path, wait_until="load")
            out[path] = time.perf_counter() - t0
            OUT.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(OUT / f"console{path.replace('/', '_')}.png"))
        b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    if not (DATA / "openb_node_list_all_node.csv").exists():
        sys.exit(f"skipped: {DATA}/openb_node_list_all_node.csv is absent (../shared/data)")
    tmp = Path(tempfile.mkdtemp(prefix="suanli-console-"))
    store = Store(f"sqlite:///{tmp}/suanli.db")
    token = store.create_token("admin", "admin")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
        nodes_s, jobs_s = load(c, store, args.jobs)
        print(f"loaded through the API: 1,523 nodes in {nodes_s:.1f} s, ", end="")
        print(f"{args.jobs:,} jobs in {jobs_s:.1f} s")
        c.cookies.set("suanli_console", token, path="/ui")
        for path in (
            "/ui/cluster",
            "/ui/cluster?page=6",
            "/ui/cluster?chip=v100-32gb",
            "/ui/jobs",
            "/ui/jobs?page=200",
        ):
            s, size = timed(c, path)
            print(f"server  {path:<22} {1e3 * s:7.0f} ms  {size / 1024:7.0f} KiB")
        s, _ = timed(c, "/v1/nodes")
        print(f"server  {'GET /v1/nodes':<22} {1e3 * s:7.0f} ms  (the API read the page makes)")
    if not args.no_browser and Path(CHROMIUM).exists():
        for path, s in browser_load(url, token, ["/ui/cluster", "/ui/jobs"]).items():
            print(f"browser {path:<22} {1e3 * s:7.0f} ms  until the load event")
    server.should_exit = True


if __name__ == "__main__":
    main()
