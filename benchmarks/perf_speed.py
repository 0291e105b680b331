"""How many estimates per second the perf model makes on one core.

    python benchmarks/perf_speed.py [--seconds 3]

Planners and the simulator call the perf model millions of times, so the target
is >= 20,000 training estimates/s on one core. The benchmark cycles through a
mix of models (dense, GQA, MoE+MLA), chips and layouts so that no single case's
cache luck decides the figure, and reports the rate with and without the layout
check (the planner validates once per candidate family, not per call).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from suanli.catalog import get_accelerator, get_model
from suanli.perf import TrainLayout, estimate_serve, estimate_train, make_system

TARGET_PER_S = 20_000


def cases() -> list[tuple[object, object, TrainLayout]]:
    out = []
    for model, acc, lay in [
        (
            "gpt3-175b",
            "a100-80gb",
            TrainLayout(tp=8, pp=12, dp=16, global_batch=1536, seq_len=2048, recompute="full"),
        ),
        (
            "llama-3-70b",
            "h100-sxm",
            TrainLayout(
                tp=8,
                pp=4,
                dp=32,
                vpp=5,
                global_batch=1024,
                seq_len=8192,
                recompute="selective",
                sequence_parallel=True,
                zero=1,
            ),
        ),
        (
            "llama-2-7b",
            "ascend-910b",
            TrainLayout(tp=1, pp=1, dp=64, global_batch=512, seq_len=4096, zero=3, micro_batch=2),
        ),
        (
            "deepseek-v3",
            "h800-sxm",
            TrainLayout(
                tp=1, pp=16, dp=128, ep=64, global_batch=4096, seq_len=4096, zero=1, dtype="fp8"
            ),
        ),
        (
            "mixtral-8x7b",
            "mi300x",
            TrainLayout(tp=2, pp=1, dp=32, ep=8, cp=2, global_batch=256, seq_len=8192, zero=1),
        ),
    ]:
        m, a = get_model(model), get_accelerator(acc)
        out.append((m, make_system(a), lay))
    return out


def rate(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
    n = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(500):
            fn()
        n += 500
        if time.perf_counter() - t0 >= seconds:
            return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    cs = cases()
    cyc = itertools.cycle(cs)

    def checked() -> None:
        m, s, lay = next(cyc)
        estimate_train(m, s, lay)  # type: ignore[arg-type]

    def unchecked() -> None:
        m, s, lay = next(cyc)
        estimate_train(m, s, lay, check=False)  # type: ignore[arg-type]

    serve_model, serve_sys = get_model("llama-3-70b"), make_system(get_accelerator("h100-sxm"))

    def serve() -> None:
        estimate_serve(
            serve_model,
            serve_sys,
            num_devices=8,
            tp=4,
            batch=32,
            input_len=2048,
            output_len=256,
            weight_dtype="fp8",
        )

    r_checked = rate(checked, args.seconds)
    r_unchecked = rate(unchecked, args.seconds)
    r_serve = rate(serve, args.seconds)
    print(
        f"training estimates/s (one core, layout checked):   {r_checked:10,.0f}  "
        f"({r_checked / TARGET_PER_S:.2f}x the {TARGET_PER_S:,}/s target)"
    )
    print(
        f"training estimates/s (one core, unchecked):        {r_unchecked:10,.0f}  "
        f"({r_unchecked / TARGET_PER_S:.2f}x)"
    )
    print(f"serving estimates/s (one core):                    {r_serve:10,.0f}")
    print(f"per training estimate: {1e6 / r_checked:.1f} us")
    return 0 if r_checked >= TARGET_PER_S else 1


if __name__ == "__main__":
    sys.exit(main())
