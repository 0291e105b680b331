"""The performance model: pure functions from (workload, layout, hardware) to estimates."""

from suanli.perf.efficiency import Efficiency, default_efficiency
from suanli.perf.layout import TrainLayout, check_layout
from suanli.perf.serve import ServeEstimate, estimate_serve
from suanli.perf.shape import ModelShape, shape_of
from suanli.perf.system import System, make_system
from suanli.perf.train import TrainEstimate, estimate_train

__all__ = [
    "Efficiency",
    "ModelShape",
    "ServeEstimate",
    "System",
    "TrainEstimate",
    "TrainLayout",
    "check_layout",
    "default_efficiency",
    "estimate_serve",
    "estimate_train",
    "make_system",
    "shape_of",
]
