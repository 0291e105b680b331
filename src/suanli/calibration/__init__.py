"""Published measurements the perf model is fitted and checked on."""

from suanli.calibration.published import (
    InferenceCase,
    TrainingCase,
    load_inference_cases,
    load_training_cases,
    shared_calibration_dir,
)

__all__ = [
    "InferenceCase",
    "TrainingCase",
    "load_inference_cases",
    "load_training_cases",
    "shared_calibration_dir",
]
