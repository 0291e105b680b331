"""What eager PyTorch pays beyond FLOPs and bytes: per-operator dispatch, serve_lm's fixed
decode cost per layer and per step, and a training layer's elementwise work."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, cast

from suanli.calibration.timing import DTYPES, Budget, Plan, sync_for, timed, torch_module

#: the fixed-cost probe's sequences decoded together and its KV heads: its attention
#: works on PROBE_ATTENTION_PAIRS (sequence, KV head) pairs a layer, which perf charges
#: on their own (`attention.decode_attention_fit`), so the profile takes them out of the
#: probe's per-layer cost
PROBE_SLOTS = 8
PROBE_KV_HEADS = 1
PROBE_ATTENTION_PAIRS = PROBE_SLOTS * PROBE_KV_HEADS

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int8pack_mm")
ELEMENTWISE_TOKENS = 1024  # tokens of the training layer timed (a micro-batch's worth)


def dispatch_us(device: str, plan: Plan) -> float:
    """Microseconds to dispatch one tiny operator: the framework's fixed cost per op."""
    torch = torch_module()
    sync = sync_for(torch, device)
    x = torch.ones(8, device=device)

    def ten() -> None:
        y = x
        for _ in range(10):
            y = y + 1.0

    return round(timed(ten, sync, plan.min_time_s, Budget(plan.probe_budget_s)) / 10 * 1e6, 2)


