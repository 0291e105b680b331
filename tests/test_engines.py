"""Serving engines as an input of the estimate (``suanli.perf.engines``): what a profile
changes, what it refuses, which engine a chip gets by default, and that the calibration
rows take their KV precision and GQA reuse from their engine's profile."""

from __future__ import annotations

import json

import pytest

from suanli.catalog.loader import get_accelerator
from suanli.perf import estimate_serve
from suanli.perf.engines import (
    Decoding,
    EngineError,
    decoding_of,
    engines,
    for_estimate,
    get_engine,
)
from suanli.plan.pool import pool_from_accelerators
from suanli.plan.serve import ServeRequest, plan_serve
from tests.conftest import model, system
from tests.helpers import suanli

RUN = {"num_devices": 4, "tp": 4, "batch": 64, "input_len": 2048, "output_len": 2048}


def test_a_version_picks_the_profile_in_force_then() -> None:
    old, new = get_engine("tensorrt-llm@0.5"), get_engine("tensorrt-llm")
    assert (old.profile.since, old.decoding().gqa_kv_reuse) == ("0.5", False)
    assert (new.profile.since, new.decoding().gqa_kv_reuse, new.label) == (
        "0.7",
        True,
        "tensorrt-llm",
    )
    assert get_engine("TensorRT-LLM@0.9.1").profile.since == "0.7"
    for text, since in (("vllm@0.5.0rc1", "0.5"), ("vllm@v0.4.2", "0.2"), (" vllm @ 0.6 ", "0.5"),
                        ("vllm@0.5.post1", "0.5")):  # fmt: skip
        assert get_engine(text).profile.since == since, text
    for bad, said in (
        ("vllm@", "a version after @"),
        ("nope", "unknown engine 'nope'; known: gpt-fast"),
        ("tensorrt-llm@0.4", "first profile of tensorrt-llm is from 0.5"),
        ("vllm@latest", "give numbers separated by dots"),
    ):
        with pytest.raises(EngineError, match=said):
            get_engine(bad)
    for entry in engines().values():  # every profile says where it comes from
        assert all(len(p.source) > 40 for p in entry.versions), entry.name


def test_gqa_reuse_is_what_separates_trt_llm_0_5_from_0_7() -> None:
    h100 = system("h100-sxm")
    gqa, mha = model("llama-3.1-70b"), model("llama-2-7b")  # 64/8 heads; 32/32
    trt05, trt = get_engine("tensorrt-llm@0.5"), get_engine("tensorrt-llm")
    before = estimate_serve(gqa, h100, weight_dtype="fp8", engine=trt05, **RUN)
    after = estimate_serve(gqa, h100, weight_dtype="fp8", engine=trt, **RUN)
    assert before.kv_cache_gb == after.kv_cache_gb  # the same FP8 cache, read 8x as often
    assert before.decode_breakdown_s["attention"] == pytest.approx(
        8 * after.decode_breakdown_s["attention"], rel=0.05
    )
    assert before.output_tokens_per_s < 0.6 * after.output_tokens_per_s
    assert (before.engine, after.engine) == ("tensorrt-llm@0.5", "tensorrt-llm")
    one = {**RUN, "num_devices": 1, "tp": 1, "input_len": 128, "output_len": 128}
    a = estimate_serve(mha, h100, weight_dtype="fp8", engine=trt05, **one)
    b = estimate_serve(mha, h100, weight_dtype="fp8", engine=trt, **one)
    assert a.tpot_s == pytest.approx(b.tpot_s)  # no groups: nothing to reuse


