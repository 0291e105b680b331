"""train_lm's GPT exported to ONNX with a KV cache, run by ONNX Runtime or OpenVINO.

On CPUs and edge devices people serve through ONNX Runtime or OpenVINO, not eager
PyTorch; serve_lm's ``--engine onnxruntime|openvino`` runs the same network through
them so their rates can be measured, predicted and compared.

One graph does both phases (`CachedStep`): ``ids`` and ``pos`` [B, T] are the new
tokens and their positions, ``past_k``/``past_v`` [layers, B, KV heads, P, head dim]
the cache of the P positions before them, ``mask`` [B, 1, T, P + T] an additive
mask (0 or -1e9: padding of shorter sequences in a batch, and causality among the
new tokens). It returns the logits and the new positions' keys and values, which
the caller writes into its cache: prefill is B = 1, P = 0, T = the prompt; decode
is T = 1 for every active sequence.

int8 weights are stored by each engine's own compression: ONNX Runtime's
``MatMulNBits`` (8 bits, symmetric blocks of 128 input channels; at accuracy level
4 it quantizes the activations on the fly and multiplies in int8) and OpenVINO's
NNCF (``compress_weights``, INT8_SYM per output channel, decompressed inside the
matmul). Both leave the output projection in fp32, as serve_lm does.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from suanli.perf.engines import EXPORT_ENGINES
from suanli.workloads.train_lm import GPT, Block, _rope

OnnxEngine = Literal["onnxruntime", "openvino"]
ONNX_ENGINES = EXPORT_ENGINES
MASKED = -1e9  # additive mask: exp() of it is 0 in fp32, and no row is all masked
OPSET = 18


class EngineUnavailableError(RuntimeError):
    """The engine's Python package is not installed here."""


