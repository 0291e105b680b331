"""Layouts the field runs: sharded data parallelism under pipelines, uneven stages."""

from __future__ import annotations

import dataclasses
import json

import pytest

from suanli.perf import TrainLayout, estimate_train
from suanli.perf.memory import train_memory
from suanli.perf.shape import shape_of
from tests.conftest import model, system
from tests.test_cli import run

#: Llama 3.1 405B on 512 H100 as TorchTitan's 3D benchmark lays it out (TP 8, PP 8, FSDP 8)
BASE = TrainLayout(
    tp=8,
    pp=8,
    dp=8,
    zero=1,
    global_batch=256,
    seq_len=8192,
    recompute="full",
    sequence_parallel=True,
)


def test_fsdp_keeping_a_stages_parameters_costs_what_zero1_costs() -> None:
    """TorchTitan's default under a pipeline: one gather and one reduce-scatter per step,
    whole weights and gradients held through the step: ZeRO-1's bill."""
    z1 = estimate_train(model("llama-3.1-405b"), system("h100-sxm"), BASE)
    z3 = estimate_train(
        model("llama-3.1-405b"), system("h100-sxm"), dataclasses.replace(BASE, zero=3)
    )
    assert dataclasses.replace(BASE, zero=3).keeps_params_gathered
    assert z3.memory_gb == pytest.approx(z1.memory_gb)
    assert z3.step_time_s == pytest.approx(z1.step_time_s, rel=0.01)


def test_fsdp_resharding_under_a_pipeline_trades_traffic_per_micro_batch_for_memory() -> None:
    m, sys_ = model("llama-3.1-405b"), system("h100-sxm")
    keep = dataclasses.replace(BASE, zero=3)
    reshard = dataclasses.replace(keep, fsdp_reshard="always")
    assert not reshard.keeps_params_gathered
    e_keep, e_reshard = estimate_train(m, sys_, keep), estimate_train(m, sys_, reshard)
    # weights and gradients sharded over the 8 FSDP ranks between uses
    assert e_reshard.memory_gb["weights"] == pytest.approx(e_keep.memory_gb["weights"] / 8)
    assert e_reshard.memory_gb["gradients"] == pytest.approx(e_keep.memory_gb["gradients"] / 8)
    assert e_reshard.step_time_s > e_keep.step_time_s
    # its traffic grows with the micro-batches; kept parameters are gathered once a step
    twice = dataclasses.replace(reshard, global_batch=512)
    e_twice = estimate_train(m, sys_, twice)
    ratio = e_twice.breakdown_s["dp_comm_total"] / e_reshard.breakdown_s["dp_comm_total"]
    assert ratio == pytest.approx(2.0, rel=0.02)
    keep_twice = estimate_train(m, sys_, dataclasses.replace(keep, global_batch=512))
    assert keep_twice.breakdown_s["dp_comm_total"] == pytest.approx(
        e_keep.breakdown_s["dp_comm_total"]
    )


def test_zero2_under_a_pipeline_reduces_each_micro_batch_and_keeps_gradients_sharded() -> None:
    m, sys_ = model("llama-3.1-405b"), system("h100-sxm")
    z1, z2 = (
        estimate_train(m, sys_, BASE),
        estimate_train(m, sys_, dataclasses.replace(BASE, zero=2)),
    )
    assert z2.memory_gb["gradients"] == pytest.approx(z1.memory_gb["gradients"] / 8)
    assert z2.memory_gb["weights"] == pytest.approx(z1.memory_gb["weights"])
    assert z2.breakdown_s["dp_comm_total"] > 4 * z1.breakdown_s["dp_comm_total"]


def test_fsdp_never_resharding_without_a_pipeline_gathers_once_per_micro_batch() -> None:
    m, sys_ = model("llama-3-8b"), system("h100-sxm")
    lay = TrainLayout(dp=64, zero=3, global_batch=256, seq_len=4096, micro_batch=2)
    never = dataclasses.replace(lay, fsdp_reshard="never")
    e, e_never = estimate_train(m, sys_, lay), estimate_train(m, sys_, never)
    assert e_never.breakdown_s["dp_comm_total"] < e.breakdown_s["dp_comm_total"]
    assert e_never.memory_gb["weights"] == pytest.approx(64 * e.memory_gb["weights"])
    # gradients are still reduce-scattered each micro-batch: they stay sharded
    assert e_never.memory_gb["gradients"] == pytest.approx(e.memory_gb["gradients"])


def test_zero3_recompute_replays_a_layer_on_the_parameters_its_backward_gathers() -> None:
    """DeepSpeed's and FSDP's pre-backward hook gathers a layer; the checkpoint replays its
    forward and the backward follows on the same gathered parameters: full recompute adds
    compute, not a third gather (SC'21's ZeRO-3 rows at 1,536 A100s came out 30% slow with
    SC'21 left out of the fit while it was counted)."""
    m, sys_ = model("llama-3-8b"), system("h100-sxm")
    lay = TrainLayout(dp=64, zero=3, global_batch=256, seq_len=4096, micro_batch=2)
    none = estimate_train(m, sys_, lay)
    full = estimate_train(m, sys_, dataclasses.replace(lay, recompute="full"))
    assert full.breakdown_s["dp_comm_total"] == pytest.approx(none.breakdown_s["dp_comm_total"])
    assert full.step_time_s > none.step_time_s  # the replayed forward


