"""What each page shows, shaped from API answers: pure functions, tested without a browser."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

#: distinct colours a page gives its chip types (``chip-0`` .. in console.css)
PALETTE = 10
NODES_PER_PAGE = 300
JOBS_PER_PAGE = 50


@dataclass
class Pages:
    """Which slice of ``total`` rows a page shows."""

    page: int
    per_page: int
    total: int

    @property
    def count(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @classmethod
    def of(cls, page: int, per_page: int, total: int) -> Pages:
        last = max(1, math.ceil(total / per_page))
        return cls(min(max(1, page), last), per_page, total)


@dataclass
class ChipFree:
    """Devices of one chip type in one region: how many, held, down, and how the free
    ones lie (a gang needs its devices on one node, so free devices scattered one per
    node are worth less than a whole free node)."""

    chip: str
    region: str
    total: int = 0
    held: int = 0
    down: int = 0
    largest_free_block: int = 0
    stranded: int = 0  # free devices on nodes where others are held

    @property
    def free(self) -> int:
        return self.total - self.held - self.down


@dataclass
class NodeCells:
    name: str
    site: str
    executor: str
    lost: bool
    age_s: float
    cells: list[dict[str, Any]] = field(default_factory=list)

    @property
    def summary(self) -> str:
        held = sum(c["state"] == "held" for c in self.cells)
        chips = Counter(c["chip"] for c in self.cells)
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(chips.items())) or "no devices"
        return f"node {self.name}: {kinds}; {held} held" + (" (lost)" if self.lost else "")


def chip_classes(nodes: list[dict[str, Any]]) -> dict[str, str]:
    chips = sorted({str(d["accelerator"]) for n in nodes for d in n["devices"]})
    return {c: f"chip-{i % PALETTE}" for i, c in enumerate(chips)}


def cluster(nodes: list[dict[str, Any]], sites: list[dict[str, Any]]) -> dict[str, Any]:
    """Free capacity per chip type and region, fragmentation, and per-node device cells."""
    region = {s["name"]: s["region"] for s in sites}
    free: dict[tuple[str, str], ChipFree] = {}
    rows: list[NodeCells] = []
    for n in nodes:
        site = n.get("site") or "default"
        lost = n.get("state") == "lost"
        taken = {int(a["index"]): a["jobs"] for a in n.get("allocation") or []}
        row = NodeCells(n["name"], site, n["executor"], lost, float(n.get("heartbeat_age_s", 0)))
        per_chip: dict[str, list[str]] = defaultdict(list)
        for d in sorted(n["devices"], key=lambda d: int(d["index"])):
            i, chip = int(d["index"]), str(d["accelerator"])
            if lost or not d.get("healthy", True):
                state = "down"
            elif i in taken:
                state = "held"
            else:
                state = "free"
            jobs = taken.get(i, [])
            row.cells.append({"index": i, "chip": chip, "state": state, "jobs": jobs})
            per_chip[chip].append(state)
        rows.append(row)
        for chip, states in per_chip.items():
            f = free.setdefault(
                (chip, region.get(site, "-")), ChipFree(chip, region.get(site, "-"))
            )
            c = Counter(states)
            f.total += len(states)
            f.held += c["held"]
            f.down += c["down"]
            f.largest_free_block = max(f.largest_free_block, c["free"])
            if c["held"]:
                f.stranded += c["free"]
    capacity = sorted(free.values(), key=lambda f: (f.chip, f.region))
    total_free = sum(f.free for f in capacity)
    stranded = sum(f.stranded for f in capacity)
    return {
        "capacity": capacity,
        "nodes": rows,
        "devices": sum(f.total for f in capacity),
        "held": sum(f.held for f in capacity),
        "down": sum(f.down for f in capacity),
        "free": total_free,
        # the share of free devices that sit beside held ones: what a whole-node gang
        # cannot use (0: every free device is on an idle node)
        "fragmentation": stranded / total_free if total_free else 0.0,
        "lost_nodes": sum(r.lost for r in rows),
    }


def ordered(nodes: list[NodeCells], chip: str | None = None) -> list[NodeCells]:
    """Nodes as the list shows them: by site, those with devices first, then by name;
    with ``chip``, only the nodes that have one of it."""
    if chip:
        nodes = [n for n in nodes if any(c["chip"] == chip for c in n.cells)]
    return sorted(nodes, key=lambda n: (n.site, not n.cells, n.name))


def queue_usage(
    queues: list[dict[str, Any]], running: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each queue with its weight, quotas and what its running jobs hold now."""
    jobs: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    for j in running:
        q = str((j.get("spec") or {}).get("queue") or "default")
        jobs[q] += 1
        devices[q] += device_count(j.get("devices"))
    return [{**q, "running": jobs[q["name"]], "devices_held": devices[q["name"]]} for q in queues]


def device_count(devices: str | None) -> int:
    """Devices in a placement string ``node:0,1 node2:3`` (a CPU-only member: none)."""
    n = 0
    for part in (devices or "").split():
        _, _, idx = part.rpartition(":")
        n += len([i for i in idx.split(",") if i.strip().isdigit()])
    return n


def timeline(jobs: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """Floating bars of what ran where: one bar per started job, on the node it ran on,
    from its start to its end (now, while it runs), in minutes before now."""
    now = now or time.time()
    bars = []
    for j in jobs:
        if not j.get("started_at"):
            continue
        end = now if j["state"] == "running" else j["updated_at"]
        node = (j.get("devices") or "").split(":")[0] or (", ".join(j.get("sites") or []) or "-")
        bars.append(
            {
                "x": [round((j["started_at"] - now) / 60, 3), round((end - now) / 60, 3)],
                "y": node,
                "label": f"#{j['id']} {j['name']} ({j['state']})",
                "state": j["state"],
            }
        )
    return {"kind": "timeline", "bars": bars}


def frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indexes of the (time, cost) points no other point beats on both."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    best = math.inf
    keep = []
    for i in order:
        if points[i][1] < best:
            keep.append(i)
            best = points[i][1]
    return sorted(keep, key=lambda i: points[i][0])