def test_what_an_engine_cannot_run_is_refused_with_what_it_can() -> None:
    llama, h100 = model("llama-3.1-8b"), system("h100-sxm")
    one = {**RUN, "num_devices": 1, "tp": 1}
    with pytest.raises(
        EngineError, match=r"gpt-fast has no fp8 weight kernels \(it has bf16, int8, int4\)"
    ):
        estimate_serve(llama, h100, weight_dtype="fp8", engine=get_engine("gpt-fast"), **one)
    with pytest.raises(EngineError, match="vllm keeps no int8 KV cache"):
        estimate_serve(llama, h100, weight_dtype="int8", kv_dtype="int8",
                       engine=get_engine("vllm"), **one)  # fmt: skip
    with pytest.raises(EngineError, match="runs on nvidia, amd chips, not ascend-910b"):
        estimate_serve(llama, system("ascend-910b"), engine=get_engine("vllm"), **one)
    # gpt-fast keeps its KV cache in bf16 whatever the weights
    est = estimate_serve(llama, h100, weight_dtype="int8", engine=get_engine("gpt-fast"), **one)
    assert est.memory_gb["kv_cache"] == pytest.approx(
        estimate_serve(llama, h100, weight_dtype="bf16", **one).memory_gb["kv_cache"]
    )


def test_each_chip_gets_its_users_engine_or_says_it_has_none() -> None:
    eng, said = for_estimate(None, get_accelerator("h100-sxm"), "bf16", None)
    assert eng is not None and eng.label == "vllm" and "default for nvidia" in said[0]
    eng, _ = for_estimate(None, get_accelerator("ascend-910b"), "bf16", None)
    assert eng is not None and eng.label == "vllm-ascend"
    eng, said = for_estimate(None, get_accelerator("mlu590"), "bf16", None)
    assert eng is None and "idealised" in said[0]
    eng, said = for_estimate(None, get_accelerator("xeon-8480"), "bf16", None)
    assert eng is not None and eng.label == "openvino"
    eng, said = for_estimate(None, get_accelerator("h100-sxm"), "fp32", None)
    assert eng is None and "vllm has no fp32 weight kernels" in said[0]
    # the default engines change no number the idealised engine gave, but for what their
    # profiles state (vLLM: a captured graph, the host scheduling each step)
    llama = model("llama-3.1-8b")
    one = {**RUN, "num_devices": 1, "tp": 1}
    for chip, wd in (("h100-sxm", "fp8"), ("mi300x", "bf16"), ("ascend-910b", "int8"),
                     ("xeon-8480", "bf16"), ("a100-80gb", "int4")):  # fmt: skip
        acc = get_accelerator(chip)
        eng, _ = for_estimate(None, acc, wd, None)
        with_engine = estimate_serve(llama, system(chip), weight_dtype=wd, engine=eng, **one)
        without = estimate_serve(llama, system(chip), weight_dtype=wd, **one)
        stated = estimate_serve(
            llama,
            system(chip),
            weight_dtype=wd,
            decoding=decoding_of(eng),
            **one,
        )
        assert with_engine.output_tokens_per_s == pytest.approx(stated.output_tokens_per_s)
        hosted = decoding_of(eng).host_scheduling
        assert (with_engine.tpot_s > without.tpot_s) == hosted, chip
        assert with_engine.kv_dtype == without.kv_dtype, chip
    one = {**RUN, "num_devices": 1, "tp": 1}
    ascend = system("ascend-910b")
    est = estimate_serve(model("llama-3.1-8b"), ascend, engine=get_engine("vllm-ascend"), **one)
    assert any("no source states whether its decode reads a KV head" in n for n in est.notes)
    assert any("no published throughput of vllm-ascend on ascend-910b" in n for n in est.notes)


def test_the_planner_keeps_kv_as_the_estimate_does_where_the_engine_states_none() -> None:
    from suanli.plan.serve import _formats

    ascend = pool_from_accelerators(["ascend-910b"], 8)[0]
    formats = _formats(ascend, get_engine("vllm-ascend"))  # KV precisions not stated
    assert ("int4", "int8") not in formats and ("int8", "bf16") in formats
    assert all(kv == get_engine("vllm-ascend").default_kv(w) for w, kv in formats)


