"""Precision chosen by measurement, probes within a budget, and perf's fp32 training:
what keeps calibrate and the workloads usable on a CPU that emulates bf16."""

from __future__ import annotations

import pytest

from suanli.calibration.timing import Budget, Plan, sweep
from suanli.catalog.loader import get_accelerator, get_model
from suanli.perf import TrainLayout, estimate_train, make_system


def test_a_sweep_stops_growing_sizes_the_budget_cannot_afford() -> None:
    """Sizes grow while a warm-up and two calls of the next, scaled by its work from the
    last call, fit what is left; the first size is measured whatever it costs."""
    seen: list[int] = []

    def call_s(n: int) -> float:  # what the calls "took", without taking it
        seen.append(n)
        return {256: 0.01, 1024: 0.2, 2048: 1.6}[n]

    def run(budget_s: float) -> dict[str, float]:
        seen.clear()
        return sweep(
            (256, 1024, 2048), call_s, lambda n, t: n / t, lambda n: n**3, Budget(budget_s)
        )

    # 1024 is expected to take 0.01 x 64 s a call, 2048 0.2 x 8 s: three calls of each
    assert list(run(5.0)) == ["256", "1024", "2048"] and seen == [256, 1024, 2048]
    assert list(run(3.0)) == ["256", "1024"] and seen == [256, 1024]  # 4.8 s > 3
    assert list(run(1.0)) == ["256"] and seen == [256]  # 1.92 s > 1
    assert run(0.0) == {"256": 256 / 0.01}  # the first size always
    assert Plan.quick().probe_budget_s * 11 < 60  # eleven probes in a --quick minute


def test_a_stall_over_gemm_windows_never_sets_a_sizes_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The GEMM probe times each size once per round over the sizes and keeps its fastest
    window: a stall across consecutive windows (what closing-loop runs met) reaches a
    size once or twice, never its rate. The windows' times are scripted in the order they
    are taken; the GEMMs themselves run (tiny)."""
    from suanli.calibration import gemm as probe
    from suanli.calibration import timing

    order: list[int] = []
    stalled = {0, 1, 2, 3}  # the first round, and the first window of the second

    def window(fn: object, sync: object, min_time_s: float, budget: object = None) -> float:
        i = len(order)
        order.append(i)
        return 1e-3 * (3.0 if i in stalled else 1.0)

    monkeypatch.setattr(timing, "timed", window)
    # sizes whose rates at these times differ in the 4 decimals the profile keeps
    plan = Plan((128, 256, 512), ("fp32",), 8, (8,), (1.0,), 0.0, 10.0)
    got = probe.gemm_sweep("cpu", plan, "fp32", plan.gemm_sizes)
    assert len(order) == 3 * probe.ROUNDS
    assert got == {str(n): round(3 * 2 * n**3 / 1e-3 / 1e12, 4) for n in (128, 256, 512)}
    assert min(got.values()) > 0
    # the training output projection's probe, likewise (a small vocabulary: the shapes
    # are real, the windows scripted)
    order.clear()
    head = probe.lm_head_tflops("cpu", plan, "fp32", vocab=64)
    assert len(order) == len(probe.LM_HEAD_HIDDEN) * probe.ROUNDS
    tokens = probe.LM_HEAD_TOKENS
    assert head == {str(h): round(6 * tokens * h * 64 / 1e-3 / 1e12, 4) for h in (512, 2048)}


def test_the_gemm_probe_times_a_training_linears_three_gemms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A training layer's GEMMs come as a Linear's forward, input gradient and weight
    gradient, and on a CPU the last (a transposed left operand) runs at half the others'
    rate: the probe times all three, not one ``a @ b`` of contiguous operands."""
    import torch

    from suanli.calibration import gemm as probe

    calls: list[str] = []
    mm, linear = torch.mm, torch.nn.functional.linear

    def spy_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append("mm" if a.is_contiguous() else "mm, left operand transposed")
        return mm(a, b)

    def spy_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        calls.append("linear")
        return linear(x, w)

    monkeypatch.setattr(torch, "mm", spy_mm)
    monkeypatch.setattr(torch.nn.functional, "linear", spy_linear)
    plan = Plan((32,), ("fp32",), 8, (8,), (1.0,), 0.0, 10.0)
    got = probe.gemm_sweep("cpu", plan, "fp32", plan.gemm_sizes)
    assert set(got) == {"32"} and got["32"] > 0
    assert calls[:3] == ["linear", "mm", "mm, left operand transposed"]
    assert len(calls) % 3 == 0 and set(calls) == set(calls[:3])


