"""Microbenchmarks of this machine's devices with PyTorch: what ``suanli calibrate`` runs.

Data sheets give peaks; software reaches a share of them that depends on the
chip, the library and the shapes. These measure the rates the perf model
needs — dense GEMM throughput by dtype and size, streaming memory bandwidth
(a copy: one read and one write per byte), attention fused (SDPA) and
unfused (matmul, mask, softmax, matmul), all-reduce bus bandwidth across local
processes (gloo on CPUs, NCCL on GPUs), and the fixed cost of dispatching one
small operator — each timed until a minimum wall time has passed, after a
warm-up, so a result is a rate and not a cold start. The CUDA paths
synchronise the device around every timing; they are the same code, run
whenever a GPU is present.

PyTorch is an optional extra (``pip install 'suanli[torch]'``); nothing else
in suanli imports this module.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import queue
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suanli.calibration import children
from suanli.errors import SuanliError


class TorchMissing(SuanliError):
    """PyTorch is not installed."""


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise TorchMissing(
            "calibration runs PyTorch: pip install 'suanli[torch]' (torch==2.13.0)"
        ) from exc
    return torch


@dataclass(frozen=True)
class Plan:
    """How much to measure: sizes, and how long each timing runs."""

    gemm_sizes: tuple[int, ...]
    dtypes: tuple[str, ...]
    copy_mb: int
    attn_seq: tuple[int, ...]
    allreduce_mb: tuple[float, ...]
    min_time_s: float

    @classmethod
    def quick(cls) -> Plan:
        return cls((256, 1024, 2048), ("fp32", "bf16"), 256, (256, 1024), (1.0, 16.0), 0.15)

    @classmethod
    def full(cls) -> Plan:
        return cls(
            (256, 512, 1024, 2048, 4096),
            ("fp32", "bf16", "fp16"),
            1024,
            (256, 1024, 4096),
            (1.0, 16.0, 64.0),
            0.5,
        )


@dataclass
class Profile:
    """What was measured on one device (the ``--json`` contract)."""

    device: str
    device_name: str
    gemm_tflops: dict[str, dict[str, float]] = field(default_factory=dict)  # dtype -> size -> TF
    lm_head_tflops: dict[str, float] = field(default_factory=dict)  # hidden -> bf16 fwd+bwd TF
    train_elementwise_gbs: float = 0.0  # eager training elementwise work, in perf's bytes
    memory_bandwidth_gbs: float = 0.0
    attention: dict[str, Any] = field(default_factory=dict)
    allreduce_gbs: dict[str, float] = field(default_factory=dict)  # MB -> bus GB/s
    gemv_gbs: dict[str, float] = field(default_factory=dict)  # dtype -> weight GB/s at M=8
    dispatch_us: float = 0.0
    loss_logits_per_s: float = 0.0  # fp32 cross-entropy forward + backward, logits per second
    # weights streamed by decode-shaped GEMMs over many distinct matrices: dtype -> K -> GB/s
    gemv_gbs_by_k: dict[str, dict[str, float]] = field(default_factory=dict)
    decode_attention_gbs: float = 0.0  # K/V bytes a decode step's attention reads per second
    fixed_us: dict[str, float] = field(default_factory=dict)  # per decoder layer, per step
    threads: int = 0
    processes: int = 1  # measured as one of this many processes sharing the CPU
    torch_version: str = ""
    measured_on: str = ""
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
LOSS_LOGITS_BYTES = 128 * 2**20  # fp32 logits of a step: 1,024 tokens x a 32k vocabulary
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int8pack_mm")
LM_HEAD_HIDDEN = (512, 2048)  # hidden sizes the output projection is measured at
TRAIN_ATTN_TOKENS = 1024  # tokens per training-attention timing (a micro-batch's worth)


def _timed(fn: Callable[[], object], sync: Callable[[], None], min_time_s: float) -> float:
    """Seconds per call: one warm-up, then repeated until ``min_time_s`` has passed."""
    fn()
    sync()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time_s:
            return elapsed / n


def _sync_for(torch: Any, device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def device_name(device: str) -> str:
    torch = _torch()
    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(device))
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def gemm(device: str, plan: Plan) -> dict[str, dict[str, float]]:
    torch = _torch()
    sync = _sync_for(torch, device)
    out: dict[str, dict[str, float]] = {}
    for name in plan.dtypes:
        dtype = getattr(torch, _DTYPES[name])
        if device == "cpu" and name == "fp16":
            continue  # CPUs have no fp16 GEMM units worth a profile; PyTorch emulates it
        rates = {}
        for n in plan.gemm_sizes:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)

            def mm(a: Any = a, b: Any = b) -> Any:
                return torch.mm(a, b)

            t = _timed(mm, sync, plan.min_time_s)
            rates[str(n)] = round(2 * n**3 / t / 1e12, 4)
        out[name] = rates
    return out


def lm_head_tflops(device: str, plan: Plan, vocab: int = 32768) -> dict[str, float]:
    """TFLOP/s of a training step's output projection, forward + both backward GEMMs in
    bf16, by hidden size: 1,024 tokens against a vocabulary-wide matrix. Its output is
    a vocabulary per token, a shape that runs well below the square of the same volume
    on a CPU (1.1-1.4 against 2.2-2.7 TFLOP/s here), so it is measured as it is."""
    torch = _torch()
    sync = _sync_for(torch, device)
    out = {}
    for hidden in LM_HEAD_HIDDEN:
        x = torch.randn(TRAIN_ATTN_TOKENS, hidden, device=device, dtype=torch.bfloat16)
        w = torch.randn(vocab, hidden, device=device, dtype=torch.bfloat16)
        x.requires_grad_()
        w.requires_grad_()
        grad = torch.randn(TRAIN_ATTN_TOKENS, vocab, device=device, dtype=torch.bfloat16)

        def fwd_bwd(x: Any = x, w: Any = w, grad: Any = grad) -> None:
            torch.nn.functional.linear(x, w).backward(grad)
            x.grad = w.grad = None

        flops = 3 * 2 * TRAIN_ATTN_TOKENS * hidden * vocab
        out[str(hidden)] = round(flops / _timed(fwd_bwd, sync, plan.min_time_s) / 1e12, 4)
    return out


def gemv(device: str, plan: Plan, tokens: int = 8) -> dict[str, float]:
    """GB/s at which a decode-shaped GEMM (``tokens`` rows against a 64 MB weight) reads it."""
    torch = _torch()
    sync = _sync_for(torch, device)
    out = {}
    for name in ("bf16", "fp32"):
        dtype = getattr(torch, _DTYPES[name])
        w = torch.randn(64 * 2**20 // (2 if name == "bf16" else 4) // 1024, 1024, dtype=dtype)
        w = w.to(device)
        x = torch.randn(tokens, 1024, device=device, dtype=dtype)

        def mv(x: Any = x, w: Any = w) -> Any:
            return torch.nn.functional.linear(x, w)

        t = _timed(mv, sync, plan.min_time_s)
        out[name] = round(w.numel() * w.element_size() / t / 1e9, 2)
    return out


def last_level_cache_bytes(root: str = "/sys/devices/system/cpu") -> int:
    """Bytes of last-level cache this process can reach: every distinct cache of the
    highest level over the CPUs it may run on (an EPYC has an L3 per core complex, a
    two-socket Xeon one per socket), from sysfs; 0 where sysfs does not say."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    caches: dict[tuple[int, str], int] = {}  # (level, CPUs that share it) -> bytes
    for cpu in cpus:
        for index in glob.glob(f"{root}/cpu{cpu}/cache/index*"):
            with contextlib.suppress(OSError, ValueError):
                level = int(Path(index, "level").read_text())
                if Path(index, "type").read_text().strip() == "Instruction":
                    continue
                shared = Path(index, "shared_cpu_list").read_text().strip()
                text = Path(index, "size").read_text().strip().upper()
                unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
                caches[(level, shared)] = int(text.rstrip("KMG")) * unit
    if not caches:
        return 0
    top = max(level for level, _ in caches)
    return sum(size for (level, _), size in caches.items() if level == top)


