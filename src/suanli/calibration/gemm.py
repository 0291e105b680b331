"""GEMM throughput by dtype and size, the training output projection, and which 16-bit
precision this device runs faster than fp32 (the one the workloads and perf then use)."""

from __future__ import annotations

from collections.abc import Callable

from suanli.calibration.timing import (
    DTYPES,
    Budget,
    Plan,
    sweep_in_rounds,
    sync_for,
    torch_module,
)
from suanli.device import Precision, judge

LM_HEAD_HIDDEN = (512, 2048)  # hidden sizes the output projection is measured at
LM_HEAD_TOKENS = 1024  # tokens per timing (a micro-batch's worth)


#: timing windows per size, taken round by round over the sizes a sweep kept
ROUNDS = 3


def gemm_sweep(device: str, plan: Plan, name: str, sizes: tuple[int, ...]) -> dict[str, float]:
    """TFLOP/s of a training layer's GEMMs in dtype ``name``, by size ``n``: the three a
    Linear of an ``n x n`` weight runs over ``n`` tokens (the forward ``x @ w.T``, the
    input gradient ``dy @ w`` and the weight gradient ``dy.T @ x``), the way every
    layer GEMM of a training step comes. On a CPU the three differ: on the closing
    loop's Xeon, one thread, bf16 at 2,048, the forward and input gradient ran at
    1.23-1.25 TFLOP/s and the weight gradient, a transposed left operand, at 0.49; the
    model's own GEMMs ran at 0.70 all told where a lone ``a @ b`` read 1.26-1.38, and
    two-process DDP came out 12-18% fast in six of seven runs (28% in the seventh).

    `ROUNDS` timing windows per size, taken in rounds over the sizes the probe's budget
    affords (`sweep_in_rounds`). In one closing-loop run the median of three
    back-to-back windows read bf16 1,024² at 0.54 TFLOP/s, with 2.64 at 2,048² in the
    same sweep; later, twelve windows of it here read 1.41-1.50 but one (0.76). The
    predicted training step came out 28% slow."""
    torch = torch_module()
    sync = sync_for(torch, device)
    dtype = getattr(torch, DTYPES[name])
    budget = Budget(plan.probe_budget_s)

    def mm_of(n: int) -> Callable[[], object]:
        x = torch.randn(n, n, device=device, dtype=dtype)
        w = torch.randn(n, n, device=device, dtype=dtype)
        dy = torch.randn(n, n, device=device, dtype=dtype)

        def triple() -> None:
            torch.nn.functional.linear(x, w)
            torch.mm(dy, w)
            torch.mm(dy.t(), x)

        return triple

    times = sweep_in_rounds(sizes, mm_of, lambda n: n**3, budget, sync, plan.min_time_s, ROUNDS)
    return {str(n): round(3 * 2 * n**3 / t / 1e12, 4) for n, t in times.items()}


def gemm(device: str, plan: Plan) -> tuple[dict[str, dict[str, float]], Precision]:
    """(dtype -> size -> TFLOP/s, the precision verdict).

    bf16 counts as native where its smallest GEMM beats fp32's (`suanli.device.judge`, the
    rule the workloads' ``--precision auto`` follows); then it is swept like fp32. Else it
    is emulated: its measured rate at the smallest size is recorded, no larger size is
    tried (on an AVX2-only CPU a 4096² bf16 GEMM takes minutes), and the profile's
    ``compute_dtype`` — what perf predicts with — is fp32.
    """
    out = {"fp32": gemm_sweep(device, plan, "fp32", plan.gemm_sizes)}
    first = plan.gemm_sizes[0]
    bf16_first = gemm_sweep(device, plan, "bf16", (first,))
    verdict = judge(device, bf16_first[str(first)], out["fp32"][str(first)], first)
    native = verdict.dtype == "bf16"
    out["bf16"] = gemm_sweep(device, plan, "bf16", plan.gemm_sizes) if native else bf16_first
    if "fp16" in plan.dtypes and device != "cpu":  # CPUs emulate fp16: no profile worth it
        out["fp16"] = gemm_sweep(device, plan, "fp16", plan.gemm_sizes)
    return out, verdict


def lm_head_tflops(device: str, plan: Plan, dtype: str, vocab: int = 32768) -> dict[str, float]:
    """TFLOP/s of a training step's output projection, forward + both backward GEMMs in
    ``dtype``, by hidden size: 1,024 tokens against a vocabulary-wide matrix. Its output
    is a vocabulary per token, a shape that runs well below the square of the same volume
    on a CPU (1.1-1.4 against 2.2-2.7 TFLOP/s in bf16 on one), so it is measured as is:
    `ROUNDS` windows a size, in rounds over the sizes (`sweep_in_rounds`), since a stall
    over a size's one window would set its rate."""
    torch = torch_module()
    sync = sync_for(torch, device)
    dt = getattr(torch, DTYPES[dtype])
    budget = Budget(plan.probe_budget_s)

    def fwd_bwd_of(hidden: int) -> Callable[[], object]:
        x = torch.randn(LM_HEAD_TOKENS, hidden, device=device, dtype=dt, requires_grad=True)
        w = torch.randn(vocab, hidden, device=device, dtype=dt, requires_grad=True)
        grad = torch.randn(LM_HEAD_TOKENS, vocab, device=device, dtype=dt)

        def fwd_bwd() -> None:
            torch.nn.functional.linear(x, w).backward(grad)
            x.grad = w.grad = None

        return fwd_bwd

    times = sweep_in_rounds(
        LM_HEAD_HIDDEN, fwd_bwd_of, lambda h: h, budget, sync, plan.min_time_s, ROUNDS
    )
    return {
        str(h): round(3 * 2 * LM_HEAD_TOKENS * h * vocab / t / 1e12, 4) for h, t in times.items()
    }
