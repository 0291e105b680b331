"""Storage tiers in the catalog, and what checkpointing to them costs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from suanli.catalog import StorageTier, get_model, get_storage_tier, storage_tiers
from suanli.catalog.loader import _SOURCED_STORAGE_FIELDS, _storage_tier
from suanli.errors import CatalogFileError, InvalidLayoutError, UnknownNameError
from suanli.perf.checkpoint import (
    checkpoint_bytes,
    checkpoint_bytes_per_param,
    checkpoint_seconds,
    storage_bandwidth_gbs,
)
from suanli.perf.shape import shape_of

SRC = Path(__file__).resolve().parents[1] / "src" / "suanli"
#: llama-2-7b by hand: 32 x (4*4096^2 attention + 3*4096*11008 MLP + 2*4096 norms)
#: + 2 x 32000*4096 (embedding, untied head) + 4096 (final norm)
LLAMA2_7B_PARAMS = 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 2 * 32000 * 4096 + 4096


def _tier(**kw: object) -> StorageTier:
    base: dict[str, object] = dict(
        name="t",
        display_name="t",
        kind="parallel-fs",
        write_gbs_per_node=10.0,
        read_gbs_per_node=20.0,
        latency_ms=100.0,
        sources={},
        aggregate_gbs=25.0,
    )
    base.update(kw)
    return StorageTier(**base)  # type: ignore[arg-type]


# --- catalog ------------------------------------------------------------------------


def test_tiers_cover_local_parallel_fs_and_object() -> None:
    kinds = {t.kind for t in storage_tiers().values()}
    assert kinds == {"local", "parallel-fs", "object"}
    assert sum(t.kind == "parallel-fs" for t in storage_tiers().values()) >= 2  # managed + on-prem
    assert {"local-nvme", "fsx-lustre-p1000", "ddn-ai400x2-turbo", "s3-standard"} <= set(
        storage_tiers()
    )


@pytest.mark.parametrize("name", sorted(storage_tiers()))
def test_every_storage_number_has_a_source(name: str) -> None:
    t = storage_tiers()[name]
    assert re.fullmatch(r"[a-z0-9]+(?:[.-][a-z0-9]+)*", name)
    assert t.display_name and t.notes
    for field in _SOURCED_STORAGE_FIELDS:
        value = getattr(t, field)
        if value is not None:
            assert isinstance(value, float) and value > 0, (name, field, value)
            assert t.sources.get(field, "").strip(), f"{name}.{field} has no source"
    assert set(t.sources) <= set(_SOURCED_STORAGE_FIELDS)
    assert set(t.disputed) <= set(_SOURCED_STORAGE_FIELDS)
    # a shared file system either states its aggregate or how it scales
    if t.kind == "parallel-fs":
        assert (t.aggregate_gbs is None) != (t.aggregate_gbs_per_tib is None)


def test_figures_are_the_published_ones() -> None:
    s3 = get_storage_tier("s3-standard")
    assert s3.write_gbs_per_node == 12.5  # 100 Gb/s single-instance ceiling
    assert s3.aggregate_gbs == pytest.approx(3500 * 8 * 2**20 / 1e9, abs=0.05)
    assert s3.aggregate_read_gbs == pytest.approx(5500 * 8 * 2**20 / 1e9, abs=0.05)
    assert 100 <= s3.latency_ms <= 200
    assert "estimate" in s3.sources["aggregate_gbs"]
    fsx = get_storage_tier("fsx-lustre-p1000")
    assert fsx.aggregate_gbs is None and fsx.aggregate_gbs_per_tib == 1.0
    nvme = get_storage_tier("local-nvme")
    assert nvme.read_gbs_per_node > nvme.write_gbs_per_node  # NAND writes slower
    assert nvme.disputed  # sources disagree on the PM1733's read figure
    assert not nvme.shared and s3.shared and fsx.shared


def test_storage_tier_lookup() -> None:
    assert get_storage_tier(" S3-Standard ").name == "s3-standard"
    with pytest.raises(UnknownNameError, match="s3-standard") as err:
        get_storage_tier("s3-standrd")
    assert err.value.kind == "storage tier"
    assert "s3-standard" in err.value.suggestions


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "tape"}, "kind must be"),
        ({"sources": {}}, "has no source"),
        ({"aggregate_gbs": None}, "needs aggregate_gbs or aggregate_gbs_per_tib"),
        ({"aggregate_gbs_per_tib": 1.0}, "not both"),
        ({"latency_ms": 0}, "positive"),
        ({"disputed": {"colour": "x"}}, "unknown field"),
        ({"speed": 3}, "unknown field"),
    ],
)
def test_bad_storage_entries_are_refused(change: dict[str, object], message: str) -> None:
    entry: dict[str, object] = {
        "name": "x",
        "display_name": "x",
        "kind": "parallel-fs",
        "write_gbs_per_node": 1,
        "read_gbs_per_node": 1,
        "aggregate_gbs": 5,
        "latency_ms": 1,
        "sources": {
            "write_gbs_per_node": "s",
            "read_gbs_per_node": "s",
            "aggregate_gbs": "s",
            "aggregate_gbs_per_tib": "s",
            "latency_ms": "s",
        },
    }
    entry.update(change)
    with pytest.raises(CatalogFileError, match=message):
        _storage_tier(entry, "storage.yaml entry 0 (x)")


def test_integer_figures_load_as_floats() -> None:
    entry = {
        "name": "x",
        "display_name": "x",
        "kind": "object",
        "write_gbs_per_node": 1,
        "read_gbs_per_node": 2,
        "aggregate_gbs": 5,
        "latency_ms": 100,
        "sources": {k: "s" for k in ("write_gbs_per_node", "read_gbs_per_node", "aggregate_gbs")}
        | {"latency_ms": "s"},
    }
    t = _storage_tier(entry, "x")
    assert isinstance(t.aggregate_gbs, float) and isinstance(t.latency_ms, float)


# --- checkpoint size ----------------------------------------------------------------


def test_llama2_7b_checkpoint_is_14_bytes_per_parameter() -> None:
    model = get_model("llama-2-7b")
    assert shape_of(model).total_params == LLAMA2_7B_PARAMS  # the perf model's count
    nbytes = checkpoint_bytes(model)
    assert nbytes == 14 * LLAMA2_7B_PARAMS  # bf16 weights 2 + fp32 master 4 + Adam m, v 8
    assert 93e9 < nbytes < 95e9  # ~94.3 GB


@pytest.mark.parametrize(
    ("optimizer", "precision", "per_param"),
    [
        ("adam", "bf16", 14.0),
        ("adam", "fp16", 14.0),
        ("adam", "fp8", 14.0),  # fp8 training keeps bf16 weights and an fp32 master
        ("adam", "fp32", 12.0),  # fp32 weights + two moments, no master copy
        ("sgd", "bf16", 10.0),  # 16-bit weights + master + one momentum
        ("sgd", "fp32", 8.0),
        ("none", "bf16", 2.0),
        ("none", "fp32", 4.0),
    ],
)
def test_bytes_per_parameter(optimizer: str, precision: str, per_param: float) -> None:
    assert checkpoint_bytes_per_param(optimizer=optimizer, precision=precision) == per_param
    model = get_model("llama-2-7b")
    got = checkpoint_bytes(model, optimizer=optimizer, precision=precision)
    assert got == per_param * LLAMA2_7B_PARAMS


def test_moe_checkpoint_holds_every_expert() -> None:
    s = shape_of(get_model("mixtral-8x7b"))
    nbytes = checkpoint_bytes(get_model("mixtral-8x7b"))
    assert nbytes == 14 * s.total_params
    assert nbytes > 3 * 14 * s.active_params  # 8 experts saved, 2 used per token


@pytest.mark.parametrize(("optimizer", "precision"), [("lion", "bf16"), ("adam", "int8")])
def test_unknown_optimizer_or_precision(optimizer: str, precision: str) -> None:
    with pytest.raises(InvalidLayoutError):
        checkpoint_bytes(get_model("llama-2-7b"), optimizer=optimizer, precision=precision)


# --- checkpoint time ----------------------------------------------------------------


def test_seconds_are_size_over_bandwidth_plus_latency() -> None:
    t = _tier()  # 10 GB/s write per node, 20 read, 25 aggregate, 100 ms
    assert checkpoint_seconds(100e9, t) == pytest.approx(10.0 + 0.1)
    assert checkpoint_seconds(100e9, t, nodes=2) == pytest.approx(5.0 + 0.1)
    assert checkpoint_seconds(100e9, t, nodes=3) == pytest.approx(4.0 + 0.1)  # capped at 25
    assert checkpoint_seconds(100e9, t, write=False) == pytest.approx(5.0 + 0.1)
    assert checkpoint_seconds(0, t) == pytest.approx(0.1)


def test_seconds_grow_linearly_with_size() -> None:
    tier = get_storage_tier("ddn-ai400x2-turbo")
    lat = tier.latency_ms / 1e3
    one = checkpoint_seconds(50e9, tier) - lat
    two = checkpoint_seconds(100e9, tier) - lat
    assert one > 0 and two == pytest.approx(2 * one)


def test_more_nodes_help_until_the_aggregate_caps() -> None:
    tier = get_storage_tier("s3-standard")  # 12.5 GB/s per node, 29.4 GB/s into one prefix
    nbytes = checkpoint_bytes(get_model("llama-3.1-70b"))
    times = [checkpoint_seconds(nbytes, tier, nodes=n) for n in (1, 2, 3, 4, 8, 64)]
    assert times[0] > times[1] > times[2]  # 12.5 -> 25 -> 29.4 GB/s
    assert times[2] == pytest.approx(times[3]) == pytest.approx(times[-1])  # capped
    assert storage_bandwidth_gbs(tier, nodes=64) == tier.aggregate_gbs
    assert storage_bandwidth_gbs(tier, nodes=64, write=False) == tier.aggregate_read_gbs


def test_node_local_drives_do_not_cap() -> None:
    tier = get_storage_tier("local-nvme")
    assert storage_bandwidth_gbs(tier, nodes=100) == pytest.approx(100 * tier.write_gbs_per_node)
    assert storage_bandwidth_gbs(tier, nodes=100, write=False) == pytest.approx(
        100 * tier.read_gbs_per_node
    )


def test_provisioned_tier_needs_its_capacity() -> None:
    tier = get_storage_tier("fsx-lustre-p1000")
    with pytest.raises(InvalidLayoutError, match="capacity_tib"):
        checkpoint_seconds(1e9, tier, nodes=4)
    assert storage_bandwidth_gbs(tier, nodes=4, capacity_tib=10) == pytest.approx(10.0)
    assert storage_bandwidth_gbs(tier, nodes=2, capacity_tib=100) == pytest.approx(25.0)
    small = checkpoint_seconds(1e12, tier, nodes=16, capacity_tib=24)
    large = checkpoint_seconds(1e12, tier, nodes=16, capacity_tib=96)
    assert small == pytest.approx(1e12 / 24e9 + 5e-4)
    assert large < small


def test_object_storage_restores_slower_than_a_parallel_fs() -> None:
    nbytes = checkpoint_bytes(get_model("llama-3.1-70b"))  # ~0.99 TB
    s3 = get_storage_tier("s3-standard")
    ddn = get_storage_tier("ddn-ai400x2-turbo")
    fsx = get_storage_tier("fsx-lustre-p1000")
    for nodes in (4, 16):
        obj = checkpoint_seconds(nbytes, s3, nodes=nodes, write=False)
        assert obj > checkpoint_seconds(nbytes, ddn, nodes=nodes, write=False)
        assert obj > checkpoint_seconds(nbytes, fsx, nodes=nodes, write=False, capacity_tib=240)
    # and the checkpoint costs tens of seconds, not milliseconds or hours
    assert 10 < checkpoint_seconds(nbytes, s3, nodes=16) < 120


def test_bad_time_arguments() -> None:
    t = _tier()
    with pytest.raises(InvalidLayoutError, match="nodes"):
        checkpoint_seconds(1e9, t, nodes=0)
    with pytest.raises(InvalidLayoutError, match="size"):
        checkpoint_seconds(-1, t)


def test_perf_and_catalog_import_no_higher_layer() -> None:
    higher = ("calibration", "sim", "sched", "service", "cli")
    for path in [*(SRC / "perf").glob("*.py"), *(SRC / "catalog").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                parts = n.split(".")
                assert not (parts[0] == "suanli" and len(parts) > 1 and parts[1] in higher), (
                    f"{path.name} imports {n}"
                )
