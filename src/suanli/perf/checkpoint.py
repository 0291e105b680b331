"""Checkpoint size and the time to write it to, or read it from, a storage tier.

A job the scheduler moves to another chip type stops, checkpoints, and restores on
the new devices; that costs the checkpoint's size over the storage tier's bandwidth.

Size: what Megatron-LM and DeepSpeed save for a full training checkpoint, per
parameter, in the ZeRO paper's terms (Rajbhandari et al., SC'20, Sec. 3.1; the same
constants as `suanli.perf.memory`). Mixed-precision Adam holds 2 + 2 + 12 = 16 bytes
per parameter; the checkpoint keeps the 16-bit weights (2) and the optimizer state
(12: fp32 master weights, momentum and variance), not the gradients: 14 bytes.
Plain fp32 training keeps 4-byte weights and Adam's two 4-byte moments, with no master
copy: 12 bytes. SGD with momentum keeps one moment instead of two; ``optimizer="none"``
is a weights-only export (the job restarts its optimizer).

Time: ``nbytes / min(nodes * per-node bandwidth, aggregate bandwidth) + latency``.
Every node writes (or reads) its shard in parallel; the tier's aggregate caps the sum.
"""

from __future__ import annotations

from suanli.catalog.types import ModelArch, StorageTier
from suanli.errors import InvalidLayoutError
from suanli.perf.layout import TRAIN_DTYPES
from suanli.perf.memory import FP32_STATE_BYTES, OPTIMIZER_BYTES, WEIGHT_BYTES
from suanli.perf.shape import shape_of
from suanli.units import GB

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "none")
#: fp32 master copy of the weights that mixed-precision training keeps (part of the
#: ZeRO paper's K = 12 for Adam: master 4 + momentum 4 + variance 4)
MASTER_BYTES = 4.0
#: one fp32 optimizer moment (SGD's momentum; Adam keeps two)
MOMENT_BYTES = 4.0


def checkpoint_bytes_per_param(*, optimizer: str = "adam", precision: str = "bf16") -> float:
    """Bytes a full training checkpoint holds per parameter (14 for mixed-precision Adam)."""
    if optimizer not in OPTIMIZERS:
        raise InvalidLayoutError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
    if precision not in TRAIN_DTYPES:
        raise InvalidLayoutError(f"precision must be one of {', '.join(TRAIN_DTYPES)}")
    if precision == "fp32":
        weights, _, adam = FP32_STATE_BYTES  # no master copy: the weights are fp32
        master = 0.0
    else:  # bf16/fp16/fp8 training keeps 16-bit weights and an fp32 master copy
        weights, adam, master = WEIGHT_BYTES, OPTIMIZER_BYTES, MASTER_BYTES
    state = {"adam": adam, "sgd": master + MOMENT_BYTES, "none": 0.0}[optimizer]
    return weights + state


def checkpoint_bytes(
    model: ModelArch, *, optimizer: str = "adam", precision: str = "bf16"
) -> float:
    """Bytes of a full training checkpoint of ``model`` (all parameters, experts included)."""
    per_param = checkpoint_bytes_per_param(optimizer=optimizer, precision=precision)
    return per_param * shape_of(model).total_params


def storage_bandwidth_gbs(
    tier: StorageTier, *, nodes: int = 1, write: bool = True, capacity_tib: float | None = None
) -> float:
    """GB/s ``nodes`` client nodes get from ``tier`` together: the per-node figure times
    ``nodes``, capped by the tier's aggregate. A tier whose throughput scales with what was
    provisioned needs ``capacity_tib`` (the file system's size)."""
    if nodes < 1:
        raise InvalidLayoutError(f"nodes must be >= 1, got {nodes}")
    per_node = tier.write_gbs_per_node if write else tier.read_gbs_per_node
    total = nodes * per_node
    aggregate = tier.aggregate_gbs
    if aggregate is not None and not write and tier.aggregate_read_gbs is not None:
        aggregate = tier.aggregate_read_gbs
    if aggregate is None and tier.aggregate_gbs_per_tib is not None:
        if capacity_tib is None or capacity_tib <= 0:
            raise InvalidLayoutError(
                f"storage tier {tier.name} scales with provisioned capacity "
                f"({tier.aggregate_gbs_per_tib:g} GB/s per TiB): give capacity_tib > 0"
            )
        aggregate = tier.aggregate_gbs_per_tib * capacity_tib
    return total if aggregate is None else min(total, aggregate)


def checkpoint_seconds(
    nbytes: float,
    tier: StorageTier,
    *,
    nodes: int = 1,
    write: bool = True,
    capacity_tib: float | None = None,
) -> float:
    """Seconds to write (``write=True``) or restore ``nbytes`` of checkpoint on ``tier``
    from ``nodes`` nodes at once: size over the bandwidth they get together, plus the
    tier's first-byte latency."""
    if nbytes < 0:
        raise InvalidLayoutError(f"checkpoint size must be >= 0 bytes, got {nbytes}")
    bandwidth = storage_bandwidth_gbs(tier, nodes=nodes, write=write, capacity_tib=capacity_tib)
    return nbytes / (bandwidth * GB) + tier.latency_ms / 1e3
