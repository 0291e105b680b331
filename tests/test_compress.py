"""Compression as workloads: structured pruning and distillation in estimates and plans."""

from __future__ import annotations

import dataclasses
import json

import pytest

from suanli.errors import InvalidCompressionError, InvalidLayoutError
from suanli.perf import TrainLayout, estimate_serve, estimate_train
from suanli.perf.compress import distill, prune
from suanli.perf.shape import shape_of
from tests.conftest import model, system
from tests.test_cli import run


def test_width_pruning_drops_channels_and_query_heads_within_kv_groups() -> None:
    base = model("llama-3.1-8b")
    half = prune(base, 0.5)
    assert (half.ffn, half.heads, half.kv_heads) == (7168, 16, 8)
    assert half.hidden == base.hidden and half.layers == base.layers
    assert half.name == "llama-3.1-8b-pruned-width50" and "pruned" in half.sources
    p_base, p_half = shape_of(base).total_params, shape_of(half).total_params
    assert 0.5 < p_half / p_base < 0.65  # embeddings and K/V stay
    odd = prune(base, 0.3)
    assert odd.ffn % 64 == 0 and odd.heads % odd.kv_heads == 0
    mha = prune(model("gpt3-175b"), 0.5)  # multi-head: K/V heads go with their queries
    assert mha.heads == mha.kv_heads == 48


def test_depth_pruning_keeps_the_share_of_dense_layers() -> None:
    v3 = prune(model("deepseek-v3"), 0.25, "depth")
    assert v3.layers == 46
    assert v3.moe is not None and v3.moe.first_dense_layers == 2
    assert shape_of(v3).total_params < shape_of(model("deepseek-v3")).total_params


@pytest.mark.parametrize(("ratio", "axis"), [(0.0, "width"), (1.0, "depth"), (0.5, "heads")])
def test_bad_pruning_is_refused(ratio: float, axis: str) -> None:
    with pytest.raises(InvalidCompressionError):
        prune(model("llama-3.1-8b"), ratio, axis)  # type: ignore[arg-type]


def test_a_pruned_model_trains_and_serves_faster() -> None:
    sys_ = system("h100-sxm")
    lay = TrainLayout(dp=8, zero=1, global_batch=64, seq_len=4096)
    base, half = model("llama-3.1-8b"), prune(model("llama-3.1-8b"), 0.5)
    assert estimate_train(half, sys_, lay).step_time_s < estimate_train(base, sys_, lay).step_time_s

    def tpot(m: object) -> float:
        est = estimate_serve(m, sys_, num_devices=1, tp=1, batch=32, input_len=1024, output_len=256)  # type: ignore[arg-type]
        return est.tpot_s

    assert tpot(half) < tpot(base)


def test_distillation_adds_the_teachers_forward_and_its_weights() -> None:
    sys_ = system("h100-sxm")
    lay = TrainLayout(tp=2, dp=4, zero=1, global_batch=64, seq_len=4096, sequence_parallel=True)
    student = estimate_train(model("llama-3.1-8b"), sys_, lay)
    # self-distillation: the teacher's forward is about a third of the student's step
    same = distill(student, lay, model("llama-3.1-8b"), sys_)
    share = same.breakdown_s["teacher_forward"] / student.step_time_s
    assert 0.25 < share < 0.4
    assert same.step_time_s == pytest.approx(student.step_time_s * (1 + share))
    assert same.mfu < student.mfu and same.hfu > same.mfu
    assert same.memory_gb["teacher"] > 8e9 * 2 / 2 / 1e9  # 8B in bf16 over tp 2
    # a bigger teacher costs more; one that does not fit says so
    big = distill(student, lay, model("llama-3-70b"), sys_)
    assert big.step_time_s > same.step_time_s and not big.fits_in_memory
    # a pipeline stretches the teacher's forward by its fill and drain
    piped = dataclasses.replace(lay, tp=1, pp=2, sequence_parallel=False)
    st_p = estimate_train(model("llama-3.1-8b"), sys_, piped)
    fw_p = distill(st_p, piped, model("llama-3.1-8b"), sys_).breakdown_s["teacher_forward"]
    assert 0.25 < fw_p / st_p.step_time_s < 0.45


def test_a_teacher_that_cannot_take_the_layout_is_named() -> None:
    lay = TrainLayout(tp=12, dp=1, global_batch=8, seq_len=2048)
    est = estimate_train(model("gpt3-175b"), system("h100-sxm"), lay)
    with pytest.raises(InvalidLayoutError, match="teacher llama-3-70b"):
        distill(est, lay, model("llama-3-70b"), system("h100-sxm"))


def test_cli_and_planner_take_pruning_and_a_teacher() -> None:
    common = ["--model", "llama-3.1-8b", "--prune", "0.5", "--accelerator", "h100-sxm"]
    res = run(
        "estimate",
        "train",
        *common,
        "--num-devices",
        "8",
        "--global-batch",
        "64",
        "--seq-len",
        "4096",
        "--zero",
        "1",
        "--distill-from",
        "llama-3.1-8b",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["model"] == "llama-3.1-8b-pruned-width50" and out["distill_from"] == "llama-3.1-8b"
    assert out["breakdown_s"]["teacher_forward"] > 0 and out["memory_gb"]["teacher"] > 0
    assert 4 < out["params_b"] < 5
    bad = run(
        "estimate",
        "serve",
        *common[:2],
        "--prune",
        "1.5",
        "--accelerator",
        "h100-sxm",
        "--num-devices",
        "1",
        "--batch",
        "1",
        "--input-len",
        "8",
        "--output-len",
        "8",
    )
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr
    plan = run(
        "plan",
        "train",
        *common,
        "--tokens",
        "1e11",
        "--max-devices",
        "16",
        "--distill-from",
        "llama-3.1-8b",
        "--top",
        "2",
        "--json",
    )
    assert plan.returncode == 0, plan.stderr
    options = json.loads(plan.stdout)["options"]
    assert options and all(o["estimate"]["memory_gb"]["teacher"] > 0 for o in options)
    assert all(o["estimate"]["breakdown_s"]["teacher_forward"] > 0 for o in options)
