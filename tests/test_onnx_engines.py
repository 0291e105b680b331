"""serve_lm through ONNX Runtime and OpenVINO: the exported graph matches eager PyTorch."""

from __future__ import annotations

import argparse

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (the onnx extra)")
pytest.importorskip("openvino", reason="OpenVINO is not installed (the onnx extra)")

from suanli.catalog.types import ModelArch  # noqa: E402
from suanli.workloads.onnx_lm import CachedStep, example_inputs, runner_for  # noqa: E402
from suanli.workloads.serve_lm import Engine, Request, build  # noqa: E402
from suanli.workloads.train_lm import GPT  # noqa: E402

#: small enough to export in a second: GQA (4 query heads on 2 KV heads), gated MLP
ARCH = ModelArch(
    name="test-gqa",
    display_name="test GQA",
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    head_dim=16,
    ffn=128,
    vocab=256,
    gated_mlp=True,
    tied_embeddings=False,
    max_seq_len=256,
    sources={"hidden": "a test shape"},
)
ENGINES = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(ARCH).float().eval()


def test_the_cached_step_is_the_model(gpt: GPT) -> None:
    """A prefill through the cached step gives the full forward's logits, and decoding the
    last token against the cache of the others gives its row again."""
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        full = gpt(ids)
        empty = torch.zeros(2, 1, 2, 0, 16)
        mask = torch.where(torch.ones(9, 9).tril() > 0, 0.0, -1e9)[None, None]
        logits, k, v = CachedStep(gpt)(ids, torch.arange(9)[None], empty, empty, mask)
        assert torch.allclose(logits, full, atol=1e-5)
        last, _, _ = CachedStep(gpt)(
            ids[:, 8:], torch.tensor([[8]]), k[:, :, :, :8], v[:, :, :, :8], mask[:, :, 8:]
        )
    assert torch.allclose(last[0, 0], full[0, 8], atol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_matches_eager_in_fp32_and_int8(gpt: GPT, engine: str) -> None:
    inputs = example_inputs(gpt)
    with torch.no_grad():
        ref = [t.numpy() for t in CachedStep(gpt)(*inputs)]
    feed = [t.numpy() for t in inputs]
    fp32 = runner_for(gpt, engine).run(*feed)  # type: ignore[arg-type]
    for got, want in zip(fp32, ref, strict=True):
        assert got.shape == want.shape
        assert abs(got - want).max() < 1e-4
    int8 = runner_for(gpt, engine, "int8").run(*feed)  # type: ignore[arg-type]
    scale = abs(ref[0]).max()
    assert abs(int8[0] - ref[0]).max() < 0.05 * scale  # int8 weights: within 5% of the range
    assert abs(int8[0] - ref[0]).max() > 0  # and it did quantize


@pytest.mark.parametrize("engine", ENGINES)
def test_serve_lm_decodes_the_same_tokens_through_each_engine(gpt: GPT, engine: str) -> None:
    """Continuous batching with prompts of different lengths (the mask's padding) and a
    request admitted while others decode: the same greedy tokens as eager PyTorch."""

    def run(backend: object | None) -> list[list[int]]:
        model = gpt if backend is None else None
        eng = Engine(model, ARCH, 3, 64, torch.float32, "cpu", backend)  # type: ignore[arg-type]
        reqs = [Request(list(range(5, 5 + n)), 6, 0.0) for n in (3, 11, 7)]
        late = Request([40, 41, 42, 43], 5, 0.0)
        eng.waiting.put(reqs[0])
        eng.waiting.put(reqs[1])
        eng.step()
        eng.step()
        eng.waiting.put(reqs[2])
        eng.waiting.put(late)
        while not all(r.done.done() for r in [*reqs, late]):
            eng.step()
        return [r.out for r in [*reqs, late]]

    want = run(None)
    assert run(runner_for(gpt, engine)) == want  # type: ignore[arg-type]


def test_the_graph_sees_the_cache_in_whole_blocks_and_pytorch_on_one_thread(gpt: GPT) -> None:
    """Each new input shape makes OpenVINO prepare its nodes again, so the cached positions
    go to the graph in blocks of `GRAPH_BLOCK_TOKENS` (never past the cache): a step's
    shapes change once a block. PyTorch's work around the graph runs on one thread, so its
    spinning workers leave the cores to the engine's; its thread count is back after."""
    from suanli.workloads.serve_lm import GRAPH_BLOCK_TOKENS

    runner = runner_for(gpt, "onnxruntime")
    pasts: list[int] = []
    threads: list[int] = []

    class Spy:
        def run(self, ids: object, pos: object, past_k: object, *rest: object) -> object:
            pasts.append(past_k.shape[3])  # type: ignore[attr-defined]
            threads.append(torch.get_num_threads())
            return runner.run(ids, pos, past_k, *rest)  # type: ignore[arg-type]

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        max_len = 40  # not a multiple of the block: the last block is cut at the cache's end
        eng = Engine(None, ARCH, 2, max_len, torch.float32, "cpu", Spy())  # type: ignore[arg-type]
        req = Request(list(range(5, 10)), 30, 0.0)
        eng.waiting.put(req)
        while not req.done.done():
            eng.step()
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    decode = pasts[1:]  # after the prefill (no past)
    assert pasts[0] == 0
    assert all(p % GRAPH_BLOCK_TOKENS == 0 or p == max_len for p in decode)
    assert set(decode) == {16, 32, max_len}
    assert set(threads) == {1}


def test_an_onnx_engine_refuses_bf16_and_gpus() -> None:
    ns = argparse.Namespace(
        model="tiny-llama-40m",
        ckpt=None,
        quantize="none",
        precision="bf16",
        slots=1,
        max_len=16,
        seed=0,
        engine="openvino",
    )
    with pytest.raises(SystemExit, match="fp32 export"):
        build(ns)
    # the engine's own rule, before the generic "no CUDA device here"
    with pytest.raises(SystemExit, match="runs on the CPU here"):
        build(argparse.Namespace(**{**vars(ns), "precision": "fp32", "device": "cuda"}))
