"""Pool files: good ones load, bad ones name every problem with its line."""

from __future__ import annotations

import pytest

from suanli.plan.pool import PoolFileError, load_pool, parse_pool


def test_good_pool() -> None:
    pools = parse_pool("""
pools:
  - name: bj
    accelerator: H800-SXM
    count: 512
    usd_per_device_hour: 2.1
    region: cn-north
    inter_node_gbps: 200
""")
    (p,) = pools
    assert p.accelerator == "h800-sxm" and p.count == 512 and p.price_usd_per_hour == 2.1
    assert p.system.inter_bw == pytest.approx(200 / 8 * 1e9)


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        (
            "pools:\n  - accelerator: h100-sxm\n    count: 0\n",
            ["line 3: pools[0].count: Input should be greater than or equal to 1"],
        ),
        (
            "pools:\n  - accelerator: h100\n    count: 4\n",
            ["line 2: pools[0].accelerator: unknown accelerator 'h100'"],
        ),
        (
            "pools:\n  - accelerator: a10\n    count: 1\n    colour: red\n",
            ["line 4: pools[0].colour: Extra inputs are not permitted"],
        ),
        (
            "pools:\n  - count: 2\n  - accelerator: t4\n    count: -1\n",
            [
                "line 2: pools[0].accelerator: Field required",
                "line 4: pools[1].count: Input should be greater than or equal to 1",
            ],
        ),
        ("pools: [\n", ["not valid YAML"]),
        ("nodes: []\n", ["line 1: unknown top-level key(s) ['nodes']"]),
    ],
)
def test_bad_pools_list_every_problem(text: str, problems: list[str]) -> None:
    with pytest.raises(PoolFileError) as info:
        parse_pool(text, "pool.yaml")
    assert len(info.value.problems) == len(problems)
    for got, want in zip(info.value.problems, problems, strict=True):
        assert want in got


def test_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PoolFileError, match="cannot read the pool file"):
        load_pool(tmp_path / "nope.yaml")
