"""Frozen catalog records.

Records are plain frozen dataclasses with slots: the perf model reads their
fields millions of times, so attribute access must be cheap. Every number comes
with a source in ``sources`` (field name → citation); numbers that published
sources disagree on are listed in ``disputed`` (field name → what is disputed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

AcceleratorKind = Literal["cpu", "gpu", "npu", "fpga", "asic"]
DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4")


#: A chip's share of its dense peak that the best large GEMM reaches, where none is
#: published for it: the median of the BF16 table in stas00/ml-engineering,
#: compute/accelerator/README.md at 744d01e (2026-08): 12 accelerators from 51.4%
#: (MI300X) to 96.9% (Gaudi 2), median 78.1%
DEFAULT_MATMUL_FRACTION = 0.781


@dataclass(frozen=True, slots=True, eq=False)
class Accelerator:
    """One accelerator model (a SKU), as its data sheet describes it.

    Compared and hashed by identity (``eq=False``): records are loaded once, and
    the perf model caches derived figures per record.

    ``peak_tflops`` are dense (no structured sparsity) peaks per dtype; integer
    formats are TOP/s. ``intra_node_link_gbs`` is the vendor's aggregate
    bidirectional figure per device (NVLink 4: 900); the perf model uses half of
    it per direction. ``nic_gbps`` is the scale-out network per device.
    """

    name: str
    display_name: str
    vendor: str
    kind: AcceleratorKind
    peak_tflops: dict[str, float]
    memory_gb: float
    memory_bandwidth_gbs: float
    memory_type: str
    intra_node_link: str
    intra_node_link_gbs: float
    devices_per_node: int
    nic_gbps: float
    tdp_w: float
    visible_devices_env: str
    k8s_resource: str
    sources: dict[str, str]
    price_usd_per_hour: float | None = None
    idle_w: float | None = None
    #: the rate skinny GEMMs (decode: a few tokens against all the weights) stream weights
    #: at; data sheets do not give it, so it is None (= memory bandwidth) unless measured
    gemv_bandwidth_gbs: float | None = None
    #: fp32 cross-entropy (forward + backward), logits per second: a GPU streams it at
    #: memory bandwidth, a CPU computes its exp far slower; None (= bandwidth) unless measured
    loss_logits_per_s: float | None = None
    #: measured only: decode-GEMM weight rate over many distinct matrices, by weight dtype
    #: and inner size K (small matrices stream slower), and the fixed costs of the serving
    #: engine (eager PyTorch: per operator, whatever the sizes), per layer and per step
    gemv_bandwidth_by_k: dict[str, dict[int, float]] | None = None
    layer_overhead_us: float | None = None
    step_overhead_us: float | None = None
    #: measured only: the same fixed costs with weights in another dtype than the compute
    #: one, weight dtype -> {"layer": µs, "step": µs} (on one Xeon an int8-weight GEMM
    #: call cost a fifth of a bf16 one)
    weight_overhead_us: dict[str, dict[str, float]] | None = None
    #: the maximum achievable matmul rate (MAMF: the best of a sweep of large GEMM shapes)
    #: as a fraction of the dense peak, by dtype, where it was measured and published;
    #: perf runs GEMMs at a share of this rate, not of the data-sheet peak
    matmul_fraction: dict[str, float] | None = None
    #: measured only: K/V bytes per second a decode step's attention reads (else the
    #: memory bandwidth: fused decode kernels stream the cache)
    decode_attention_gbs: float | None = None
    #: measured only: what each (sequence, KV head) pair of a decode step's attention
    #: costs a layer beyond its bytes, µs (a kernel's work per pair; on a CPU, 1-4 µs);
    #: None (= 0) unless measured
    decode_attention_row_us: float | None = None
    #: measured only: fused causal attention, forward + backward in bf16, by sequence
    #: length, in TFLOP/s of perf's count (3.5 x the causal half of QK^T and AV); a CPU's
    #: kernels pay per token as much as per score, so the rate climbs steeply with length
    attention_train_tflops: dict[int, float] | None = None
    #: measured only: achieved dense GEMM TFLOP/s by dtype and size, of a Linear's forward
    #: and both backward GEMMs (an ``n x n`` weight, ``n`` tokens); a CPU's rate climbs
    #: several-fold from 256 to 2048 where a GPU's data-sheet model holds
    gemm_tflops_by_size: dict[str, dict[int, float]] | None = None
    #: measured only: the training step's output projection (forward + backward, bf16,
    #: a vocabulary-wide matrix) in TFLOP/s by hidden size; its wide output runs below
    #: the square GEMM rate on a CPU
    lm_head_tflops: dict[int, float] | None = None
    #: measured only: GB/s, in perf's count of bytes, at which eager PyTorch runs a training
    #: layer's elementwise work and autocast casts (several passes where perf counts one)
    train_elementwise_gbs: float | None = None
    #: measured only: the precision the dtype-dependent measurements above (output
    #: projection, training attention and elementwise work, decode) ran in — the one
    #: software picks on the device: bf16 where it beats fp32, else fp32
    compute_dtype: str | None = None
    #: measured only: dtypes the device computes on a slow path (bf16 on a CPU without
    #: bf16 instructions: ~100x slower than fp32); their peaks are the measured rates
    emulated_dtypes: tuple[str, ...] = ()
    #: measured only: this device as serve_lm runs through another engine (ONNX Runtime,
    #: OpenVINO): engine name -> this record with that engine's measured decode figures
    engine_variants: dict[str, Accelerator] | None = None
    #: measured only, on such a variant: the serving engine its decode figures were
    #: measured through
    measured_engine: str | None = None
    disputed: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def gemv_rate_gbs(self, k: int, dtype: str = "bf16") -> float | None:
        """The decode-GEMM weight rate of ``dtype`` weights with inner size ``k``: measured
        by K, interpolated in log K (clamped at the ends); else, for bf16,
        ``gemv_bandwidth_gbs``; else None."""
        by_k = (self.gemv_bandwidth_by_k or {}).get(dtype)
        if not by_k:
            return self.gemv_bandwidth_gbs if dtype == "bf16" else None
        return log_interp(by_k, k)

    def decode_overhead_us(self, weight_dtype: str) -> tuple[float | None, float | None]:
        """The measured fixed costs of a decode step with ``weight_dtype`` weights, per
        layer and per step (µs): measured with those weights where they were, else with
        the compute dtype's; None where nothing was measured."""
        own = (self.weight_overhead_us or {}).get(weight_dtype)
        if own:
            return own.get("layer"), own.get("step")
        return self.layer_overhead_us, self.step_overhead_us

    def attention_train_rate(self, seq_len: int) -> float | None:
        """Measured fused-attention training TFLOP/s at ``seq_len`` (log-interpolated), or
        None where nothing was measured (the data-sheet model applies)."""
        by_seq = self.attention_train_tflops
        return log_interp(by_seq, seq_len) if by_seq else None

    @property
    def memory_mib(self) -> int:
        """Device memory in MiB (``memory_gb`` is SI, as data sheets give it)."""
        return int(self.memory_gb * 1e9 / 2**20)

    def peak(self, dtype: str) -> float:
        """Dense peak TFLOP/s for ``dtype``, falling back to the nearest wider format.

        A chip without an fp8 unit runs fp8 work at its bf16/fp16 rate; one
        without bf16 runs it at fp16 (then fp32). Integer formats fall back the
        same way. This mirrors what frameworks do (upcast), not a marketing figure.
        """
        chain = _FALLBACK[dtype]
        for d in chain:
            v = self.peak_tflops.get(d)
            if v:
                return v
        raise KeyError(dtype)

    def achievable_fraction(self, dtype: str) -> float:
        """The share of ``dtype``'s dense peak the best large GEMM reaches: the published
        MAMF figure for ``dtype``, else the chip's 16-bit one (fp16 runs on the same
        units as bf16; an fp8 GEMM without a figure is taken to fare as the 16-bit one),
        else `DEFAULT_MATMUL_FRACTION`."""
        by_dtype = self.matmul_fraction or {}
        for d in (dtype, "bf16", "fp16"):
            if d in by_dtype:
                return by_dtype[d]
        return DEFAULT_MATMUL_FRACTION

    def achievable_notes(self) -> tuple[str, ...]:
        """What an estimate says where the chip's achievable GEMM rate is not published."""
        if self.matmul_fraction:
            return ()
        return (
            f"{self.name}: no published achievable GEMM rate (MAMF); its GEMMs are costed "
            f"from {DEFAULT_MATMUL_FRACTION:.1%} of its peak, the median of the chips that "
            "have one",
        )

    def native(self, dtype: str) -> bool:
        """Whether the chip has a hardware rate for ``dtype`` (no upcast)."""
        return bool(self.peak_tflops.get(dtype))


