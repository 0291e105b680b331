"""The catalog: every number sourced, names as promised, HF configs read right."""

from __future__ import annotations

import json
import re

import pytest

from suanli.catalog import accelerators, get_model, interconnects, models, topologies
from suanli.catalog.hf import load_hf_config
from suanli.errors import CatalogFileError, UnknownNameError
from suanli.perf.shape import shape_of

REQUIRED_ACCELERATORS = [
    "v100-32gb",
    "t4",
    "a10",
    "a100-40gb",
    "a100-80gb",
    "a800-80gb",
    "h100-sxm",
    "h100-pcie",
    "h800-sxm",
    "h20",
    "h200",
    "l40s",
    "mi300x",
    "ascend-910b",
    "ascend-310p",
    "mlu370-x8",
    "mlu590",
    "dcu-z100",
    "dcu-k100",
    "br100",
]
REQUIRED_MODELS = [
    "gpt3-175b",
    "llama-2-7b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3-8b",
    "llama-3-70b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "qwen2.5-7b",
    "qwen2.5-14b",
    "qwen2.5-32b",
    "qwen2.5-72b",
    "mixtral-8x7b",
    "deepseek-v3",
    "glm-4-9b",
]
SOURCED = (
    "peak_tflops",
    "matmul_fraction",
    "memory_gb",
    "memory_bandwidth_gbs",
    "intra_node_link_gbs",
    "devices_per_node",
    "nic_gbps",
    "tdp_w",
    "idle_w",
    "price_usd_per_hour",
)


def test_required_entries_exist() -> None:
    assert set(REQUIRED_ACCELERATORS) <= set(accelerators())
    assert set(REQUIRED_MODELS) <= set(models())
    kinds = {a.kind for a in accelerators().values()}
    assert {"cpu", "gpu", "npu", "fpga", "asic"} <= kinds
    assert {"pcie4", "pcie5", "nvlink3", "nvlink4", "hccs", "ib-hdr", "ib-ndr"} <= set(
        interconnects()
    )
    assert {t.kind for t in topologies().values()} >= {"single-node", "fat-tree", "dragonfly"}


@pytest.mark.parametrize("name", sorted(accelerators()))
def test_every_accelerator_number_has_a_source(name: str) -> None:
    acc = accelerators()[name]
    assert re.fullmatch(r"[a-z0-9]+(?:[.-][a-z0-9]+)*", name)
    for field in SOURCED:
        if getattr(acc, field) is not None:
            assert acc.sources.get(field, "").strip(), f"{name}.{field} has no source"
    assert acc.intra_node_link in interconnects(), acc.intra_node_link
    assert acc.peak_tflops and all(v > 0 for v in acc.peak_tflops.values())
    assert acc.visible_devices_env and acc.k8s_resource


def test_pinning_variables_by_vendor() -> None:
    env = {a.vendor: a.visible_devices_env for a in accelerators().values()}
    assert env["nvidia"] == "CUDA_VISIBLE_DEVICES"
    assert env["huawei"] == "ASCEND_RT_VISIBLE_DEVICES"
    assert env["cambricon"] == "MLU_VISIBLE_DEVICES"
    assert env["hygon"] == "HIP_VISIBLE_DEVICES"
    assert accelerators()["a100-80gb"].k8s_resource == "nvidia.com/gpu"


def test_disputed_domestic_figures_are_flagged() -> None:
    for name in ("ascend-910b", "mlu590", "dcu-z100", "dcu-k100"):
        assert accelerators()[name].disputed, name


def test_unknown_model_suggests_near_names() -> None:
    with pytest.raises(UnknownNameError, match="llama-3-70b"):
        get_model("llama-3-70")


def _write(tmp_path, cfg):  # type: ignore[no-untyped-def]
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_hf_llama_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "vocab_size": 32000,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
    }
    m = load_hf_config(_write(tmp_path, cfg))
    assert m.gated_mlp
    assert shape_of(m).total_params == shape_of(get_model("llama-2-7b")).total_params


