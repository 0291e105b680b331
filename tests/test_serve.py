"""Inference estimates: roofline behaviour, quantization, KV cache, limits."""

from __future__ import annotations

import pytest

from suanli.errors import InvalidLayoutError
from suanli.perf import estimate_serve
from tests.conftest import model, system


def serve(name: str, acc: str, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = dict(num_devices=1, tp=1, batch=1, input_len=512, output_len=128)
    args.update(kw)
    return estimate_serve(model(name), system(acc), **args)  # type: ignore[arg-type]


def test_decode_is_memory_bound_and_h20_beats_h100_on_it() -> None:
    # hardware_sources.md caveat 2: H20 has ~15% of H100's compute but more bandwidth,
    # so decode on H20 >= H100 while prefill is several times slower.
    h100 = serve("llama-3-70b", "h100-sxm", num_devices=8, tp=8, batch=8, input_len=2048)
    h20 = serve("llama-3-70b", "h20", num_devices=8, tp=8, batch=8, input_len=2048)
    assert h20.tpot_s <= h100.tpot_s
    assert h20.ttft_s > 4 * h100.ttft_s


def test_weight_quantization_cuts_memory_and_decode_time() -> None:
    bf16 = serve("llama-2-7b", "a100-80gb")
    int8 = serve("llama-2-7b", "a100-80gb", weight_dtype="int8")
    int4 = serve("llama-2-7b", "a100-80gb", weight_dtype="int4")
    assert bf16.memory_gb["weights"] > int8.memory_gb["weights"] > int4.memory_gb["weights"]
    assert bf16.tpot_s > int8.tpot_s > int4.tpot_s
    # bf16 weights: 6.74B * 2 bytes = 13.5 GB
    assert bf16.memory_gb["weights"] == pytest.approx(13.48, abs=0.05)


def test_kv_cache_and_largest_batch() -> None:
    # Llama-2-7B bf16 KV: 524,288 bytes/token; batch 8 x (1024 + 1024) tokens = 8.6 GB
    est = serve("llama-2-7b", "a100-80gb", batch=8, input_len=1024, output_len=1024)
    assert est.kv_cache_gb == pytest.approx(8 * 2048 * 524_288 / 1e9)
    assert est.max_batch >= 8
    bigger = serve(
        "llama-2-7b", "a100-80gb", batch=est.max_batch + 1, input_len=1024, output_len=1024
    )
    assert not bigger.fits_in_memory
    fp8_kv = serve("llama-2-7b", "h100-sxm", kv_dtype="fp8", input_len=1024, output_len=1024)
    assert (
        fp8_kv.max_batch
        > serve("llama-2-7b", "h100-sxm", input_len=1024, output_len=1024).max_batch
    )


def test_tensor_parallel_cuts_decode_latency_and_replicas_add_throughput() -> None:
    tp1 = serve("llama-2-13b", "a100-80gb")
    tp4 = serve("llama-2-13b", "a100-80gb", num_devices=4, tp=4)
    assert tp4.tpot_s < tp1.tpot_s
    two = serve("llama-2-13b", "a100-80gb", num_devices=8, tp=4)
    assert two.replicas == 2
    assert two.output_tokens_per_s == pytest.approx(2 * tp4.output_tokens_per_s)


def test_mla_keeps_a_small_kv_cache() -> None:
    ds = serve(
        "deepseek-v3",
        "h200",
        num_devices=8,
        tp=8,
        weight_dtype="fp8",
        batch=16,
        input_len=4096,
        output_len=512,
    )
    # MLA latent replicated per TP rank: 70,272 bytes/token in bf16 -> fp8 halves it
    assert ds.kv_cache_gb == pytest.approx(16 * 4608 * 70_272 / 2 / 1e9)


def test_cpu_is_an_accelerator_like_any_other() -> None:
    est = serve("tiny-llama-40m", "xeon-8480")
    assert est.fits_in_memory and est.output_tokens_per_s > 0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"num_devices": 3, "tp": 2}, "not a multiple of tp"),
        ({"tp": 3, "num_devices": 3}, "does not divide"),
        ({"weight_dtype": "int2"}, "weight dtype"),
        ({"batch": 0}, "must be >= 1"),
    ],
)
def test_invalid_serving_layouts(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidLayoutError, match=message):
        serve("llama-2-7b", "a100-80gb", **kw)


