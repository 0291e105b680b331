"""Parameter counts and KV bytes, checked against published figures by hand."""

from __future__ import annotations

import pytest

from suanli.perf.shape import shape_of
from tests.conftest import model


@pytest.mark.parametrize(
    ("name", "total_b", "active_b"),
    [
        ("llama-2-7b", 6.74, 6.74),  # Touvron et al. 2023: 6.74B (HF model card 6,738,415,616)
        ("llama-3-70b", 70.6, 70.6),  # Meta model card: 70.6B
        ("mixtral-8x7b", 46.7, 12.9),  # Jiang et al. 2024: 46.7B total, 12.9B active
        ("deepseek-v3", 671.0, 37.0),  # DeepSeek-V3 report: 671B total, 37B activated
        ("llama-3.1-405b", 405.9, 405.9),
        ("gpt3-175b", 174.6, 174.6),  # Brown et al.: 175.0B (their vocab 50257, ours padded)
    ],
)
def test_parameter_counts(name: str, total_b: float, active_b: float) -> None:
    s = shape_of(model(name))
    assert s.total_params / 1e9 == pytest.approx(total_b, abs=0.06 * max(1, total_b / 100))
    assert s.active_params / 1e9 == pytest.approx(active_b, abs=0.6)


def test_llama2_7b_exact() -> None:
    # 32 x (4*4096^2 + 3*4096*11008 + 2*4096) + 2*32000*4096 + 4096 = 6,738,415,616
    assert shape_of(model("llama-2-7b")).total_params == 6_738_415_616


def test_kv_bytes_per_token_mha_gqa_mla() -> None:
    # MHA, Llama-2-7B in bf16: 2 (K,V) * 32 layers * 32 heads * 128 dims * 2 bytes = 524,288
    assert shape_of(model("llama-2-7b")).kv_bytes_per_token(2) == 524_288
    # GQA, Llama-3-70B in bf16: 2 * 80 layers * 8 KV heads * 128 * 2 = 327,680
    assert shape_of(model("llama-3-70b")).kv_bytes_per_token(2) == 327_680
    # MLA, DeepSeek-V3 in bf16: 61 layers * (512 latent + 64 rope) * 2 = 70,272
    assert shape_of(model("deepseek-v3")).kv_bytes_per_token(2) == 70_272
    # int4 KV halves int8
    s = shape_of(model("llama-3-70b"))
    assert s.kv_bytes_per_token(0.5) * 2 == s.kv_bytes_per_token(1)


def test_training_flops_follow_6n() -> None:
    # A dense model's per-token training FLOPs are 6 x matmul params + attention.
    from suanli.perf.train import model_flops_per_token

    s = shape_of(model("llama-2-7b"))
    n_matmul = s.matmul_params_per_token()
    # 6N + 3 * 2*s*(q+v)*L = 6N + 12*s*h*L for MHA
    expected = 6 * n_matmul + 12 * 4096 * 4096 * 32
    assert model_flops_per_token(s, 4096) == pytest.approx(expected)