def test_hf_moe_and_mla_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = {
        "hidden_size": 7168,
        "num_hidden_layers": 61,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "intermediate_size": 18432,
        "vocab_size": 129280,
        "hidden_act": "silu",
        "n_routed_experts": 256,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 2048,
        "n_shared_experts": 1,
        "first_k_dense_replace": 3,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "moe_layer_freq": 1,
    }
    m = load_hf_config(_write(tmp_path, cfg))
    assert m.moe is not None and m.mla is not None
    s = shape_of(m)
    assert s.total_params == shape_of(get_model("deepseek-v3")).total_params
    assert 36e9 < s.active_params < 38e9


def test_hf_mixtral_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "hidden_act": "silu",
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
    }
    s = shape_of(load_hf_config(_write(tmp_path, cfg)))
    assert s.total_params / 1e9 == pytest.approx(46.7, abs=0.05)
    assert s.active_params / 1e9 == pytest.approx(12.9, abs=0.05)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"hidden_size": 64}', "missing num_hidden_layers"),
        (
            '{"hidden_size": 64, "num_hidden_layers": -1, "num_attention_heads": 4}',
            "must be a positive integer",
        ),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_hf_configs(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "config.json"
    p.write_text(text)
    with pytest.raises(CatalogFileError, match=message):
        load_hf_config(p)


def test_gemms_run_at_a_share_of_the_published_achievable_rate() -> None:
    """perf's GEMM rate is the chip's published best GEMM (MAMF) times the fitted share;
    a dtype without its own figure fares as the 16-bit one, a chip without any as the
    table's median."""
    import dataclasses

    from suanli.catalog.types import DEFAULT_MATMUL_FRACTION
    from suanli.perf import TrainLayout, default_efficiency, estimate_train, make_system

    acc = accelerators()
    h100, a100 = acc["h100-sxm"], acc["a100-80gb"]
    assert (h100.achievable_fraction("bf16"), h100.achievable_fraction("fp8")) == (0.803, 0.709)
    assert h100.achievable_fraction("fp16") == 0.803  # the same units as bf16
    assert a100.achievable_fraction("fp8") == 0.869  # no fp8 unit: runs at its 16-bit rate
    assert acc["l40s"].achievable_fraction("bf16") == DEFAULT_MATMUL_FRACTION
    assert a100.achievable_fraction("bf16") > h100.achievable_fraction("bf16")

    # with no operand traffic exposed, a GEMM's time is its FLOPs over the achievable rate
    eff = default_efficiency().with_values(gemm_io_exposed=0.0)
    lay = TrainLayout(micro_batch=1, global_batch=8, seq_len=2048, dtype="bf16")
    model = get_model("llama-3-8b")
    half = dataclasses.replace(h100, matmul_fraction={"bf16": 0.803 / 2})
    gemm = [
        estimate_train(model, make_system(chip), lay, eff, check=False).breakdown_s["gemm"]
        for chip in (h100, half)
    ]
    assert gemm[1] == pytest.approx(2 * gemm[0], rel=1e-9)


@pytest.mark.parametrize(
    ("fraction", "message"),
    [
        ({"bf16": 1.2}, "matmul_fraction maps dtypes"),
        ({"bf17": 0.8}, "matmul_fraction maps dtypes"),
        (None, "matmul_fraction has no source"),
    ],
)
def test_bad_matmul_fractions_are_refused(fraction: object, message: str) -> None:
    from suanli.catalog.loader import _accelerator, _read_yaml

    entry = next(e for e in _read_yaml("accelerators.yaml")[1] if e["name"] == "h100-sxm")
    entry = {**entry, "sources": dict(entry["sources"])}
    if fraction is None:  # a figure without its citation
        del entry["sources"]["matmul_fraction"]
    else:
        entry["matmul_fraction"] = fraction
    with pytest.raises(CatalogFileError, match=message):
        _accelerator(entry, "accelerators.yaml entry (h100-sxm)")