def test_a_measured_engine_fixed_cost_and_gemv_rate_enter_the_decode_step() -> None:
    import dataclasses

    from suanli.perf import make_system
    from suanli.perf.serve import decode_parts

    tiny = model("tiny-llama-40m")
    acc = system("a100-80gb").accelerator
    base = decode_parts(tiny, make_system(acc), tp=1, batch=8, context=96)
    assert base["step_overhead"] == 0
    slow = dataclasses.replace(
        acc,
        layer_overhead_us=500.0,
        step_overhead_us=200.0,
        gemv_bandwidth_by_k={"bf16": {512: 10.0}, "int8": {512: 2.0}},
        decode_attention_gbs=5.0,
    )
    got = decode_parts(tiny, make_system(slow), tp=1, batch=8, context=96)
    assert got["layer_overhead"] == pytest.approx(tiny.layers * 500e-6)
    assert got["step_overhead"] == pytest.approx(200e-6)
    kv_bytes = tiny.layers * 8 * 96 * tiny.kv_heads * tiny.head_dim * 2 * 2  # K and V, bf16
    assert got["attention"] == pytest.approx(kv_bytes / 5e9)
    assert got["weights_gemm"] > 10 * base["weights_gemm"]  # 10 GB/s, not HBM's 2 TB/s
    int8 = decode_parts(tiny, make_system(slow), tp=1, batch=8, context=96, weight_dtype="int8")
    assert int8["weights_gemm"] > 2 * got["weights_gemm"]  # half the bytes at a fifth the rate
    # the output projection stays bf16 under weight quantization: the same cost either way
    head_bytes = tiny.vocab * tiny.hidden * 2
    from suanli.perf.efficiency import default_efficiency

    stored_rate = 10e9 * default_efficiency().mem_bw_eff  # profiles store measured / mem_bw_eff
    assert int8["lm_head"] == got["lm_head"] == pytest.approx(head_bytes / stored_rate)


def test_decode_attention_pays_each_sequence_and_kv_head_pair_where_measured() -> None:
    """A measured decode kernel's attention is its (sequence, KV head) pairs at their own
    cost plus the K/V bytes at the measured rate; a pair per query head where the engine
    reads K/V once per query head; nothing for pairs on a device without the figure."""
    import dataclasses

    from suanli.perf import make_system
    from suanli.perf.engines import get_engine
    from suanli.perf.serve import decode_parts

    tiny = model("tiny-llama-40m")
    acc = dataclasses.replace(system("a100-80gb").accelerator, decode_attention_gbs=5.0)
    run = dict(tp=1, batch=8, context=96)
    bytes_only = decode_parts(tiny, make_system(acc), **run)  # type: ignore[arg-type]
    kv_bytes = tiny.layers * 8 * 96 * tiny.kv_heads * tiny.head_dim * 2 * 2  # K and V, bf16
    assert bytes_only["attention"] == pytest.approx(kv_bytes / 5e9)
    paired = dataclasses.replace(acc, decode_attention_row_us=3.0)
    got = decode_parts(tiny, make_system(paired), **run)  # type: ignore[arg-type]
    pairs = tiny.layers * 8 * tiny.kv_heads
    assert got["attention"] == pytest.approx(kv_bytes / 5e9 + pairs * 3e-6)
    # an engine without GQA reuse reads (and pays for) every query head's pair
    old = get_engine("tensorrt-llm@0.5").decoding()
    assert not old.gqa_kv_reuse
    per_head = decode_parts(tiny, make_system(paired), decoding=old, **run)  # type: ignore[arg-type]
    group = tiny.heads // tiny.kv_heads
    assert per_head["attention"] == pytest.approx(group * (kv_bytes / 5e9 + pairs * 3e-6))


