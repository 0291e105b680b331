"""Training planner: known answers, infeasibility in plain words, constraints."""

from __future__ import annotations

import pytest

from suanli.perf import TrainLayout, estimate_train
from suanli.plan import TrainRequest, plan_train
from suanli.plan.pool import parse_pool, pool_from_accelerators
from suanli.plan.train import device_counts
from tests.conftest import model, system


def plan(name: str, accs: list[str], count: int, **kw: object):  # type: ignore[no-untyped-def]
    req = TrainRequest(
        model=model(name),
        tokens=kw.pop("tokens", 1e11),  # type: ignore[arg-type]
        pool=pool_from_accelerators(accs, count),
        **kw,
    )  # type: ignore[arg-type]
    return plan_train(req)


def test_a_model_that_fits_one_device_plans_data_parallel_only() -> None:
    res = plan("gpt2-small", ["a100-80gb"], 8, num_devices=8, seq_len=1024, global_batch=512)
    best = res.options[0]["layout"]
    assert (best["tp"], best["pp"], best["dp"]) == (1, 1, 8)
    # TP or PP only add traffic and bubbles for a model this small
    assert all(o["time_to_train_s"] > res.options[0]["time_to_train_s"] for o in res.options[1:])


def test_70b_on_80gb_devices_never_tp1_pp1_without_zero3() -> None:
    # 70.6B x 2 bytes of weights alone exceed 80 GB, so tp = pp = 1 must shard them (ZeRO-3).
    res = plan("llama-3-70b", ["h100-sxm"], 64, max_devices=64, seq_len=4096, top=50)
    assert res.options
    for o in res.options:
        lay = o["layout"]
        if lay["tp"] == 1 and lay["pp"] == 1:
            assert lay["zero"] == 3
        assert o["estimate"]["fits_in_memory"]


def test_gpt3_plan_is_at_least_megatrons_published_layout() -> None:
    # Narayanan et al. SC'21: GPT-3 175B on 1,536 A100s, TP 8, PP 12, DP 16, batch 1536.
    res = plan("gpt3-175b", ["a100-80gb"], 1536, num_devices=1536, global_batch=1536, seq_len=2048)
    megatron = estimate_train(
        model("gpt3-175b"),
        system("a100-80gb"),
        TrainLayout(tp=8, pp=12, dp=16, global_batch=1536, seq_len=2048, recompute="full"),
    )
    assert res.options[0]["estimate"]["tokens_per_s"] >= megatron.tokens_per_s
    # and every option it lists is one the perf model says fits
    assert all(o["estimate"]["fits_in_memory"] for o in res.options)


def test_hetero_split_puts_more_layers_on_the_faster_chip() -> None:
    pool = parse_pool("""
pools:
  - {name: fast, accelerator: h100-sxm, count: 64, usd_per_device_hour: 3}
  - {name: slow, accelerator: a100-80gb, count: 64, usd_per_device_hour: 1.5}
""")
    res = plan_train(
        TrainRequest(
            model=model("llama-3-70b"),
            tokens=1e11,
            pool=pool,
            seq_len=4096,
            global_batch=256,
            top=200,
        )
    )
    hetero = [o for o in res.options if o.get("stages")]
    assert hetero, res.rejected
    for o in hetero:
        per = {s["accelerator"]: s["layers_per_stage"] for s in o["stages"]}
        assert per["h100-sxm"] > per["a100-80gb"]
        assert isinstance(o["beats_best_single_type"], bool)
        assert sum(s["layers"] for s in o["stages"]) == 80


def test_infeasible_names_the_binding_constraint() -> None:
    res = plan("llama-3.1-405b", ["h100-sxm"], 8, num_devices=8)
    assert not res.options
    # 405.85e9 params x 2 bytes / 78 GB usable = 10.4 -> 11 devices
    assert res.infeasible == (
        "Llama-3.1 405B in bf16 needs at least 11 h100-sxm (80 GB each) for weights alone; "
        "the pool has 8"
    )
    training = plan("llama-3.1-405b", ["h100-sxm"], 16, num_devices=16)
    assert "16 bytes per parameter" in (training.infeasible or "")


def test_deadline_and_budget_reject_with_reasons() -> None:
    res = plan("llama-2-7b", ["a100-80gb"], 64, max_devices=64, deadline_hours=0.01)
    assert not res.options and res.rejected["over the deadline"] > 0
    assert "deadline" in (res.infeasible or "")
    cheap = plan("llama-2-7b", ["a100-80gb"], 64, max_devices=64, budget_usd=10.0)
    assert not cheap.options and cheap.rejected["over the budget"] > 0


@pytest.mark.parametrize("objective", ["time", "cost", "energy"])
def test_options_are_sorted_by_the_objective(objective: str) -> None:
    res = plan(
        "llama-2-7b", ["a100-80gb", "h100-sxm"], 64, max_devices=64, objective=objective, top=10
    )
    key = {"time": "time_to_train_s", "cost": "cost_usd", "energy": "energy_j"}[objective]
    values = [o[key] for o in res.options]
    assert values == sorted(values)
    assert res.candidates_evaluated > len(res.options)


def test_device_counts_cover_small_counts_and_whole_nodes() -> None:
    assert device_counts(64, 8, None, None) == [1, 2, 4, 8, 16, 24, 32, 48, 64]
    assert device_counts(64, 8, 16, None) == [16]
    assert device_counts(8, 8, 16, None) == []  # cannot have more than the pool holds


def test_measured_corrections_reorder_the_chips() -> None:
    """A chip that finished jobs showed to run 3x slower than predicted loses its lead."""
    kw = {"num_devices": 8, "seq_len": 1024, "global_batch": 512}
    raw = plan("gpt2-small", ["h100-sxm", "a100-80gb"], 8, **kw)
    assert raw.options[0]["accelerator"] == "h100-sxm"
    fixed = plan("gpt2-small", ["h100-sxm", "a100-80gb"], 8, corrections={"h100-sxm": 3.0}, **kw)
    assert fixed.options[0]["accelerator"] == "a100-80gb"
    h100 = next(o for o in fixed.options if o["accelerator"] == "h100-sxm")
    same = next(
        o for o in raw.options if o["accelerator"] == "h100-sxm" and o["layout"] == h100["layout"]
    )
    assert h100["time_to_train_s"] == pytest.approx(3 * same["time_to_train_s"])
    assert h100["correction"] == 3.0