class CachedStep(nn.Module):
    """One cached forward step of a `GPT` (the module docstring's signature)."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.gpt
        x = m.embed(ids)
        b, t = ids.shape[0], ids.shape[1]
        ang = pos.to(torch.float32)[..., None] * m.inv_freq  # type: ignore[operator]
        cos, sin = ang.cos()[:, None], ang.sin()[:, None]  # [B, 1, T, hd/2]
        new_k, new_v = [], []
        for i, blk in enumerate(cast(list[Block], list(m.blocks))):
            y = _rms(blk.norm1, x)
            q = blk.q(y).reshape(b, t, blk.nh, blk.hd).transpose(1, 2)
            kv = blk.kv(y).reshape(b, t, 2, blk.nkv, blk.hd)
            k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            new_k.append(k)
            new_v.append(v)
            att = attend(q, k, v, past_k[i], past_v[i], mask)
            x = x + blk.o(att.transpose(1, 2).reshape(b, t, -1))
            u = blk.up(_rms(blk.norm2, x))
            if blk.gated:
                g, u = u.chunk(2, dim=-1)
                u = torch.nn.functional.silu(g) * u
            else:
                u = torch.nn.functional.gelu(u)
            x = x + blk.down(u)
        logits: torch.Tensor = m.head(_rms(m.norm, x))
        return logits, torch.stack(new_k), torch.stack(new_v)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Attention of the new queries [B, heads, T, hd] over the cache and the new keys and
    values [B, KV heads, P or T, hd]: [B, heads, T, hd]. Each KV head is read once for
    its group of query heads (GQA reuse, as serve_lm's own decode kernel)."""
    b, nh, t, hd = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
    nkv = k.shape[1]
    kc = torch.cat([past_k, k], dim=2)  # [B, KV, P+T, hd]
    vc = torch.cat([past_v, v], dim=2)
    qg = q.reshape(b, nkv, (nh // nkv) * t, hd)
    scores = qg @ kc.transpose(-1, -2) * hd**-0.5  # [B, KV, group*T, S]
    scores = scores.reshape(b, nh, t, -1) + mask
    att = torch.softmax(scores, dim=-1).reshape(b, nkv, (nh // nkv) * t, -1) @ vc
    return att.reshape(b, nh, t, hd)


def _rms(norm: nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` spelled out: the TorchScript exporter has no ``aten::rms_norm``."""
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * norm.weight if norm.weight is not None else y


def example_inputs(gpt: GPT, batch: int = 2, new: int = 3, past: int = 4) -> tuple[Any, ...]:
    """Inputs of the shapes `CachedStep` takes (for export and for tests)."""
    blk = cast(Block, gpt.blocks[0])
    layers = len(gpt.blocks)
    ids = torch.randint(0, gpt.embed.num_embeddings, (batch, new))
    pos = (past + torch.arange(new))[None].repeat(batch, 1)
    cache = (layers, batch, blk.nkv, past, blk.hd)
    causal = torch.ones(new, past + new).tril(past) > 0
    mask = torch.where(causal, 0.0, MASKED)[None, None].repeat(batch, 1, 1, 1)
    return ids, pos, torch.randn(cache), torch.randn(cache), mask


def export_module(
    module: nn.Module,
    inputs: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Path:
    """``module`` traced on ``inputs`` into an ONNX file: the TorchScript exporter, whose
    seconds beat the dynamo exporter's ~20 s, at opset 18."""
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on shapes turned Python ints, and the exporter's on dynamo
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def export(gpt: GPT, path: Path) -> Path:
    """Write `CachedStep` of ``gpt`` (fp32) to ``path`` with batch, new and past
    lengths dynamic."""
    axes: dict[str, dict[int, str]] = {
        "ids": {0: "batch", 1: "new"},
        "pos": {0: "batch", 1: "new"},
        "past_k": {1: "batch", 3: "past"},
        "past_v": {1: "batch", 3: "past"},
        "mask": {0: "batch", 2: "new", 3: "total"},
        "logits": {0: "batch", 1: "new"},
        "new_k": {1: "batch", 3: "new"},
        "new_v": {1: "batch", 3: "new"},
    }
    return export_module(
        CachedStep(gpt.float().eval()),
        example_inputs(gpt),
        path,
        ["ids", "pos", "past_k", "past_v", "mask"],
        ["logits", "new_k", "new_v"],
        axes,
    )


#: MatMulNBits computes with int8 activations (4; 0: dequantize to fp32 first), the
#: setting ONNX Runtime documents for CPU speed
ACCURACY_LEVEL = 4
HEAD_NAMES = ("/head/MatMul", "logits")  # the output projection, as each engine names it


def quantize_onnxruntime(src: Path, dst: Path, keep_head: bool = True) -> Path:
    """int8 weights, symmetric per block of 128 input channels (``MatMulNBits``, bits=8,
    int8 products at `ACCURACY_LEVEL`); the output head stays fp32."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # a line a node
    model = onnx.load(str(src))
    head = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name in HEAD_NAMES]
    quant = MatMulNBitsQuantizer(
        model,
        bits=8,
        block_size=128,
        is_symmetric=True,
        accuracy_level=ACCURACY_LEVEL,
        nodes_to_exclude=head if keep_head else [],
    )
    quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def _compress_openvino(model: Any, keep_head: bool = True) -> Any:
    """NNCF weight compression: int8 per output channel, the output head left alone."""
    try:
        import nncf
    except ImportError as err:
        raise EngineUnavailableError(
            "nncf (OpenVINO's int8 weight compression) is not installed"
        ) from err
    nncf.set_log_level(logging.ERROR)  # its statistics table and progress bar
    head = [  # OpenVINO names the op that yields an output after the output
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "MatMul" and op.get_friendly_name() in HEAD_NAMES
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bar has no off switch
        return nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT8_SYM,
            ignored_scope=nncf.IgnoredScope(names=head) if head and keep_head else None,
        )


Session = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _package(engine: str) -> Any:
    """The engine's Python package (its import name is the engine's name)."""
    if engine not in ONNX_ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ONNX_ENGINES)}")
    try:
        return importlib.import_module(engine)
    except ImportError as err:
        raise EngineUnavailableError(f"{engine} is not installed") from err


def engine_version(engine: str) -> str:
    """The installed engine's version; `EngineUnavailableError` if it is not installed."""
    pkg = _package(engine)
    return str(pkg.get_version() if engine == "openvino" else pkg.__version__)


#: what each engine's int8 path imports beyond the engine
INT8_NEEDS = {"onnxruntime": ("onnx", "onnx_ir"), "openvino": ("nncf",)}


def check_installed(engine: str) -> str:
    """The engine's version, once it and what its int8 path needs are importable;
    `EngineUnavailableError` naming what is missing otherwise."""
    version = engine_version(engine)
    for module in INT8_NEEDS[engine]:
        if importlib.util.find_spec(module) is None:
            raise EngineUnavailableError(f"{module} ({engine}'s int8 path) is not installed")
    return version


def load_graph(
    engine: OnnxEngine, path: Path, quantize: str = "none", keep_head: bool = True
) -> Session:
    """An ONNX file under ``engine`` on this CPU with torch's thread count, fp32 (or int8
    weights by the engine's own compression): a call from feeds to outputs."""
    if engine == "onnxruntime":
        ort = _package(engine)
        if quantize == "int8":
            path = quantize_onnxruntime(path, path.with_suffix(".int8.onnx"), keep_head)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # idle pool threads would spin-wait for work, taking the cores serve_lm's own
        # thread (and any other engine in the process) needs between graph runs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda feed: sess.run(None, feed)
    ov = _package(engine)
    core = ov.Core()
    model = core.read_model(str(path))
    if quantize == "int8":
        model = _compress_openvino(model, keep_head)
    config = {
        "INFERENCE_NUM_THREADS": _threads(),
        # f32, as the graph was exported: a bf16-capable CPU would otherwise switch
        # precision under our feet
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = request.infer(feed, share_inputs=True)  # no copy of the cache going in
        return [out[o] for o in compiled.outputs]

    return run


@contextlib.contextmanager
def pytorch_on_one_thread() -> Iterator[None]:
    """PyTorch's own work beside an engine's graph (serve_lm's cache gather, mask and
    argmax) on one thread: its OpenMP workers spin-wait after each parallel operator and
    would take the cores the engine's threads are about to run on. OpenVINO decoding
    tiny-llama-40m on a 2-core EPYC ran its graph in 9.3-9.8 ms a step beside them,
    6.5-6.6 with OMP_WAIT_POLICY=PASSIVE."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _threads() -> int:
    return torch.get_num_threads()


class Runner:
    """One exported step under an engine: ``run(ids, pos, past_k, past_v, mask)``."""

    def __init__(self, engine: OnnxEngine, path: Path, quantize: str = "none") -> None:
        self._run, self.version = load_graph(engine, path, quantize), engine_version(engine)

    def run(
        self,
        ids: np.ndarray,
        pos: np.ndarray,
        past_k: np.ndarray,
        past_v: np.ndarray,
        mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feed = {"ids": ids, "pos": pos, "past_k": past_k, "past_v": past_v, "mask": mask}
        logits, k, v = self._run(feed)
        return logits, k, v


def runner_for(gpt: GPT, engine: OnnxEngine, quantize: str = "none") -> Runner:
    """Export ``gpt`` to a private temporary directory and load it under ``engine``."""
    tmp = Path(tempfile.mkdtemp(prefix="suanli-onnx-"))
    try:
        return Runner(engine, export(gpt, tmp / "step.onnx"), quantize)
    finally:  # both engines hold the graph in memory once loaded
        shutil.rmtree(tmp, ignore_errors=True)
