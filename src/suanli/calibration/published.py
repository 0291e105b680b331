"""Read ``../shared/calibration/*.csv``, and the published rows this project added
(``data/training_added.csv``, ``data/inference_added.csv``, ``data/training_torchtitan.csv``),
into cases the perf model can predict.

Each CSV row becomes a (model, system, layout, measured) case. What a row does
not publish is filled by one rule per source, written here once and never per
row:

* Megatron-LM, SC'21 (rows with ``fp16`` on A100): Megatron's own kernels of
  2021 — no FlashAttention (published 2022), the DP all-reduce after the
  backward pass (``--overlap-grad-reduce`` came in 2023), no TP overlap, no
  sequence parallelism (2022); micro-batch 1; embeddings tied (the parameter
  counts in the table match tied GPT models); Megatron's default attention and
  hidden dropout of 0.1. ZeRO-3 rows are DeepSpeed ZeRO-3 (2021) with data
  parallelism only, micro-batch = global batch / devices, its parameter
  gathers issued as flat rings (no per-node NIC aggregation).
* Megatron-Core, 2024 (``bf16`` on H100): fused attention, distributed
  optimizer (ZeRO-1), grad-reduce/param-gather/TP overlap on (as the CSV
  says), sequence parallelism with TP, micro-batch 1, untied embeddings (the
  table's parameter counts, e.g. 7.1B for h=4096, l=30, V=131072, need them).
* TensorRT-LLM v0.5.0 (static batch, FP8): FP8 KV cache; its decode attention
  predates the XQA kernel (v0.7), so GQA models read each KV head once per
  query head. gpt-fast: bf16 KV, and it ``repeat_interleave``s K/V to all
  query heads before attention — the same lack of reuse.
* The step time a row implies is its FLOPs under its own convention (the
  CSV's ``flops_convention``) divided by its measured FLOP/s.

The added files' headers hold their own sources and per-source rules; a row whose
source leaves out what the model needs is read with ``fitted`` False.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, replace
from pathlib import Path

from suanli.catalog.loader import get_accelerator, get_model, models
from suanli.catalog.types import ModelArch, MoE
from suanli.perf.engines import Decoding, get_engine
from suanli.perf.layout import TrainLayout
from suanli.perf.shape import shape_of
from suanli.perf.system import System, make_system
from suanli.perf.train import model_flops_per_token


def shared_calibration_dir() -> Path | None:
    """``../shared/calibration`` beside the project root, if present."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "calibration"
        if (parent / "pyproject.toml").exists() and cand.is_dir():
            return cand
    cand = Path.cwd().parent / "shared" / "calibration"
    return cand if cand.is_dir() else None


@dataclass(frozen=True)
class TrainingCase:
    id: str
    model: ModelArch
    system: System
    layout: TrainLayout
    measured_step_s: float
    measured_tflops_per_device: float
    convention: str
    source: str
    #: peak memory per device the source reports (GiB), where it does
    measured_memory_gib: float | None = None
    #: what the row ran that the perf model has no input for (torch.compile, ...)
    unmodelled: str = ""
    #: False where the source does not say what the model needs (the network under pure
    #: FSDP): predicted and reported, never fitted
    fitted: bool = True


@dataclass(frozen=True)
class InferenceCase:
    id: str
    kind: str
    model: ModelArch
    system: System
    num_devices: int
    tp: int
    weight_dtype: str
    batch: int
    input_len: int
    output_len: int
    measured_output_tokens_per_s: float
    source: str
    kv_dtype: str
    decoding: Decoding
    engine: str  # NAME@VERSION (``suanli.perf.engines``): what it could do decides the two above
    #: False where the model lacks what the row ran on (its decode attention kernel, not
    #: stated; its chip's achieved GEMM rate): predicted and reported, never fitted
    fitted: bool = True


def _rows(path: Path) -> tuple[str, list[dict[str, str]]]:
    text = path.read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    body = "\n".join(line for line in text.splitlines() if line and not line.startswith("#"))
    return header, list(csv.DictReader(io.StringIO(body)))


def convention_flops(row: dict[str, str]) -> float:
    """FLOPs per step under the row's published convention (Narayanan et al. Eq. 3)."""
    b, s = float(row["global_batch"]), float(row["seq_len"])
    n_layers, h, v = float(row["layers"]), float(row["hidden"]), float(row["vocab"])
    core = b * s * n_layers * h * h * (1 + s / (6 * h) + v / (16 * n_layers * h))
    if row["flops_convention"] == "hfu_full_recompute":
        return 96 * core
    if row["flops_convention"] == "mfu":
        return 72 * core
    raise ValueError(f"unknown flops_convention {row['flops_convention']!r} in row {row['id']}")


