"""Training estimates: layouts, bubbles, memory verdicts and invariants."""

from __future__ import annotations

import dataclasses

import pytest

from suanli.errors import InvalidLayoutError
from suanli.perf import Efficiency, TrainLayout, estimate_train
from tests.conftest import model, system

GPT3 = TrainLayout(tp=8, pp=12, dp=16, global_batch=1536, seq_len=2048, recompute="full")


def test_estimate_has_consistent_figures() -> None:
    est = estimate_train(model("gpt3-175b"), system("a100-80gb"), GPT3)
    assert est.num_devices == 1536
    assert est.tokens_per_s == pytest.approx(1536 * 2048 / est.step_time_s)
    assert est.tokens_per_s_per_device == pytest.approx(est.tokens_per_s / 1536)
    assert 0 < est.mfu < est.hfu < 1
    # full recompute: hardware FLOPs = model FLOPs * 4/3
    assert est.hfu / est.mfu == pytest.approx(4 / 3)
    assert est.fits_in_memory
    mem = est.memory_gb
    assert mem["total"] == pytest.approx(
        mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"] + mem["workspace"]
    )
    parts = {k: v for k, v in est.breakdown_s.items() if k != "dp_comm_total"}
    assert sum(parts.values()) == pytest.approx(est.step_time_s, rel=1e-9)
    assert est.energy_j > 0 and est.cost_usd > 0


@pytest.mark.parametrize(
    ("pp", "vpp", "gb", "expected"),
    [
        # 1F1B: bubble = (p - 1) / m of the compute; m = gb / dp = 64 -> 11/64
        (12, 1, 1024, 11 / 64),
        # interleaved with v = 2 halves it: (8 - 1) / (2 * 64)
        (8, 2, 1024, 7 / 128),
        (4, 1, 256, 3 / 16),  # m = 16
    ],
)
def test_pipeline_bubble_fraction(pp: int, vpp: int, gb: int, expected: float) -> None:
    lay = TrainLayout(tp=8, pp=pp, dp=16, vpp=vpp, global_batch=gb, seq_len=2048)
    m = model("gpt3-175b")
    est = estimate_train(m, system("a100-80gb"), lay)
    compute = est.step_time_s - sum(
        v
        for k, v in est.breakdown_s.items()
        if k in ("pp_bubble", "pp_p2p", "dp_comm_exposed", "optimizer")
    )
    assert est.breakdown_s["pp_bubble"] / compute == pytest.approx(expected)


def test_recompute_trades_time_for_memory() -> None:
    m, sys_ = model("llama-2-13b"), system("a100-80gb")
    base = TrainLayout(tp=4, pp=1, dp=2, global_batch=64, seq_len=4096, fused_attention=False)
    none = estimate_train(m, sys_, base)
    sel = estimate_train(m, sys_, dataclasses.replace(base, recompute="selective"))
    full = estimate_train(m, sys_, dataclasses.replace(base, recompute="full"))
    assert none.step_time_s < sel.step_time_s < full.step_time_s
    assert (
        none.memory_gb["activations"]
        > sel.memory_gb["activations"]
        > (full.memory_gb["activations"])
    )


def test_zero_stages_shrink_model_states() -> None:
    m, sys_ = model("llama-2-7b"), system("a100-80gb")
    totals = [
        estimate_train(m, sys_, TrainLayout(dp=8, zero=z, global_batch=64, seq_len=2048)).memory_gb
        for z in range(4)
    ]
    states = [t["weights"] + t["gradients"] + t["optimizer"] for t in totals]
    assert states == sorted(states, reverse=True)
    # stage 3 over 8 ranks: 16 bytes/param / 8 = 2 bytes/param of 6.74B = 13.5 GB
    assert states[3] == pytest.approx(16 * 6.738e9 / 8 / 1e9, rel=1e-3)


def test_70b_does_not_fit_one_80gb_device() -> None:
    est = estimate_train(
        model("llama-3-70b"), system("h100-sxm"), TrainLayout(global_batch=8, seq_len=4096)
    )
    assert not est.fits_in_memory
    assert est.memory_gb["weights"] == pytest.approx(2 * 70.55, rel=1e-3)


def test_more_data_parallel_devices_give_more_tokens_per_second() -> None:
    m, sys_ = model("llama-2-7b"), system("h100-sxm")
    rates = [
        estimate_train(
            m, sys_, TrainLayout(dp=d, zero=1, global_batch=512, seq_len=4096)
        ).tokens_per_s
        for d in (8, 16, 32, 64)
    ]
    assert rates == sorted(rates)


