"""``suanli estimate train|serve``: one estimate, as a table or JSON.

The option names and the JSON fields are a contract scripts depend on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from suanli.calibration.profile import resolve_accelerator as get_accelerator
from suanli.cli.compress_opts import (
    DistillFrom,
    Prune,
    PruneAxis,
    PruneAxisOpt,
    pruned_model,
    teacher_model,
)
from suanli.cli.output import console, fmt, kv_table, print_json
from suanli.errors import InvalidLayoutError
from suanli.perf import TrainLayout, estimate_serve, estimate_train, make_system
from suanli.perf.compress import distill
from suanli.perf.engines import for_estimate
from suanli.perf.shape import shape_of

estimate_app = typer.Typer(
    help="Estimate time, memory, energy and cost of one workload.", no_args_is_help=True
)


class TrainDtype(StrEnum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"
    fp32 = "fp32"


class ServeDtype(StrEnum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"
    int8 = "int8"
    int4 = "int4"
    fp32 = "fp32"


class RecomputeMode(StrEnum):
    none = "none"
    selective = "selective"
    full = "full"


class FsdpReshard(StrEnum):
    default = "default"
    always = "always"
    never = "never"


class Attention(StrEnum):
    fused = "fused"
    unfused = "unfused"


Model = Annotated[str, typer.Option("--model", help="Catalog model name, or a config.json path.")]
Accel = Annotated[str, typer.Option("--accelerator", help="Catalog accelerator name.")]
NumDevices = Annotated[int, typer.Option("--num-devices", help="Devices in total.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
DevicesPerNode = Annotated[
    int | None, typer.Option("--devices-per-node", help="Default: the chip's typical server.")
]
InterGbps = Annotated[
    float | None,
    typer.Option(
        "--inter-node-gbps", help="Scale-out Gb/s per device. Default: the chip's typical server."
    ),
]
Network = Annotated[str, typer.Option("--network", help="Topology name (catalog list networks).")]
Pue = Annotated[float, typer.Option("--pue", help="Site power usage effectiveness.")]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="NAME\\[@VERSION]: vllm, sglang, tensorrt-llm, gpt-fast, vllm-ascend, onnxruntime, "
        "openvino, serve_lm (default: the chip's usual one, where the request fits it).",
    ),
]
Price = Annotated[
    float | None,
    typer.Option(
        "--price-usd-per-hour", help="USD per device-hour. Default: the catalog reference price."
    ),
]


@estimate_app.command("train")
def train_cmd(
    model: Model,
    accelerator: Accel,
    num_devices: NumDevices,
    global_batch: Annotated[int, typer.Option("--global-batch", help="Sequences per step.")],
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")],
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel size.")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline-parallel stages.")] = 1,
    dp: Annotated[
        int | None,
        typer.Option("--dp", help="Data-parallel size (default: num-devices / (tp*pp*cp))."),
    ] = None,
    cp: Annotated[int, typer.Option("--cp", help="Context-parallel size.")] = 1,
    ep: Annotated[int, typer.Option("--ep", help="Expert-parallel size (MoE).")] = 1,
    vpp: Annotated[int, typer.Option("--vpp", help="Interleaved stages per device.")] = 1,
    zero: Annotated[int, typer.Option("--zero", help="ZeRO stage 0-3.")] = 0,
    fsdp_reshard: Annotated[
        FsdpReshard,
        typer.Option(
            "--fsdp-reshard",
            help="ZeRO-3 only (TorchTitan's policy): default keeps a pipeline stage's "
            "parameters gathered across its micro-batches and reshards after each forward "
            "without a pipeline; always / never force either.",
        ),
    ] = FsdpReshard.default,
    first_stage_layers: Annotated[
        int | None,
        typer.Option(
            "--first-stage-layers",
            help="Layers on the first pipeline stage (default: an even split).",
        ),
    ] = None,
    last_stage_layers: Annotated[
        int | None,
        typer.Option(
            "--last-stage-layers",
            help="Layers on the last pipeline stage, which also runs the output head and loss.",
        ),
    ] = None,
    micro_batch: Annotated[
        int, typer.Option("--micro-batch", help="Sequences per micro-batch.")
    ] = 1,
    dtype: Annotated[
        TrainDtype | None,
        typer.Option(
            "--dtype",
            help="Default: bf16; on a measured device whose bf16 is emulated, fp32.",
        ),
    ] = None,
    recompute: Annotated[RecomputeMode, typer.Option("--recompute")] = RecomputeMode.none,
    sequence_parallel: Annotated[bool, typer.Option("--sequence-parallel")] = False,
    attention: Annotated[
        Attention, typer.Option("--attention", help="Fused (FlashAttention) or not.")
    ] = (Attention.fused),
    overlap_grad_reduce: Annotated[
        bool,
        typer.Option(
            "--overlap-grad-reduce/--no-overlap-grad-reduce",
            help="Overlap DP gradient reduction with the backward pass.",
        ),
    ] = True,
    overlap_tp_comm: Annotated[
        bool, typer.Option("--overlap-tp-comm", help="Overlap TP collectives with GEMMs.")
    ] = False,
    devices_per_node: DevicesPerNode = None,
    inter_node_gbps: InterGbps = None,
    network: Network = "fat-tree-2tier",
    pue: Pue = 1.3,
    price_usd_per_hour: Price = None,
    prune_ratio: Prune = None,
    prune_axis: PruneAxis = PruneAxisOpt.width,
    distill_from: DistillFrom = None,
    json_out: Json = False,
) -> None:
    """Estimate one training step (time with a breakdown, memory, MFU, energy, cost)."""
    arch = pruned_model(model, prune_ratio, prune_axis)
    teacher = teacher_model(distill_from)
    acc = get_accelerator(accelerator)
    if dp is None:
        denom = tp * pp * cp
        if denom < 1 or num_devices % denom:
            raise InvalidLayoutError(
                f"num-devices {num_devices} is not a multiple of tp*pp*cp = {tp}*{pp}*{cp}"
            )
        dp = num_devices // denom
    layout = TrainLayout(
        tp=tp,
        pp=pp,
        dp=dp,
        cp=cp,
        ep=ep,
        vpp=vpp,
        zero=zero,
        fsdp_reshard=fsdp_reshard.value,
        first_stage_layers=first_stage_layers,
        last_stage_layers=last_stage_layers,
        micro_batch=micro_batch,
        global_batch=global_batch,
        seq_len=seq_len,
        dtype=dtype.value if dtype else (acc.compute_dtype or "bf16"),
        recompute=recompute.value,
        sequence_parallel=sequence_parallel,
        fused_attention=attention is Attention.fused,
        overlap_grad_reduce=overlap_grad_reduce,
        overlap_tp_comm=overlap_tp_comm,
    )
    from suanli.perf.layout import check_layout

    check_layout(arch, layout, num_devices)
    system = make_system(
        acc,
        devices_per_node=devices_per_node,
        inter_node_gbps=inter_node_gbps,
        topology=network,
        pue=pue,
        price_usd_per_hour=price_usd_per_hour,
    )
    est = estimate_train(arch, system, layout)
    if teacher is not None:
        est = distill(est, layout, teacher, system)
    notes = list(acc.achievable_notes())
    if json_out:
        out = est.to_dict()
        out.update(model=arch.name, accelerator=acc.name, layout=layout.to_dict(), notes=notes)
        out.update(params_b=shape_of(arch).total_params / 1e9)
        if teacher is not None:
            out["distill_from"] = teacher.name
        print_json(out)
        return
    title = (
        f"{arch.name} on {num_devices} x {acc.name}: tp {tp} pp {pp} dp {dp} cp {cp} "
        f"ep {ep} vpp {vpp} zero {zero}, mb {micro_batch}, gb {global_batch}, seq {seq_len}"
    )
    if layout.uneven:
        first, mid, last = layout.stage_split(arch.layers)
        title += f", stages {first}/{mid}/{last} layers (first/others/last)"
    if zero == 3 and layout.pp > 1:
        title += ", params " + ("kept gathered" if layout.keeps_params_gathered else "resharded")
    if prune_ratio is not None:
        title += f"; {arch.display_name}: {shape_of(arch).total_params / 1e9:.2f}B parameters"
    if teacher is not None:
        title += f"; distilled from {teacher.name} (its forward pass every step)"
    console.print(
        kv_table(
            title,
            [
                ("step time (s)", est.step_time_s),
                ("tokens/s", est.tokens_per_s),
                ("tokens/s per device", est.tokens_per_s_per_device),
                ("model TFLOP/s per device", est.model_tflops_per_device),
                ("hardware TFLOP/s per device", est.hardware_tflops_per_device),
                ("MFU", est.mfu),
                ("HFU", est.hfu),
                ("power per device (W)", est.power_w),
                ("energy per step (J, incl. PUE)", est.energy_j),
                ("cost per step (USD)", est.cost_usd),
            ],
        )
    )
    console.print(_split_table("Step time breakdown (s)", est.breakdown_s, est.step_time_s))
    mem = est.memory_gb
    verdict = "[green]fits[/green]" if est.fits_in_memory else "[red]does NOT fit[/red]"
    console.print(
        kv_table(
            f"Memory per device (GB) — {verdict} in {fmt(acc.memory_gb)} GB", list(mem.items())
        )
    )
    for note in notes:
        console.print(f"note: {note}")


def _split_table(title: str, parts: dict[str, float], total: float) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("part")
    t.add_column("seconds", justify="right")
    t.add_column("share", justify="right")
    for k, v in parts.items():
        share = f"{100 * v / total:.1f}%" if total and not k.endswith("_total") else ""
        t.add_row(k, fmt(v), share)
    return t


@estimate_app.command("serve")
def serve_cmd(
    model: Model,
    accelerator: Accel,
    num_devices: NumDevices,
    batch: Annotated[int, typer.Option("--batch", help="Sequences decoded together.")],
    input_len: Annotated[int, typer.Option("--input-len", help="Prompt tokens.")],
    output_len: Annotated[int, typer.Option("--output-len", help="Generated tokens.")],
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel size per replica.")] = 1,
    weight_dtype: Annotated[
        ServeDtype | None,
        typer.Option(
            "--weight-dtype",
            help="Default: bf16; on a measured device whose bf16 is emulated, fp32.",
        ),
    ] = None,
    kv_dtype: Annotated[ServeDtype | None, typer.Option("--kv-dtype")] = None,
    engine: EngineOpt = None,
    devices_per_node: DevicesPerNode = None,
    pue: Pue = 1.3,
    price_usd_per_hour: Price = None,
    prune_ratio: Prune = None,
    prune_axis: PruneAxis = PruneAxisOpt.width,
    json_out: Json = False,
) -> None:
    """Estimate serving a static batch: TTFT, TPOT, throughput, KV cache, largest batch."""
    arch = pruned_model(model, prune_ratio, prune_axis)
    acc = get_accelerator(accelerator)
    wdt = weight_dtype.value if weight_dtype else (acc.compute_dtype or "bf16")
    system = make_system(
        acc, devices_per_node=devices_per_node, pue=pue, price_usd_per_hour=price_usd_per_hour
    )
    kvd = kv_dtype.value if kv_dtype else None
    eng, said = for_estimate(engine, acc, wdt, kvd)
    est = estimate_serve(
        arch,
        system,
        num_devices=num_devices,
        tp=tp,
        batch=batch,
        input_len=input_len,
        output_len=output_len,
        weight_dtype=wdt,
        kv_dtype=kvd,
        engine=eng,
    )
    notes = [*said, *est.notes, *acc.achievable_notes()]
    if json_out:
        out = est.to_dict()
        out.update(
            model=arch.name,
            accelerator=acc.name,
            num_devices=num_devices,
            tp=tp,
            batch=batch,
            input_len=input_len,
            output_len=output_len,
            weight_dtype=wdt,
            kv_dtype=est.kv_dtype,
            notes=notes,
        )
        print_json(out)
        return
    title = (
        f"{arch.name} on {num_devices} x {acc.name} (tp {tp}, replicas {est.replicas}), "
        f"{wdt} weights, batch {batch}, {input_len} in / {output_len} out, "
        f"engine {est.engine or 'idealised'}"
    )
    console.print(
        kv_table(
            title,
            [
                ("TTFT (s)", est.ttft_s),
                ("TPOT (s)", est.tpot_s),
                ("output tokens/s (all replicas)", est.output_tokens_per_s),
                ("KV cache per device (GB)", est.kv_cache_gb),
                ("largest batch that fits", est.max_batch),
                ("energy per output token (J)", est.energy_j_per_output_token),
                ("USD per million output tokens", est.cost_usd_per_million_output_tokens),
            ],
        )
    )
    console.print(_split_table("Decode step breakdown (s)", est.decode_breakdown_s, est.tpot_s))
    verdict = "[green]fits[/green]" if est.fits_in_memory else "[red]does NOT fit[/red]"
    console.print(
        kv_table(
            f"Memory per device (GB) — {verdict} in {fmt(acc.memory_gb)} GB",
            list(est.memory_gb.items()),
        )
    )
    for note in notes:
        console.print(f"note: {note}")
