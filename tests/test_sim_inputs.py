"""`suanli simulate`'s input files: every cluster, workload and trace file is validated,
and a wrong one is refused with the file, the line and what was expected (issue 19)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from suanli.sim.spec import (
    SpecError,
    perf_workload,
    read_cluster_yaml,
    read_workload_yaml,
)
from suanli.sim.traces import (
    TraceError,
    read_gavel_trace,
    read_nodes,
    read_openb_nodes,
    read_openb_pods,
    read_sia_workload,
    shared_data_dir,
    sniff,
)
from suanli.yamlfile import line_of as yaml_line

SPECS = Path(__file__).resolve().parent.parent / "benchmarks" / "specs"
POD_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time\n"
)
NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"


def _data() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data (the public traces) is not beside the project")
    return d


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "suanli", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- cluster and workload YAML ------------------------------------------------------


def test_a_typo_in_a_cluster_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    # `gpu: 8` once gave a 0-GPU cluster and "jct mean nan" with exit 0
    p = _write(tmp_path, "c.yaml", "nodes:\n  - {count: 2, gpu_type: h800-sxm, gpu: 8}\n")
    with pytest.raises(SpecError) as info:
        read_cluster_yaml(p)
    msg = str(info.value)
    assert str(p) in msg and "line 2: nodes[0].gpu: unknown key 'gpu'" in msg
    assert "did you mean 'gpus'?" in msg


def test_wrong_types_and_ranges_name_each_line_and_path(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "c.yaml",
        "sites:\n"
        "  - name: bj\n"
        "    pue: high\n"
        "nodes:\n"
        "  - count: 2\n"
        "    gpu_type: h800-sxm\n"
        "    gpus: 8.5\n"
        "  - count: -1\n"
        "    gpu_type: h800-sxm\n"
        "    gpus: '8'\n",
    )
    with pytest.raises(SpecError) as info:
        read_cluster_yaml(p)
    msg = str(info.value)
    assert "line 3: sites[0].pue: Input should be a valid number, got 'high'" in msg
    assert "line 7: nodes[0].gpus: Input should be a valid integer, got 8.5" in msg
    assert "line 8: nodes[1].count: Input should be greater than or equal to 0" in msg
    assert "line 10: nodes[1].gpus: Input should be a valid integer, got '8'" in msg


def test_cluster_rules_across_fields(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "c.yaml",
        "sites: [{name: bj}, {name: bj}]\n"
        "nodes:\n"
        "  - {count: 1, gpu_type: h800-sxm, gpus: 8, site: gz}\n",
    )
    with pytest.raises(SpecError) as info:
        read_cluster_yaml(p)
    msg = str(info.value)
    assert "sites[1].name: 'bj' listed twice" in msg
    assert "line 3: nodes[0].site: 'gz' is not one of the sites listed (bj)" in msg
    chipless = _write(
        tmp_path, "d.yaml", "nodes:\n  - {count: 1, gpu_type: h800-sxm}\n  - {count: 1, gpus: 4}\n"
    )
    with pytest.raises(SpecError) as info:
        read_cluster_yaml(chipless)
    msg = str(info.value)
    assert "line 2: nodes[0]: gpu_type h800-sxm but no gpus" in msg
    assert "line 3: nodes[1]: gpus: 4 but no gpu_type" in msg
    empty = _write(tmp_path, "e.yaml", "nodes:\n  - {count: 0, gpu_type: h800-sxm, gpus: 8}\n")
    with pytest.raises(SpecError, match=r"no nodes"):
        read_cluster_yaml(empty)


def test_a_file_of_the_wrong_kind_says_what_it_looks_like(tmp_path: Path) -> None:
    work = _write(tmp_path, "w.yaml", "jobs:\n  - {model: gpt2-small, tokens: 1e9}\n")
    with pytest.raises(SpecError, match=r"this looks like a workload YAML.*not a cluster YAML"):
        read_cluster_yaml(work)
    cluster = _write(tmp_path, "c.yaml", "nodes:\n  - {count: 1, gpu_type: h800-sxm, gpus: 8}\n")
    with pytest.raises(SpecError, match=r"this looks like a cluster YAML.*not a workload YAML"):
        read_workload_yaml(cluster)
    gavel = _write(tmp_path, "g.yaml", "gavel: {v100: 4}\n")
    with pytest.raises(SpecError, match=r"a Gavel cluster YAML.*simulate gavel --cluster"):
        read_cluster_yaml(gavel)
    scalar = _write(tmp_path, "s.yaml", "garbage\n")
    with pytest.raises(SpecError, match=r"expected a cluster YAML: a mapping with 'nodes:'"):
        read_cluster_yaml(scalar)
    broken = _write(tmp_path, "b.yaml", "nodes:\n  - {count: 1\n")
    with pytest.raises(SpecError, match=r"b\.yaml line 3: not valid YAML"):
        read_cluster_yaml(broken)
    typo = _write(tmp_path, "t.yaml", "node:\n  - {count: 1}\n")
    with pytest.raises(SpecError, match=r"unknown key 'node'; did you mean 'nodes'"):
        read_cluster_yaml(typo)
    with pytest.raises(SpecError, match=r"cannot read"):
        read_cluster_yaml(tmp_path / "missing.yaml")


def test_workload_errors_and_yaml_1_1_numbers(tmp_path: Path) -> None:
    bad = _write(
        tmp_path,
        "w.yaml",
        "jobs:\n"
        "  - {name: a, model: llama-9b, tokens: lots, gpu: 8}\n"
        "  - {name: b, model: gpt2-small, tokens: 1e9, arrival_rate_per_hour: 0}\n"
        "  - {name: b, model: gpt2-small, tokens: 1e9}\n",
    )
    with pytest.raises(SpecError) as info:
        read_workload_yaml(bad)
    msg = str(info.value)
    assert "line 2: jobs[0].model: unknown model 'llama-9b'" in msg
    assert "line 2: jobs[0].tokens: Input should be a valid number, got 'lots'" in msg
    assert "jobs[0].gpu: unknown key 'gpu'; did you mean 'gpus'?" in msg
    assert "line 3: jobs[1].arrival_rate_per_hour: Input should be greater than 0" in msg
    dup = _write(
        tmp_path,
        "d.yaml",
        "jobs:\n  - {name: b, model: gpt2-small, tokens: 1e9}\n"
        "  - {name: b, model: gpt2-small, tokens: 1e9}\n",
    )
    with pytest.raises(SpecError, match=r"line 3: jobs\[1\].name: 'b' used twice"):
        read_workload_yaml(dup)
    # YAML 1.1 reads 2e9 as a string; it is still the number meant
    ok = _write(tmp_path, "ok.yaml", "jobs:\n  - {model: gpt2-small, tokens: 2e9, count: 3}\n")
    tasks, thr = perf_workload(ok, ["h800-sxm"], 0)
    assert len(tasks) == 3 and tasks[0].work == 2e9 and thr[("job0", "h800-sxm")] > 0


def test_yaml_line_walks_the_node_tree() -> None:
    root = yaml.compose("a:\n  b:\n    - x\n    - {c: 1,\n       d: 2}\n")
    assert yaml_line(root, ()) == 1
    assert yaml_line(root, ("a", "b", 0)) == 3
    assert yaml_line(root, ("a", "b", 1, "d")) == 5
    # a key that is not there: the line of the mapping that lacks it
    assert yaml_line(root, ("a", "b", 1, "e")) == 4
    assert yaml_line(None, ("a",)) == 1


def test_the_benchmark_specs_still_load() -> None:
    nodes, sites = read_cluster_yaml(SPECS / "mixed_cluster.yaml")
    assert len(nodes) == 20 and [s.name for s in sites] == ["bj", "gz"]
    assert nodes[0].name == "h800-sxm-0-0" and nodes[0].labels == {"usd_per_gpu_hour": "2.0"}
    assert nodes[0].cpu_milli == 128_000 and nodes[0].memory_mib == 1024 * 1024
    types = sorted({n.gpu_type for n in nodes})
    tasks, thr = perf_workload(SPECS / "mixed_workload.yaml", types, 7)
    assert len(tasks) == 140 and tasks[0].work == 3e9 and tasks[0].cpu_milli == 32_000
    assert {k[0] for k in thr} == {"llama2-7b-ft", "qwen-7b-ft", "gpt2-pretrain"}


# --- CSV traces ---------------------------------------------------------------------


def test_csv_in_the_wrong_slot_says_what_it_is(tmp_path: Path) -> None:
    pods = _write(tmp_path, "pods.csv", POD_HEADER + "p0,1000,1024,1,1000,,LS,Running,0,10,0\n")
    nodes = _write(tmp_path, "nodes.csv", NODE_HEADER + "n0,8000,8192,1,T4\n")
    with pytest.raises(TraceError) as info:
        read_nodes(pods)
    msg = str(info.value)
    assert f"{pods} line 1: this looks like an openb pod list" in msg and "not a node list" in msg
    with pytest.raises(TraceError, match=r"this looks like an openb pod list.*not an openb node"):
        read_openb_nodes(pods)
    with pytest.raises(TraceError, match=r"this looks like an openb node list.*not an openb pod"):
        read_openb_pods(nodes)
    garbage = _write(tmp_path, "g.csv", "garbage\n")
    with pytest.raises(TraceError, match=r"g\.csv line 1: not an openb pod list \(missing col"):
        read_openb_pods(garbage)
    with pytest.raises(TraceError, match=r"empty"):
        read_openb_pods(_write(tmp_path, "e.csv", ""))
    with pytest.raises(TraceError, match=r"no pods"):
        read_openb_pods(_write(tmp_path, "h.csv", POD_HEADER))


def test_csv_rows_are_checked(tmp_path: Path) -> None:
    short = _write(tmp_path, "s.csv", POD_HEADER + "p0,1000,1024\n")
    with pytest.raises(TraceError, match=r"line 2: 3 fields, expected 11"):
        read_openb_pods(short)
    share = _write(tmp_path, "m.csv", POD_HEADER + "p0,1000,1024,1,2000,,LS,Running,0,10,0\n")
    with pytest.raises(TraceError, match=r"line 2: column 'gpu_milli': 2000 is out of range"):
        read_openb_pods(share)
    back = _write(tmp_path, "b.csv", POD_HEADER + "p0,1000,1024,1,500,,LS,Running,10,5,0\n")
    with pytest.raises(TraceError, match=r"deletion_time.*before creation_time"):
        read_openb_pods(back)
    words = _write(tmp_path, "n.csv", NODE_HEADER + "n0,8000,8192,1,T4\nn1,8000,lots,1,T4\n")
    with pytest.raises(TraceError, match=r"line 3: column 'memory_mib': expected a whole number"):
        read_openb_nodes(words)
    twice = _write(tmp_path, "t.csv", NODE_HEADER + "n0,8000,8192,1,T4\nn0,8000,8192,1,T4\n")
    with pytest.raises(TraceError, match=r"line 3: node 'n0' appears twice"):
        read_openb_nodes(twice)
    modelless = _write(tmp_path, "x.csv", NODE_HEADER + "n0,8000,8192,2,\n")
    with pytest.raises(TraceError, match=r"column 'model': empty"):
        read_openb_nodes(modelless)
    sia = _write(tmp_path, "sia.csv", "name,time,application,num_replicas,batch_size\na,1,b,0,8\n")
    with pytest.raises(TraceError, match=r"column 'num_replicas': 0 is out of range"):
        read_sia_workload(sia, {"b": 1.0})


def test_gavel_traces_are_checked(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"line 1: 1 tab-separated field\(s\); expected a Gavel"):
        read_gavel_trace(_write(tmp_path, "g.trace", "garbage\n"))
    with pytest.raises(TraceError, match=r"no jobs"):
        read_gavel_trace(_write(tmp_path, "e.trace", "\n"))
    pods = _write(tmp_path, "p.trace", POD_HEADER + "p0,1000,1024,1,1000,,LS,Running,0,10,0\n")
    with pytest.raises(TraceError, match=r"this looks like an openb pod list.*not a Gavel trace"):
        read_gavel_trace(pods)
    zero = "\t".join(["ResNet-18", "python3 main.py", "--num_steps", "1", "100", "0", "0"])
    with pytest.raises(TraceError, match=r"column 'scale_factor': 0 is out of range"):
        read_gavel_trace(_write(tmp_path, "z.trace", zero + "\n"))
    good = zero[: -len("0")] + "2"
    assert read_gavel_trace(_write(tmp_path, "ok.trace", good + "\n")) == [
        ("ResNet-18", 2, 100.0, 0.0)
    ]


def test_every_shared_file_is_recognised() -> None:
    d = _data()
    kinds = {p.name: (sniff(p) or ("?", ""))[0] for p in d.iterdir()}
    assert kinds["openb_node_list_gpu_node.csv"] == "an openb node list"
    assert kinds["openb_pod_list_multigpu50.csv"] == "an openb pod list"
    assert kinds["alibaba_v2026_spot_gpu_node_info.csv"] == "an Alibaba v2026 node inventory"
    assert kinds["gavel_philly_vc_2869ce_seed0.trace"] == "a Gavel trace"
    assert kinds["sia_placements_all.csv"] == "a Sia placements table"
    with pytest.raises(TraceError, match=r"this looks like an openb pod list"):
        read_nodes(d / "openb_pod_list_default.csv")
    with pytest.raises(TraceError, match=r"this looks like an openb node list"):
        read_gavel_trace(d / "openb_node_list_gpu_node.csv")


# --- the command line ---------------------------------------------------------------


def _refused(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_refuses_bad_cluster_and_workload_files(tmp_path: Path) -> None:
    typo = _write(tmp_path, "c.yaml", "nodes:\n  - {count: 2, gpu_type: h800-sxm, gpu: 8}\n")
    work = SPECS / "mixed_workload.yaml"
    out = simulate(
        "--mode", "replay", "--cluster", str(typo), "--workload", str(work), "--policy", "fifo"
    )
    _refused(out, str(typo), "line 2: nodes[0].gpu: unknown key 'gpu'")
    garbage = _write(tmp_path, "g.trace", "garbage\n")
    cluster = SPECS / "mixed_cluster.yaml"
    out = simulate(
        "--mode", "replay", "--cluster", str(cluster), "--workload", str(garbage), "--policy", "drf"
    )
    _refused(out, "not a workload --mode replay can use")
    out = simulate(
        "--mode", "openb", "--cluster", str(cluster), "--workload", str(work), "--policy", "fifo"
    )
    _refused(out, "a workload YAML; --mode openb replays an openb pod list")
    cpu = _write(tmp_path, "cpu.yaml", "nodes:\n  - {count: 2, cpu: 64}\n")
    out = simulate(
        "--mode", "replay", "--cluster", str(cpu), "--workload", str(work), "--policy", "fifo"
    )
    _refused(out, "the --cluster has no GPUs")


def test_cli_refuses_openb_files_in_the_wrong_slot() -> None:
    d = _data()
    pods, nodes = d / "openb_pod_list_default.csv", d / "openb_node_list_gpu_node.csv"
    for mode in ("openb", "replay"):
        out = simulate(
            "--mode", mode, "--cluster", str(pods), "--workload", str(pods), "--policy", "fifo"
        )
        _refused(out, str(pods), "this looks like an openb pod list", "not a node list")
    out = simulate(
        "--mode", "openb", "--cluster", str(nodes), "--workload", str(nodes), "--policy", "fifo"
    )
    _refused(out, "this looks like an openb node list", "not an openb pod list")
    multi = d / "openb_pod_list_multigpu50.csv"
    out = simulate(
        "--mode", "replay", "--cluster", str(nodes), "--workload", str(multi), "--policy", "fifo"
    )
    _refused(out, "no pod has a run time", "--mode openb")