def sweep_bytes(device: str, plan: Plan) -> int:
    """Bytes of distinct matrices a decode-GEMM sweep streams: twice the last-level cache
    (a GPU's L2 is tens of MB: 128 MB), at least 64 MB, at most 1 GB or an eighth of RAM."""
    floor = (64 if plan.copy_mb <= 256 else 96) * 2**20
    if device.startswith("cuda"):
        return max(floor, 128 * 2**20)
    import psutil

    cap = min(2**30, psutil.virtual_memory().total // 8)
    return int(min(cap, max(floor, 2 * last_level_cache_bytes())))


def gemv_by_k(device: str, plan: Plan, tokens: int = 8) -> dict[str, dict[str, float]]:
    """GB/s at which decode-shaped GEMMs stream *many distinct* weights: dtype -> K -> GB/s.

    A decode step reads each of a model's matrices once, none still in cache; small
    ones stream slower (per-call cost, shorter rows). The set per K is twice the
    last-level cache (`sweep_bytes`), so none is re-read from it: a 64 MB set on a
    CPU with hundreds of MB of L3 streamed 17 GB/s where serve_lm's decode got 11.
    ``int8`` is the weight-only kernel serve_lm uses on CPUs (``_weight_int8pack_mm``):
    here it streams its bytes at half bf16's rate or less, so half the bytes buy little.
    """
    torch = _torch()
    sync = _sync_for(torch, device)
    total = sweep_bytes(device, plan)
    int8 = device == "cpu" and hasattr(torch, "_weight_int8pack_mm")
    out: dict[str, dict[str, float]] = {"bf16": {}, **({"int8": {}} if int8 else {})}
    for k in (512, 1024, 4096):
        rows = min(4 * k, 16 * 2**20 // (2 * k))  # at most 16 MB a matrix
        count = max(2, total // (rows * k * 2))
        x = torch.randn(tokens, k, dtype=torch.bfloat16, device=device)
        # filled, not random: a GB of randn takes seconds, and a GEMM's speed is not the values'
        ws = [
            torch.full((rows, k), 0.01, dtype=torch.bfloat16, device=device) for _ in range(count)
        ]

        def sweep(ws: Any = ws, x: Any = x) -> None:
            for w in ws:
                torch.nn.functional.linear(x, w)

        out["bf16"][str(k)] = round(
            count * rows * k * 2 / _timed(sweep, sync, plan.min_time_s) / 1e9, 2
        )
        del ws
        if int8:
            qs = [torch.full((rows, k), 3, dtype=torch.int8) for _ in range(count)]
            scale = torch.ones(rows, dtype=torch.bfloat16)

            def sweep8(qs: Any = qs, x: Any = x, scale: Any = scale) -> None:
                for q in qs:
                    torch._weight_int8pack_mm(x, q, scale)

            out["int8"][str(k)] = round(
                count * rows * k / _timed(sweep8, sync, plan.min_time_s) / 1e9, 2
            )
            del qs
    return out


def decode_attention_gbs(device: str, plan: Plan) -> float:
    """GB/s of K/V a decode step's attention reads, with serve_lm's kernel.

    One new token per sequence against its cache (4 sequences, 8 KV heads of 128,
    4 query heads each, 1024 cached tokens: Llama-3-8B's geometry), read from the
    cache in place as the engine does. On a CPU these batched small GEMMs reach a
    fraction of copy bandwidth; a GPU's fused decode kernels come near it.
    """
    torch = _torch()
    from suanli.workloads.serve_lm import _decode_attention

    sync = _sync_for(torch, device)
    b, kv, group, hd, span = 4, 8, 4, 128, 1024
    k, v = (torch.randn(b, kv, 2 * span, hd, dtype=torch.bfloat16, device=device) for _ in "kv")
    q = torch.randn(b, kv * group, 1, hd, dtype=torch.bfloat16, device=device)
    mask = torch.ones(b, span, dtype=torch.bool, device=device)

    def step() -> None:
        _decode_attention(q, k[:, :, :span], v[:, :, :span], mask)

    return round(2 * b * kv * span * hd * 2 / _timed(step, sync, plan.min_time_s) / 1e9, 2)


def train_elementwise_gbs(device: str, plan: Plan) -> float:
    """The rate, in perf's count of bytes, at which eager PyTorch runs a training layer's
    elementwise work (norms, RoPE, activation, residuals, autocast's weight casts).

    perf counts the bytes a fused kernel would move; eager PyTorch makes several passes
    (RoPE alone: chunk, four products, a difference, a sum, a concatenation, a cast), so
    on a CPU this work ran at a third of the copy rate. Measured on train_lm's own
    decoder layer (the catalog's tiny model), forward + backward under bf16 autocast:
    the profiler's time of every operator that is neither a GEMM nor attention, against
    what perf counts for that layer. Per-operator dispatch is inside this time, so perf
    does not add its per-layer fixed cost on top where this is measured.
    """
    torch = _torch()
    from torch.profiler import ProfilerActivity, profile

    from suanli.catalog.loader import get_model
    from suanli.workloads.train_lm import Block, rope_inv_freq, rope_tables

    arch = get_model("tiny-llama-40m")
    seq, batch = 256, TRAIN_ATTN_TOKENS // 256
    blk = Block(arch).to(device)
    x = torch.randn(batch, seq, arch.hidden, device=device, requires_grad=True)
    grad = torch.randn(batch, seq, arch.hidden, device=device)
    cos, sin = rope_tables(seq, rope_inv_freq(arch.head_dim).to(device))

    def step() -> None:
        with torch.autocast(torch.device(device).type, torch.bfloat16):
            y = blk(x, cos, sin)
        y.backward(grad)
        x.grad = None
        for w in blk.parameters():
            w.grad = None

    for _ in range(3):
        step()
    rounds = max(3, int(plan.min_time_s / 0.02))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    with profile(activities=activities) as prof:
        for _ in range(rounds):
            step()
    elementwise_us = sum(
        e.self_device_time_total if device != "cpu" else e.self_cpu_time_total
        for e in prof.key_averages()
        if e.key not in GEMM_OPS and "scaled_dot_product" not in e.key
    )
    seconds = elementwise_us / rounds / 1e6
    return round(float(_counted_elementwise_bytes(arch, seq, batch) / seconds / 1e9), 3)


def _counted_elementwise_bytes(arch: Any, seq: int, batch: int) -> float:
    """What perf counts for one such layer (elementwise + weight casts), in bytes: its
    estimate of that layer alone (a 1-layer model, a vocabulary too small to matter) on
    a stand-in device of 1 GB/s."""
    import dataclasses

    from suanli.catalog.loader import get_accelerator
    from suanli.perf import TrainLayout, estimate_train, make_system
    from suanli.perf.efficiency import default_efficiency

    e = default_efficiency()
    one = dataclasses.replace(arch, layers=1, vocab=8, tied_embeddings=False)
    acc = dataclasses.replace(get_accelerator("a100-80gb"), memory_bandwidth_gbs=1.0)
    lay = TrainLayout(micro_batch=batch, global_batch=batch, seq_len=seq, autocast_weights=True)
    est = estimate_train(one, make_system(acc), lay, e, check=False)
    return (est.breakdown_s["elementwise"] + est.breakdown_s["weight_casts"]) * 1e9 * e.mem_bw_eff


def fixed_costs_us(device: str, plan: Plan) -> dict[str, float]:
    """The fixed cost of serve_lm's decode, per layer and per step, in microseconds.

    Eager PyTorch pays per operator (dispatch, a GEMM's set-up, the engine's own
    Python) whatever the tensor sizes; on a CPU that is a large share of a small
    model's decode step, and perf's bandwidth terms do not see it. Measured on
    probe models too small to cost bytes or FLOPs (hidden 64), with 2 and 6
    layers: the difference is the per-layer cost, the rest the per-step cost.
    """
    torch = _torch()
    from suanli.catalog.types import ModelArch
    from suanli.workloads.serve_lm import Engine, Request
    from suanli.workloads.train_lm import GPT

    engines = {}
    for layers in (2, 6):
        arch = ModelArch(
            name="fixed-cost-probe",
            display_name="calibration probe",
            hidden=64,
            layers=layers,
            heads=2,
            kv_heads=1,
            head_dim=32,
            ffn=128,
            vocab=256,
            gated_mlp=True,
            tied_embeddings=False,
            max_seq_len=512,
            sources={"hidden": "calibration probe: too small to cost bytes or FLOPs"},
        )
        torch.manual_seed(0)
        model = GPT(arch).to(device=device, dtype=torch.bfloat16).eval()
        engines[layers] = Engine(model, arch, 8, 512, torch.bfloat16, device)
    rounds: dict[int, list[float]] = {2: [], 6: []}
    for _ in range(3 if plan.min_time_s < 0.3 else 7):  # alternated, so drift hits both alike
        for layers, eng in engines.items():
            for i in range(8):
                eng.waiting.put(Request([i + 1] * 64, 120, 0.0))
            eng.step()  # prefill
            for _ in range(5):
                eng.step()
            start, n = time.perf_counter(), 40
            for _ in range(n):
                eng.step()
            rounds[layers].append((time.perf_counter() - start) / n * 1e6)
            while eng.active:
                eng.step()
    # the median round, as a workload's mean step sees the same noise
    per_step = {layers: statistics.median(ts) for layers, ts in rounds.items()}
    layer = max(0.0, (per_step[6] - per_step[2]) / 4)
    return {"layer": round(layer, 1), "step": round(max(0.0, per_step[2] - 2 * layer), 1)}


def copy_bandwidth(device: str, plan: Plan) -> float:
    """GB/s of a large copy, counting the read and the write (STREAM's convention)."""
    torch = _torch()
    sync = _sync_for(torch, device)
    n = plan.copy_mb * 2**20 // 4
    src = torch.ones(n, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = _timed(lambda: dst.copy_(src), sync, plan.min_time_s)
    return round(2 * n * 4 / t / 1e9, 2)


def attention(device: str, plan: Plan, heads: int = 8, head_dim: int = 64) -> dict[str, Any]:
    """Causal attention, fused (SDPA) and unfused, in TFLOP/s of the causal work; and
    fused forward + backward in bf16, as mixed-precision training runs it
    (``train_tflops``, in perf's count: 3.5 x the causal forward)."""
    torch = _torch()
    sync = _sync_for(torch, device)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    out: dict[str, Any] = {"heads": heads, "head_dim": head_dim, "by_seq": {}}
    for seq in plan.attn_seq:
        q, k, v = (torch.randn(1, heads, seq, head_dim, device=device, dtype=dtype) for _ in "qkv")
        mask = torch.full((seq, seq), float("-inf"), device=device, dtype=dtype).triu(1)

        def fused(q: Any = q, k: Any = k, v: Any = v) -> Any:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        def unfused(q: Any = q, k: Any = k, v: Any = v, mask: Any = mask) -> Any:
            s = (q @ k.transpose(-1, -2)) / head_dim**0.5 + mask
            return torch.softmax(s, dim=-1) @ v

        flops = 2 * 2 * heads * seq * seq * head_dim / 2  # QK^T and PV, causal half
        tf = {
            "fused_tflops": flops / _timed(fused, sync, plan.min_time_s) / 1e12,
            "unfused_tflops": flops / _timed(unfused, sync, plan.min_time_s) / 1e12,
        }
        tf["fused_speedup"] = tf["fused_tflops"] / tf["unfused_tflops"]
        tf["train_tflops"] = _attention_train_tflops(
            torch, device, sync, plan, seq, heads, head_dim
        )
        out["by_seq"][str(seq)] = {k: round(v, 4) for k, v in tf.items()}
    return out


def _attention_train_tflops(
    torch: Any, device: str, sync: Callable[[], None], plan: Plan, seq: int, heads: int, hd: int
) -> float:
    """Fused causal SDPA forward + backward in bf16 over ``TRAIN_ATTN_TOKENS`` tokens: on a
    CPU its cost per token matters as much as per score, so it is timed at each length."""
    batch = max(1, TRAIN_ATTN_TOKENS // seq)
    q, k, v = (
        torch.randn(batch, heads, seq, hd, device=device, dtype=torch.bfloat16, requires_grad=True)
        for _ in "qkv"
    )
    grad = torch.randn_like(q)

    def fwd_bwd() -> None:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    flops = 3.5 * 0.5 * 4 * batch * heads * seq * seq * hd  # perf's count, see perf.train
    return float(flops / _timed(fwd_bwd, sync, plan.min_time_s) / 1e12)


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
    threads = _torch().get_num_threads()
    argv = children.python_call(
        __name__, "_loss_rate_here", device, rows, vocab, plan.min_time_s, threads
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


def _loss_rate_here(device: str, rows_: str, vocab_: str, min_time_s: str, threads: str) -> float:
    """`loss_rate`'s child (arguments as a command line gives them)."""
    rows, vocab = int(rows_), int(vocab_)
    torch = _torch()
    torch.set_num_threads(int(threads))
    sync = _sync_for(torch, device)
    x = torch.randn(rows, vocab, device=device, requires_grad=True)
    y = torch.randint(0, vocab, (rows,), device=device)

    def step() -> None:
        torch.nn.functional.cross_entropy(x, y).backward()
        x.grad = None

    step()  # a second warm-up: the heap settles at its steady size
    # the best of three windows: one step is long enough that a neighbour's burst on a
    # shared machine can fill a whole window (seen: 0.04 G/s once, 0.2 otherwise)
    best_s = min(_timed(step, sync, float(min_time_s)) for _ in range(3))
    return float(rows * vocab / best_s)


def dispatch_us(device: str, plan: Plan) -> float:
    """Microseconds to dispatch one tiny operator: the framework's fixed cost per op."""
    torch = _torch()
    sync = _sync_for(torch, device)
    x = torch.ones(8, device=device)

    def ten() -> None:
        y = x
        for _ in range(10):
            y = y + 1.0

    return round(_timed(ten, sync, plan.min_time_s) / 10 * 1e6, 2)


def _allreduce_worker(
    rank: int, world: int, port: int, device: str, sizes: list[float], q: Any
) -> None:
    torch = _torch()
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    dev = f"cuda:{rank}" if backend == "nccl" else "cpu"
    sync = _sync_for(torch, dev)
    out = {}
    for mb in sizes:
        x = torch.ones(int(mb * 2**20 // 4), device=dev)
        # every rank must run the same number of all-reduces, or one waits for a partner
        # that has moved on: time one, agree on the largest count, then run that many
        dist.all_reduce(x)
        sync()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        sync()
        n = torch.tensor([max(1, math.ceil(0.2 / max(time.perf_counter() - t0, 1e-6)))])
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(int(n.item())):
            dist.all_reduce(x)
        sync()
        t = (time.perf_counter() - t0) / int(n.item())
        # bus bandwidth: what each link carries in a ring, the figure NCCL's tests report
        out[f"{mb:g}"] = round(2 * (world - 1) / world * x.numel() * 4 / t / 1e9, 3)
    if rank == 0:
        q.put(out)
    dist.destroy_process_group()


def allreduce(device: str, plan: Plan, world: int = 2) -> dict[str, float]:
    """All-reduce bus bandwidth across ``world`` local processes (one GPU each on CUDA)."""
    torch = _torch()
    import torch.multiprocessing as mp

    if device.startswith("cuda") and torch.cuda.device_count() < world:
        return {}  # one GPU: no all-reduce to measure
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(
            target=_allreduce_worker, args=(r, world, port, device, list(plan.allreduce_mb), q)
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                result: dict[str, float] = q.get(timeout=0.5)
                break
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    why = f"a worker exited {dead[0]}" if dead else "no result in 300 s"
                    raise SuanliError(f"all-reduce benchmark failed: {why}") from None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return result


def calibrate(
    device: str = "cpu",
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    processes: int = 1,
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
    torch = _torch()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SuanliError(f"--device {device}: no CUDA device here (try --device cpu)")
    plan = Plan.quick() if quick else Plan.full()
    start = time.perf_counter()
    peers: list[subprocess.Popen[str]] = []
    try:
        for _ in range(processes - 1):
            peers.append(children.start_peer(quick, int(torch.get_num_threads())))
        prof = _measure(torch, device, plan, progress)
        gone = [peer.returncode for peer in peers if peer.poll() is not None]
        if gone:  # measured without the load it claims: refuse the profile
            raise SuanliError(f"a calibration peer exited {gone[0]} during the measurement")
    finally:
        for peer in peers:
            children.stop(peer)
    if progress:
        progress("all-reduce")
    prof.allreduce_gbs = allreduce(device, plan)  # the ranks' own traffic: measured alone
    prof.processes = processes
    prof.wall_s = round(time.perf_counter() - start, 2)
    return prof


def _measure(
    torch: Any,
    device: str,
    plan: Plan,
    progress: Callable[[str], None] | None,
) -> Profile:
    """Every benchmark but the all-reduce (which needs the CPU to itself)."""
    prof = Profile(device, device_name(device))
    prof.threads = int(torch.get_num_threads())
    prof.torch_version = str(torch.__version__)
    prof.measured_on = time.strftime("%Y-%m-%d")
    steps: list[tuple[str, Callable[[], None]]] = [
        ("GEMM", lambda: setattr(prof, "gemm_tflops", gemm(device, plan))),
        ("LM head", lambda: setattr(prof, "lm_head_tflops", lm_head_tflops(device, plan))),
        ("memory", lambda: setattr(prof, "memory_bandwidth_gbs", copy_bandwidth(device, plan))),
        ("decode GEMV", lambda: setattr(prof, "gemv_gbs", gemv(device, plan))),
        ("decode GEMV by K", lambda: setattr(prof, "gemv_gbs_by_k", gemv_by_k(device, plan))),
        (
            "decode attention",
            lambda: setattr(prof, "decode_attention_gbs", decode_attention_gbs(device, plan)),
        ),
        ("fixed costs", lambda: setattr(prof, "fixed_us", fixed_costs_us(device, plan))),
        (
            "training elementwise",
            lambda: setattr(prof, "train_elementwise_gbs", train_elementwise_gbs(device, plan)),
        ),
        ("attention", lambda: setattr(prof, "attention", attention(device, plan))),
        ("dispatch", lambda: setattr(prof, "dispatch_us", dispatch_us(device, plan))),
        ("loss", lambda: setattr(prof, "loss_logits_per_s", loss_rate(device, plan))),
    ]
    for name, step in steps:
        if progress:
            progress(name)
        step()
    return prof
