"""``suanli calibrate``: every microbenchmark of this machine's device, into one profile.

Data sheets give peaks; software reaches a share of them that depends on the
chip, the library and the shapes. The probes measure the rates the perf model
needs, each in a module named after what it measures — `gemm` (dense GEMMs by
dtype and size, the output projection), `memory` (copy, decode-shaped GEMMs),
`attention` (prefill, training, decode), `overheads` (dispatch, fixed decode
costs, eager elementwise work), `loss` (cross-entropy), `allreduce` — each timed
after a warm-up, within a wall budget per probe (`timing`). The CUDA paths
synchronise the device around every timing; they are the same code, run
whenever a GPU is present.

Precision: bf16 is measured first against fp32. Where it is not faster (a CPU
without bf16 instructions computes it on a slow path, ~100x slower), it is
recorded as emulated with its measured rate, and every probe whose dtype
depends on it (the output projection, training attention and elementwise work,
decode) runs in fp32 — ``compute_dtype``, what the workloads' ``--precision
auto`` picks on this device and what perf then predicts with.

PyTorch is an optional extra (``pip install 'suanli[torch]'``); nothing below the
calibration layer imports this module.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from suanli.calibration import children
from suanli.calibration.allreduce import allreduce
from suanli.calibration.attention import attention, decode_attention
from suanli.calibration.gemm import gemm, lm_head_tflops
from suanli.calibration.loss import loss_rate
from suanli.calibration.memory import copy_bandwidth, gemm_call_us, gemv, gemv_by_k
from suanli.calibration.overheads import decode_fixed_costs, dispatch_us, train_elementwise_gbs
from suanli.calibration.timing import Plan, torch_module
from suanli.device import device_name
from suanli.errors import SuanliError
from suanli.workloads import keep_freed_heap


@dataclass
class Profile:
    """What was measured on one device (the ``--json`` contract)."""

    device: str
    device_name: str
    gemm_tflops: dict[str, dict[str, float]] = field(default_factory=dict)  # dtype -> size -> TF
    # the precision the dtype-dependent probes ran in, and why (bf16 only where it is faster)
    compute_dtype: str = "bf16"
    emulated_dtypes: list[str] = field(default_factory=list)
    precision_why: str = ""
    lm_head_tflops: dict[str, float] = field(default_factory=dict)  # hidden -> fwd+bwd TF
    train_elementwise_gbs: float = 0.0  # eager training elementwise work, in perf's bytes
    memory_bandwidth_gbs: float = 0.0
    attention: dict[str, Any] = field(default_factory=dict)
    allreduce_gbs: dict[str, float] = field(default_factory=dict)  # MB -> bus GB/s
    gemv_gbs: dict[str, float] = field(default_factory=dict)  # dtype -> weight GB/s at M=8
    dispatch_us: float = 0.0
    loss_logits_per_s: float = 0.0  # fp32 cross-entropy forward + backward, logits per second
    #: a decode GEMM call's cost whatever its size, dtype -> µs (`memory.gemm_call_us`)
    gemv_call_us: dict[str, float] = field(default_factory=dict)
    # weights streamed by decode-shaped GEMMs over many distinct matrices, the calls' own
    # cost taken out: dtype -> K -> GB/s
    gemv_gbs_by_k: dict[str, dict[str, float]] = field(default_factory=dict)
    decode_attention_gbs: float = 0.0  # K/V bytes a decode step's attention reads per second
    #: what each (sequence, KV head) pair of a decode step's attention costs beyond its
    #: bytes, per layer (`attention.decode_attention_fit`)
    decode_attention_row_us: float = 0.0
    fixed_us: dict[str, float] = field(default_factory=dict)  # per decoder layer, per step
    #: the same with serve_lm's int8 weights, whose GEMM calls cost a fifth of bf16 ones
    #: on one Xeon: weight dtype -> per layer, per step
    fixed_us_by_weight: dict[str, dict[str, float]] = field(default_factory=dict)
    #: serve_lm through ONNX Runtime / OpenVINO: name -> the decode figures above, measured
    #: through that engine (`suanli.calibration.engines`)
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: int = 0
    processes: int = 1  # measured as one of this many processes sharing the CPU
    torch_version: str = ""
    measured_on: str = ""
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def calibrate(
    device: str = "cpu",
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    processes: int = 1,
    engines: tuple[str, ...] = (),
) -> Profile:
    """Run every microbenchmark on ``device`` ("cpu", "cuda:0", ...).

    ``processes`` > 1 measures one of that many processes sharing this CPU, as a
    data-parallel job on it runs: the other copies loop over the same benchmarks
    (each with this process's thread count; not in step with this one, so each
    rate is measured against a mix of its peers' work) while this one measures,
    so every rate is one a rank gets while its peers compete for memory bandwidth
    and caches. Measured alone, a 1-thread profile predicted 2-process DDP 30% too
    fast here. A peer exits when this process goes (its stdin closes), however
    this one ends.
    """
    if processes > 1 and device != "cpu":
        raise SuanliError("--processes is for CPUs: each GPU rank has a device of its own")
    if engines:  # refused before minutes of measuring, not after
        if device != "cpu" or processes > 1:
            raise SuanliError(
                "--engine is measured on the CPU, alone (--device cpu, no --processes)"
            )
        from suanli.workloads.onnx_lm import EngineUnavailableError, check_installed

        for engine in engines:
            try:
                check_installed(engine)
            except (EngineUnavailableError, ValueError) as err:
                raise SuanliError(
                    f"--engine {engine}: {err} (pip install 'suanli[onnx]')"
                ) from None
    torch = torch_module()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SuanliError(f"--device {device}: no CUDA device here (try --device cpu)")
    plan = Plan.quick() if quick else Plan.full()
    start = time.perf_counter()
    peers: list[subprocess.Popen[str]] = []
    try:
        threads = int(torch.get_num_threads())
        for _ in range(processes - 1):
            argv = children.python_call(__name__, "peer", "quick" if quick else "full", threads)
            peers.append(children.start_peer(argv))
        prof = measure(torch, device, plan, progress)
        gone = [peer.returncode for peer in peers if peer.poll() is not None]
        if gone:  # measured without the load it claims: refuse the profile
            raise SuanliError(f"a calibration peer exited {gone[0]} during the measurement")
    finally:
        for peer in peers:
            children.stop(peer)
    if progress:
        progress("all-reduce")
    prof.allreduce_gbs = allreduce(device, plan)  # the ranks' own traffic: measured alone
    for engine in engines:  # serving engines: measured alone, as a server runs
        if progress:
            progress(f"engine {engine}")
        from suanli.calibration.engines import engine_profile

        prof.engines[engine] = engine_profile(engine, plan)
    prof.processes = processes
    prof.wall_s = round(time.perf_counter() - start, 2)
    return prof


def measure(torch: Any, device: str, plan: Plan, progress: Callable[[str], None] | None) -> Profile:
    """Every benchmark but the all-reduce (which needs the CPU to itself), in the heap
    regime train_lm and serve_lm run in (`MALLOC_ENV`): a calibration's and a peer's."""
    keep_freed_heap()
    prof = Profile(device, device_name(device))
    prof.threads = int(torch.get_num_threads())
    prof.torch_version = str(torch.__version__)
    prof.measured_on = time.strftime("%Y-%m-%d")

    def precision() -> None:
        prof.gemm_tflops, verdict = gemm(device, plan)
        prof.compute_dtype = verdict.dtype
        prof.emulated_dtypes = [] if verdict.dtype == "bf16" else ["bf16"]
        prof.precision_why = verdict.reason

    def set_(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        return lambda: setattr(prof, name, fn())

    def dt() -> str:  # read after the GEMM probe has set it
        return prof.compute_dtype

    def decode() -> None:
        for name, figure in decode_figures(device, plan, dt(), progress).items():
            setattr(prof, name, figure)

    steps: list[tuple[str, Callable[[], None]]] = [
        ("GEMM", precision),
        ("LM head", set_("lm_head_tflops", lambda: lm_head_tflops(device, plan, dt()))),
        ("memory", set_("memory_bandwidth_gbs", lambda: copy_bandwidth(device, plan))),
        ("decode", decode),
        (
            "training elementwise",
            set_("train_elementwise_gbs", lambda: train_elementwise_gbs(device, plan, dt())),
        ),
        ("attention", set_("attention", lambda: attention(device, plan, dt()))),
        ("dispatch", set_("dispatch_us", lambda: dispatch_us(device, plan))),
        ("loss", set_("loss_logits_per_s", lambda: loss_rate(device, plan))),
    ]
    for name, step in steps:
        if progress:
            progress(name)
        step()
    return prof


def decode_figures(
    device: str, plan: Plan, dtype: str, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """What perf's decode model reads of this device, by `Profile` field: GEMVs (in the
    dtype serve_lm computes in, ``dtype``, and fp32), a GEMM call's cost, weight rates by
    K, the decode-attention figures and serve_lm's fixed costs. Part of `measure`; a
    benchmark on a host whose memory bandwidth steps between levels (a 2-core EPYC: 16.5,
    20 and 22.5 GB/s, for 10-60 s each) measures them again right before it decodes."""
    out: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("decode GEMV", lambda: {"gemv_gbs": gemv(device, plan, tuple({dtype, "fp32"}))}),
        ("decode GEMM call", lambda: {"gemv_call_us": gemm_call_us(device, plan, dtype)}),
        (
            "decode GEMV by K",
            lambda: {"gemv_gbs_by_k": gemv_by_k(device, plan, dtype, call_us=out["gemv_call_us"])},
        ),
        # the K/V bytes' rate and each (sequence, KV head) pair's cost
        ("decode attention", lambda: decode_attention(device, plan, dtype)),
        # with the compute dtype's weights, and serve_lm's int8 ones
        ("fixed costs", lambda: decode_fixed_costs(device, plan, dtype)),
    ]
    for name, step in steps:
        if progress:
            progress(name)
        out.update(step())
    return out


def peer(plan_name: str, threads: str) -> None:
    """A peer's body (``calibrate --processes N``): the benchmarks in a loop, until its
    group is killed."""
    torch = torch_module()
    torch.set_num_threads(int(threads))
    plan = Plan.quick() if plan_name == "quick" else Plan.full()
    children.guard_peer()
    while True:
        measure(torch, "cpu", plan, None)