def test_a_step_samples_over_the_whole_vocabulary_at_the_eager_rate_where_measured() -> None:
    """The sampler casts every row's logits to fp32 and takes one pass to pick a token
    (serve_lm's `logits.float().argmax(-1)`): bytes the fixed-cost probe's 256-token
    vocabulary does not have. Eager PyTorch runs it, and a layer's elementwise work, at
    its measured elementwise rate; through an exported graph the layers' elementwise
    work is the engine's (memory speed), while serve_lm still samples in PyTorch, from
    fp32 logits (no cast)."""
    import dataclasses

    from suanli.perf import make_system
    from suanli.perf.efficiency import default_efficiency
    from suanli.perf.serve import decode_parts

    tiny = model("tiny-llama-40m")
    gpu = system("a100-80gb").accelerator
    run = dict(tp=1, batch=8, context=96)
    bw_a = gpu.memory_bandwidth_gbs * 1e9 * default_efficiency().mem_bw_eff
    base = decode_parts(tiny, make_system(gpu), **run)  # type: ignore[arg-type]
    # bf16 logits: read 2 and write 4 bytes in the cast, read 4 in the pick
    assert base["sampling"] == pytest.approx(8 * tiny.vocab * 10 / bw_a)
    assert base["sampling"] < 1e-5  # on a GPU, microseconds
    eager = dataclasses.replace(gpu, train_elementwise_gbs=8.0)
    got = decode_parts(tiny, make_system(eager), **run)  # type: ignore[arg-type]
    assert got["sampling"] == pytest.approx(8 * tiny.vocab * 10 / 8e9)
    assert got["elementwise"] == pytest.approx(base["elementwise"] * bw_a / 8e9)
    no_head = decode_parts(tiny, make_system(eager), with_head=False, **run)  # type: ignore[arg-type]
    assert no_head["sampling"] == 0  # the other side of a split samples
    # through a measured engine, fp32: the layers' elementwise work at memory speed; the
    # sampler reads fp32 logits once, in PyTorch
    engine = dataclasses.replace(eager, measured_engine="onnxruntime", compute_dtype="fp32")
    fp32 = decode_parts(tiny, make_system(engine), weight_dtype="fp32", **run)  # type: ignore[arg-type]
    assert fp32["sampling"] == pytest.approx(8 * tiny.vocab * 4 / 8e9)
    assert fp32["elementwise"] == pytest.approx(2 * base["elementwise"])  # 4-byte activations


def test_a_decode_with_int8_weights_pays_the_fixed_costs_measured_with_them() -> None:
    """A measured device's fixed costs differ by weight dtype (a CPU's int8-weight GEMM
    call costs a fifth of a bf16 one): an int8 decode takes those measured with int8
    weights, any other dtype the compute dtype's, and an int8 decode on a device measured
    without them the compute dtype's as well."""
    import dataclasses

    from suanli.perf import make_system
    from suanli.perf.serve import decode_parts

    tiny = model("tiny-llama-40m")
    acc = dataclasses.replace(
        system("a100-80gb").accelerator,
        layer_overhead_us=400.0,
        step_overhead_us=300.0,
        weight_overhead_us={"int8": {"layer": 310.0, "step": 250.0}},
    )
    run = dict(tp=1, batch=8, context=96)
    bf16 = decode_parts(tiny, make_system(acc), **run)  # type: ignore[arg-type]
    int8 = decode_parts(tiny, make_system(acc), weight_dtype="int8", **run)  # type: ignore[arg-type]
    assert bf16["layer_overhead"] == pytest.approx(tiny.layers * 400e-6)
    assert bf16["step_overhead"] == pytest.approx(300e-6)
    assert int8["layer_overhead"] == pytest.approx(tiny.layers * 310e-6)
    assert int8["step_overhead"] == pytest.approx(250e-6)
    unmeasured = dataclasses.replace(acc, weight_overhead_us=None)
    old = decode_parts(tiny, make_system(unmeasured), weight_dtype="int8", **run)  # type: ignore[arg-type]
    assert old["layer_overhead"] == bf16["layer_overhead"]
    assert old["step_overhead"] == bf16["step_overhead"]


def test_a_decode_gemm_rate_leaves_out_the_calls_own_cost() -> None:
    """The decode-GEMM probe's rate is its bytes over its time less its calls' fixed cost,
    which serve_lm's fixed costs already count; a call cost measured high on a noisy
    machine takes at most half the time."""
    from suanli.calibration.memory import streamed_gbs

    # 100 calls of 1 MB in 30 ms, 100 µs of it each call's own: 1 GB/s less the calls
    assert streamed_gbs(100e6, 0.030, 100, 100.0) == pytest.approx(100e6 / 0.020 / 1e9, abs=0.01)
    assert streamed_gbs(100e6, 0.030, 100, 0.0) == pytest.approx(100e6 / 0.030 / 1e9, abs=0.01)
    assert streamed_gbs(100e6, 0.030, 100, 1000.0) == pytest.approx(100e6 / 0.015 / 1e9, abs=0.01)
