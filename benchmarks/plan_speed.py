"""How fast the planners search, on one core.

    python benchmarks/plan_speed.py

Targets (issue: planner): a training plan over 4 accelerator types up to 4,096
devices each in under 5 s; a serving plan for a 70B model over 6 chip types in
under 2 s. Prints candidates costed and wall time for each, and the ratio to
the target.
"""

from __future__ import annotations

import os
import sys
import time

from suanli.catalog import get_model
from suanli.plan import TrainRequest, plan_train
from suanli.plan.pool import parse_pool
from suanli.plan.serve import ServeRequest, plan_serve

TRAIN_POOL = """
pools:
  - {name: h800, accelerator: h800-sxm, count: 4096, usd_per_device_hour: 2.0}
  - {name: ascend-910b, accelerator: ascend-910b, count: 4096, usd_per_device_hour: 1.2}
  - {name: a100, accelerator: a100-80gb, count: 4096}
  - {name: h100, accelerator: h100-sxm, count: 4096}
"""
SERVE_POOL = """
pools:
  - {accelerator: h100-sxm, count: 4096}
  - {accelerator: h20, count: 4096, usd_per_device_hour: 1.1}
  - {accelerator: a100-80gb, count: 4096}
  - {accelerator: l40s, count: 4096, usd_per_device_hour: 0.9}
  - {accelerator: ascend-910b, count: 4096, usd_per_device_hour: 1.3}
  - {accelerator: h200, count: 4096, usd_per_device_hour: 3.5}
"""


def main() -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    ok = True
    for model, tokens, seq in (
        ("llama-3-70b", 15e12, 8192),
        ("gpt3-175b", 300e9, 2048),
        ("mixtral-8x7b", 1e12, 4096),
    ):
        t0 = time.perf_counter()
        res = plan_train(
            TrainRequest(
                model=get_model(model), tokens=tokens, pool=parse_pool(TRAIN_POOL), seq_len=seq
            )
        )
        wall = time.perf_counter() - t0
        best = res.options[0]
        print(
            f"plan train {model:13s} 4 types x <=4,096 devices: "
            f"{res.candidates_evaluated:7,} candidates in {wall:5.2f} s "
            f"({wall / 5.0:.2f} of the 5 s target); best {best['pool']} x "
            f"{best['num_devices']} in {best['time_to_train_s'] / 86400:.1f} days"
        )
        ok &= wall < 5.0
    t0 = time.perf_counter()
    res = plan_serve(
        ServeRequest(
            model=get_model("llama-3-70b"),
            rate=50,
            input_len=2048,
            output_len=512,
            pool=parse_pool(SERVE_POOL),
            ttft_slo_s=2.0,
            tpot_slo_s=0.05,
        )
    )
    wall = time.perf_counter() - t0
    best = res.options[0]
    print(
        f"plan serve llama-3-70b 6 types, 50 req/s: {res.candidates_evaluated:7,} candidates "
        f"in {wall:5.2f} s ({wall / 2.0:.2f} of the 2 s target); best {best['pool']} "
        f"{best['usd_per_million_output_tokens']:.2f} USD per million output tokens"
    )
    ok &= wall < 2.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
