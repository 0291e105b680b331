"""The CLI contract, run as a real subprocess the way scripts will run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TRAIN = [
    "estimate",
    "train",
    "--model",
    "gpt3-175b",
    "--accelerator",
    "a100-80gb",
    "--num-devices",
    "1536",
    "--tp",
    "8",
    "--pp",
    "12",
    "--global-batch",
    "1536",
    "--seq-len",
    "2048",
    "--recompute",
    "full",
]
SERVE = [
    "estimate",
    "serve",
    "--model",
    "llama-3-70b",
    "--accelerator",
    "h100-sxm",
    "--num-devices",
    "4",
    "--tp",
    "4",
    "--weight-dtype",
    "fp8",
    "--batch",
    "64",
    "--input-len",
    "128",
    "--output-len",
    "128",
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "suanli", *args], capture_output=True, text=True, timeout=120
    )


def test_train_json_has_the_contract_fields() -> None:
    out = run(*TRAIN, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in (
        "step_time_s",
        "tokens_per_s",
        "tokens_per_s_per_device",
        "model_tflops_per_device",
        "hardware_tflops_per_device",
        "mfu",
        "hfu",
        "memory_gb",
        "fits_in_memory",
        "breakdown_s",
        "energy_j",
        "cost_usd",
    ):
        assert key in data, key
    for key in ("weights", "gradients", "optimizer", "activations", "total"):
        assert key in data["memory_gb"]
    assert data["layout"]["dp"] == 16  # derived: 1536 / (8 * 12)
    assert data["tokens_per_s"] == pytest.approx(1536 * 2048 / data["step_time_s"])


def test_serve_json_has_the_contract_fields() -> None:
    out = run(*SERVE, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in (
        "ttft_s",
        "tpot_s",
        "output_tokens_per_s",
        "kv_cache_gb",
        "memory_gb",
        "fits_in_memory",
        "max_batch",
    ):
        assert key in data, key


def test_tables_for_people() -> None:
    out = run(*TRAIN)
    assert out.returncode == 0, out.stderr
    assert "Step time breakdown" in out.stdout and "MFU" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tp", "7", "--num-devices", "84"], "tp 7 does not divide the 96 attention heads"),
        (["--tp", "7"], "num-devices 1536 is not a multiple of tp*pp*cp = 7*12*1"),
        (["--dp", "3"], "num-devices 1536 != tp*pp*dp*cp"),
        (["--model", "gpt3-17b"], "unknown model 'gpt3-17b'; did you mean"),
        (["--accelerator", "a100"], "unknown accelerator 'a100'; did you mean"),
        (["--model", "/nonexistent/config.json"], "cannot read model config"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    cmd = list(TRAIN)
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in cmd:
            cmd[cmd.index(flag) + 1] = value
        else:
            cmd += [flag, value]
    out = run(*cmd)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_catalog_list_and_show() -> None:
    for kind in ("accelerators", "models", "networks"):
        out = run("catalog", "list", kind, "--json")
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)) >= 5
    shown = run("catalog", "show", "ascend-910b", "--json")
    assert shown.returncode == 0
    rec = json.loads(shown.stdout)
    assert rec["visible_devices_env"] == "ASCEND_RT_VISIBLE_DEVICES"
    assert rec["disputed"], "910B figures are disputed in hardware_sources.md"
    table = run("catalog", "show", "h100-sxm")
    assert "source" in table.stdout
    assert run("catalog", "show", "h10").returncode == 2


def test_hf_config_by_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "intermediate_size": 5632,
        "vocab_size": 32000,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = run(
        "estimate",
        "train",
        "--model",
        str(tmp_path),
        "--accelerator",
        "a10",
        "--num-devices",
        "2",
        "--global-batch",
        "8",
        "--seq-len",
        "1024",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["step_time_s"] > 0


def test_plan_train_json_contract() -> None:
    out = run(
        "plan",
        "train",
        "--model",
        "llama-2-7b",
        "--tokens",
        "1e10",
        "--accelerator",
        "a100-80gb",
        "--max-devices",
        "16",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"options", "rejected", "candidates_evaluated", "wall_s"}
    opt = data["options"][0]
    for key in (
        "accelerator",
        "num_devices",
        "layout",
        "estimate",
        "time_to_train_s",
        "cost_usd",
        "energy_j",
    ):
        assert key in opt
    assert set(opt["layout"]) >= {
        "tp",
        "pp",
        "dp",
        "cp",
        "ep",
        "vpp",
        "zero",
        "micro_batch",
        "recompute",
        "sequence_parallel",
    }
    assert "mfu" in opt["estimate"]


def test_plan_infeasible_exits_3_with_reason() -> None:
    out = run(
        "plan",
        "train",
        "--model",
        "llama-3.1-405b",
        "--tokens",
        "1e12",
        "--accelerator",
        "h100-sxm",
        "--num-devices",
        "8",
        "--json",
    )
    assert out.returncode == 3
    data = json.loads(out.stdout)
    assert data["options"] == [] and "weights alone" in data["infeasible"]
    human = run(
        "plan",
        "train",
        "--model",
        "llama-3.1-405b",
        "--tokens",
        "1e12",
        "--accelerator",
        "h100-sxm",
        "--num-devices",
        "8",
    )
    assert human.returncode == 3 and "needs at least 11" in human.stderr


def test_plan_serve_and_split_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = run(
        "plan",
        "serve",
        "--model",
        "llama-3-8b",
        "--rate",
        "5",
        "--input-len",
        "512",
        "--output-len",
        "128",
        "--accelerator",
        "h100-sxm",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    opt = json.loads(out.stdout)["options"][0]
    for key in (
        "usd_per_million_output_tokens",
        "ttft_p99_s",
        "tpot_p99_s",
        "slo_attainment",
        "replicas",
        "max_batch",
        "disaggregated",
    ):
        assert key in opt
    split = run(
        "plan",
        "split",
        "--model",
        "llama-3-8b",
        "--edge",
        "jetson-agx-orin-64gb",
        "--cloud",
        "h100-sxm",
        "--uplink-mbps",
        "10",
        "--json",
    )
    assert split.returncode == 0, split.stderr
    data = json.loads(split.stdout)
    assert {"split_after_layer", "latency_s", "edge_energy_j", "transfer_bytes"} <= set(
        data["options"][0]
    )
    assert data["bandwidth_table"]


def test_plan_pool_file_errors_name_lines(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "pool.yaml"
    bad.write_text("pools:\n  - accelerator: h100-sxm\n    count: zero\n")
    out = run("plan", "train", "--model", "llama-2-7b", "--tokens", "1e10", "--pool", str(bad))
    assert out.returncode == 2
    assert "line 3: pools[0].count" in out.stderr


def test_simulate_openb_json(shared_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = shared_dir / "data"
    out = run(
        "simulate",
        "--cluster",
        str(data / "openb_node_list_gpu_node.csv"),
        "--workload",
        str(data / "openb_pod_list_default.csv"),
        "--policy",
        "best-fit",
        "--mode",
        "openb",
        "--json",
        "--plot",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert set(res) >= {"policy", "seeds", "wall_s", "decisions_per_s", "allocation_ratio"}
    # the FGD paper's BestFit at 130%: 93.08% (10 seeds); one seed lands within ~0.5
    assert abs(res["allocation_ratio"]["130"] - 0.9308) < 0.006
    assert (tmp_path / "openb_best-fit.png").exists()
    # at 130% arrived load almost all idle GPU is capacity the pod mix cannot use
    assert 0.5 < res["fragmentation"] <= 1.0


def test_simulate_replay_and_gavel(shared_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster = tmp_path / "c.yaml"
    cluster.write_text(
        "nodes:\n  - {count: 2, gpu_type: a100-80gb, gpus: 8, cpu: 128}\n"
        "  - {count: 2, gpu_type: ascend-910b, gpus: 8, cpu: 192}\n"
    )
    work = tmp_path / "w.yaml"
    work.write_text(
        "jobs:\n  - {name: ft, count: 5, model: gpt2-small, tokens: 1e8, gpus: 4,"
        " arrival_rate_per_hour: 10}\n"
    )
    out = run(
        "simulate",
        "--cluster",
        str(cluster),
        "--workload",
        str(work),
        "--policy",
        "perf-affinity",
        "--mode",
        "replay",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert set(res["jct_s"]) == {"mean", "p50", "p99"} and res["makespan_s"] > 0
    assert set(res["utilization"]) == {"a100-80gb", "ascend-910b"}
    # the table reads as people write: hours, kWh, dollars, no Python dicts
    human = run(
        "simulate", "--cluster", str(cluster), "--workload", str(work),
        "--policy", "perf-affinity", "--mode", "replay",
    )  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert "jct mean" in human.stdout and "kWh" in human.stdout and "$" in human.stdout
    assert "{" not in human.stdout and "utilization a100-80gb" in human.stdout
    gcl = tmp_path / "g.yaml"
    gcl.write_text("gavel: {v100: 4, p100: 4, k80: 4}\n")
    trace = shared_dir / "data" / "gavel_physical_artifact_evaluation.trace"
    out = run(
        "simulate", "gavel", "--trace", str(trace), "--cluster", str(gcl), "--compare", "--json"
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["mode"] == "gavel-rounds" and res["cluster"] == {"v100": 4, "p100": 4, "k80": 4}
    aware, blind = res["mean_jct_h"]["gavel-max-min"], res["mean_jct_h"]["gavel-max-min-agnostic"]
    assert 0 < aware < blind and res["agnostic_over_aware"] == pytest.approx(blind / aware)
    # Gavel's generator, a window of job ids, and a plot
    out = run("simulate", "gavel", "--rate", "3", "--window", "0,30", "--plot", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "gavel-max-min" in out.stdout and (tmp_path / "gavel_jct_cdf.png").stat().st_size > 0
    # deadlines (Gavel's --assign_SLOs) and the policy that meets them at least cost
    out = run(
        "simulate", "gavel", "--rate", "3", "--window", "0,30", "--slo",
        "--policy", "gavel-min-cost-slo", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    seed0 = json.loads(out.stdout)["per_seed"][0]["gavel-min-cost-slo"]
    assert 0 < seed0["slo_attainment"] <= 1 and seed0["cost_usd"] > 0
    # inputs the mode cannot use are refused, with the line and what to do
    typo = tmp_path / "typo.yaml"
    typo.write_text("gavel:\n  v100: 4\n  p100s: 4\n")
    garbage = tmp_path / "garbage.trace"
    garbage.write_text("garbage\n")
    for args, says in (
        (("--trace", str(trace), "--cluster", str(typo)), "line 3: gavel.p100s: unknown key"),
        (("--trace", str(garbage)), "garbage.trace line 1"),
        (("--trace", str(shared_dir / "data" / "openb_pod_list_default.csv")), "openb pod list"),
        (("--rate", "2", "--trace", str(trace)), "either --rate"),
        (("--rate", "2", "--policy", "gavel-min-cost-slo"), "add --slo"),
        (("--trace", str(trace), "--slo"), "not --trace"),
    ):
        bad = run("simulate", "gavel", *args)
        assert bad.returncode == 2 and says in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr
    old = run(
        "simulate", "--cluster", str(gcl), "--workload", str(trace), "--policy", "gavel-max-min"
    )
    assert old.returncode == 2 and "suanli simulate gavel" in old.stderr
    bad = run(
        "simulate", "--cluster", str(cluster), "--workload", str(work), "--policy", "no-such-policy"
    )
    assert bad.returncode == 2 and "unknown policy" in bad.stderr