def _gpt(row: dict[str, str], tied: bool) -> ModelArch:
    h, layers, heads, vocab = (int(row[k]) for k in ("hidden", "layers", "heads", "vocab"))
    return ModelArch(
        name=row["model"],
        display_name=row["model"],
        hidden=h,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=h // heads,
        ffn=4 * h,
        vocab=vocab,
        gated_mlp=False,
        tied_embeddings=tied,
        max_seq_len=int(row["seq_len"]),
        sources={"hidden": "training_megatron.csv"},
        attention_bias=True,
        family="gpt",
    )


def load_training_cases(directory: Path) -> list[TrainingCase]:
    """Every row of ``training_megatron.csv`` as a case."""
    _, rows = _rows(directory / "training_megatron.csv")
    cases = []
    for row in rows:
        acc = get_accelerator(row["accelerator"])
        n = int(row["num_devices"])
        tp, pp, dp = int(row["tp"]), int(row["pp"]), int(row["dp"])
        gb = int(row["global_batch"])
        legacy = row["dtype"] == "fp16"  # the SC'21 rows
        zero3 = row["optimizer"] == "zero3"
        layout = TrainLayout(
            tp=tp,
            pp=pp,
            dp=dp,
            micro_batch=gb // dp if zero3 else 1,
            global_batch=gb,
            seq_len=int(row["seq_len"]),
            dtype=row["dtype"],
            recompute=row["recompute"],  # type: ignore[arg-type]
            zero=3 if zero3 else (0 if legacy else 1),
            sequence_parallel=(not legacy) and tp > 1,
            fused_attention=not legacy,
            overlap_grad_reduce=not legacy,
            overlap_tp_comm=not legacy,
            dropout=legacy,
            hierarchical_collectives=not zero3,
        )
        assert layout.num_devices == n, row["id"]
        flops = convention_flops(row)
        measured = float(row["measured_tflops_per_device"])
        cases.append(
            TrainingCase(
                id=row["id"],
                model=_gpt(row, tied=legacy),
                system=make_system(acc),
                layout=layout,
                measured_step_s=flops / (measured * 1e12 * n),
                measured_tflops_per_device=measured,
                convention=row["flops_convention"],
                source="Narayanan et al. SC'21" if legacy else "Megatron-Core README 2024",
            )
        )
    return cases


DATA_DIR = Path(__file__).resolve().parent / "data"


def _layout(
    row: dict[str, str],
    *,
    zero: int,
    micro_batch: int,
    global_batch: int,
    dtype: str,
    grad_reduce_dtype: str,
    overlap_tp_comm: bool,
) -> TrainLayout:
    """A row's layout: the parallel sizes, sequence, recompute and end-stage sizes it
    gives (blank end stages: an even split), sequence parallelism with TP, and what the
    caller's source rules say for the rest."""
    tp, pp, dp, cp, vpp = (int(row[k]) for k in ("tp", "pp", "dp", "cp", "vpp"))
    first, last = row["first_stage_layers"], row["last_stage_layers"]
    layout = TrainLayout(
        tp=tp,
        pp=pp,
        dp=dp,
        cp=cp,
        vpp=vpp,
        zero=zero,
        micro_batch=micro_batch,
        global_batch=global_batch,
        seq_len=int(row["seq_len"]),
        dtype=dtype,
        recompute=row["recompute"],  # type: ignore[arg-type]
        sequence_parallel=tp > 1,
        overlap_tp_comm=overlap_tp_comm,
        grad_reduce_dtype=grad_reduce_dtype,
        first_stage_layers=int(first) if first else None,
        last_stage_layers=int(last) if last else None,
    )
    assert layout.num_devices == int(row["num_devices"]), row["id"]
    return layout


def _per_token_rate(model: ModelArch, layout: TrainLayout, tps: float) -> tuple[float, float]:
    """(step seconds, model TFLOP/s per device) of a run at ``tps`` tokens/s per device,
    in the model-FLOP convention (``mfu``) the perf model reports."""
    tokens = layout.global_batch * layout.seq_len
    flops = model_flops_per_token(shape_of(model), layout.seq_len)
    return tokens / (tps * layout.num_devices), flops * tps / 1e12