def test_fp32_training_is_a_layout_perf_predicts() -> None:
    """Where bf16 is emulated the workloads train in fp32: perf takes that layout, with
    fp32 activations (twice the bytes), no autocast casts, fp32 gradients."""
    model, acc = get_model("tiny-llama-40m"), get_accelerator("a100-80gb")
    system = make_system(acc)
    base = {"micro_batch": 4, "global_batch": 4, "seq_len": 256}
    fp32 = estimate_train(model, system, TrainLayout(dtype="fp32", **base))
    bf16 = estimate_train(model, system, TrainLayout(autocast_weights=True, **base))
    m32, m16 = fp32.memory_gb, bf16.memory_gb
    # the layers' activations double; the fp32 logits were fp32 already
    logits_gb = 4 * 256 * model.vocab * 4 / 1e9
    assert m32["activations"] - logits_gb == pytest.approx(2 * (m16["activations"] - logits_gb))
    assert fp32.breakdown_s["weight_casts"] == 0 < bf16.breakdown_s["weight_casts"]
    # mixed precision and plain fp32 both hold 16 bytes of state per parameter
    state = ("weights", "gradients", "optimizer")
    assert sum(m32[k] for k in state) == pytest.approx(sum(m16[k] for k in state))
    assert fp32.step_time_s > bf16.step_time_s  # an A100's fp32 peak is a sixteenth of bf16's


def test_the_catalog_is_data_only_measured_names_resolve_above_it(tmp_path: object) -> None:
    from suanli.calibration.profile import resolve_accelerator
    from suanli.errors import UnknownNameError

    with pytest.raises(UnknownNameError):
        get_accelerator("amd-epyc-2t@measured")  # the catalog never reads profiles
    with pytest.raises(Exception, match="run suanli calibrate --save"):
        resolve_accelerator("amd-epyc-2t@measured", tmp_path)  # type: ignore[arg-type]
    assert resolve_accelerator("A100-80GB") is get_accelerator("a100-80gb")


def test_workloads_and_the_catalog_import_nothing_above_them() -> None:
    """The layering DESIGN.md states, checked in a fresh interpreter: importing the
    catalog, perf or a workload's helpers loads no calibration, service or store module."""
    import subprocess
    import sys

    code = (
        "import sys, suanli.catalog.loader, suanli.perf, suanli.device, suanli.workloads\n"
        "bad = [m for m in sys.modules if m.startswith(('suanli.calibration', 'suanli.service',"
        " 'suanli.store', 'suanli.api'))]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_precision_auto_follows_the_measurement_and_the_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("torch", reason="measuring a precision needs PyTorch")
    from suanli.device import BF16_ENV, choose_precision

    monkeypatch.delenv(BF16_ENV, raising=False)
    got = choose_precision("cpu")
    assert got.bf16_tflops is not None and got.fp32_tflops is not None
    assert got.dtype == ("bf16" if got.bf16_tflops > got.fp32_tflops else "fp32")
    assert "CPU flags" in got.reason
    monkeypatch.setenv(BF16_ENV, "emulated")
    forced = choose_precision("cpu")
    assert forced.dtype == "fp32" and BF16_ENV in forced.reason


@pytest.mark.parametrize(
    ("bf16", "fp32", "forced", "picked"),
    [
        (0.27, 0.13, False, "bf16"),  # AVX512-BF16 here: 2x
        (0.0003, 0.04, False, "fp32"),  # AVX2-only EPYC: bf16 ~100x slower
        (0.13, 0.13, False, "fp32"),  # not faster is not worth it
        (0.27, 0.13, True, "fp32"),  # SUANLI_BF16=emulated wins over the measurement
    ],
)
def test_one_rule_picks_the_precision_for_workloads_and_calibration(
    monkeypatch: pytest.MonkeyPatch, bf16: float, fp32: float, forced: bool, picked: str
) -> None:
    from suanli.device import BF16_ENV, judge

    if forced:
        monkeypatch.setenv(BF16_ENV, "emulated")
    else:
        monkeypatch.delenv(BF16_ENV, raising=False)
    got = judge("cpu", bf16, fp32)
    assert got.dtype == picked and f"bf16 {bf16:.3g} vs fp32 {fp32:.3g}" in got.reason
    assert (BF16_ENV in got.reason) == forced


def test_the_service_runs_without_pytorch() -> None:
    """`pip install -e .` has no PyTorch (an extra), and `suanli up` must start: the
    service, its API, controllers and CLI import no torch (the replica does, in its own
    process)."""
    import subprocess
    import sys

    code = (
        "import sys, suanli.service.up, suanli.api.app, suanli.cli, suanli.service.services\n"
        "print([m for m in ('torch', 'onnxruntime', 'openvino') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
