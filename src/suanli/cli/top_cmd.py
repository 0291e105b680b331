"""``suanli top``: the cluster at a glance in the terminal, redrawn every few seconds.

Three panels, as an operator reads them: the devices (free and held per chip, and
who holds each device on each node), the queues (running and waiting), and the
running jobs (where, for how long). ``--once`` prints one frame and exits, for a
script or a terminal without a cursor.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from suanli.cli.output import age, console, held_devices
from suanli.cli.service_cmd import _call

MAX_NODES = 40  # rows of the node panel; the rest are counted
MAX_JOBS = 40


def frame() -> Group:
    """One view, from three API reads."""
    nodes = [n for n in _call("GET", "/v1/nodes") if n.get("state") != "lost"]
    jobs = _call("GET", "/v1/jobs")
    queues = _call("GET", "/v1/queues")
    now = time.time()
    states = Counter(j["state"] for j in jobs)
    total: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for n in nodes:
        taken = {a["index"] for a in n.get("allocation") or []}
        for d in n["devices"]:
            total[d["accelerator"]] += 1
            held[d["accelerator"]] += d["index"] in taken
    chips = ", ".join(f"{k} {held[k]}/{total[k]} held" for k in sorted(total)) or "no devices"
    head = Text(
        f"suanli top  {time.strftime('%H:%M:%S')}  {len(nodes)} node(s); {chips}; "
        f"jobs: {states['running']} running, {states['queued']} queued, "
        f"{states['preempted']} preempted",
        style="bold",
    )
    node_t = Table(title="nodes", title_justify="left")
    for col in ("node", "site", "executor", "held (device:job)"):
        node_t.add_column(col)
    for n in nodes[:MAX_NODES]:
        node_t.add_row(n["name"], n["site"] or "-", n["executor"], held_devices(n))
    if len(nodes) > MAX_NODES:
        node_t.caption = f"and {len(nodes) - MAX_NODES} more (suanli nodes)"
    queue_t = Table(title="queues", title_justify="left")
    for col in ("queue", "weight", "running", "queued"):
        queue_t.add_column(col)
    per_queue: dict[str, Counter[str]] = {}
    for j in jobs:
        q = str((j.get("spec") or {}).get("queue") or "default")
        per_queue.setdefault(q, Counter())[j["state"]] += 1
    for q in queues:
        c = per_queue.get(q["name"], Counter())
        queue_t.add_row(q["name"], f"{q['weight']:g}", str(c["running"]), str(c["queued"]))
    job_t = Table(title="running jobs", title_justify="left")
    for col in ("id", "name", "owner", "queue", "where", "age"):
        job_t.add_column(col)
    running = [j for j in jobs if j["state"] == "running"]
    for j in running[:MAX_JOBS]:
        where = j.get("devices") or "-"
        if j.get("sites"):
            where += f" ({', '.join(j['sites'])})"
        queue = str((j.get("spec") or {}).get("queue") or "default")
        job_t.add_row(str(j["id"]), j["name"], j["owner"], queue, where, age(now - j["updated_at"]))
    if len(running) > MAX_JOBS:
        job_t.caption = f"and {len(running) - MAX_JOBS} more (suanli jobs)"
    return Group(head, node_t, queue_t, job_t)


def top_cmd(
    interval_s: Annotated[
        float, typer.Option("--interval", min=0.5, help="Seconds between redraws.")
    ] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """A live view of nodes, queues and running jobs (Ctrl-C ends it)."""
    if once:
        console.print(frame())
        return
    try:
        with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(frame())
    except KeyboardInterrupt:
        pass