def test_the_planner_weighs_only_what_the_engine_runs() -> None:
    req = ServeRequest(
        model=model("llama-3.1-70b"),
        rate=5,
        input_len=2048,
        output_len=512,
        pool=pool_from_accelerators(["h100-sxm", "ascend-910b"], 64),
        tpot_slo_s=0.1,
        top=20,
    )
    ideal = plan_serve(req)
    gpt_fast = plan_serve(ServeRequest(**{**req.__dict__, "engine": get_engine("gpt-fast")}))
    assert any(o["weight_dtype"] == "fp8" for o in ideal.options)
    assert gpt_fast.options and all(
        o["weight_dtype"] in ("bf16", "int8", "int4") and o["kv_dtype"] == "bf16"
        for o in gpt_fast.options
    )
    assert all("ascend" not in o["pool"] for o in gpt_fast.options)
    assert gpt_fast.rejected["engine: gpt-fast does not run on huawei chips"] == 1


def test_calibration_rows_take_kv_and_gqa_from_their_engine(shared_dir: object) -> None:
    from suanli.calibration.published import load_inference_cases, shared_calibration_dir

    directory = shared_calibration_dir()
    assert directory is not None
    cases = load_inference_cases(directory)
    assert {c.engine for c in cases} == {"tensorrt-llm@0.5", "gpt-fast"}
    for c in cases:
        eng = get_engine(c.engine)
        assert c.decoding == eng.decoding() and not c.decoding.gqa_kv_reuse
        assert c.kv_dtype == (
            "fp8" if c.engine.startswith("tensorrt") and c.weight_dtype == "fp8" else "bf16"
        )
        assert c.system.accelerator.name in eng.profile.published


def test_the_command_line_names_the_engine() -> None:
    args = ["estimate", "serve", "--model", "llama-3.1-70b", "--accelerator", "h100-sxm",
            "--num-devices", "4", "--tp", "4", "--batch", "64", "--input-len", "2048",
            "--output-len", "2048", "--weight-dtype", "fp8"]  # fmt: skip
    old = json.loads(suanli(*args, "--engine", "tensorrt-llm@0.5", "--json").stdout)
    new = json.loads(suanli(*args, "--json").stdout)
    assert old["engine"] == "tensorrt-llm@0.5" and new["engine"] == "vllm"
    assert old["output_tokens_per_s"] < 0.6 * new["output_tokens_per_s"]
    assert any("default for nvidia" in n for n in new["notes"])
    assert not any("MAMF" in n for n in new["notes"])  # the H100's rate is published
    l40s = [a if a != "h100-sxm" else "l40s" for a in args]
    said = json.loads(suanli(*l40s, "--json").stdout)["notes"]
    assert any("l40s: no published achievable GEMM rate" in n for n in said)
    bad = suanli(*args, "--engine", "gpt-fast")
    assert bad.returncode == 2 and "gpt-fast has no fp8 weight kernels" in bad.stderr
    listed = json.loads(suanli("catalog", "list", "engines", "--json").stdout)
    assert {e["name"] for e in listed} == set(engines())
    assert all(v["source"] for e in listed for v in e["versions"])


