"""Alpha-beta cost of collectives on a node-and-network hierarchy.

A group of ``n`` ranks with ``r`` of them on each node spans ``n / r`` nodes.
Bandwidth terms follow the hierarchical schedule NCCL's multi-channel rings
reach in practice: the intra-node part runs on the device link, and the
inter-node part moves only ``1/r`` of the data per device, each device on its
own NIC (so a node's NICs work in parallel). Latency terms follow the ring:
``n - 1`` steps for reduce-scatter/all-gather, each paced by the slowest hop
(the network's, once the group leaves a node) — which is why a flat
all-gather over thousands of ranks is latency-bound (ZeRO-3 at scale). An
all-reduce takes the better of ring and tree latency (NCCL picks per size).

All sizes are bytes of the whole buffer; times are seconds. ``eff`` carries
the achieved fractions of link and NIC bandwidth and the latency scale.
"""

from __future__ import annotations

import math

from suanli.perf.efficiency import Efficiency
from suanli.perf.system import System


def _inter_bw(sys: System, eff: Efficiency, nodes: int) -> float:
    bw = sys.inter_bw * eff.nic_eff
    if nodes > sys.nodes_per_leaf:
        bw /= sys.oversubscription
    return bw


def _lat(sys: System, eff: Efficiency, nodes: int) -> float:
    if nodes > 1:
        return sys.inter_latency_s * eff.latency_scale
    return sys.intra_latency_s * eff.intra_latency_scale


def all_reduce_s(size: float, n: int, r: int, sys: System, eff: Efficiency) -> float:
    """All-reduce of ``size`` bytes over ``n`` ranks, ``r`` per node."""
    if n <= 1 or size <= 0:
        return 0.0
    r = min(r, n)
    nodes = max(1, -(-n // r))  # a partly filled node is still a node
    lat = _lat(sys, eff, nodes) * 2 * min(n - 1, math.log2(n))
    intra = 2 * (r - 1) / r * size / (sys.intra_bw * eff.link_eff) if r > 1 else 0.0
    if nodes == 1:
        return lat + intra
    factor = 1.0 if sys.in_network_reduction else 2 * (nodes - 1) / nodes
    inter = factor * (size / r) / _inter_bw(sys, eff, nodes)
    return lat + intra + inter


def peer_all_reduce_s(size: float, n: int, sys: System, eff: Efficiency) -> float:
    """All-reduce of ``size`` bytes over ``n`` ranks of one node by a peer-to-peer
    kernel (FasterTransformer's, as vLLM, SGLang and PyTorch's IntraNodeComm run it):
    one fixed cost (``eff.peer_ar_us``, the ranks' handshake) in place of a ring's
    steps, and a ring's bytes, which its two-shot form moves (each rank reduces its
    ``1/n`` share read from every peer, then reads the others' reduced shares). The
    one-shot form, for small messages, reads more bytes, but of a message too small for
    bytes to count."""
    if n <= 1 or size <= 0:
        return 0.0
    return eff.peer_ar_us * 1e-6 + 2 * (n - 1) / n * size / (sys.intra_bw * eff.link_eff)


def all_gather_s(size: float, n: int, r: int, sys: System, eff: Efficiency) -> float:
    """All-gather (or reduce-scatter) whose full output is ``size`` bytes."""
    if n <= 1 or size <= 0:
        return 0.0
    r = min(r, n)
    nodes = max(1, -(-n // r))  # a partly filled node is still a node
    lat = _lat(sys, eff, nodes) * (n - 1)
    intra = (r - 1) / r * size / (sys.intra_bw * eff.link_eff) if r > 1 else 0.0
    if nodes == 1:
        return lat + intra
    inter = (nodes - 1) / nodes * (size / r) / _inter_bw(sys, eff, nodes)
    return lat + intra + inter


reduce_scatter_s = all_gather_s


def all_to_all_s(size: float, n: int, r: int, sys: System, eff: Efficiency) -> float:
    """All-to-all where each rank sends ``size`` bytes in total (to all peers)."""
    if n <= 1 or size <= 0:
        return 0.0
    r = min(r, n)
    nodes = max(1, -(-n // r))  # a partly filled node is still a node
    lat = _lat(sys, eff, nodes) * (n - 1)
    intra = (r - 1) / n * size / (sys.intra_bw * eff.link_eff)
    if nodes == 1:
        return lat + intra
    inter = (n - r) / n * size / _inter_bw(sys, eff, nodes)
    return lat + intra + inter


def p2p_s(size: float, inter_node: bool, sys: System, eff: Efficiency) -> float:
    """One point-to-point send of ``size`` bytes (pipeline stage boundary)."""
    if size <= 0:
        return 0.0
    bw = sys.inter_bw * eff.nic_eff if inter_node else sys.intra_bw * eff.link_eff
    return _lat(sys, eff, 2 if inter_node else 1) + size / bw
