"""The cheapest mix of replica kinds for a request-size distribution: Mélange's ILP.

Requests fall in size buckets (prompt and output length); bucket ``b`` arrives at
``rate_b`` requests/s. One replica of kind ``g`` (a chip type, on demand or spot, at
its price) serves ``cap_bg`` requests/s of bucket ``b`` within the TPOT SLO (see
`capacity`). Choose integer replica counts ``n_g`` and the share ``x_bg`` of each
bucket each kind serves to

    minimise   sum_g price_g n_g
    subject to sum_g x_bg = 1                          for every bucket with load
               sum_b rate_b x_bg / cap_bg <= n_g       for every kind
               sum_b,spot g rate_b x_bg <= s sum_b rate_b   (at most a share s on spot)
               n_g <= available_g

With a miss budget ``m`` (an SLO kept for a share ``1 - m`` of requests, as Mélange's
evaluation keeps it for >= 99.5%), a kind may also serve a bucket at its best-effort
rate ``be_bg`` (one request at a time, missing the SLO), in shares ``y_bg`` with
``sum_b rate_b y_bg <= m sum_b rate_b``. Without it one prompt of 11k tokens in the
Azure conversation trace's 19k, which only an H100 prefills within a 2 s TTFT, puts
an H100 in every fleet.

(Griggs et al., "Mélange: Cost Efficient Large Language Model Serving by Exploiting
GPU Heterogeneity", 2024, Sec. 5.3.) Small requests go to cheap chips whose
bandwidth per dollar is high; long ones to chips with the memory and compute for
them. Solved with HiGHS through SciPy's ``milp``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from suanli.errors import SuanliError

#: a chip's spot twin is a kind of its own: the chip's name and this
SPOT_SUFFIX = ":spot"


class NoMixError(SuanliError, ValueError):
    """No mix of the allowed kinds serves the load within the SLO."""


@dataclass(frozen=True, slots=True)
class ReplicaKind:
    name: str
    usd_per_hour: float  # one replica (all its devices)
    capacity_rps: tuple[float, ...]  # per bucket; 0 where the SLO cannot be met
    available: int | None = None
    spot: bool = False
    #: per bucket, one request at a time, SLO or not (`capacity.best_effort_rps`); only
    #: a miss budget uses it
    best_effort_rps: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Mix:
    counts: dict[str, int]
    shares: dict[str, tuple[float, ...]]  # kind -> the share of each bucket it serves
    usd_per_hour: float
    missed_share: float = 0.0  # of all requests, planned to be served outside the SLO


def cheapest_mix(
    rates: Sequence[float],
    kinds: Sequence[ReplicaKind],
    *,
    max_spot_share: float = 1.0,
    running: Mapping[str, int] | None = None,
    start_usd_per_hour: Mapping[str, float] | None = None,
    max_miss_share: float = 0.0,
) -> Mix:
    """``running``: replicas of each kind already up or starting, which cost nothing to
    keep; ``start_usd_per_hour``: what starting one more of a kind adds to the plan's
    hourly cost (its cold start, paid and serving nothing, spread over the time the plan
    holds). With both, a re-solve keeps the kinds that run unless another mix saves more
    than its starts cost: two mixes a cent apart no longer swap replicas (each swap paid
    a cold start) every time the load wobbles. ``max_miss_share``: the miss budget above
    (0: every request within the SLO)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    rate = np.asarray(rates, dtype=float)
    nb, ng = len(rate), len(kinds)
    if not ng:
        raise NoMixError("no replica kinds to choose from")
    cap = np.array([k.capacity_rps for k in kinds], dtype=float).T  # [b, g]
    if cap.shape != (nb, ng):
        raise NoMixError(f"each kind needs a capacity for each of the {nb} buckets")
    be = np.zeros((nb, ng))
    if max_miss_share > 0:
        for g, k in enumerate(kinds):
            if k.best_effort_rps:
                if len(k.best_effort_rps) != nb:
                    raise NoMixError(f"each kind's best effort needs a rate for {nb} buckets")
                be[:, g] = k.best_effort_rps
    for b in (int(v) for v in np.flatnonzero(rate > 0)):
        if not (cap[b] > 0).any() and not (be[b] > 0).any():
            raise NoMixError(
                f"size bucket {b} ({rate[b]:.3g} requests/s) meets the SLO on none of "
                f"{', '.join(k.name for k in kinds)}: allow a larger chip or relax the SLO"
            )
    if rate.sum() <= 0:
        return Mix({k.name: 0 for k in kinds}, {k.name: (0.0,) * nb for k in kinds}, 0.0)
    # variables: n_g (ng), then x_bg row-major (nb * ng), then the starts s_g (ng), then
    # the best-effort shares y_bg row-major (nb * ng)
    nx = ng + nb * ng
    ny = nx + ng
    nvar = ny + nb * ng
    price = np.array([k.usd_per_hour for k in kinds])
    start = np.array([(start_usd_per_hour or {}).get(k.name, 0.0) for k in kinds])
    up = np.array([(running or {}).get(k.name, 0) for k in kinds], dtype=float)
    # ties: fewer replicas, then fewer requests outside the SLO
    c = np.concatenate([price + 1e-6, np.zeros(nb * ng), start, np.full(nb * ng, 1e-9)])
    rows, lo, hi = [], [], []
    for b in range(nb):  # each bucket with load is fully served
        if rate[b] <= 0:
            continue
        row = np.zeros(nvar)
        row[ng + b * ng : ng + (b + 1) * ng] = 1.0
        row[ny + b * ng : ny + (b + 1) * ng] = 1.0
        rows.append(row)
        lo.append(1.0)
        hi.append(1.0)
    for g in range(ng):  # the replicas of a kind carry what is sent to them
        row = np.zeros(nvar)
        row[g] = -1.0
        for b in range(nb):
            if rate[b] > 0 and cap[b, g] > 0:
                row[ng + b * ng + g] = rate[b] / cap[b, g]
            if rate[b] > 0 and be[b, g] > 0:
                row[ny + b * ng + g] = rate[b] / be[b, g]
        rows.append(row)
        lo.append(-np.inf)
        hi.append(0.0)
    for g in range(ng):  # n_g - s_g <= running_g: what is not running yet is started
        row = np.zeros(nvar)
        row[g], row[nx + g] = 1.0, -1.0
        rows.append(row)
        lo.append(-np.inf)
        hi.append(up[g])
    if be.any():  # what is served outside the SLO stays within the budget
        row = np.zeros(nvar)
        for b in range(nb):
            row[ny + b * ng : ny + (b + 1) * ng] = rate[b]
        rows.append(row)
        lo.append(-np.inf)
        hi.append(max_miss_share * rate.sum())
    spot = [g for g, k in enumerate(kinds) if k.spot]
    if spot and max_spot_share < 1.0:
        row = np.zeros(nvar)
        for b in range(nb):
            for g in spot:
                row[ng + b * ng + g] = row[ny + b * ng + g] = rate[b]
        rows.append(row)
        lo.append(-np.inf)
        hi.append(max_spot_share * rate.sum())
    ub = np.concatenate(
        [
            [np.inf if k.available is None else k.available for k in kinds],
            [1.0 if cap[b, g] > 0 else 0.0 for b in range(nb) for g in range(ng)],
            np.full(ng, np.inf),
            [1.0 if be[b, g] > 0 else 0.0 for b in range(nb) for g in range(ng)],
        ]
    )
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=np.concatenate([np.ones(ng), np.zeros(nvar - ng)]),
        bounds=Bounds(np.zeros(nvar), ub),
    )
    if res.x is None:
        missing = (
            f" and at most {max_miss_share:.2%} of requests outside the SLO"
            if max_miss_share > 0
            else ""
        )
        raise NoMixError(
            f"no mix serves {rate.sum():.3g} requests/s within the availability given"
            f"{missing} ({res.message}): allow more replicas or other chips"
        )
    n = np.round(res.x[:ng]).astype(int)
    x = res.x[ng:nx].reshape(nb, ng)
    y = res.x[ny:].reshape(nb, ng)
    return Mix(
        {k.name: int(n[g]) for g, k in enumerate(kinds)},
        {k.name: tuple(float(v) for v in x[:, g] + y[:, g]) for g, k in enumerate(kinds)},
        float(price @ n),
        float((rate[:, None] * y).sum() / rate.sum()),
    )


