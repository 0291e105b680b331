"""Memory per device: the ZeRO paper's example and Korthikanti's activation formula."""

from __future__ import annotations

import pytest

from suanli.perf import TrainLayout
from suanli.perf.memory import activation_bytes_per_layer, model_state_bytes
from suanli.perf.shape import shape_of
from tests.conftest import model


@pytest.mark.parametrize(
    ("stage", "expected_gb"),
    # Rajbhandari et al. SC'20, Fig. 1: 7.5B params, 64 GPUs, Adam, mixed precision
    # stage 0: (2 + 2 + 12) * 7.5e9 = 120 GB
    # stage 1: (2 + 2 + 12/64) * 7.5e9 = 31.4 GB
    # stage 2: (2 + 14/64) * 7.5e9 = 16.6 GB
    # stage 3: 16/64 * 7.5e9 = 1.875 GB
    [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)],
)
def test_zero_paper_example(stage: int, expected_gb: float) -> None:
    w, g, o = model_state_bytes(7.5e9, stage, 64)
    assert (w + g + o) / 1e9 == pytest.approx(expected_gb, abs=0.05)


def test_activations_match_korthikanti_for_gpt() -> None:
    # GPT-3 175B, s=2048, b=1, t=8, no recompute, unfused attention.
    # Korthikanti et al. Eq. 2 (TP without SP): s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes
    m = model("gpt3-175b")
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    lay = TrainLayout(tp=t, micro_batch=b, seq_len=s, fused_attention=False)
    expected = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
    got = activation_bytes_per_layer(shape_of(m), lay, moe_layer=False)
    assert got == pytest.approx(expected, rel=1e-9)
    # with sequence parallelism everything is divided by t (their Eq. 4)
    lay_sp = TrainLayout(
        tp=t, micro_batch=b, seq_len=s, fused_attention=False, sequence_parallel=True
    )
    got_sp = activation_bytes_per_layer(shape_of(m), lay_sp, moe_layer=False)
    assert got_sp == pytest.approx(s * b * h / t * (34 + 5 * a * s / h), rel=1e-9)
    # full recompute keeps only the layer input: 2sbh (their Eq. 5 per layer)
    lay_full = TrainLayout(tp=t, micro_batch=b, seq_len=s, recompute="full")
    assert activation_bytes_per_layer(shape_of(m), lay_full, False) == 2 * s * b * h