def test_a_lighter_last_stage_balances_the_output_head() -> None:
    """126 layers on 8 stages: evenly, the heaviest holds 16 and the last also runs the
    128k-vocabulary head; 15/16.../15 puts the head where a layer was."""
    m, sys_ = model("llama-3.1-405b"), system("h100-sxm")
    split = dataclasses.replace(BASE, first_stage_layers=15, last_stage_layers=15)
    assert split.stage_split(126) == (15, 16, 15)
    even, balanced = estimate_train(m, sys_, BASE), estimate_train(m, sys_, split)
    assert balanced.step_time_s < even.step_time_s
    # the pacing stage is now a middle one: it runs no head or loss
    assert balanced.breakdown_s["loss"] == 0.0
    # a heavier last stage is paced by it, head and all
    heavy = estimate_train(
        m, sys_, dataclasses.replace(BASE, first_stage_layers=12, last_stage_layers=18)
    )
    assert heavy.breakdown_s["loss"] > 0 and heavy.step_time_s > even.step_time_s


def test_uneven_memory_is_the_fullest_stage() -> None:
    s = shape_of(model("llama-3.1-405b"))
    even = train_memory(s, dataclasses.replace(BASE, zero=0), 2.0)
    # a light first stage keeps its 8 micro-batches of only 6 layers; the fat last stage
    # (24 layers and the head) is the fullest: more weights, fewer activations than even
    lay = dataclasses.replace(BASE, zero=0, first_stage_layers=6, last_stage_layers=24)
    assert lay.stage_split(126) == (6, 16, 24)
    mem = train_memory(s, lay, 2.0)
    assert mem.weights > 1.4 * even.weights
    assert mem.activations < even.activations


def test_estimate_train_cli_takes_sharded_pipelines_and_stage_sizes() -> None:
    args = [
        "estimate",
        "train",
        "--model",
        "llama-3.1-405b",
        "--accelerator",
        "h100-sxm",
        "--num-devices",
        "512",
        "--tp",
        "8",
        "--pp",
        "16",
        "--zero",
        "3",
        "--global-batch",
        "256",
        "--seq-len",
        "8192",
        "--recompute",
        "full",
        "--sequence-parallel",
    ]
    res = run(*args)
    assert res.returncode == 0, res.stderr
    assert "params kept gathered" in res.stdout
    res = run(*args, "--fsdp-reshard", "always", "--last-stage-layers", "6", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["layout"]["fsdp_reshard"] == "always"
    assert out["layout"]["last_stage_layers"] == 6
    bad = run(*args, "--last-stage-layers", "7")
    assert bad.returncode == 2
    assert "split evenly over the other 15 stages" in bad.stderr


def test_torchtitan_held_out_runs_are_expressible_layouts() -> None:
    """TorchTitan's FSDP + TP + PP + CP runs load as layouts the model accepts (ZeRO-3
    with pipelines and uneven stages were refused before) and follow its defaults:
    as many micro-batches as stages, 15/16.../15 layers on 8 stages."""
    from suanli.calibration import load_heldout_training_cases
    from suanli.perf.layout import check_layout

    cases = {c.id: c for c in load_heldout_training_cases()}
    assert len(cases) == 18
    for c in cases.values():
        check_layout(c.model, c.layout, c.layout.num_devices)
    one_f_one_b = cases["TT13"].layout
    assert (one_f_one_b.micro_batch, one_f_one_b.num_microbatches) == (4, 8)
    assert one_f_one_b.stage_split(126) == (15, 16, 15)
    assert one_f_one_b.keeps_params_gathered
    assert cases["TT18"].layout.cp == 8 and cases["TT18"].layout.dp == 1


def test_the_planner_balances_the_head_and_shards_a_pipeline_where_it_must() -> None:
    from suanli.plan import TrainRequest, plan_train
    from suanli.plan.pool import parse_pool
    from suanli.plan.train import balanced_split

    assert balanced_split(model("llama-3.1-405b"), 8) == (15, 15)
    assert balanced_split(model("gpt3-175b"), 8) is None  # a 51k-word head weighs no layer
    pool = parse_pool(
        "pools:\n  - {name: h100, accelerator: h100-sxm, count: 24, usd_per_device_hour: 2.0}\n"
    )
    req = TrainRequest(
        model=model("llama-3-70b"), tokens=1e12, pool=pool, num_devices=24, seq_len=8192, top=50
    )
    options = plan_train(req).options
    uneven = [o for o in options if o["layout"]["last_stage_layers"] is not None]
    assert uneven, "no balanced split was costed"
    best = uneven[0]
    lay = TrainLayout(
        **{
            k: v
            for k, v in best["layout"].items()
            if k not in ("first_stage_layers", "last_stage_layers")
        }
    )
    even = estimate_train(model("llama-3-70b"), system("h100-sxm"), lay)
    assert best["estimate"]["step_time_s"] < even.step_time_s
    assert "to balance the output head" in best["why"]
    # 24 devices hold 70B with ZeRO-1 only in some layouts; where they do not, ZeRO-3
    # resharding each micro-batch is costed instead
    resharded = [o for o in options if o["layout"]["fsdp_reshard"] == "always"]
    assert resharded and all(o["layout"]["pp"] > 1 for o in resharded)
    assert "resharded each micro-batch" in resharded[0]["why"]