@dataclass(frozen=True, slots=True)
class SizeBuckets:
    """Request sizes on a log grid (Mélange buckets by size the same way). Each bucket is
    represented by the geometric middle of its edges, fixed in advance: the optimizer
    never looks at requests that have not arrived."""

    prompt_edges: tuple[int, ...] = (1, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
    output_edges: tuple[int, ...] = (1, 32, 64, 128, 256, 512, 1024, 2048)

    @property
    def count(self) -> int:
        return len(self.prompt_edges) * len(self.output_edges)

    @staticmethod
    def _index(edges: tuple[int, ...], v: int) -> int:
        i = 0
        while i + 1 < len(edges) and v >= edges[i + 1]:
            i += 1
        return i

    def of(self, prompt: int, output: int) -> int:
        return self._index(self.prompt_edges, prompt) * len(self.output_edges) + self._index(
            self.output_edges, output
        )

    @staticmethod
    def _middle(edges: tuple[int, ...], i: int) -> float:
        hi = edges[i + 1] if i + 1 < len(edges) else edges[i] * 2
        return float(np.sqrt(edges[i] * hi))

    def representative(self, b: int) -> tuple[float, float]:
        pi, oi = divmod(b, len(self.output_edges))
        return self._middle(self.prompt_edges, pi), self._middle(self.output_edges, oi)