def load_heldout_training_cases(directory: Path = DATA_DIR) -> list[TrainingCase]:
    """TorchTitan's Dec 2024 runs (``data/training_torchtitan.csv``): FSDP2 alone, with
    context parallelism, with TP, and with TP and pipelines. Never fitted: they say how
    the model predicts layouts and a stack it was not fitted on. The file's header
    holds the per-source rules; the throughput is tokens/s per GPU, turned into the
    model-FLOP convention (``mfu``) the perf model reports."""
    _, rows = _rows(directory / "training_torchtitan.csv")
    h100 = make_system(get_accelerator("h100-sxm"))  # the part they ran is not in the catalog
    cases = []
    for row in rows:
        model = get_model(row["model"])
        local, pp = int(row["local_batch"]), int(row["pp"])
        layout = _layout(
            row,
            zero=3,
            micro_batch=local // pp,  # torchtitan: as many micro-batches as stages
            global_batch=local * int(row["dp"]),
            dtype="fp8" if row["float8"] == "1" else "bf16",
            grad_reduce_dtype="fp32",
            overlap_tp_comm=row["async_tp"] == "1",
        )
        step_s, tflops = _per_token_rate(model, layout, float(row["tps_per_gpu"]))
        cases.append(
            TrainingCase(
                id=row["id"],
                model=model,
                system=h100,
                layout=layout,
                measured_step_s=step_s,
                measured_tflops_per_device=tflops,
                convention="mfu",
                source=f"TorchTitan 2024-12 {row['table']}",
                measured_memory_gib=float(row["memory_gib"]),
                unmodelled="torch.compile" if row["compile"] == "1" else "",
            )
        )
    return cases


#: whether each stack of ``data/training_added.csv`` overlaps its TP collectives with
#: GEMMs (Megatron-Core's default, which NeMo runs); its header gives the other rules
_OVERLAP_TP = {"composer-fsdp": False, "megatron-core": True, "llama3": False}


def palm_flops_per_token(model: ModelArch, seq_len: int) -> float:
    """Chowdhery et al. 2023 (PaLM), Appendix B: 6N + 12 L H Q T training FLOPs per token,
    N the parameters, attention counted over the whole (uncausal) sequence."""
    n = shape_of(model).total_params
    return 6.0 * n + 12.0 * model.layers * model.heads * model.head_dim * seq_len


def _mpt(name: str, f: dict[str, str], seq_len: int) -> ModelArch:
    """An MPT model from its header shape: llm-foundry's MLP of 4 h, its 50,368-token
    vocabulary and its tied embeddings."""
    plain = _arch_from_shape(name, {**f, "ffn": str(4 * int(f["h"])), "V": "50368"})
    return replace(
        plain,
        tied_embeddings=True,
        max_seq_len=seq_len,
        sources={"hidden": "llm-foundry scripts/train/yamls/pretrain"},
    )


def load_added_training_cases(directory: Path = DATA_DIR) -> list[TrainingCase]:
    """The published training rows this project added beside the shared set
    (``data/training_added.csv``: llm-foundry's FSDP runs, NeMo 24.07 in FP8, Llama 3
    405B), fitted with it where ``fitted``. The file's header holds the per-source
    rules."""
    header, rows = _rows(directory / "training_added.csv")
    shapes = _header_shapes(header)
    cases = []
    for row in rows:
        seq = int(row["seq_len"])
        name = row["model"]
        model = get_model(name) if name in models() else _mpt(name, shapes[name], seq)
        layout = _layout(
            row,
            zero=int(row["zero"]),
            micro_batch=int(row["micro_batch"]),
            global_batch=int(row["global_batch"]),
            dtype=row["dtype"],
            grad_reduce_dtype=row["grad_reduce_dtype"],
            overlap_tp_comm=_OVERLAP_TP[row["stack"]],
        )
        if row["tokens_per_s_per_device"]:
            step_s, tflops = _per_token_rate(model, layout, float(row["tokens_per_s_per_device"]))
            convention = "mfu"
        else:
            if row["flops_convention"] != "palm":
                raise ValueError(f"unknown flops_convention in row {row['id']}")
            tflops = float(row["tflops_per_device"])
            tokens = layout.global_batch * seq
            step_s = (
                palm_flops_per_token(model, seq) * tokens / (tflops * 1e12 * layout.num_devices)
            )
            convention = "palm"
        cases.append(
            TrainingCase(
                id=row["id"],
                model=model,
                system=make_system(get_accelerator(row["accelerator"])),
                layout=layout,
                measured_step_s=step_s,
                measured_tflops_per_device=tflops,
                convention=convention,
                source=row["source"],
                fitted=row["fitted"] == "1",
            )
        )
    return cases


_SHAPE = re.compile(r"([\w.\-]+(?:/[\w.\-]+)?) \(([^)]*)\)")


def _header_shapes(header: str) -> dict[str, dict[str, str]]:
    """Parse "name (h4096,l32,a32,kv8,ffn11008,V32000)" model shapes from the CSV header."""
    out: dict[str, dict[str, str]] = {}
    start = header.find("Model shapes:")
    for m in _SHAPE.finditer(header[start:]):
        fields: dict[str, str] = {}
        for part in m.group(2).split(","):
            part = part.strip()
            km = re.fullmatch(r"(h|l|a|kv|ffn|V)(\d+)", part)
            if km:
                fields[km.group(1)] = km.group(2)
            em = re.fullmatch(r"(\d+) experts top-(\d+)", part)
            if em:
                fields["experts"], fields["top"] = em.group(1), em.group(2)
            fm = re.fullmatch(r"expert ffn(\d+)", part)
            if fm:
                fields["ffn"] = fm.group(1)
        for name in m.group(1).split("/"):
            out[name] = fields
    return out


