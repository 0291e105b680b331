"""Which device types can serve a job's request: a named chip, or constraints.

A request may name a chip (``accelerator: h100-sxm``), several it accepts
(``accelerators: [a100-80gb, h100-sxm]``), or describe one: a vendor,
a minimum memory, or "any chip that can run model M". Constraints resolve
against the chips the cluster actually has, through the catalog, so a new
node type becomes eligible without touching any job. "Can run M" means M's
bf16 weights fit in the job's devices with 10% left for the KV cache and
activations — the perf model's parameter count, not the model card's rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from suanli.catalog.loader import accelerators, get_model
from suanli.cluster.state import ClusterState
from suanli.cluster.task import MILLI, Task
from suanli.jobs.spec import JobSpec, Resources
from suanli.perf.shape import shape_of

HEADROOM = 0.9  # share of device memory weights may take
CPU_SLICE = "cpu-slice"  # suanli.run.devices.CPU_SLICE_VENDOR (jobs sits below run)
BF16_BYTES = 2


def wants_devices(r: Resources) -> bool:
    """Whether the job needs accelerators at all (else it runs on CPU cores)."""
    if r.accelerator == "cpu" or r.devices == 0:
        return False
    return bool(r.accelerator or r.accelerators or r.vendor or r.min_memory_gb or r.model)


def eligible_types(r: Resources, available: Iterable[str]) -> frozenset[str]:
    """The available device types that satisfy the request (empty: none here can)."""
    if r.accelerator:
        return frozenset({r.accelerator}) & frozenset(available)
    catalog = accelerators()
    need_bytes = 0.0
    if r.model:
        need_bytes = shape_of(get_model(r.model)).total_params * BF16_BYTES
    allowed = set(r.accelerators) if r.accelerators else None
    out = set()
    for name in available:
        if allowed is not None and name not in allowed:
            continue
        acc = catalog.get(name)
        if name.startswith(CPU_SLICE + "-"):  # pseudo-devices of CPU threads, by vendor only
            if r.vendor and r.vendor.lower() == CPU_SLICE and not (r.min_memory_gb or r.model):
                out.add(name)
            continue
        if acc is None:
            continue  # a chip the catalog does not know satisfies no constraint
        if r.vendor and acc.vendor.lower() != r.vendor.lower():
            continue
        if r.min_memory_gb and acc.memory_gb < r.min_memory_gb:
            continue
        if need_bytes and need_bytes > r.devices * acc.memory_gb * 1e9 * HEADROOM:
            continue
        out.add(name)
    return frozenset(out)


def granted_milli(r: Resources) -> int:
    """Thousandths of each device the scheduler grants (and the executor asks for)."""
    return int(MILLI * r.fraction) if r.fraction else MILLI


def describe(r: Resources) -> str:
    """The device a request asks for, in words (a chip's name, or its constraints): what a
    waiting job's reason says no node has."""
    if r.accelerator:
        return r.accelerator
    parts = [f"one of {', '.join(r.accelerators)}"] if r.accelerators else []
    parts += [f"vendor {r.vendor}"] if r.vendor else []
    parts += [f">= {r.min_memory_gb:g} GB"] if r.min_memory_gb else []
    parts += [f"able to run {r.model}"] if r.model else []
    return "chip " + ", ".join(parts) if parts else "accelerator"


def member_task(spec: JobSpec, types: Iterable[str], name: str) -> Task:
    """One member of the job as the scheduler sees it, against the device ``types`` the
    cluster has (no eligible type: the request's own description stands in, which no node
    has, so the job waits and says why)."""
    r = spec.resources
    gpus = r.devices if wants_devices(r) else 0
    milli = granted_milli(r)
    eligible = eligible_types(r, types) if gpus else frozenset()
    return Task(
        name=name,
        cpu_milli=int(r.cpu * 1000),
        memory_mib=int(r.memory_gb * 1024),
        num_gpu=gpus,
        gpu_milli=milli if gpus else 0,
        gpu_spec=(eligible or frozenset({describe(r)})) if gpus else frozenset(),
        priority=spec.priority,
        preemptible=spec.preemptible,
        queue=spec.queue,
        regions=frozenset(spec.regions),
        node_selector=dict(spec.node_selector),
        data_region=spec.data.region if spec.data else "",
        data_gb=spec.data.size_gb if spec.data else 0.0,
        kind=spec.kind,
    )


def never_fits(spec: JobSpec, state: ClusterState) -> str | None:
    """Why no node of ``state`` could ever host the job, even empty (None: some could):
    a member no node holds, or a gang larger than the whole cluster."""
    from suanli.sched.explain import why_unschedulable

    task = member_task(spec, state.types, "admission")
    why = why_unschedulable(state, task, capacity=True)
    if why is not None:
        return f"no node could ever run a member: {why}; the largest is {largest(state)}"
    gang = spec.gang or 1
    if gang > 1:
        per_node = np.minimum(
            state.cpu_cap // max(task.cpu_milli, 1), state.mem_cap // max(task.memory_mib, 1)
        )
        if task.num_gpu and not task.shares_gpu:
            fits_type = state.type_mask(task.gpu_spec)
            per_node = np.where(fits_type, np.minimum(per_node, state.gpu_count // task.num_gpu), 0)
        room = int(per_node.sum())
        if room < gang:
            return f"gang: {gang} members, but the whole cluster holds at most {room} at once"
    return None


def largest(state: ClusterState) -> str:
    """The biggest node (most devices, then cores, then memory), described."""
    i = max(
        range(state.num_nodes),
        key=lambda n: (state.gpu_count[n], state.cpu_cap[n], state.mem_cap[n]),
    )
    spec = state.specs[i]
    devices = f"{spec.gpu_count} x {spec.gpu_type}" if spec.gpu_count else "no devices"
    cores, mem = spec.cpu_milli / 1000, spec.memory_mib / 1024
    return f"{spec.name} ({cores:g} CPU cores, {mem:.3g} GiB, {devices})"
