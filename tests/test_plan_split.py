"""Edge/cloud split planner."""

from __future__ import annotations

from suanli.plan.split import SplitRequest, bandwidth_table, plan_split
from tests.conftest import model, system


def req(**kw: object) -> SplitRequest:
    args: dict[str, object] = dict(
        model=model("llama-3-8b"),
        edge=system("jetson-agx-orin-64gb"),
        cloud=system("h100-sxm"),
        uplink_mbps=20.0,
    )
    args.update(kw)
    return SplitRequest(**args)  # type: ignore[arg-type]


def test_every_boundary_is_a_candidate() -> None:
    res = plan_split(req())
    splits = {o["split_after_layer"] for o in res.options}
    assert splits == set(range(33))  # 0 (all cloud) .. 32 (all edge)
    all_edge = next(o for o in res.options if o["split_after_layer"] == 32)
    assert all_edge["transfer_bytes"] == 0
    middle = [o for o in res.options if o["split_after_layer"] == 16]
    # int8 activations send half the bytes of fp16: (128 + 63) tokens x 4096 x 1 byte
    assert {o["transfer_bytes"] for o in middle} == {191 * 4096 * 1.0, 191 * 4096 * 2.0}


def test_a_close_fast_cloud_wins_and_a_far_one_loses() -> None:
    near = plan_split(req(rtt_ms=10))
    assert near.options[0]["split_after_layer"] == 0
    far = plan_split(req(rtt_ms=5000, uplink_mbps=0.05))
    assert far.options[0]["split_after_layer"] == 32


def test_bandwidth_table_is_sorted_and_includes_the_request() -> None:
    rows = bandwidth_table(req(uplink_mbps=7.0))
    bws = [r["uplink_mbps"] for r in rows]
    assert bws == sorted(bws) and 7.0 in bws


def test_edge_memory_limits_the_split() -> None:
    res = plan_split(
        req(
            model=model("llama-3-70b"),
            edge=system("jetson-agx-orin-64gb"),
            edge_weight_dtype="bf16",
        )
    )
    # 70B in bf16 (141 GB) cannot all sit on a 64 GB module
    assert res.rejected["edge memory: its layers' weights do not fit"] > 0
    assert max(o["edge_layers"] for o in res.options) < 80
