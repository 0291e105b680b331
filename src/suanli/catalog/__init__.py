"""The catalog: accelerators, links, topologies and models, as data with sources."""

from suanli.catalog.loader import (
    accelerators,
    get_accelerator,
    get_model,
    get_topology,
    interconnects,
    models,
    topologies,
)
from suanli.catalog.types import MLA, Accelerator, Interconnect, ModelArch, MoE, Topology

__all__ = [
    "MLA",
    "Accelerator",
    "Interconnect",
    "MoE",
    "ModelArch",
    "Topology",
    "accelerators",
    "get_accelerator",
    "get_model",
    "get_topology",
    "interconnects",
    "models",
    "topologies",
]
