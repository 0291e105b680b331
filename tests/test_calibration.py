"""The published calibration sets: readers, and the shipped model's accuracy on them."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from suanli.calibration import load_inference_cases, load_training_cases, relative_error
from suanli.calibration.published import convention_flops
from suanli.perf import default_efficiency


def test_training_rows_are_read_with_their_conventions(shared_dir: Path) -> None:
    cases = {c.id: c for c in load_training_cases(shared_dir / "calibration")}
    assert len(cases) == 31
    c13 = cases["C13"]
    assert (c13.layout.tp, c13.layout.pp, c13.layout.dp) == (8, 12, 16)
    assert c13.model.tied_embeddings and not c13.layout.fused_attention
    # 96*B*s*l*h^2*(1 + s/6h + V/16lh) / (141 TFLOP/s * 1536)
    row = {
        "global_batch": "1536",
        "seq_len": "2048",
        "layers": "96",
        "hidden": "12288",
        "vocab": "51200",
        "flops_convention": "hfu_full_recompute",
        "id": "C13",
    }
    assert c13.measured_step_s == pytest.approx(convention_flops(row) / (141e12 * 1536))
    c27 = cases["C27"]
    assert c27.layout.sequence_parallel and c27.layout.zero == 1
    assert not c27.model.tied_embeddings


def test_inference_rows_parse_the_header_shapes(shared_dir: Path) -> None:
    cases = {c.id: c for c in load_inference_cases(shared_dir / "calibration")}
    assert cases["I15"].model.kv_heads == 8 and cases["I15"].model.heads == 232
    assert cases["I14"].model.name == "gpt-j-6b" and cases["I14"].model.ffn == 16384
    assert cases["I33"].model.moe is not None


def test_shipped_parameters_meet_the_accuracy_targets(shared_dir: Path) -> None:
    """Targets of the issue: training median <= 5%, max <= 15%; inference median <= 10%."""
    eff = default_efficiency()
    directory = shared_dir / "calibration"
    train = [abs(relative_error(c, eff)) for c in load_training_cases(directory)]
    infer = [abs(relative_error(c, eff)) for c in load_inference_cases(directory)]
    assert statistics.median(train) <= 0.05
    assert max(train) <= 0.15
    assert statistics.median(infer) <= 0.10
