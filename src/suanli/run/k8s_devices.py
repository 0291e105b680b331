"""The device request of a Kubernetes rendering: which device-plugin resource, how many,
and which nodes (`suanli.run.k8s`).

A chip described instead of named (vendor, minimum memory, a model to fit) resolves
through `suanli.jobs.resolve` to the catalog chips that satisfy it, exactly as the
scheduler resolves it; those must share one resource name, since a pod asks for one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from suanli.catalog.loader import accelerators
from suanli.catalog.types import Accelerator
from suanli.jobs.resolve import CPU_SLICE, describe, eligible_types, wants_devices
from suanli.jobs.spec import JobSpec

NVIDIA_GPU = "nvidia.com/gpu"
#: HAMi's share-of-a-GPU resource (https://github.com/Project-HAMi/HAMi), NVIDIA only
HAMI_MEMORY_PERCENT = "nvidia.com/gpumem-percentage"
#: a node's GPU memory in MiB, as NVML reports it; set by NVIDIA GPU Feature Discovery
#: (deployed by the NVIDIA GPU Operator), a convention of NVIDIA's stack, not a
#: Kubernetes standard: a cluster without GFD has no such label
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
#: NVML's total can sit a little under a data sheet's figure (ECC on GDDR memory reserves
#: part of it), so the memory floor is lowered by this much before it becomes a threshold
GPU_MEMORY_SLACK = 0.93


@dataclass
class Notes:
    """What a rendering refuses (problems) and reads more narrowly (warnings)."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Devices:
    """A pod's device-plugin limits, and node constraints that narrow the chip."""

    limits: dict[str, str]
    node_match: list[dict[str, Any]]  # nodeAffinity matchExpressions that narrow the chip


def device_request(spec: JobSpec, notes: Notes) -> Devices:
    """The device-plugin request and node constraints for the chips the spec accepts,
    resolved as the scheduler resolves them (`eligible_types`) over the whole catalog."""
    r = spec.resources
    none = Devices({}, [])
    if not wants_devices(r):
        return none
    # the field a message is about: the chip's name, else the first constraint given
    keys = ("accelerator", "accelerators", "vendor", "model", "min_memory_gb")
    where = next((f"resources.{k}" for k in keys if getattr(r, k)), "resources")
    if not r.accelerator and r.vendor and r.vendor.lower() == CPU_SLICE:
        notes.problems.append(
            f"resources.vendor: {CPU_SLICE} is suanli's pseudo-device of CPU threads, not a "
            "Kubernetes resource; ask for cores instead (accelerator: cpu, cpu: N)"
        )
        return none
    catalog = accelerators()
    eligible = [catalog[n] for n in sorted(eligible_types(r, catalog))]
    chips = [a for a in eligible if a.kind != "cpu"]
    if not eligible:
        vendors = sorted({a.vendor for a in catalog.values() if a.kind != "cpu"})
        if r.vendor and r.vendor.lower() not in {a.vendor.lower() for a in catalog.values()}:
            why = f"no catalog chip is made by {r.vendor!r} (vendors: {', '.join(vendors)})"
        else:
            why = f"no catalog chip fits ({describe(r)}; see `suanli catalog list`)"
        notes.problems.append(f"{where}: {why}")
        return none
    if not chips:
        notes.problems.append(
            f"{where}: {', '.join(a.name for a in eligible)} is a CPU, not a device; "
            "Kubernetes schedules cores, not CPU models: use accelerator: cpu and cpu: N"
        )
        return none
    by_resource: dict[str, list[str]] = {}
    for a in chips:
        by_resource.setdefault(a.k8s_resource, []).append(a.name)
    if len(by_resource) > 1:
        kinds = "; ".join(
            f"{res}: {', '.join(names)}" for res, names in sorted(by_resource.items())
        )
        notes.problems.append(
            f"{where}: the chips that fit ({describe(r)}) answer to different device-plugin "
            f"resources ({kinds}) and a pod asks for one; name the chip (accelerator:) or "
            "narrow the constraint (vendor:, min_memory_gb:)"
        )
        return none
    (resource,) = by_resource
    limits: dict[str, str] = {}
    if r.fraction is not None and resource == NVIDIA_GPU:
        limits[resource] = "1"
        limits[HAMI_MEMORY_PERCENT] = str(math.ceil(r.fraction * 100))
        notes.warnings.append(
            f"resources.fraction: a share of a GPU is HAMi's {HAMI_MEMORY_PERCENT}; without "
            "HAMi installed no node offers it and the pod stays Pending"
        )
    elif r.fraction is not None:
        limits[resource] = "1"
        notes.warnings.append(
            f"resources.fraction: {resource} has no shares; the job gets a whole device"
        )
    else:
        limits[resource] = str(r.devices)
    return Devices(limits, _narrow(resource, chips, catalog, where, notes))


def _narrow(
    resource: str,
    chips: list[Accelerator],
    catalog: dict[str, Accelerator],
    where: str,
    notes: Notes,
) -> list[dict[str, Any]]:
    """Node constraints that keep a pod off chips answering to the same resource name but
    outside the accepted set; what no standard label can exclude is warned about."""
    accepted = {a.name for a in chips}
    others = [
        a
        for a in catalog.values()
        if a.k8s_resource == resource and a.kind != "cpu" and a.name not in accepted
    ]
    match: list[dict[str, Any]] = []
    if others and resource == NVIDIA_GPU:
        floor_mib = int(min(a.memory_mib for a in chips) * GPU_MEMORY_SLACK)
        if any(a.memory_mib <= floor_mib for a in others):
            match.append({"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(floor_mib)]})
            others = [a for a in others if a.memory_mib > floor_mib]
            notes.warnings.append(
                f"{where}: only nodes labelled {GPU_MEMORY_LABEL} > {floor_mib} (MiB; the "
                "label comes from NVIDIA GPU Feature Discovery, part of the GPU Operator) "
                "are chosen; a node without it is not"
            )
    if others:
        label = (
            "nvidia.com/gpu.product, set by GPU Feature Discovery"
            if resource == NVIDIA_GPU
            else "a label your cluster sets for the chip model"
        )
        notes.warnings.append(
            f"{where}: {resource} is also the resource of "
            f"{', '.join(sorted(a.name for a in others))}, so the pod may land on one of "
            f"them; pin the chip with node_selector ({label})"
        )
    return match