def test_slower_link_slows_tensor_parallelism_only() -> None:
    m = model("gpt3-175b")
    fast = system("a100-80gb")
    slow = dataclasses.replace(fast, intra_bw=fast.intra_bw / 4)
    tp = TrainLayout(tp=8, pp=12, dp=16, global_batch=1536, seq_len=2048)
    assert estimate_train(m, slow, tp).breakdown_s["tp_cp_comm"] > (
        estimate_train(m, fast, tp).breakdown_s["tp_cp_comm"] * 3
    )


def test_h800_pays_more_for_tensor_parallel_than_h100() -> None:
    # Same chip, NVLink cut from 900 to 400 GB/s (hardware_sources.md caveat 1).
    lay = TrainLayout(tp=8, pp=7, dp=4, global_batch=256, seq_len=4096)
    m = model("llama-3.1-405b")
    h100 = estimate_train(m, system("h100-sxm"), lay)
    h800 = estimate_train(m, system("h800-sxm"), lay)
    assert h800.breakdown_s["tp_cp_comm"] > 1.8 * h100.breakdown_s["tp_cp_comm"]
    assert h800.step_time_s > h100.step_time_s


def test_uneven_stages_are_paced_by_the_heaviest() -> None:
    # DeepSeek-V3's 61 layers on 16 stages: the heaviest holds ceil(61/16) = 4 layers,
    # so it costs like 64 layers on 16 even stages would.
    lay = TrainLayout(pp=16, dp=64, ep=64, zero=1, global_batch=1024, seq_len=4096)
    assert lay.stage_layers(61) == 4
    est = estimate_train(model("deepseek-v3"), system("h800-sxm"), lay)
    assert est.step_time_s > 0 and est.breakdown_s["ep_comm"] > 0


def test_moe_expert_parallel_adds_all_to_all() -> None:
    m = model("mixtral-8x7b")
    lay = TrainLayout(tp=1, pp=1, dp=8, ep=8, zero=1, global_batch=64, seq_len=4096)
    est = estimate_train(m, system("h100-sxm"), lay)
    assert est.breakdown_s["ep_comm"] > 0
    # MoE: model FLOPs follow active (12.9B), not total (46.7B) parameters
    assert est.model_tflops_per_device * 1e12 * est.step_time_s * 8 / (64 * 4096) < (6 * 20e9)


def test_fp8_is_faster_than_bf16_where_the_chip_has_it() -> None:
    m, lay = model("llama-3-70b"), TrainLayout(tp=8, pp=2, dp=4, global_batch=64, seq_len=4096)
    bf16 = estimate_train(m, system("h100-sxm"), lay)
    fp8 = estimate_train(m, system("h100-sxm"), dataclasses.replace(lay, dtype="fp8"))
    assert fp8.step_time_s < bf16.step_time_s
    # A100 has no FP8 unit: fp8 runs at the bf16 rate
    a_bf16 = estimate_train(m, system("a100-80gb"), lay)
    a_fp8 = estimate_train(m, system("a100-80gb"), dataclasses.replace(lay, dtype="fp8"))
    assert a_fp8.step_time_s == pytest.approx(a_bf16.step_time_s, rel=0.01)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (TrainLayout(tp=7, dp=1, global_batch=8, seq_len=2048), "does not divide the 96 attention"),
        (TrainLayout(pp=97, global_batch=97, seq_len=2048), "exceeds the 96 layers"),
        (TrainLayout(dp=3, global_batch=8, seq_len=2048), "not a multiple of dp*micro-batch"),
        (TrainLayout(ep=2, global_batch=8, seq_len=2048), "needs an MoE model"),
        (TrainLayout(zero=4, global_batch=8, seq_len=2048), "zero stage"),
        (
            TrainLayout(tp=2, sequence_parallel=False, vpp=2, global_batch=8, seq_len=2048),
            "vpp > 1",
        ),
        (TrainLayout(zero=1, fsdp_reshard="never", global_batch=8, seq_len=2048), "--zero 3"),
        (TrainLayout(first_stage_layers=4, global_batch=8, seq_len=2048), "need pp > 1"),
        (
            TrainLayout(pp=4, first_stage_layers=20, global_batch=8, seq_len=2048),
            "split evenly over the other 3",
        ),
        (
            TrainLayout(pp=2, first_stage_layers=40, last_stage_layers=40, global_batch=8),
            "must equal the 96 layers",
        ),
        (TrainLayout(cp=3, global_batch=8, seq_len=2048), "cp 3"),
    ],
)
def test_invalid_layouts_name_the_constraint(layout: TrainLayout, message: str) -> None:
    with pytest.raises(InvalidLayoutError, match=message.replace("*", r"\*")):
        estimate_train(model("gpt3-175b"), system("a100-80gb"), layout)