def test_the_serving_simulator_runs_replicas_as_the_engine_does() -> None:
    from suanli.autoscale.kinds import make_kinds
    from suanli.errors import UsageError
    from suanli.perf import make_system
    from suanli.plan.pool import PoolEntry

    # an Ascend chip at a price (the catalog has none for it), beside an H100
    ascend = PoolEntry("ascend-910b", make_system(get_accelerator("ascend-910b"),
                                                  price_usd_per_hour=2.0), 1)  # fmt: skip
    pool = [*pool_from_accelerators(["h100-sxm"], 1), ascend]
    usual = make_kinds("llama-3.1-8b", pool)  # none named: each chip's usual engine
    old = make_kinds("llama-3.1-8b", pool, engine=get_engine("tensorrt-llm@0.5"))
    assert set(usual) == {"h100-sxm", "ascend-910b"} and set(old) == {"h100-sxm"}
    ctx = 32 * 4096.0  # 32 sequences of 4k tokens: decode is bound by reading the KV cache
    assert old["h100-sxm"].steps.decode_s(32, ctx) > 2 * usual["h100-sxm"].steps.decode_s(32, ctx)
    for chip, name in (("h100-sxm", "vllm"), ("ascend-910b", "vllm-ascend")):
        named = make_kinds("llama-3.1-8b", pool, engine=get_engine(name))[chip].steps
        assert usual[chip].steps.decode_s(32, ctx) == named.decode_s(32, ctx)
    # ... which is not the idealised engine's: vLLM's host schedules every step
    from suanli.perf.batching import StepTime

    ideal = StepTime(model("llama-3.1-8b"), pool[0].system, tp=1)
    assert usual["h100-sxm"].steps.decode_s(32, ctx) > ideal.decode_s(32, ctx)
    with pytest.raises(UsageError, match="--engine vllm runs none of ascend-910b"):
        make_kinds("llama-3.1-8b", [ascend], engine=get_engine("vllm"))


def test_int8_weights_keep_the_kv_cache_in_the_precision_the_device_computes_in() -> None:
    """Beside integer weights the cache is kept in the activations' precision: bf16 on a
    chip that computes in it, fp32 on a device measured to compute in fp32 (a CPU without
    bf16 instructions, where serve_lm's cache is fp32), twice the bytes to read."""
    import dataclasses

    from suanli.perf import make_system
    from suanli.perf.engines import kv_follows

    chip = get_accelerator("a100-80gb")
    fp32_device = dataclasses.replace(chip, compute_dtype="fp32")
    assert kv_follows("int8", chip) == kv_follows("int4", chip) == "bf16"
    assert kv_follows("int8", fp32_device) == "fp32"
    assert kv_follows("fp8", fp32_device) == "fp8"  # float weights: their own
    run = dict(num_devices=1, tp=1, batch=8, input_len=512, output_len=512, weight_dtype="int8")
    est = {
        acc.compute_dtype: estimate_serve(model("llama-3-8b"), make_system(acc), **run)  # type: ignore[arg-type]
        for acc in (chip, fp32_device)
    }
    assert est[None].kv_dtype == "bf16" and est["fp32"].kv_dtype == "fp32"
    assert est["fp32"].kv_cache_gb == pytest.approx(2 * est[None].kv_cache_gb)
    # and the engine's default follows it: serve_lm keeps fp32 KV there
    assert get_engine("serve_lm").default_kv("int8", fp32_device) == "fp32"
    assert get_engine("serve_lm").default_kv("int8", chip) == "bf16"


def test_a_captured_decode_step_launches_no_all_reduce_from_the_host() -> None:
    """gpt-fast replays decode as a CUDA graph: its tensor-parallel all-reduces cost no
    host launch each (`Efficiency.tp_launch_us`), as LMDeploy's do; on one device there
    is none to launch, and the two predict alike."""
    from suanli.perf import default_efficiency
    from suanli.perf.serve import decode_parts

    assert get_engine("gpt-fast").decoding().graph_capture
    assert not get_engine("lmdeploy").decoding().graph_capture
    assert not get_engine("tensorrt-llm@0.5").decoding().graph_capture  # not stated
    a100, llama = system("a100-80gb"), model("llama-2-70b")
    run = dict(batch=1, context=200.0, weight_dtype="bf16")
    e = default_efficiency()
    for tp in (1, 4):
        eager = decode_parts(llama, a100, tp=tp, decoding=Decoding(), **run)  # type: ignore[arg-type]
        graph = decode_parts(llama, a100, tp=tp, decoding=Decoding(graph_capture=True), **run)  # type: ignore[arg-type]
        launches = 0 if tp == 1 else 2 * llama.layers
        assert eager["tp_comm"] - graph["tp_comm"] == pytest.approx(
            launches * e.tp_launch_us * 1e-6
        )
    # and an estimate through the engine takes its capture from the engine's profile
    one = {**RUN, "num_devices": 4, "tp": 4, "batch": 1, "weight_dtype": "bf16"}
    via = estimate_serve(llama, a100, engine=get_engine("gpt-fast"), **one)  # type: ignore[arg-type]
    gpt_fast = Decoding(
        False, graph_capture=True, custom_all_reduce=True, head_split=False, head_quantized=True
    )
    direct = estimate_serve(llama, a100, decoding=gpt_fast, **one)  # type: ignore[arg-type]
    assert via.tpot_s == pytest.approx(direct.tpot_s)


