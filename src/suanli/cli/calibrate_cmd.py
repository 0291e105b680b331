"""``suanli calibrate``: measure this machine's devices and, with --save, let perf use them."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from suanli.cli.output import console, fmt, print_json


class CalibEngine(StrEnum):
    onnxruntime = "onnxruntime"
    openvino = "openvino"


def calibrate_cmd(
    device: Annotated[str, typer.Option("--device", help="cpu, cuda:0, cuda:1, ...")] = "cpu",
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer sizes, 3 s per probe (under a minute).")
    ] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads (default: PyTorch's).", min=1)
    ] = None,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            help="Measure one of N processes sharing this CPU, as an N-rank DDP job runs "
            "(the others run the same benchmarks at once; use --threads cores/N).",
            min=1,
        ),
    ] = 1,
    save: Annotated[
        bool, typer.Option("--save", help="Store the profile; perf reads it as NAME@measured.")
    ] = False,
    engines: Annotated[
        list[CalibEngine] | None,
        typer.Option(
            "--engine",
            help="Also measure serve_lm's decode through this engine (repeatable): "
            "onnxruntime, openvino; estimate serve --engine NAME on the profile uses it.",
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Microbenchmarks with PyTorch: GEMM, memory bandwidth, attention, all-reduce."""
    from suanli.calibration import micro
    from suanli.calibration.profile import (
        best_gemm_tflops,
        get_measured,
        profile_name,
    )
    from suanli.calibration.profile import (
        save as save_profile,
    )
    from suanli.calibration.timing import torch_module
    from suanli.catalog.loader import accelerators

    if threads:
        torch_module().set_num_threads(threads)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=json_out,
    ) as bar:
        task = bar.add_task("calibrating", total=None)
        prof = micro.calibrate(
            device,
            quick,
            lambda step: bar.update(task, description=f"measuring {step}"),
            processes=processes,
            engines=tuple(dict.fromkeys(e.value for e in engines or [])),
        ).to_dict()
    name = profile_name(prof)
    prof["name"] = name
    if save:
        prof["saved_to"] = str(save_profile(prof, data_dir))
        prof["use_as"] = name + "@measured"
    if json_out:
        print_json(prof)
        return
    base = accelerators().get(name)
    t = Table(
        title=f"{prof['device_name']} ({device}, {prof['threads']} threads"
        + (f", one of {processes} processes" if processes > 1 else "")
        + ")",
        title_justify="left",
    )
    for col in ("figure", "measured", "data sheet"):
        t.add_column(col, justify="right" if col != "figure" else "left")
    compute = prof.get("compute_dtype", "bf16")
    for dt, tf in best_gemm_tflops(prof).items():
        slow = " — emulated, not used by default" if dt in prof.get("emulated_dtypes", []) else ""
        t.add_row(
            f"GEMM {dt} TFLOP/s (best size){slow}", fmt(tf), fmt(base.peak(dt)) if base else "—"
        )
    t.add_row(f"precision workloads and perf use: {compute}", prof.get("precision_why", ""), "")
    if prof.get("train_elementwise_gbs"):
        t.add_row(
            "training elementwise, eager (GB/s of perf's bytes)",
            fmt(prof["train_elementwise_gbs"]),
            "",
        )
    for hidden, tf in prof.get("lm_head_tflops", {}).items():
        t.add_row(f"LM head, hidden {hidden}, {compute} fwd+bwd TFLOP/s", fmt(tf), "")
    t.add_row(
        "memory GB/s (copy)",
        fmt(prof["memory_bandwidth_gbs"]),
        fmt(base.memory_bandwidth_gbs) if base else "—",
    )
    for dt, gbs in prof["gemv_gbs"].items():
        t.add_row(f"decode GEMV {dt} weight GB/s", fmt(gbs), "")
    for dt, us in prof.get("gemv_call_us", {}).items():
        t.add_row(f"decode GEMM call {dt}, whatever its size (µs)", fmt(us), "")
    for dt, by_k in prof.get("gemv_gbs_by_k", {}).items():
        for k, gbs in by_k.items():
            t.add_row(f"decode GEMV {dt}, distinct K={k} matrices, GB/s", fmt(gbs), "")
    for seq, a in prof["attention"]["by_seq"].items():
        t.add_row(
            f"attention seq {seq}: fused / unfused TFLOP/s",
            f"{fmt(a['fused_tflops'])} / {fmt(a['unfused_tflops'])}",
            "",
        )
        if a.get("train_tflops"):
            t.add_row(f"attention seq {seq}: {compute} fwd+bwd TFLOP/s", fmt(a["train_tflops"]), "")
    for mb, gbs in prof["allreduce_gbs"].items():
        t.add_row(f"all-reduce {mb} MB bus GB/s", fmt(gbs), "")
    t.add_row("dispatch per op (µs)", fmt(prof["dispatch_us"]), "")
    if prof.get("loss_logits_per_s"):
        t.add_row("fp32 cross-entropy fwd+bwd (Glogit/s)", fmt(prof["loss_logits_per_s"] / 1e9), "")
    if prof.get("decode_attention_gbs"):
        t.add_row("decode attention K/V GB/s", fmt(prof["decode_attention_gbs"]), "")
    if prof.get("decode_attention_row_us") is not None:
        t.add_row(
            "decode attention per (sequence, KV head) a layer (µs)",
            fmt(prof["decode_attention_row_us"]),
            "",
        )
    for part, us in prof.get("fixed_us", {}).items():
        t.add_row(f"serve_lm decode fixed cost per {part} (µs)", fmt(us), "")
    for wdt, parts in prof.get("fixed_us_by_weight", {}).items():
        for part, us in parts.items():
            t.add_row(f"serve_lm decode fixed cost per {part}, {wdt} weights (µs)", fmt(us), "")
    for eng, fig in prof.get("engines", {}).items():
        label = f"{eng} {fig['version']}"
        for dt, by_k in fig["gemv_gbs_by_k"].items():
            for k, gbs in by_k.items():
                t.add_row(f"{label}: decode GEMV {dt}, K={k}, GB/s", fmt(gbs), "")
        t.add_row(f"{label}: decode attention K/V GB/s", fmt(fig["decode_attention_gbs"]), "")
        if fig.get("decode_attention_row_us") is not None:
            t.add_row(
                f"{label}: decode attention per (sequence, KV head) a layer (µs)",
                fmt(fig["decode_attention_row_us"]),
                "",
            )
        for part, us in fig["fixed_us"].items():
            t.add_row(f"{label}: serve_lm decode fixed cost per {part} (µs)", fmt(us), "")
        for wdt, parts in fig.get("fixed_us_by_weight", {}).items():
            for part, us in parts.items():
                t.add_row(f"{label}: fixed cost per {part}, {wdt} weights (µs)", fmt(us), "")
    t.add_row("wall time (s)", fmt(prof["wall_s"]), "")
    console.print(t)
    if save:
        acc = get_measured(name + "@measured", data_dir)
        console.print(
            f"saved {prof['saved_to']}; use it as --accelerator {acc.name} "
            f"(perf's achievable rates are now the measured ones)"
        )
