"""Which chip a chip-mix service's request goes to: the mix's draw, spilling over to a
chip with room when the drawn one is full.

Mélange sends each request size to chips in the shares its ILP found. The shares are
rates averaged over a decision period; within one, a burst of one size fills the chips
the plan gives that size while a chip with room for it idles, and the requests queue
past their SLO where they were drawn. The simulator showed it: a mix needed a target
utilisation of 0.7 to keep 99.5% of requests within the SLO where an H100 fleet kept
100% at 0.9.

A replica's *fill* is the share of its SLO batch its requests take: a request of size
bucket ``b`` on a replica of kind ``g`` takes ``1 / B_gb`` of it, where ``B_gb`` is the
most requests of that size the kind keeps in flight within the TPOT SLO (`slo_batch`;
the ILP's capacity is that batch's throughput). A kind that cannot serve the size
within the SLO counts a request of it as a whole replica. The drawn chip keeps the
request while its least filled replica has room for it; otherwise it goes to the chip,
among those serving the size within the SLO, whose least filled replica would be least
full after it, if that one has room; with none, it stays with the drawn chip and
queues there. The simulator's router and the live one call the same rule.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

R = TypeVar("R")

#: a request of a size the kind cannot serve within the SLO fills a whole replica
FULL = 1.0
_ROOM = FULL + 1e-9  # B requests of weight 1/B sum to a hair over 1 in floating point


def weight(batches: Sequence[int], bucket: int) -> float:
    """The share of a replica's SLO batch one request of the bucket takes, from the
    replica's kind's SLO batch per bucket."""
    return 1.0 / batches[bucket] if batches and batches[bucket] > 0 else FULL


def serves(batches: Sequence[int], bucket: int) -> bool:
    return bool(batches) and batches[bucket] > 0


@dataclass(frozen=True, eq=False)
class Fills:
    """Per kind and size bucket, the SLO batch (`suanli.autoscale.kinds.batch_table`)."""

    batches: Mapping[str, Sequence[int]]

    def weight(self, kind: str, bucket: int) -> float:
        return weight(self.batches.get(kind, ()), bucket)

    def serves(self, kind: str, bucket: int) -> bool:
        return serves(self.batches.get(kind, ()), bucket)


def least_per_chip(
    replicas: Iterable[R], chip: Callable[[R], str], key: Callable[[R], Any]
) -> dict[str, R]:
    """Per chip, the replica with the least ``key`` (the first of equals, in order)."""
    out: dict[str, R] = {}
    for r in sorted(replicas, key=key):
        out.setdefault(chip(r), r)
    return out


def draw(shares: Mapping[str, float], ready: Mapping[str, Any], rng: random.Random) -> str | None:
    """A chip drawn by the mix's shares of a size, among the chips with a ready replica;
    None when the mix gives the size to none of them."""
    options = [(c, s) for c, s in shares.items() if c in ready and s > 0]
    if not options:
        return None
    return rng.choices([c for c, _ in options], [s for _, s in options])[0]


def spill(drawn: str, fill_after: Mapping[str, float], serves: Mapping[str, bool]) -> str:
    """The chip for a request: ``fill_after`` is, per chip with a ready replica, the
    fill of its least filled replica with the request added; ``serves`` says which
    chips serve the request's size within the SLO."""
    if fill_after.get(drawn, FULL + 1) <= _ROOM:
        return drawn
    room = {c: f for c, f in fill_after.items() if f <= _ROOM and serves.get(c, False)}
    return min(room, key=lambda c: (room[c], c)) if room else drawn