def test_an_engine_that_schedules_each_step_on_the_host_waits_for_it_every_step() -> None:
    """vLLM's engine schedules every decode step on the host while the GPU waits
    (`Efficiency.sched_step_us`, engines.yaml host_scheduling); an engine that states
    no such thing pays none, at any batch."""
    from suanli.perf import default_efficiency
    from suanli.perf.serve import decode_parts

    assert get_engine("vllm").decoding().host_scheduling
    assert get_engine("vllm@0.2").decoding().host_scheduling
    assert not get_engine("gpt-fast").decoding().host_scheduling
    h100, llama = system("h100-sxm"), model("llama-3-8b")
    e = default_efficiency()
    for batch in (1, 64):
        run = dict(tp=1, batch=batch, context=512.0, weight_dtype="bf16")
        plain = decode_parts(llama, h100, **run)  # type: ignore[arg-type]
        hosted = decode_parts(llama, h100, decoding=Decoding(host_scheduling=True), **run)  # type: ignore[arg-type]
        assert hosted["step_overhead"] - plain["step_overhead"] == pytest.approx(
            e.sched_step_us * 1e-6
        )
    one = {**RUN, "num_devices": 1, "tp": 1}
    via = estimate_serve(llama, h100, engine=get_engine("vllm"), **one)  # type: ignore[arg-type]
    direct = estimate_serve(llama, h100, decoding=Decoding(True, True, True), **one)  # type: ignore[arg-type]
    assert via.tpot_s == pytest.approx(direct.tpot_s)


def test_an_engine_with_its_own_all_reduce_pays_one_fixed_cost_inside_an_nvlink_node() -> None:
    """gpt-fast (PyTorch's IntraNodeComm), vLLM and SGLang reduce a small tensor-parallel
    message with a peer-to-peer kernel: one fixed cost (`Efficiency.peer_ar_us`) where
    NCCL's tree takes steps, plus a ring's bytes; where NCCL is quicker (large messages)
    or no NVLink joins the ranks, the engine's all-reduce is NCCL's."""
    from suanli.perf import collectives as coll
    from suanli.perf import default_efficiency
    from suanli.perf.serve import decode_parts

    assert get_engine("gpt-fast").decoding().custom_all_reduce
    assert get_engine("vllm").decoding().custom_all_reduce
    assert not get_engine("tensorrt-llm@0.5").decoding().custom_all_reduce  # NCCL, stated
    assert not get_engine("lmdeploy").decoding().custom_all_reduce  # not stated: NCCL's
    # a fixed cost below NCCL's eight-rank tree, whatever the shipped fit says
    e = default_efficiency().with_values(peer_ar_us=1.0, intra_latency_scale=1.0)
    llama, own, a100 = model("llama-2-7b"), Decoding(custom_all_reduce=True), system("a100-80gb")
    run = dict(batch=1, context=200.0, weight_dtype="bf16", eff=e)
    nccl8 = decode_parts(llama, a100, tp=8, **run)  # type: ignore[arg-type]
    peer8 = decode_parts(llama, a100, tp=8, decoding=own, **run)  # type: ignore[arg-type]
    message = 1 * llama.hidden * 2  # one token's activations, bf16
    ar = coll.peer_all_reduce_s(message, 8, a100, e) + e.tp_launch_us * 1e-6
    assert peer8["tp_comm"] == pytest.approx(2 * llama.layers * ar)
    assert peer8["tp_comm"] < nccl8["tp_comm"]
    one = decode_parts(llama, a100, tp=1, decoding=own, **run)  # type: ignore[arg-type]
    assert one["tp_comm"] == 0.0
    # a fixed cost above NCCL's: the engine's all-reduce is NCCL's
    slow = {**run, "eff": e.with_values(peer_ar_us=90.0)}
    assert decode_parts(llama, a100, tp=8, decoding=own, **slow)["tp_comm"] == pytest.approx(  # type: ignore[arg-type]
        decode_parts(llama, a100, tp=8, **slow)["tp_comm"]  # type: ignore[arg-type]
    )
    # no NVLink between the ranks (L40S over PCIe): NCCL's all-reduce whatever the engine
    l40s = system("l40s")
    run = dict(batch=8, context=200.0, weight_dtype="fp8", eff=e)
    assert decode_parts(llama, l40s, tp=2, decoding=own, **run)["tp_comm"] == pytest.approx(  # type: ignore[arg-type]
        decode_parts(llama, l40s, tp=2, **run)["tp_comm"]  # type: ignore[arg-type]
    )