def log_interp(points: dict[int, float], x: float) -> float:
    """``points`` (size -> rate) at ``x``: linear in log size, clamped at both ends."""
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]]
    if x >= xs[-1]:
        return points[xs[-1]]
    hi = next(i for i, v in enumerate(xs) if v >= x)
    x0, x1 = xs[hi - 1], xs[hi]
    f = math.log(x / x0) / math.log(x1 / x0)
    return points[x0] + f * (points[x1] - points[x0])


_FALLBACK: dict[str, tuple[str, ...]] = {
    "fp32": ("fp32",),
    "tf32": ("tf32", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "fp8": ("fp8", "bf16", "fp16", "fp32"),
    "int8": ("int8", "fp8", "fp16", "bf16", "fp32"),
    "int4": ("int4", "int8", "fp8", "fp16", "bf16", "fp32"),
}


@dataclass(frozen=True, slots=True)
class Interconnect:
    """A link technology: a device-to-device fabric or a network.

    ``bandwidth_gbs`` is per direction per device (or per port for a NIC), and
    ``latency_us`` the one-hop latency a small message pays (the alpha of the
    alpha-beta model).
    """

    name: str
    display_name: str
    scope: Literal["intra-node", "inter-node"]
    bandwidth_gbs: float
    latency_us: float
    sources: dict[str, str]
    in_network_reduction: bool = False
    notes: str = ""


@dataclass(frozen=True, slots=True)
class Topology:
    """How nodes are wired: the penalty a collective pays when it leaves a node.

    ``oversubscription`` divides the per-device NIC bandwidth for traffic that
    crosses the top tier (1.0 = non-blocking); ``hops`` multiplies the per-hop
    latency for traffic between nodes of different leaves.
    """

    name: str
    display_name: str
    kind: Literal["single-node", "fat-tree", "dragonfly"]
    tiers: int
    oversubscription: float
    hops: int
    nodes_per_leaf: int
    sources: dict[str, str]
    notes: str = ""


StorageKind = Literal["local", "parallel-fs", "object"]


@dataclass(frozen=True, slots=True)
class StorageTier:
    """Where a job writes its checkpoint and reads it back: a node's own drive, a
    parallel file system or an object store.

    ``write_gbs_per_node`` / ``read_gbs_per_node`` are what one client node sustains;
    ``aggregate_gbs`` is what the whole tier sustains (for writes, and for reads unless
    ``aggregate_read_gbs`` is given). Where throughput scales with the capacity bought,
    ``aggregate_gbs`` is None and ``aggregate_gbs_per_tib`` gives it per TiB provisioned;
    where both are None nothing caps the sum (each node writes its own drive).
    ``latency_ms`` is the first-byte latency, paid once per checkpoint or restore.
    """

    name: str
    display_name: str
    kind: StorageKind
    write_gbs_per_node: float
    read_gbs_per_node: float
    latency_ms: float
    sources: dict[str, str]
    aggregate_gbs: float | None = None
    aggregate_read_gbs: float | None = None
    aggregate_gbs_per_tib: float | None = None
    usd_per_gb_month: float | None = None
    disputed: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    @property
    def shared(self) -> bool:
        """Whether other nodes can read what one node wrote (false for node-local
        drives: a job restarted elsewhere cannot restore from them)."""
        return self.kind != "local"


@dataclass(frozen=True, slots=True)
class MLA:
    """Multi-head latent attention shapes (DeepSeek-V2/V3)."""

    q_lora_rank: int  # 0 when queries are not compressed
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True, slots=True)
class MoE:
    """Mixture-of-experts shapes. ``first_dense_layers`` use the dense MLP."""

    num_experts: int
    experts_per_token: int
    expert_ffn: int
    num_shared_experts: int = 0
    first_dense_layers: int = 0
    moe_layer_freq: int = 1


@dataclass(frozen=True, slots=True, eq=False)
class ModelArch:
    """A decoder-only transformer, dense or MoE, in Hugging Face terms."""

    name: str
    display_name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    gated_mlp: bool
    tied_embeddings: bool
    max_seq_len: int
    sources: dict[str, str]
    moe: MoE | None = None
    mla: MLA | None = None
    attention_bias: bool = False
    family: str = ""
    notes: str = ""
