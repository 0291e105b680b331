"""The perf model's few global efficiency parameters.

They say how much of a data-sheet peak real software reaches: a large GEMM's
fraction of peak, fused attention's, memory bandwidth's, link and NIC bandwidth's,
how much of the overlappable communication is really hidden, a fixed cost per layer
per pass (kernel launches, framework bookkeeping), the host's costs in a decode step
as the serving engine states them (a launch per tensor-parallel all-reduce where the
step is not a captured graph, a scheduling pass per step, the fixed cost of its own
peer-to-peer all-reduce), and the lower bandwidth that weight-only quantized kernels
(int8/int4) reach. They are global — one value for every chip, model and layout — and
are fitted by ``benchmarks/calibration.py --save``
on ``../shared/calibration``; the fitted values live in ``perf/data/efficiency.yaml``
with the fit's error beside them.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Achievable fractions of peak and fixed costs (see module docstring)."""

    #: fraction of the chip's achievable GEMM rate (peak x its published `matmul_fraction`,
    #: the best of a sweep of shapes) that a model's large GEMMs reach
    gemm_eff_max: float = 0.80
    gemm_io_exposed: float = 0.5  # share of a GEMM's operand traffic not hidden behind math
    attn_eff: float = 0.55  # fraction of peak fused (FlashAttention-style) attention reaches
    mem_bw_eff: float = 0.80  # fraction of HBM/DRAM bandwidth streaming kernels reach
    link_eff: float = 0.75  # fraction of the intra-node link a collective reaches
    nic_eff: float = 0.80  # fraction of the NIC line rate a collective reaches
    latency_scale: float = 1.0  # multiplies the catalog's per-hop network latencies
    #: multiplies the catalog's device-link latency (NVLink, HCCS, PCIe): a step of a
    #: collective inside a node is another path, with other software, than one between
    intra_latency_scale: float = 1.0
    overlap_eff: float = 0.80  # fraction of DP/ZeRO communication hidden behind compute
    tp_overlap_eff: float = 0.80  # fraction of TP collectives hidden when pipelined with GEMMs
    layer_overhead_us: float = 20.0  # fixed cost per layer per forward pass
    #: host cost of launching one tensor-parallel collective in a decode step an engine
    #: launches kernel by kernel; a step replayed as a captured graph (CUDA graphs:
    #: gpt-fast, vLLM, SGLang) launches none of them one by one
    tp_launch_us: float = 10.0
    #: host time a decode step waits for an engine that schedules each step on the host
    #: (`engines.yaml` host_scheduling: vLLM's V0 engine)
    sched_step_us: float = 500.0
    #: fixed cost of one all-reduce inside a node by an engine's own peer-to-peer kernel
    #: (every rank reads its peers' buffers over NVLink: PyTorch's IntraNodeComm that
    #: gpt-fast runs, vLLM's and SGLang's custom all-reduce): the ranks' handshake and
    #: the kernel, one step where NCCL's ring or tree takes several
    peer_ar_us: float = 10.0
    wq_bw_eff: float = 0.80  # weight-only int8/int4 kernels: bandwidth relative to bf16 ones
    workspace_gb: float = 2.0  # allocator slack, library workspaces, communication buffers

    def with_values(self, **values: float) -> Efficiency:
        """A copy with some parameters replaced (used by the calibration fit)."""
        return dataclasses.replace(self, **values)


#: Parameters the calibration fits; the rest are fixed from the literature.
FITTED: tuple[str, ...] = (
    "gemm_eff_max",
    "gemm_io_exposed",
    "attn_eff",
    "mem_bw_eff",
    "link_eff",
    "nic_eff",
    "latency_scale",
    "intra_latency_scale",
    "overlap_eff",
    "tp_overlap_eff",
    "layer_overhead_us",
    "tp_launch_us",
    "sched_step_us",
    "peer_ar_us",
    "wq_bw_eff",
)


@functools.cache
def default_efficiency() -> Efficiency:
    """The fitted parameters shipped with the package (defaults if none were saved)."""
    ref = resources.files("suanli.perf") / "data" / "efficiency.yaml"
    try:
        data: dict[str, Any] = yaml.safe_load(ref.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return Efficiency()
    names = {f.name for f in dataclasses.fields(Efficiency)}
    values = {k: float(v) for k, v in (data.get("parameters") or {}).items() if k in names}
    return Efficiency(**values)
