"""How long a new replica takes before it serves: the autoscaler must act that far ahead.

A replica reads its weights from storage (the tier's per-node read rate, after its
first-byte latency), copies them to its devices over the host link (each device its
share, in parallel), then the engine initialises (memory profiling, KV-cache
allocation, compilation and CUDA-graph capture). The weights come from perf's serving
memory model; rates from the catalog's storage tiers and interconnects.
"""

from __future__ import annotations

from dataclasses import dataclass

from suanli.catalog.types import Interconnect, ModelArch, StorageTier
from suanli.perf.serve import weight_bytes_per_device
from suanli.perf.shape import shape_of
from suanli.units import GB

#: vLLM's engine start with a warm compile cache: "init engine (profile, create kv cache,
#: warmup model) took 34.11 seconds", of which 17 s CUDA-graph capture (vllm-project/vllm
#: issue #20264, June 2025, a 3.4 GiB model). Larger models pay more (issue #19824:
#: Llama-70B-FP8 at TP 8, ~70 s torch.compile and ~60 s graph capture cold); this is a
#: floor, stated as such.
ENGINE_INIT_S = 34.0


@dataclass(frozen=True, slots=True)
class ColdStart:
    storage_s: float
    host_to_device_s: float
    engine_init_s: float

    @property
    def total_s(self) -> float:
        return self.storage_s + self.host_to_device_s + self.engine_init_s


def cold_start(
    model: ModelArch,
    storage: StorageTier,
    host_link: Interconnect,
    *,
    tp: int = 1,
    weight_dtype: str = "bf16",
    engine_init_s: float = ENGINE_INIT_S,
) -> ColdStart:
    per_device = weight_bytes_per_device(shape_of(model), tp, weight_dtype)
    total = per_device * tp
    return ColdStart(
        storage_s=storage.latency_ms / 1e3 + total / (storage.read_gbs_per_node * GB),
        host_to_device_s=per_device / (host_link.bandwidth_gbs * GB),
        engine_init_s=engine_init_s,
    )
