"""Serving planner and its queueing model."""

from __future__ import annotations

import math

import pytest

from suanli.plan.pool import parse_pool, pool_from_accelerators
from suanli.plan.queueing import replica_load, wait_cdf, wait_quantile
from suanli.plan.serve import ServeRequest, plan_serve
from tests.conftest import model


def test_md1_waiting_time_worked_by_hand() -> None:
    # rho = 0.5, S = 1 s: theta = 2(1 - rho)/S = 1/s; P(W > t) = 0.5 e^-t
    # p99: 0.5 e^-t = 0.01 -> t = ln(50) = 3.912 s; median: 0.5 e^-t = 0.5 -> 0
    assert wait_quantile(0.5, 1.0, 0.99) == pytest.approx(math.log(50))
    assert wait_quantile(0.5, 1.0, 0.5) == 0.0
    assert wait_cdf(0.5, 1.0, math.log(50)) == pytest.approx(0.99)
    assert wait_quantile(1.0, 1.0, 0.5) == math.inf


def test_replica_load_fixed_point_follows_littles_law() -> None:
    # constant 20 ms steps, no prefill: b = rate * O * tpot = 10/s * 100 * 0.02 = 20
    ld = replica_load(10.0, 100, 0.0, lambda b: 0.02, 256)
    assert ld.stable and ld.mean_batch == pytest.approx(20.0, rel=1e-6)
    assert ld.tpot_p99_s == pytest.approx(0.02)
    # over the batch limit: unstable
    assert not replica_load(10.0, 100, 0.0, lambda b: 0.02, 16).stable
    # prefill load above 1: unstable
    assert not replica_load(10.0, 100, 0.2, lambda b: 0.02, 256).stable


POOL = """
pools:
  - {name: h100, accelerator: h100-sxm, count: 256, usd_per_device_hour: 2.99}
  - {name: h20, accelerator: h20, count: 256, usd_per_device_hour: 1.1}
"""


def test_serving_options_meet_the_slos_and_are_priced() -> None:
    req = ServeRequest(
        model=model("llama-3-70b"),
        rate=10,
        input_len=2048,
        output_len=512,
        pool=parse_pool(POOL),
        ttft_slo_s=2.0,
        tpot_slo_s=0.05,
        top=10,
    )
    res = plan_serve(req)
    assert res.options
    prices = [o["usd_per_million_output_tokens"] for o in res.options]
    assert prices == sorted(prices)
    for o in res.options:
        assert o["ttft_p99_s"] <= 2.0 and o["tpot_p99_s"] <= 0.05
        assert o["ttft_p50_s"] <= o["ttft_p99_s"] and o["tpot_p50_s"] <= o["tpot_p99_s"]
        assert o["slo_attainment"] >= 0.99
        for key in (
            "accelerator",
            "num_devices",
            "tp",
            "replicas",
            "weight_dtype",
            "kv_dtype",
            "max_batch",
            "disaggregated",
        ):
            assert key in o
    # Splitwise's finding: compute-rich prefill, bandwidth-rich decode (H20) is cheapest here
    dis = [o for o in res.options if o["disaggregated"]]
    assert dis and dis[0]["decode"]["accelerator"] == "h20"
    assert dis[0]["prefill"]["accelerator"] == "h100-sxm"
    assert dis[0]["kv_transfer_bytes"] > 0


def test_replicas_grow_with_the_rate() -> None:
    pool = pool_from_accelerators(["h100-sxm"], 10_000)

    def devices(rate: float) -> int:
        res = plan_serve(
            ServeRequest(
                model=model("llama-3-70b"),
                rate=rate,
                input_len=2048,
                output_len=512,
                pool=pool,
                disaggregation=False,
                tpot_slo_s=0.05,
            )
        )
        return int(res.options[0]["num_devices"])

    # 16x the load needs many times the devices once one replica is not enough
    low, high = devices(4), devices(64)
    assert high >= 6 * low


def test_impossible_slo_is_infeasible() -> None:
    res = plan_serve(
        ServeRequest(
            model=model("llama-3-70b"),
            rate=1,
            input_len=2048,
            output_len=128,
            pool=parse_pool(POOL),
            tpot_slo_s=0.0001,
        )
    )
    assert not res.options
    assert "llama" in (res.infeasible or "").lower()


def test_poisson_helpers() -> None:
    from suanli.plan.queueing import poisson_cdf, poisson_ppf

    # P(N <= 2 | mean 2) = e^-2 (1 + 2 + 2) = 5 e^-2
    assert poisson_cdf(2, 2.0) == pytest.approx(5 * math.exp(-2))
    # the median of Poisson(2) is 2: P(N <= 1) = 3e^-2 = 0.406 < 0.5 <= 0.677
    assert poisson_ppf(0.5, 2.0) == 2.0
    assert poisson_cdf(-1, 3.0) == 0.0 and poisson_ppf(0.99, 0.0) == 0.0


def test_with_no_engine_named_each_chip_is_planned_under_its_users_engine() -> None:
    """`plan serve` answers as `estimate serve` does: a chip's usual engine (vLLM on
    NVIDIA) where it has kernels for the format, the idealised engine where it has none
    (vLLM-Ascend has no int4 weights), and a chip no engine is usual for stays idealised."""
    from suanli.perf.engines import get_engine

    pools = parse_pool(
        """
pools:
  - {name: h100, accelerator: h100-sxm, count: 64, usd_per_device_hour: 2.99}
  - {name: ascend, accelerator: ascend-910b1, count: 64, usd_per_device_hour: 1.5}
  - {name: mlu, accelerator: mlu590, count: 64, usd_per_device_hour: 1.5}
"""
    )
    base = {
        "model": model("llama-3-8b"),
        "rate": 5,
        "input_len": 512,
        "output_len": 256,
        "tpot_slo_s": 0.1,
        "top": 100,
        "disaggregation": False,
    }
    vllm, ascend = get_engine("vllm"), get_engine("vllm-ascend")
    unnamed = plan_serve(ServeRequest(pool=pools[:1], **base)).options
    named = plan_serve(ServeRequest(pool=pools[:1], engine=vllm, **base)).options
    assert unnamed and unnamed == named
    assert {o["engine"] for o in unnamed} == {vllm.label}
    on_ascend = plan_serve(ServeRequest(pool=pools[1:2], **base)).options
    by_weights = {o["weight_dtype"]: o.get("engine") for o in on_ascend}
    assert by_weights["bf16"] == by_weights["int8"] == ascend.label
    assert by_weights["int4"] is None
    assert "int4" not in ascend.profile.weight_dtypes
    on_mlu = plan_serve(ServeRequest(pool=pools[2:], **base)).options
    assert on_mlu and all(o.get("engine") is None for o in on_mlu)
