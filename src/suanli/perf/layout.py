"""A training layout and the rules that make one possible.

Rank order follows Megatron-LM (tp fastest, then cp, then dp, then pp), so a
TP group sits inside a node whenever tp <= devices per node, and the members of
a DP group are ``tp * cp`` ranks apart. Expert parallelism is carved out of
the data-parallel ranks (ep divides dp * cp), as in Megatron-Core. Layers need
not divide evenly into stages (DeepSeek-V3's 61 layers on 16 stages): the
heaviest stage holds ``stage_layers`` of them and paces the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from suanli.catalog.types import ModelArch
from suanli.errors import InvalidLayoutError

Recompute = Literal["none", "selective", "full"]
TRAIN_DTYPES = ("bf16", "fp16", "fp8", "fp32")  # fp32: where 16 bits are emulated


@dataclass(frozen=True, slots=True)
class TrainLayout:
    """How one training step is laid out over devices, and what the framework overlaps.

    ``fused_attention`` is FlashAttention-style (no score matrix in memory,
    causal blocks skipped); ``overlap_grad_reduce`` overlaps the DP gradient
    reduction and ZeRO parameter gathers with compute (PyTorch DDP/FSDP,
    Megatron ``--overlap-grad-reduce``); ``overlap_tp_comm`` overlaps TP
    collectives with GEMMs (Megatron-Core ``--tp-comm-overlap``). ``dropout``
    adds attention and hidden dropout traffic (GPT-era training; Llama-era
    recipes train without it). ``grad_reduce_dtype`` is what the DP collectives
    carry. ``hierarchical_collectives=False`` models DP
    collectives issued as a flat ring in which each device's own NIC carries
    the whole inter-node volume, as early ZeRO-3 implementations did, instead
    of NCCL's multi-channel schedule that spreads it over a node's NICs.
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    ep: int = 1
    vpp: int = 1
    zero: int = 0
    micro_batch: int = 1
    global_batch: int = 1
    seq_len: int = 2048
    dtype: str = "bf16"
    recompute: Recompute = "none"
    sequence_parallel: bool = False
    fused_attention: bool = True
    overlap_grad_reduce: bool = True
    overlap_tp_comm: bool = False
    dropout: bool = False
    hierarchical_collectives: bool = True
    #: dtype gradients are reduced in: bf16 (Megatron's default) or fp32 (Megatron's
    #: --accumulate-allreduce-grads-in-fp32; PyTorch DDP/FSDP over fp32 master weights)
    grad_reduce_dtype: str = "bf16"
    #: PyTorch autocast over fp32 weights (no bf16 copy kept): every micro-batch casts
    #: each weight to bf16 in the forward and its gradient back to fp32 in the backward
    autocast_weights: bool = False

    @property
    def num_devices(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    def to_dict(self) -> dict[str, object]:
        """The layout fields scripts read (the CLI and planner JSON ``layout`` object)."""
        return {
            "tp": self.tp,
            "pp": self.pp,
            "dp": self.dp,
            "cp": self.cp,
            "ep": self.ep,
            "vpp": self.vpp,
            "zero": self.zero,
            "micro_batch": self.micro_batch,
            "global_batch": self.global_batch,
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "recompute": self.recompute,
            "sequence_parallel": self.sequence_parallel,
        }

    def stage_layers(self, layers: int) -> int:
        """Layers on the heaviest pipeline stage (all its virtual stages together)."""
        return -(-layers // (self.pp * self.vpp)) * self.vpp

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // (self.dp * self.micro_batch)


def check_layout(model: ModelArch, layout: TrainLayout, num_devices: int | None = None) -> None:
    """Raise `InvalidLayoutError` naming the first broken constraint and how to fix it."""
    lay = layout
    for name in ("tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch", "global_batch", "seq_len"):
        if getattr(lay, name) < 1:
            raise InvalidLayoutError(f"{name} must be >= 1, got {getattr(lay, name)}")
    if num_devices is not None and num_devices != lay.num_devices:
        raise InvalidLayoutError(
            f"num-devices {num_devices} != tp*pp*dp*cp = {lay.tp}*{lay.pp}*{lay.dp}*{lay.cp}"
            f" = {lay.num_devices}; change --dp or --num-devices"
        )
    if lay.zero not in (0, 1, 2, 3):
        raise InvalidLayoutError(f"zero stage must be 0, 1, 2 or 3, got {lay.zero}")
    if lay.dtype not in TRAIN_DTYPES:
        raise InvalidLayoutError(f"training dtype must be one of {', '.join(TRAIN_DTYPES)}")
    if lay.grad_reduce_dtype not in ("bf16", "fp32"):
        raise InvalidLayoutError("grad_reduce_dtype must be bf16 or fp32")
    if lay.recompute not in ("none", "selective", "full"):
        raise InvalidLayoutError("recompute must be none, selective or full")
    if model.heads % lay.tp:
        raise InvalidLayoutError(
            f"tp {lay.tp} does not divide the {model.heads} attention heads of {model.name}"
        )
    if model.mla is None and model.kv_heads % lay.tp and lay.tp % model.kv_heads:
        raise InvalidLayoutError(
            f"tp {lay.tp} and the {model.kv_heads} KV heads of {model.name} must divide one another"
        )
    if lay.pp * lay.vpp > model.layers:
        raise InvalidLayoutError(
            f"pp*vpp = {lay.pp}*{lay.vpp} exceeds the {model.layers} layers of {model.name}"
        )
    if lay.vpp > 1 and lay.pp == 1:
        raise InvalidLayoutError("vpp > 1 (interleaved stages) needs pp > 1")
    if lay.seq_len % lay.cp or (lay.cp > 1 and (lay.seq_len // lay.cp) % 2):
        raise InvalidLayoutError(
            f"cp {lay.cp} must split seq-len {lay.seq_len} into even chunks (load-balanced causal)"
        )
    if lay.ep > 1:
        if model.moe is None:
            raise InvalidLayoutError(f"ep {lay.ep} needs an MoE model; {model.name} is dense")
        if model.moe.num_experts % lay.ep:
            raise InvalidLayoutError(
                f"ep {lay.ep} does not divide the {model.moe.num_experts} experts of {model.name}"
            )
        if (lay.dp * lay.cp) % lay.ep:
            raise InvalidLayoutError(f"ep {lay.ep} must divide dp*cp = {lay.dp * lay.cp}")
    if lay.global_batch % (lay.dp * lay.micro_batch):
        raise InvalidLayoutError(
            f"global batch {lay.global_batch} is not a multiple of dp*micro-batch = "
            f"{lay.dp}*{lay.micro_batch}"
        )
    if lay.vpp > 1 and lay.num_microbatches % lay.pp:
        raise InvalidLayoutError(
            f"interleaved stages need the {lay.num_microbatches} micro-batches to be a multiple "
            f"of pp {lay.pp}"
        )
    if lay.sequence_parallel and lay.tp == 1:
        raise InvalidLayoutError("sequence parallelism needs tp > 1")
    if lay.zero >= 2 and lay.pp > 1:
        raise InvalidLayoutError(
            "ZeRO stage 2/3 with pipeline parallelism is not supported by Megatron or DeepSpeed; "
            "use zero 0 or 1 with pp > 1"
        )
