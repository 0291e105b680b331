"""serve_lm's model under eager PyTorch, ONNX Runtime and OpenVINO on this CPU.

    python benchmarks/onnx_engines.py [--model tiny-llama-40m] [--batch 8] [--prompt 256]

For each engine and weight precision (fp32; int8 weight-only: PyTorch's
``_weight_int8pack_mm``, ONNX Runtime's MatMulNBits, OpenVINO's NNCF), the same
seeded model serves through serve_lm's engine:

* prefill: one prompt of ``--prompt`` tokens, tokens per second;
* decode: ``--batch`` sequences, 64 new tokens each, tokens per second (the median
  of three rounds);
* agreement with eager fp32: the largest difference of the prompt's last logits
  (relative to their range) and whether the greedy continuations are the same.

Prints a table with each rate's ratio to eager PyTorch fp32, and writes
benchmarks/out/onnx_engines.{json,png}. Needs the ``torch`` and ``onnx`` extras.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

OUT = Path(__file__).parent / "out"
ENGINES = ("torch", "onnxruntime", "openvino")


def build_engine(model: str, engine: str, quantize: str, slots: int, max_len: int) -> Any:
    from suanli.workloads.serve_lm import build

    ns = argparse.Namespace(
        model=model,
        ckpt=None,
        quantize=quantize,
        precision="fp32",  # what the exports run; eager fp32 beside them
        slots=slots,
        max_len=max_len,
        seed=0,
        engine=engine,
    )
    return build(ns)


def measure(eng: Any, batch: int, prompt: int, new: int = 64) -> dict[str, Any]:
    import torch

    from suanli.calibration.timing import timed
    from suanli.workloads.serve_lm import decode_rate

    ids, pos = (
        torch.tensor([[(7 * i) % 250 + 3 for i in range(prompt)]]),
        torch.arange(prompt)[None],
    )

    def prefill() -> Any:  # the prompt through the graph into slot 0's cache (overwritten later)
        with torch.inference_mode():
            return eng._forward(ids, pos, [0])

    # warmed up and repeated: a first run pays the engine's set-up for a new shape
    prefill_s = timed(prefill, lambda: None, 1.0)
    last = prefill()[0, -1].float()
    rate, outs = decode_rate(eng, batch, 64, new)
    return {
        "prefill_tokens_per_s": prompt / prefill_s,
        "decode_tokens_per_s": rate,
        "last_logits": last,
        "greedy": outs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="tiny-llama-40m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=256)
    args = ap.parse_args(argv)
    missing = [m for m in ("torch", "onnxruntime", "openvino") if not importlib.util.find_spec(m)]
    if missing:
        print(f"SKIP: {', '.join(missing)} not installed (pip install 'suanli[torch,onnx]')")
        return 0
    import torch

    console = Console(width=150)
    rows: list[dict[str, Any]] = []
    ref: dict[str, Any] | None = None
    cases = [(e, q) for e in ENGINES for q in ("none", "int8")]
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("engines", total=len(cases))
        for engine, quantize in cases:
            bar.update(task, description=f"{engine} {quantize}")
            eng = build_engine(
                args.model, engine, quantize, max(args.batch, 1), args.prompt + 64 + 2
            )
            got = measure(eng, args.batch, args.prompt)
            if ref is None:
                ref = got
            diff = float((got["last_logits"] - ref["last_logits"]).abs().max())
            span = float(ref["last_logits"].max() - ref["last_logits"].min())
            rows.append(
                {
                    "engine": engine,
                    "weights": "int8" if quantize == "int8" else "fp32",
                    "prefill_tokens_per_s": round(got["prefill_tokens_per_s"], 1),
                    "decode_tokens_per_s": round(got["decode_tokens_per_s"], 1),
                    "max_logit_diff_of_range": float(f"{diff / span:.3g}"),
                    "same_greedy_tokens": got["greedy"] == ref["greedy"],
                }
            )
            bar.advance(task)
    base = rows[0]
    t = Table(
        title=f"{args.model} on this CPU ({torch.get_num_threads()} threads): prefill "
        f"{args.prompt} tokens, decode {args.batch} sequences"
    )
    for col in (
        "engine",
        "weights",
        "prefill tok/s",
        "x eager",
        "decode tok/s",
        "x eager",
        "max |Δlogit| / range",
        "same greedy tokens",
    ):
        t.add_column(col, justify="left" if col in ("engine", "weights") else "right")
    for r in rows:
        t.add_row(
            r["engine"],
            r["weights"],
            f"{r['prefill_tokens_per_s']:,.0f}",
            f"{r['prefill_tokens_per_s'] / base['prefill_tokens_per_s']:.2f}",
            f"{r['decode_tokens_per_s']:,.0f}",
            f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}",
            f"{r['max_logit_diff_of_range']:.2e}",
            "yes" if r["same_greedy_tokens"] else "no",
        )
    console.print(t)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "onnx_engines.json").write_text(
        json.dumps({"model": args.model, "rows": rows}, indent=2)
    )
    plot(rows, OUT / "onnx_engines.png", args.model)
    console.print(f"wrote {OUT / 'onnx_engines.json'} and {OUT / 'onnx_engines.png'}")
    return 0


def plot(rows: list[dict[str, Any]], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['engine']}\n{r['weights']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in (
        (axes[0], "prefill_tokens_per_s", "prefill tokens/s"),
        (axes[1], "decode_tokens_per_s", "decode tokens/s"),
    ):
        ax.bar(labels, [r[key] for r in rows], color=["#4c72b0", "#8fb0e0"] * 3)
        ax.set_title(f"{model}: {title}")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
