"""Planners: ranked, explained choices of chips and layouts, built on `suanli.perf`."""

from suanli.plan.common import InfeasibleError, PlanResult
from suanli.plan.pool import PoolEntry, PoolFileError, load_pool, parse_pool
from suanli.plan.train import TrainRequest, plan_train

__all__ = [
    "InfeasibleError",
    "PlanResult",
    "PoolEntry",
    "PoolFileError",
    "TrainRequest",
    "load_pool",
    "parse_pool",
    "plan_train",
]
