"""Published measurements the perf model is fitted and checked on."""

from suanli.calibration.evaluate import Case, measured, predict, relative_error
from suanli.calibration.published import (
    InferenceCase,
    TrainingCase,
    load_added_inference_cases,
    load_added_training_cases,
    load_heldout_training_cases,
    load_inference_cases,
    load_training_cases,
    shared_calibration_dir,
)

__all__ = [
    "Case",
    "InferenceCase",
    "TrainingCase",
    "load_added_inference_cases",
    "load_added_training_cases",
    "load_heldout_training_cases",
    "load_inference_cases",
    "load_training_cases",
    "measured",
    "predict",
    "relative_error",
    "shared_calibration_dir",
]