def _arch_from_shape(name: str, f: dict[str, str]) -> ModelArch:
    h, heads = int(f["h"]), int(f["a"])
    gated = name.startswith(("llama", "mistral", "mixtral"))
    moe = MoE(int(f["experts"]), int(f["top"]), int(f["ffn"])) if "experts" in f else None
    return ModelArch(
        name=name,
        display_name=name,
        hidden=h,
        layers=int(f["l"]),
        heads=heads,
        kv_heads=int(f.get("kv", heads)),
        head_dim=h // heads,
        ffn=int(f["ffn"]),
        vocab=int(f["V"]),
        gated_mlp=gated,
        tied_embeddings=False,
        max_seq_len=4096,
        sources={"hidden": "inference_published.csv header"},
        moe=moe,
        family=name.split("-")[0],
    )


#: the engine (and version) each kind of row was measured with, as the header says
ENGINE_OF_KIND = {"static_batch": "tensorrt-llm@0.5", "single_stream": "gpt-fast"}


def _inference_case(
    row: dict[str, str],
    shapes: dict[str, dict[str, str]],
    *,
    kind: str,
    engine_label: str,
    source: str,
    tokens_per_s: float,
    fitted: bool = True,
    kv_dtype: str = "",
) -> InferenceCase:
    """One published row as a case. Its engine's profile says what KV cache it kept
    (TRT-LLM: FP8 with FP8 weights; gpt-fast: bf16 always) and how its decode read a GQA
    model's KV heads (TRT-LLM before XQA and gpt-fast did not reuse them)."""
    name = row["model"]
    model = get_model(name) if name in models() else _arch_from_shape(name, shapes[name])
    engine = get_engine(engine_label)
    return InferenceCase(
        id=row["id"],
        kind=kind,
        model=model,
        system=make_system(get_accelerator(row["accelerator"])),
        num_devices=int(row["num_devices"]),
        tp=int(row["tp"]),
        weight_dtype=row["weight_dtype"],
        batch=int(row["batch"]),
        input_len=int(row["input_len"]),
        output_len=int(row["output_len"]),
        measured_output_tokens_per_s=tokens_per_s,
        source=source,
        kv_dtype=kv_dtype or engine.default_kv(row["weight_dtype"]),
        decoding=engine.decoding(),
        engine=engine.label,
        fitted=fitted,
    )


def load_inference_cases(directory: Path) -> list[InferenceCase]:
    """Every row of ``inference_published.csv`` as a case."""
    header, rows = _rows(directory / "inference_published.csv")
    shapes = _header_shapes(header)
    return [
        _inference_case(
            row,
            shapes,
            kind=row["kind"],
            engine_label=ENGINE_OF_KIND[row["kind"]],
            source="TensorRT-LLM v0.5.0" if row["kind"] == "static_batch" else "gpt-fast",
            tokens_per_s=float(row["measured_output_tokens_per_s"]),
        )
        for row in rows
    ]


def load_added_inference_cases(directory: Path = DATA_DIR) -> list[InferenceCase]:
    """The published rows this project added beside the shared set
    (``data/inference_added.csv``: TensorRT-LLM v0.5, v0.6.1 and v0.9.0 on H200, H100,
    L40S and A100; vLLM on A100, H100, H200 and MI300X), each naming its release and
    engine; the file's header holds the per-source rules. A row gives its throughput per
    device (as TensorRT-LLM's pages publish it) or its batch's latency (vLLM's
    benchmark_latency)."""
    header, rows = _rows(directory / "inference_added.csv")
    shapes = _header_shapes(header)
    cases = []
    for row in rows:
        batch, out, n = int(row["batch"]), int(row["output_len"]), int(row["num_devices"])
        per_device = row["measured_output_tokens_per_s_per_device"]
        latency = row["measured_latency_s"]
        if bool(per_device) == bool(latency):
            raise ValueError(f"row {row['id']}: give a per-device rate or a latency, not both")
        tokens_per_s = float(per_device) * n if per_device else batch * out / float(latency)
        cases.append(
            _inference_case(
                row,
                shapes,
                kind="static_batch",
                engine_label=row["engine"],
                source=row["source"],
                tokens_per_s=tokens_per_s,
                fitted=row["fitted"] == "1",
                kv_dtype=row["kv_dtype"],
            )
        )
    return cases
