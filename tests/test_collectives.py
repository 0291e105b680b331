"""Alpha-beta collectives, worked by hand on a made-up two-level system."""

from __future__ import annotations

import dataclasses

import pytest

from suanli.perf import Efficiency
from suanli.perf import collectives as coll
from tests.conftest import system

IDEAL = Efficiency(link_eff=1.0, nic_eff=1.0, latency_scale=1.0)


@pytest.fixture()
def sys8():  # type: ignore[no-untyped-def]
    # 8 devices per node, 100 GB/s per direction inside, 10 GB/s NIC, 1 us / 5 us hops
    base = system("a100-80gb")
    return dataclasses.replace(
        base,
        devices_per_node=8,
        intra_bw=100e9,
        inter_bw=10e9,
        intra_latency_s=1e-6,
        inter_latency_s=5e-6,
        oversubscription=1.0,
    )


def test_all_reduce_within_a_node(sys8) -> None:  # type: ignore[no-untyped-def]
    # ring: 2*(8-1)/8 * 1 GB / 100 GB/s = 17.5 ms; tree latency 2*log2(8)*1us = 6 us
    t = coll.all_reduce_s(1e9, 8, 8, sys8, IDEAL)
    assert t == pytest.approx(0.0175 + 6e-6)


def test_all_reduce_across_nodes_is_hierarchical(sys8) -> None:  # type: ignore[no-untyped-def]
    # 16 ranks, 8 per node, 2 nodes, 1 GB:
    # intra: 2*7/8 * 1e9/100e9 = 17.5 ms; inter: 2*(1/2) * (1e9/8)/10e9 = 12.5 ms
    # latency: 2*min(15, log2 16 = 4) * 5 us = 40 us
    t = coll.all_reduce_s(1e9, 16, 8, sys8, IDEAL)
    assert t == pytest.approx(0.0175 + 0.0125 + 40e-6)


def test_flat_all_gather_pays_full_volume_on_each_nic(sys8) -> None:  # type: ignore[no-untyped-def]
    # 16 ranks on 16 nodes (r=1): (15/16) * 1e9 / 10e9 = 93.75 ms + 15 * 5 us
    t = coll.all_gather_s(1e9, 16, 1, sys8, IDEAL)
    assert t == pytest.approx(0.09375 + 75e-6)
    # the same group packed 8 per node moves 1/8 of it over the NICs
    assert coll.all_gather_s(1e9, 16, 8, sys8, IDEAL) < t / 3


def test_sharp_halves_inter_node_all_reduce(sys8) -> None:  # type: ignore[no-untyped-def]
    sharp = dataclasses.replace(sys8, in_network_reduction=True)
    # 16 nodes of 1: inter 2*(15/16)*1e9/10e9 = 187.5 ms vs SHARP 1e9/10e9 = 100 ms
    plain = coll.all_reduce_s(1e9, 16, 1, sys8, IDEAL)
    assert coll.all_reduce_s(1e9, 16, 1, sharp, IDEAL) == pytest.approx(plain - 0.0875)


def test_single_rank_costs_nothing(sys8) -> None:  # type: ignore[no-untyped-def]
    assert coll.all_reduce_s(1e9, 1, 1, sys8, IDEAL) == 0.0
    assert coll.all_to_all_s(1e9, 1, 1, sys8, IDEAL) == 0.0


def test_a_group_spilling_onto_a_second_node_pays_the_network(sys8) -> None:  # type: ignore[no-untyped-def]
    # 12 ranks, 8 per node: two nodes (one partly filled), so NIC traffic and NIC latency
    one_node = coll.all_reduce_s(1e9, 8, 8, sys8, IDEAL)
    spilled = coll.all_reduce_s(1e9, 12, 8, sys8, IDEAL)
    assert spilled > one_node + 0.01
