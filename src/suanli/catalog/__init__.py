"""The catalog: accelerators, links, topologies, models and storage tiers, as data with sources."""

from suanli.catalog.loader import (
    accelerators,
    get_accelerator,
    get_model,
    get_storage_tier,
    get_topology,
    interconnects,
    models,
    storage_tiers,
    topologies,
)
from suanli.catalog.types import (
    MLA,
    Accelerator,
    Interconnect,
    ModelArch,
    MoE,
    StorageTier,
    Topology,
)

__all__ = [
    "MLA",
    "Accelerator",
    "Interconnect",
    "MoE",
    "ModelArch",
    "StorageTier",
    "Topology",
    "accelerators",
    "get_accelerator",
    "get_model",
    "get_storage_tier",
    "get_topology",
    "interconnects",
    "models",
    "storage_tiers",
    "topologies",
]
