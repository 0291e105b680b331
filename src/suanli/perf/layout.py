"""A training layout and the rules that make one possible.

Rank order follows Megatron-LM (tp fastest, then cp, then dp, then pp), so a
TP group sits inside a node whenever tp <= devices per node, and the members of
a DP group are ``tp * cp`` ranks apart. Expert parallelism is carved out of
the data-parallel ranks (ep divides dp * cp), as in Megatron-Core. Layers need
not divide evenly into stages (DeepSeek-V3's 61 layers on 16 stages): the
heaviest stage holds ``stage_layers`` of them and paces the pipeline. The first and
last stages may hold fewer (Megatron-Core's ``--decoder-first-pipeline-num-layers``
and ``--decoder-last-pipeline-num-layers``; Llama 3 405B's recipe): the last one
also runs the output head and the loss, the first one keeps the most micro-batches'
activations.

Sharded data parallelism composes with pipelines as TorchTitan runs it (FSDP2 under
``torch.distributed.pipelining``): a stage's parameters are gathered before its first
micro-batch and kept gathered until the last one's backward, and gradients accumulate
unsharded and are reduce-scattered once, after the last backward ("never" reshard,
TorchTitan's default when pp > 1: in memory and traffic that is ZeRO-1's bill, with
the gather before the step rather than after it). ``fsdp_reshard="always"`` keeps
weights and gradients sharded between uses instead: every micro-batch gathers the
parameters for its forward and backward and reduce-scatters its gradients, which is
ZeRO-3 memory at ``m`` times the traffic. ZeRO-2 with a pipeline likewise
reduce-scatters each micro-batch's gradients (that is what keeps them sharded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from suanli.catalog.types import ModelArch
from suanli.errors import InvalidLayoutError

Recompute = Literal["none", "selective", "full"]
FsdpReshard = Literal["default", "always", "never"]
FSDP_RESHARD = ("default", "always", "never")
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
    #: ZeRO-3 only, TorchTitan's ``reshard_after_forward_policy``: "default" reshards
    #: after each forward without a pipeline and keeps a stage's parameters gathered
    #: across its micro-batches with one (see the module docstring)
    fsdp_reshard: FsdpReshard = "default"
    #: layers on the first / last pipeline stage where they differ from the others;
    #: the rest are split evenly over the other stages (None: an even split)
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None

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
            "fsdp_reshard": self.fsdp_reshard,
            "first_stage_layers": self.first_stage_layers,
            "last_stage_layers": self.last_stage_layers,
        }

    @property
    def uneven(self) -> bool:
        """Whether the first or last stage was given its own layer count."""
        return self.pp > 1 and (
            self.first_stage_layers is not None or self.last_stage_layers is not None
        )

    def stage_split(self, layers: int) -> tuple[int, int, int]:
        """Layers on the (first, each middle, last) stage; an even split gives the
        heaviest stage's count for all three (the remainder may land anywhere)."""
        if not self.uneven:
            even = self.stage_layers(layers)
            return even, even, even
        first, last = self.first_stage_layers, self.last_stage_layers
        others = self.pp - (first is not None) - (last is not None)
        rest = layers - (first or 0) - (last or 0)
        mid = rest // others if others > 0 else 0
        return (mid if first is None else first, mid, mid if last is None else last)

    def stage_layers(self, layers: int) -> int:
        """Layers on the heaviest pipeline stage (all its virtual stages together)."""
        if not self.uneven:
            return -(-layers // (self.pp * self.vpp)) * self.vpp
        return max(self.stage_split(layers))

    @property
    def keeps_params_gathered(self) -> bool:
        """ZeRO-3 keeping parameters gathered between forward and backward (no reshard)."""
        if self.zero != 3:
            return False
        if self.fsdp_reshard == "default":
            return self.pp > 1
        return self.fsdp_reshard == "never"

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
    if lay.fsdp_reshard not in FSDP_RESHARD:
        raise InvalidLayoutError(f"fsdp_reshard must be one of {', '.join(FSDP_RESHARD)}")
    if lay.fsdp_reshard != "default" and lay.zero != 3:
        raise InvalidLayoutError(
            f"fsdp_reshard {lay.fsdp_reshard} applies to ZeRO-3 (FSDP) only; use --zero 3"
        )
    _check_split(model, lay)


def _check_split(model: ModelArch, lay: TrainLayout) -> None:
    """Uneven first/last stages: each holds a layer, and the rest divide the others."""
    first, last = lay.first_stage_layers, lay.last_stage_layers
    if first is None and last is None:
        return
    if lay.pp == 1:
        raise InvalidLayoutError("first/last stage layers need pp > 1")
    if lay.vpp > 1:
        raise InvalidLayoutError(
            "uneven first/last stages with interleaved stages are not modelled; use vpp 1"
        )
    for name, n in (("first", first), ("last", last)):
        if n is not None and n < 1:
            raise InvalidLayoutError(f"{name} stage layers must be >= 1, got {n}")
    others = lay.pp - (first is not None) - (last is not None)
    rest = model.layers - (first or 0) - (last or 0)
    if others == 0 and rest != 0:
        raise InvalidLayoutError(
            f"first + last stage layers = {first} + {last} must equal the {model.layers} "
            f"layers of {model.name} with pp 2"
        )
    if others > 0 and (rest < others or rest % others):
        raise InvalidLayoutError(
            f"the {rest} layers left after the first/last stages must split evenly over the "
            f"other {others} stages (at least one each); change --first-stage-layers or "
            "--last-stage-layers"
        )
