"""A chip-mix service live: the replicas the optimizer wants on each chip, held within
the spec's bounds and budget, and the share of each request size the router gives
each chip.

The optimizer (`suanli.autoscale.scalers.Optimizer`, Mélange's ILP over perf's
capacities per chip) is the same object the serving simulator runs; what is here is
only what a live fleet adds: a person's pin or the spec's min/max/budget applied to a
mix (keeping its proportions), and which chip a replica job runs on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from suanli.autoscale.mix import SPOT_SUFFIX, Mix, ReplicaKind, SizeBuckets
from suanli.catalog.loader import accelerators
from suanli.store.models import JobRow


def chip_of(job: JobRow) -> str:
    """The chip a replica job was asked on (``resources.accelerator``)."""
    res = (job.spec or {}).get("resources") or {}
    return str(res.get("accelerator") or "") if isinstance(res, dict) else ""


def chip_price(chip: str | None, devices: int) -> float:
    """The catalog price of ``devices`` of a chip per hour (0: no price, or a CPU)."""
    acc = accelerators().get(chip or "")
    price = acc.price_usd_per_hour if acc is not None else None
    return (price or 0.0) * max(1, devices)


def rescale(want: dict[str, int], total: int, fallback: str) -> dict[str, int]:
    """``want`` resized to ``total`` replicas in its proportions (largest remainders);
    all on ``fallback`` when ``want`` is empty."""
    have = sum(want.values())
    if have == total:
        return dict(want)
    if have == 0:
        return {**{c: 0 for c in want}, fallback: total}
    exact = {c: n * total / have for c, n in want.items()}
    out = {c: math.floor(x) for c, x in exact.items()}
    left = total - sum(out.values())
    for c in sorted(exact, key=lambda c: (out[c] - exact[c], c))[:left]:
        out[c] += 1
    return out


def within_budget(want: dict[str, int], price: dict[str, float], budget: float) -> dict[str, int]:
    """Replicas of the dearest chips dropped, one at a time, until the mix costs at most
    ``budget`` per hour."""
    out = dict(want)
    while sum(n * price.get(c, 0.0) for c, n in out.items()) > budget + 1e-9:
        dearest = max((c for c, n in out.items() if n > 0), key=lambda c: price.get(c, 0.0))
        out[dearest] -= 1
    return out


def cheapest(kinds: Sequence[ReplicaKind]) -> str:
    """The chip a service wakes on from zero: the cheapest that serves anything."""
    serving = [k for k in kinds if any(c > 0 for c in k.capacity_rps)] or list(kinds)
    return min(serving, key=lambda k: (k.usd_per_hour, k.name)).name


def strongest(kinds: Sequence[ReplicaKind]) -> str:
    """The chip whose replica serves the most (summed over the size buckets): where a
    load beyond ``replicas.max`` is best met."""
    return max(kinds, key=lambda k: (sum(k.capacity_rps), -k.usd_per_hour)).name


V = TypeVar("V", int, float)


def fold_spot(by_kind: dict[str, V]) -> dict[str, V]:
    """Values per chip: a chip's spot twin's (``CHIP:spot``) added to its chip's."""
    out: dict[str, V] = {}
    for kind, v in by_kind.items():
        chip = kind.removesuffix(SPOT_SUFFIX)
        out[chip] = out[chip] + v if chip in out else v
    return out


def on_chips(by_kind: dict[str, int]) -> dict[str, int]:
    """Replicas per chip: a chip's spot twin (``CHIP:spot``) counted with its chip. The
    split between the spot order's leases and on demand is the controller's, each tick
    (`suanli.service.spot.split`), so a reclaim falls back at once."""
    return fold_spot(by_kind)


def shares_by_bucket(mix: Mix, buckets: SizeBuckets) -> list[dict[str, float]]:
    """Per size bucket, the share of it each chip serves in the mix (the router's draw),
    a spot twin's with its chip's."""
    return [
        fold_spot({kind: shares[b] for kind, shares in mix.shares.items()})
        for b in range(buckets.count)
    ]
