"""Predict a published case with the perf model, in the unit the case was measured in."""

from __future__ import annotations

from suanli.calibration.published import InferenceCase, TrainingCase
from suanli.perf import Efficiency, estimate_serve, estimate_train

Case = TrainingCase | InferenceCase


def measured(case: Case) -> float:
    """The published throughput: TFLOP/s per device (training) or output tokens/s."""
    if isinstance(case, TrainingCase):
        return case.measured_tflops_per_device
    return case.measured_output_tokens_per_s


def predict(case: Case, eff: Efficiency) -> float:
    """The perf model's throughput for ``case`` under the case's own FLOP convention."""
    if isinstance(case, TrainingCase):
        est = estimate_train(case.model, case.system, case.layout, eff, check=False)
        return case.measured_tflops_per_device * case.measured_step_s / est.step_time_s
    serve = estimate_serve(
        case.model,
        case.system,
        num_devices=case.num_devices,
        tp=case.tp,
        batch=case.batch,
        input_len=case.input_len,
        output_len=case.output_len,
        weight_dtype=case.weight_dtype,
        kv_dtype=case.kv_dtype,
        decoding=case.decoding,
        eff=eff,
    )
    return serve.output_tokens_per_s


def relative_error(case: Case, eff: Efficiency) -> float:
    """predicted / measured - 1."""
    return predict(case, eff) / measured(case) - 1