def test_gpt_fast_reads_its_whole_output_projection_on_every_rank() -> None:
    """gpt-fast's tp.py shards attention and feed-forward only, and its quantize.py turns
    every nn.Linear to int8, the output projection with them: at TP 8 each rank streams
    the whole int8 head, where a split 16-bit head streams an eighth of twice the bytes."""
    from suanli.perf import default_efficiency
    from suanli.perf.serve import decode_parts

    fast = get_engine("gpt-fast").decoding()
    assert not fast.head_split and fast.head_quantized
    assert get_engine("vllm").decoding().head_split  # ParallelLMHead
    e, llama, a100 = default_efficiency(), model("llama-2-7b"), system("a100-80gb")
    run = dict(tp=8, batch=1, context=200.0, eff=e)
    split = decode_parts(llama, a100, weight_dtype="bf16", **run)  # type: ignore[arg-type]
    whole = decode_parts(llama, a100, weight_dtype="bf16", decoding=fast, **run)  # type: ignore[arg-type]
    assert whole["lm_head"] == pytest.approx(8 * split["lm_head"])  # bf16: one rank reads all
    q_split = decode_parts(llama, a100, weight_dtype="int8", **run)  # type: ignore[arg-type]
    q_whole = decode_parts(llama, a100, weight_dtype="int8", decoding=fast, **run)  # type: ignore[arg-type]
    # int8 streams at the quantized rate: less than the 16-bit head on one rank, more than
    # the split 16-bit one
    assert q_split["lm_head"] == pytest.approx(split["lm_head"])
    assert split["lm_head"] < q_whole["lm_head"] < whole["lm_head"]
    # the layers are what they were: only the head changed
    assert whole["weights_gemm"] == pytest.approx(split["weights_gemm"])
    # and every rank holds the whole embedding (bf16) and the whole int8 head besides an
    # eighth of the layers
    from suanli.perf.serve import weight_bytes_per_device
    from suanli.perf.shape import shape_of

    s = shape_of(llama)
    held = weight_bytes_per_device(s, 8, "int8", fast) - weight_bytes_per_device(s, 8, "int8")
    int8 = 1 + 2 / 128  # a byte a weight and its per-channel scale (QUANT_SCALE_BYTES_PER_WEIGHT)
    assert held == pytest.approx(s.embedding_params * 2 * 7 / 8 + s.head_params * (int8 - 2 / 8))
    one = {"num_devices": 8, "tp": 8, "batch": 1, "input_len": 5, "output_len": 200}
    via = estimate_serve(llama, a100, engine=get_engine("gpt-fast"), **one, weight_dtype="int8")  # type: ignore[arg-type]
    ideal = estimate_serve(llama, a100, **one, weight_dtype="int8")  # type: ignore[arg-type]
    assert via.memory_gb["weights"] - ideal.memory_gb["weights"] == pytest.approx(held / 1e9)


