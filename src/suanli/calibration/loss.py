"""The cross-entropy loss of a training step: a CPU spends it in ``exp``, not in bytes."""

from __future__ import annotations

import os
import subprocess

from suanli.calibration import children
from suanli.calibration.timing import Plan, sync_for, timed, torch_module
from suanli.errors import SuanliError

LOSS_LOGITS_BYTES = 128 * 2**20  # fp32 logits of a step: 1,024 tokens x a 32k vocabulary


def loss_rate(device: str, plan: Plan, vocab: int = 50304) -> float:
    """Logits per second of fp32 cross-entropy, forward and backward.

    A GPU streams it at memory bandwidth; a CPU spends it in ``exp`` (compute
    bound), several times slower than its bytes alone say. ``vocab`` is GPT-2's
    padded vocabulary: the rate per logit, not any one model's, is measured.

    Its tensors are a training step's logits (`LOSS_LOGITS_BYTES`: above glibc's
    mmap threshold, so each step's fresh buffers page-fault in), timed in a child
    process started under train_lm's heap settings (`MALLOC_ENV`). In this process
    the result depended on what ran before: 0.27 G logits/s fresh, 0.74 after the
    other benchmarks had grown the heap; train_lm's regime measured 0.42-0.46.
    """
    from suanli.workloads import MALLOC_ENV

    rows = max(8, LOSS_LOGITS_BYTES // 4 // vocab)
    threads = torch_module().get_num_threads()
    argv = children.python_call(
        __name__, "loss_rate_here", device, rows, vocab, plan.min_time_s, threads
    )
    env = {**os.environ, **MALLOC_ENV}
    try:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise SuanliError("cross-entropy benchmark took over 300 s") from exc
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        why = out.stderr.strip()[-500:] or f"exit {out.returncode}, no output"
        raise SuanliError(f"cross-entropy benchmark failed: {why}")
    return round(float(lines[-1]), 1)


def loss_rate_here(device: str, rows_: str, vocab_: str, min_time_s: str, threads: str) -> float:
    """`loss_rate`'s child (arguments as a command line gives them)."""
    rows, vocab = int(rows_), int(vocab_)
    torch = torch_module()
    torch.set_num_threads(int(threads))
    sync = sync_for(torch, device)
    x = torch.randn(rows, vocab, device=device, requires_grad=True)
    y = torch.randint(0, vocab, (rows,), device=device)

    def step() -> None:
        torch.nn.functional.cross_entropy(x, y).backward()
        x.grad = None

    step()  # a second warm-up: the heap settles at its steady size
    # the best of three windows: one step is long enough that a neighbour's burst on a
    # shared machine can fill a whole window (seen: 0.04 G/s once, 0.2 otherwise)
    best_s = min(timed(step, sync, float(min_time_s)) for _ in range(3))
    return float(rows * vocab / best_s)