def train_elementwise_gbs(device: str, plan: Plan, dtype: str = "bf16") -> float:
    """The rate, in perf's count of bytes, at which eager PyTorch runs a training layer's
    elementwise work (norms, RoPE, activation, residuals, autocast's weight casts).

    perf counts the bytes a fused kernel would move; eager PyTorch makes several passes
    (RoPE alone: chunk, four products, a difference, a sum, a concatenation, a cast), so
    on a CPU this work ran at a third of the copy rate. Measured on train_lm's own
    decoder layer (the catalog's tiny model), forward + backward as train_lm runs it in
    ``dtype`` (bf16 autocast over fp32 weights, or plain fp32): the profiler's time of
    every operator that is neither a GEMM nor attention, against what perf counts for
    that layer. Per-operator dispatch is inside this time, so perf does not add its
    per-layer fixed cost on top where this is measured.
    """
    torch = torch_module()
    from torch.profiler import ProfilerActivity, profile

    from suanli.catalog.loader import get_model
    from suanli.workloads.train_lm import Block, rope_inv_freq, rope_tables

    arch = get_model("tiny-llama-40m")
    seq, batch = 256, ELEMENTWISE_TOKENS // 256
    blk = Block(arch).to(device)
    x = torch.randn(batch, seq, arch.hidden, device=device, requires_grad=True)
    grad = torch.randn(batch, seq, arch.hidden, device=device)
    cos, sin = rope_tables(seq, rope_inv_freq(arch.head_dim).to(device))
    autocast = dtype != "fp32"

    def step() -> None:
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=autocast):
            y = blk(x, cos, sin)
        y.backward(grad)
        x.grad = None
        for w in blk.parameters():
            w.grad = None

    step()
    step_s = timed(step, sync_for(torch, device), 0.0)
    # a round per 20 ms of min_time_s, at least 3, and no more than half the budget holds
    rounds = max(
        3, min(int(plan.min_time_s / 0.02), int(plan.probe_budget_s / 2 / max(step_s, 1e-9)))
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    with profile(activities=activities) as prof:
        for _ in range(rounds):
            step()
    elementwise_us = sum(
        e.self_device_time_total if device != "cpu" else e.self_cpu_time_total
        for e in prof.key_averages()
        if e.key not in GEMM_OPS and "scaled_dot_product" not in e.key
    )
    seconds = elementwise_us / rounds / 1e6
    counted = counted_elementwise_bytes(arch, seq, batch, dtype)
    return round(float(counted / seconds / 1e9), 3)


def counted_elementwise_bytes(arch: Any, seq: int, batch: int, dtype: str = "bf16") -> float:
    """What perf counts for one such layer (elementwise + weight casts), in bytes: its
    estimate of that layer alone (a 1-layer model, a vocabulary too small to matter) on
    a stand-in device of 1 GB/s, in train_lm's precision for ``dtype``."""
    import dataclasses

    from suanli.catalog.loader import get_accelerator
    from suanli.perf import TrainLayout, estimate_train, make_system
    from suanli.perf.efficiency import default_efficiency

    e = default_efficiency()
    one = dataclasses.replace(arch, layers=1, vocab=8, tied_embeddings=False)
    acc = dataclasses.replace(get_accelerator("a100-80gb"), memory_bandwidth_gbs=1.0)
    lay = TrainLayout(
        micro_batch=batch,
        global_batch=batch,
        seq_len=seq,
        dtype=dtype,
        autocast_weights=dtype != "fp32",
    )
    est = estimate_train(one, make_system(acc), lay, e, check=False)
    return (est.breakdown_s["elementwise"] + est.breakdown_s["weight_casts"]) * 1e9 * e.mem_bw_eff


def fixed_costs_us(
    device: str,
    plan: Plan,
    dtype: str = "bf16",
    engine: str | None = None,
    weights: tuple[str, ...] = ("none",),
) -> dict[str, dict[str, float]]:
    """The fixed cost of serve_lm's decode in ``dtype``, per layer and per step, in µs,
    by the weights it serves (``weights``: ``none`` for ``dtype``'s own, ``int8`` for
    serve_lm's int8 ones); ``engine``: through ONNX Runtime or OpenVINO instead of eager
    PyTorch, in fp32.

    Eager PyTorch pays per operator (dispatch, a GEMM's set-up, the engine's own
    Python) whatever the tensor sizes; on a CPU that is a large share of a small
    model's decode step, and perf's bandwidth terms do not see it. Measured on
    probe models too small to cost bytes or FLOPs (hidden 64), with 2 and 6
    layers: the difference is the per-layer cost, the rest the per-step cost.
    An int8-weight GEMM call costs other than a 16-bit one (on one 2-core Xeon with
    AMX 3-4 µs against 18-20 in bf16: about 300-320 µs a layer against 380-400), and
    an engine's int8 graph runs other operators, so each weight dtype is measured,
    the probes alternated round by round: a shared machine's drift hits all alike.
    """
    torch = torch_module()
    from suanli.catalog.types import ModelArch
    from suanli.workloads.serve_lm import Engine, Request, quantize_int8
    from suanli.workloads.train_lm import GPT

    dt = getattr(torch, DTYPES[dtype])
    probe = ModelArch(
        name="fixed-cost-probe",
        display_name="calibration probe",
        hidden=64,
        layers=2,
        heads=2,
        kv_heads=PROBE_KV_HEADS,
        head_dim=32,
        ffn=128,
        vocab=256,
        gated_mlp=True,
        tied_embeddings=False,
        max_seq_len=512,
        sources={"hidden": "calibration probe: too small to cost bytes or FLOPs"},
    )
    arches = {layers: dataclasses.replace(probe, layers=layers) for layers in (2, 6)}
    engines = {}
    for quantize in weights:
        for layers, arch in arches.items():
            torch.manual_seed(0)
            model = GPT(arch).to(device=device, dtype=dt).eval()
            if engine is None:
                if quantize == "int8":
                    quantize_int8(model, dt)
                engines[quantize, layers] = Engine(model, arch, PROBE_SLOTS, 512, dt, device)
            else:
                from suanli.workloads.onnx_lm import OnnxEngine, runner_for

                backend = runner_for(model, cast(OnnxEngine, engine), quantize)
                engines[quantize, layers] = Engine(
                    None, arch, PROBE_SLOTS, 512, torch.float32, device, backend
                )
    rounds: dict[tuple[str, int], list[float]] = {key: [] for key in engines}
    budget = Budget(plan.probe_budget_s * len(weights))
    for i in range(3 if plan.min_time_s < 0.3 else 7):  # alternated: drift hits all alike
        if i >= 3 and budget.left_s() <= 0:
            break
        for key, eng in engines.items():
            for j in range(PROBE_SLOTS):
                eng.waiting.put(Request([j + 1] * 64, 120, 0.0))
            eng.step()  # prefill
            for _ in range(5):
                eng.step()
            start, n = time.perf_counter(), 40
            for _ in range(n):
                eng.step()
            rounds[key].append((time.perf_counter() - start) / n * 1e6)
            while eng.active:
                eng.step()
    out = {}
    for quantize in weights:
        # the median round, as a workload's mean step sees the same noise
        two, six = (statistics.median(rounds[quantize, layers]) for layers in (2, 6))
        layer = max(0.0, (six - two) / 4)
        out[quantize] = {"layer": round(layer, 1), "step": round(max(0.0, two - 2 * layer), 1)}
    return out


def decode_fixed_costs(
    device: str, plan: Plan, dtype: str, engine: str | None = None
) -> dict[str, Any]:
    """`fixed_costs_us` as a profile keeps it: ``fixed_us`` with ``dtype``'s own weights,
    ``fixed_us_by_weight`` with serve_lm's int8 ones (an engine's int8 graph, through
    one)."""
    by_weight = fixed_costs_us(device, plan, dtype, engine=engine, weights=("none", "int8"))
    return {"fixed_us": by_weight.pop("none"), "fixed_us_by_weight": by_weight}
