"""Which device types can serve a job's request: a named chip, or constraints.

A request may name a chip (``accelerator: h100-sxm``) or describe one: a vendor,
a minimum memory, or "any chip that can run model M". Constraints resolve
against the chips the cluster actually has, through the catalog, so a new
node type becomes eligible without touching any job. "Can run M" means M's
bf16 weights fit in the job's devices with 10% left for the KV cache and
activations — the perf model's parameter count, not the model card's rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

from suanli.catalog.loader import accelerators, get_model
from suanli.jobs.spec import Resources
from suanli.perf.shape import shape_of

HEADROOM = 0.9  # share of device memory weights may take
BF16_BYTES = 2


def wants_devices(r: Resources) -> bool:
    """Whether the job needs accelerators at all (else it runs on CPU cores)."""
    if r.accelerator == "cpu" or r.devices == 0:
        return False
    return bool(r.accelerator or r.vendor or r.min_memory_gb or r.model)


def eligible_types(r: Resources, available: Iterable[str]) -> frozenset[str]:
    """The available device types that satisfy the request (empty: none here can)."""
    if r.accelerator:
        return frozenset({r.accelerator}) & frozenset(available)
    catalog = accelerators()
    need_bytes = 0.0
    if r.model:
        need_bytes = shape_of(get_model(r.model)).total_params * BF16_BYTES
    out = set()
    for name in available:
        acc = catalog.get(name)
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
