"""What serve_lm reaches through ONNX Runtime and OpenVINO on this device.

``suanli calibrate --engine onnxruntime --engine openvino`` measures, per engine,
the figures perf's decode model reads for eager PyTorch, so that
``estimate serve --engine NAME`` on ``CHIP@measured`` predicts that engine:

* decode GEMMs over many distinct matrices, fp32 and int8 weights by the engine's
  own compression (`suanli.workloads.onnx_lm`), by inner size K: one exported graph
  of as many [8, K] x [K, rows] products as fill eight times the last-level cache, as
  `memory.gemv_by_k` does for PyTorch;
* decode attention, with serve_lm's path around it: the cache gathered into a
  contiguous array, then the exported `onnx_lm.attend` of each layer of it: the K/V
  bytes' rate and each (sequence, KV head) pair's own cost, as
  `attention.decode_attention` measures them for PyTorch;
* the fixed cost per decoder layer and per step: serve_lm decoding probe models
  too small to cost bytes or FLOPs, with 2 and 6 layers, through the engine
  (`overheads.fixed_costs_us`), with fp32 weights and again with int8 ones. The
  per-step cost holds serve_lm's own work around the graph (the cache gather, the
  mask, the copies in and out).

Everything runs in fp32: the export's precision (ONNX Runtime has no bf16 kernels
for these ops on CPUs; OpenVINO is held to f32 so it measures what it serves).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, cast

from suanli.calibration.attention import DECODE_GEOMETRY, cold_copies, decode_attention_fit
from suanli.calibration.memory import decode_rows, sweep_bytes
from suanli.calibration.overheads import decode_fixed_costs
from suanli.calibration.timing import Budget, Plan, steady, sweep, timed, torch_module

K_SIZES = (512, 1024, 4096)
TOKENS = 8
#: decoder layers of the attention probe's stacked cache (`_decode_attention`), and its
#: timings (sequences, cached tokens): `attention.DECODE_SHAPES`, the long span halved so
#: that a gather of the stacked cache (16.8 MB of K) stays below glibc's largest mmap
#: threshold (`MALLOC_ENV`): at 1,024 tokens each step's gather page-faulted in anew, and
#: a layer took 20-22 ms in one round against 5-7 in another
ATTEND_LAYERS = 2
ATTEND_SHAPES = ((4, 512), (4, 64), (1, 64))


def engine_profile(
    engine: str, plan: Plan, k_sizes: tuple[int, ...] = K_SIZES, sweep_total: int | None = None
) -> dict[str, Any]:
    """Every figure of one engine (the module docstring); raises if it is not installed.
    ``k_sizes`` and ``sweep_total`` (bytes of distinct matrices per K; default eight times the
    last-level cache) shrink the GEMM sweep for a quick look."""
    from suanli.workloads.onnx_lm import OnnxEngine, engine_version

    version = engine_version(engine)  # refuses an engine unknown or not installed
    eng = cast(OnnxEngine, engine)
    tmp = Path(tempfile.mkdtemp(prefix="suanli-calibrate-"))
    try:
        return {
            "version": version,
            "gemv_gbs_by_k": _gemv_by_k(eng, plan, tmp, k_sizes, sweep_total),
            **_decode_attention(eng, plan, tmp),
            **decode_fixed_costs("cpu", plan, "fp32", engine=eng),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _gemv_by_k(
    engine: Any, plan: Plan, tmp: Path, k_sizes: tuple[int, ...], total: int | None
) -> dict[str, dict[str, float]]:
    """fp32 and int8 weights streamed by decode-shaped products, GB/s by K (weight bytes:
    4 per fp32 weight, 1 per int8 one)."""
    from suanli.workloads.onnx_lm import export_module, load_graph

    torch = torch_module()
    total = total or sweep_bytes("cpu", plan)
    budget = Budget(plan.probe_budget_s)
    out: dict[str, dict[str, float]] = {"fp32": {}, "int8": {}}

    class Stack(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self, count: int, rows: int, k: int) -> None:
            super().__init__()
            self.ws = torch.nn.ModuleList(  # no random fill: a GB of it takes seconds
                torch.nn.utils.skip_init(torch.nn.Linear, k, rows, bias=False) for _ in range(count)
            )
            # filled, not random (a GEMM's speed is not its values), but each with its own
            # value: the exporter folds equal initializers into one, read over and over
            for i, w in enumerate(self.ws):
                torch.nn.init.constant_(w.weight, 0.01 * (i + 1))

        def forward(self, x: Any) -> Any:
            return torch.cat([w(x) for w in self.ws], dim=-1)

    def call_s(k: int) -> float:
        rows = decode_rows(k)  # the shapes PyTorch's sweep measures (memory.gemv_by_k)
        count = max(2, total // (rows * k * 4))
        x = torch.randn(TOKENS, k)
        path = export_module(Stack(count, rows, k).eval(), (x,), tmp / f"gemv{k}.onnx", ["x"])
        spent = 0.0
        feed = {"x": x.numpy()}
        for dtype, size in (("fp32", 4), ("int8", 1)):
            run = load_graph(engine, path, dtype.replace("fp32", "none"), keep_head=False)
            t = timed(partial(run, feed), lambda: None, plan.min_time_s, budget)
            out[dtype][str(k)] = round(count * rows * k * size / t / 1e9, 2)
            spent += t
        return spent

    sweep(k_sizes, call_s, lambda k, t: t, lambda k: 1.0, budget)
    return out


def _decode_attention(engine: Any, plan: Plan, tmp: Path) -> dict[str, float]:
    """`attention.decode_attention_fit` through the engine: serve_lm's gather of the
    cache, then the engine's `onnx_lm.attend` (one new token per sequence,
    `attention.DECODE_GEOMETRY`) for each of `ATTEND_LAYERS` layers of one stacked cache,
    sliced inside the graph as `CachedStep` slices it, at `ATTEND_SHAPES` (one graph,
    its sequences and span dynamic). The slice is a copy under ONNX Runtime (a
    Split of the whole cache): one layer fed alone left it out, and the probe read K/V
    about a fifth faster than the exported model does."""
    from suanli.workloads.onnx_lm import attend, export_module, load_graph, pytorch_on_one_thread

    torch = torch_module()

    class Attend(torch.nn.Module):  # type: ignore[name-defined,misc]
        def forward(self, q: Any, k: Any, v: Any, past_k: Any, past_v: Any, mask: Any) -> Any:
            layers = range(past_k.shape[0])
            return torch.stack([attend(q, k, v, past_k[i], past_v[i], mask) for i in layers])

    kv, group, hd = DECODE_GEOMETRY
    nl = ATTEND_LAYERS

    def feed_for(b: int, span: int) -> dict[str, Any]:
        return {
            "q": torch.randn(b, kv * group, 1, hd).numpy(),
            "k": torch.randn(b, kv, 1, hd).numpy(),
            "v": torch.randn(b, kv, 1, hd).numpy(),
            "past_k": torch.randn(nl, b, kv, span, hd).numpy(),
            "past_v": torch.randn(nl, b, kv, span, hd).numpy(),
            "mask": torch.zeros(b, 1, 1, span + 1).numpy(),
        }

    example = feed_for(*ATTEND_SHAPES[1])
    names = list(example)
    axes = {"q": {0: "b"}, "k": {0: "b"}, "v": {0: "b"}, "mask": {0: "b", 3: "total"}}
    axes |= {"past_k": {1: "b", 3: "past"}, "past_v": {1: "b", 3: "past"}}
    inputs = tuple(torch.from_numpy(example[n].copy()) for n in names)
    path = export_module(Attend().eval(), inputs, tmp / "attend.onnx", names, dynamic_axes=axes)
    run = load_graph(engine, path)
    seconds = {}
    total = sweep_bytes("cpu", plan)
    for b, span in ATTEND_SHAPES:
        feed = feed_for(b, span)
        # caches as serve_lm keeps them (twice the span in positions), as many as stream
        # a decode-GEMM sweep's bytes, one a call: the gather reads from DRAM, as a step's
        # does after its weights streamed through (at 64 cached tokens one cache re-read
        # from the LLC made the extra sequences cost less than their bytes' share)
        copies = cold_copies(total, 2 * nl * b * kv * span * hd * 4)
        caches = itertools.cycle(
            [
                tuple(torch.full((nl, b, kv, 2 * span, hd), 0.01 * (i + 1)) for _ in "kv")
                for i in range(copies)
            ]
        )
        idx = torch.arange(b)

        def step(
            feed: dict[str, Any] = feed, caches: Any = caches, span: int = span, idx: Any = idx
        ) -> None:  # serve_lm's gather (`serve_lm.Engine._forward`), on its one thread
            ck, cv = next(caches)
            with pytorch_on_one_thread():
                feed["past_k"] = ck[:, idx, :, :span].contiguous().numpy()
                feed["past_v"] = cv[:, idx, :, :span].contiguous().numpy()
                run(feed)

        seconds[b, span] = steady(step, lambda: None, plan.min_time_s) / nl
        del step, caches  # this shape's caches go before the next shape's are made
    return decode_attention_fit(seconds, 4)