def test_efficiency_parameters_move_the_estimate() -> None:
    m, sys_ = model("llama-2-7b"), system("a100-80gb")
    lay = TrainLayout(dp=8, global_batch=64, seq_len=2048)
    slow = estimate_train(m, sys_, lay, Efficiency(gemm_eff_max=0.4))
    fast = estimate_train(m, sys_, lay, Efficiency(gemm_eff_max=0.9))
    assert slow.step_time_s > 1.5 * fast.step_time_s


def test_grad_reduce_dtype_and_cpu_collectives_that_cannot_hide() -> None:
    from suanli.catalog import get_accelerator, get_model
    from suanli.perf import TrainLayout, estimate_train, make_system

    gpu = make_system(get_accelerator("a100-80gb"))
    lay = TrainLayout(dp=8, micro_batch=1, global_batch=8, seq_len=2048)
    bf16 = estimate_train(get_model("llama-2-7b"), gpu, lay)
    fp32 = estimate_train(
        get_model("llama-2-7b"), gpu, dataclasses.replace(lay, grad_reduce_dtype="fp32")
    )
    assert fp32.breakdown_s["dp_comm_total"] > 1.9 * bf16.breakdown_s["dp_comm_total"]
    assert bf16.breakdown_s["dp_comm_exposed"] < bf16.breakdown_s["dp_comm_total"]  # overlapped
    cpu = make_system(get_accelerator("xeon-8480"))
    on_cpu = estimate_train(get_model("tiny-llama-40m"), cpu, lay)
    assert on_cpu.breakdown_s["dp_comm_exposed"] == on_cpu.breakdown_s["dp_comm_total"] > 0


def test_measured_cpu_costs_enter_the_step_where_a_profile_has_them() -> None:
    """A measured device may carry a cross-entropy rate and a per-layer fixed cost; a
    layout may say its weights are autocast. Each adds exactly its term."""
    from suanli.perf import make_system
    from suanli.perf.memory import stage_params
    from suanli.perf.shape import shape_of
    from suanli.perf.train import (
        AUTOCAST_BYTES_PER_PARAM,
        LOSS_BYTES_PER_LOGIT,
        LOSS_CAST_BYTES_PER_LOGIT,
    )

    tiny = model("tiny-llama-40m")
    acc = system("a100-80gb").accelerator
    lay = TrainLayout(micro_batch=4, global_batch=4, seq_len=256)
    e = Efficiency()
    bw = acc.memory_bandwidth_gbs * 1e9 * e.mem_bw_eff
    logits = 4 * 256 * tiny.vocab
    plain = estimate_train(tiny, make_system(acc), lay, e)
    assert plain.breakdown_s["loss"] == pytest.approx(logits * LOSS_BYTES_PER_LOGIT / bw)
    assert plain.breakdown_s["weight_casts"] == 0
    slow = dataclasses.replace(acc, loss_logits_per_s=2e8, layer_overhead_us=500.0)
    est = estimate_train(tiny, make_system(slow), lay, e)
    assert est.breakdown_s["loss"] == pytest.approx(
        logits / 2e8 + logits * LOSS_CAST_BYTES_PER_LOGIT / bw
    )
    # the measured fixed cost is an eager engine's: it stands for a CPU, not a GPU's stack
    fixed = e.layer_overhead_us * 1e-6
    assert est.breakdown_s["layer_overhead"] == pytest.approx(tiny.layers * fixed * 3)
    on_cpu = estimate_train(tiny, make_system(dataclasses.replace(slow, kind="cpu")), lay, e)
    assert on_cpu.breakdown_s["layer_overhead"] == pytest.approx(tiny.layers * 500e-6 * 3)
    # the loss runs once, with the head, not in every layer (the hetero planner splits on it)
    assert est.extra["layer_s"] == pytest.approx(plain.extra["layer_s"])
    assert est.extra["head_s"] - plain.extra["head_s"] == pytest.approx(
        est.breakdown_s["loss"] - plain.breakdown_s["loss"]
    )
    cast = estimate_train(
        tiny, make_system(acc), dataclasses.replace(lay, autocast_weights=True), e
    )
    dense, experts = stage_params(shape_of(tiny), lay)
    embed = shape_of(tiny).embedding_params  # looked up, not multiplied: never cast
    assert cast.breakdown_s["weight_casts"] == pytest.approx(
        (dense + experts - embed) * AUTOCAST_BYTES_PER_PARAM / bw
    )
    assert cast.step_time_s == pytest.approx(plain.step_time_s + cast.breakdown_s["weight_casts"])