def test_an_estimate_says_when_no_source_states_the_graph_capture_or_all_reduce() -> None:
    """TensorRT-LLM's newest profile says neither whether decode is a captured graph nor
    whether its all-reduce is its own kernel: at TP > 1 the estimate says it costs each
    all-reduce's launch and NCCL's all-reduce; on one device nothing is said."""
    llama = model("llama-2-70b")
    h100 = system("h100-sxm")
    for tp, said in ((4, True), (1, False)):
        run = {**RUN, "num_devices": tp, "tp": tp, "weight_dtype": "fp8"}
        if tp == 1:
            run["batch"] = 1
        est = estimate_serve(llama, h100, engine=get_engine("tensorrt-llm"), **run)  # type: ignore[arg-type]
        assert any("captured graph" in n for n in est.notes) == said, est.notes
        assert any("NCCL's all-reduce" in n for n in est.notes) == said, est.notes
    fast = estimate_serve(
        llama, h100, engine=get_engine("gpt-fast"), **{**RUN, "weight_dtype": "bf16"}
    )  # type: ignore[arg-type]
    assert not any("captured graph" in n or "NCCL's" in n for n in fast.notes)


def test_a_prefill_runs_as_its_engine_does_outside_the_captured_graph() -> None:
    """A prompt's pass goes through the same engine as its decode: gpt-fast's prefill
    reads the whole output projection on every rank and reduces with its own
    peer-to-peer kernel, vLLM's waits for the host's scheduling of the step; but no
    engine replays its prefill as a captured graph (gpt-fast compiles it with dynamic
    shapes, without reduce-overhead), so its all-reduces are launched one by one."""
    from suanli.perf import default_efficiency
    from suanli.perf.serve import prefill_parts

    fast = get_engine("gpt-fast").decoding()
    assert fast.graph_capture and not fast.prefill().graph_capture
    assert fast.prefill().custom_all_reduce and not fast.prefill().head_split
    e = default_efficiency().with_values(peer_ar_us=1.0, intra_latency_scale=1.0)
    llama, a100 = model("llama-2-7b"), system("a100-80gb")
    run = dict(tp=8, batch=1, input_len=16, weight_dtype="bf16", eff=e)
    ideal = prefill_parts(llama, a100, **run)  # type: ignore[arg-type]
    via = prefill_parts(llama, a100, decoding=fast, **run)  # type: ignore[arg-type]
    assert via["lm_head"] > ideal["lm_head"]  # the whole head, not an eighth
    assert via["tp_comm"] < ideal["tp_comm"]  # its own all-reduce, still launched
    launched = prefill_parts(llama, a100, decoding=Decoding(custom_all_reduce=True), **run)  # type: ignore[arg-type]
    assert via["tp_comm"] == pytest.approx(launched["tp_comm"])
    vllm = get_engine("vllm").decoding()
    h100 = system("h100-sxm")
    one = dict(tp=1, batch=1, input_len=512, weight_dtype="bf16", eff=e)
    hosted = prefill_parts(llama, h100, decoding=vllm, **one)  # type: ignore[arg-type]
    plain = prefill_parts(llama, h100, **one)  # type: ignore[arg-type]
    assert hosted["step_overhead"] - plain["step_overhead"] == pytest.approx(e.sched_step_us * 1e-6)
    # the estimate's time to first token is that prefill
    rq = {"num_devices": 8, "tp": 8, "batch": 1, "input_len": 16, "output_len": 8}
    est = estimate_serve(llama, a100, engine=get_engine("gpt-fast"), eff=e, **rq)  # type: ignore[arg-type]
    assert est.ttft_s == pytest.approx(sum(via.values()))
