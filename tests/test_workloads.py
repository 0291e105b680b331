"""Calibration microbenchmarks and the built-in training workload, on this CPU, for real.

A tiny model (a Hugging Face config written here) keeps each run to seconds;
the CUDA paths are the same functions and run wherever a GPU is present.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="calibration and workloads need `pip install suanli[torch]`")

from suanli.calibration.profile import best_gemm_tflops
from suanli.catalog.loader import get_accelerator
from suanli.perf.efficiency import default_efficiency

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def test_calibrate_measures_and_perf_uses_the_measured_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from suanli.cli import app

    monkeypatch.setenv("SUANLI_DATA_DIR", str(tmp_path))
    run = CliRunner().invoke(app, ["calibrate", "--quick", "--json", "--save"])
    assert run.exit_code == 0, run.output
    prof = json.loads(run.output)
    assert prof["wall_s"] < 60 and Path(prof["saved_to"]).parent == tmp_path / "profiles"
    for key in ("device", "gemm_tflops", "memory_bandwidth_gbs", "attention", "allreduce_gbs"):
        assert prof[key], key
    assert set(prof["gemm_tflops"]) == {"fp32", "bf16"}
    assert all(v > 0 for by_size in prof["gemm_tflops"].values() for v in by_size.values())
    assert prof["allreduce_gbs"]["16"] > 0  # two real gloo processes
    seq = prof["attention"]["by_seq"]["512"]
    assert seq["fused_tflops"] > 0 and seq["unfused_tflops"] > 0
    acc = get_accelerator(prof["use_as"])
    e = default_efficiency()
    for dtype, best in best_gemm_tflops(prof).items():
        assert acc.peak(dtype) * e.gemm_eff_max == pytest.approx(best)
    assert acc.memory_bandwidth_gbs * e.mem_bw_eff == pytest.approx(prof["memory_bandwidth_gbs"])
    assert "measured" in acc.sources["peak_tflops"]
    with pytest.raises(Exception, match="run suanli calibrate --save"):
        get_accelerator("nothing-here@measured")


def _train(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    argv = [sys.executable, "-m", "suanli.workloads.train_lm", "--model", str(cfg)]
    argv += ["--seq-len", "64", "--micro-batch", "2", "--ckpt-dir", str(tmp_path / "ckpt"), *args]
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_train_lm_checkpoints_on_sigterm_and_resumes(tmp_path: Path) -> None:
    proc = _train(tmp_path, "--steps", "100000")
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:  # let it train a few real steps
        if line.startswith("suanli-metric"):
            seen += 1
            if seen == 3:
                proc.send_signal(signal.SIGTERM)
                break
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0, out
    stopped = int(out.split("checkpoint at step ")[1].split()[0])
    assert 3 <= stopped <= 5  # at most the step in flight, never more
    again = _train(tmp_path, "--steps", str(stopped + 2))
    text, _ = again.communicate(timeout=120)
    assert again.returncode == 0, text
    assert f"at step {stopped}" in text
    summary = json.loads(text.strip().splitlines()[-1].removeprefix("suanli-metric "))
    assert summary["steps"] == stopped + 2 and summary["final_loss"] > 0


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_train_lm_runs_as_a_two_process_gang(tmp_path: Path, parallel: str) -> None:
    from suanli.run.local import free_port

    port = str(free_port())
    procs = [
        _train(
            tmp_path,
            "--steps",
            "3",
            "--parallel",
            parallel,
            env={
                "WORLD_SIZE": "2",
                "RANK": str(r),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    summary = json.loads(outs[0].strip().splitlines()[-1].removeprefix("suanli-metric "))
    assert summary["world_size"] == 2 and summary["parallel"] == parallel
    shards = sorted(f.name for f in (tmp_path / "ckpt").iterdir())
    assert shards == (["rank0.pt", "rank1.pt"] if parallel == "fsdp" else ["rank0.pt"])