def test_decode_gemm_rate_by_inner_size_interpolates_in_log_k() -> None:
    acc = dataclasses.replace(
        system("a100-80gb").accelerator, gemv_bandwidth_by_k={"bf16": {512: 10.0, 4096: 40.0}}
    )
    assert acc.gemv_rate_gbs(256) == 10.0 and acc.gemv_rate_gbs(8192) == 40.0  # clamped
    assert acc.gemv_rate_gbs(1448) == pytest.approx(25.0, rel=1e-3)  # halfway in log K
    assert acc.gemv_rate_gbs(512, "int8") is None  # not measured for int8
    assert dataclasses.replace(acc, gemv_bandwidth_by_k=None).gemv_rate_gbs(512) is None


def test_measured_gemm_and_attention_rates_replace_the_data_sheet_model() -> None:
    """A measured device's GEMMs run at the measured rate of the square of the same
    volume; its fused attention at the rate measured at that sequence length."""
    from suanli.catalog.types import log_interp
    from suanli.perf import make_system
    from suanli.perf.train import gemm_time

    e = Efficiency()
    curve = {256: 0.5, 2048: 2.0}  # TFLOP/s, linear in log size between the points
    flops = 2 * 512**3
    assert gemm_time(flops, 512, 512, 512, 1e15, 1e12, e, curve) == pytest.approx(flops / 1e12)
    assert gemm_time(flops, 64, 64, 64, 1e15, 1e12, e, curve) == pytest.approx(flops / 0.5e12)
    tiny = model("tiny-llama-40m")
    acc = system("a100-80gb").accelerator
    lay = TrainLayout(micro_batch=4, global_batch=4, seq_len=256)
    measured = dataclasses.replace(
        acc, gemm_tflops_by_size={"bf16": curve}, attention_train_tflops={256: 0.1, 1024: 0.3}
    )
    est = estimate_train(tiny, make_system(measured), lay, e)
    core = 2 * 1024 * 256 * tiny.heads * 2 * tiny.head_dim  # QK^T and AV, full square
    assert est.breakdown_s["attention"] == pytest.approx(tiny.layers * 3.5 * 0.5 * core / 0.1e12)
    plain = estimate_train(tiny, make_system(acc), lay, e)
    assert est.breakdown_s["gemm"] > 50 * plain.breakdown_s["gemm"]  # 2 TF, not an A100's 300
    # the output projection at its own measured rate (by hidden size), not the square's
    head = dataclasses.replace(measured, lm_head_tflops={512: 0.5, 2048: 1.0})
    with_head = estimate_train(tiny, make_system(head), lay, e)
    head_flops = 3 * 2 * 1024 * tiny.hidden * tiny.vocab
    assert with_head.extra["head_s"] - est.extra["head_s"] == pytest.approx(
        head_flops / 0.5e12
        - head_flops / (log_interp(curve, (1024 * 512 * 32000) ** (1 / 3)) * 1e12)
    )


def test_a_measured_eager_elementwise_rate_replaces_bandwidth_and_holds_the_dispatch() -> None:
    """Where a profile measured how fast eager PyTorch runs a layer's elementwise work (in
    perf's count of bytes), those bytes and autocast's casts go at that rate, and the
    per-layer fixed cost is not added again (the measurement holds each dispatch)."""
    from suanli.perf import make_system

    tiny = model("tiny-llama-40m")
    acc = system("a100-80gb").accelerator
    lay = TrainLayout(micro_batch=4, global_batch=4, seq_len=256, autocast_weights=True)
    e = Efficiency()
    plain = estimate_train(tiny, make_system(acc), lay, e)
    eager = estimate_train(
        tiny, make_system(dataclasses.replace(acc, train_elementwise_gbs=5.0)), lay, e
    )
    bw = acc.memory_bandwidth_gbs * 1e9 * e.mem_bw_eff
    assert eager.breakdown_s["elementwise"] == pytest.approx(
        plain.breakdown_s["elementwise"] * bw / 5e9
    )
    # the layers' small casts at the eager rate, the output projection's one at the memory's
    from suanli.perf.memory import stage_params
    from suanli.perf.shape import shape_of
    from suanli.perf.train import AUTOCAST_BYTES_PER_PARAM

    s = shape_of(tiny)
    layers = sum(stage_params(s, lay)) - s.embedding_params - s.head_params
    assert eager.breakdown_s["weight_casts"] == pytest.approx(
        AUTOCAST_BYTES_PER_PARAM * (layers / 5e9 + s.head_params / bw)
    )
    assert plain.breakdown_s["layer_overhead"] > 0 and eager.breakdown_s["layer_overhead"] == 0
    assert eager.breakdown_s["loss"] == pytest.approx(plain.breakdown_s["loss"])  # not the loss
