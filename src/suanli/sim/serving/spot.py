"""Spot replicas in the serving simulator: a cheaper twin of each chip kind that can be
taken back, and the terms of that market.

The live service gets its spot capacity from suanli's market (`suanli.service.spot`);
here the market is a model. No interruption trace is among the shared data, so the
terms are the scenario's inputs, not measurements: a spot price as a share of the
on-demand one, reclaims as a Poisson process per replica, the notice a reclaim gives
(AWS's interruption notice is two minutes: "Spot Instance interruption notices",
Amazon EC2 User Guide; GCP's preemption notice is 30 s: "Preemption process", Compute
Engine docs), and how long the chip's spot capacity stays gone after a reclaim
(reclaims come when a provider needs its devices back, so they cluster). The
benchmark sweeps them rather than pretending to know them.

What the fleet does with them (SkyServe's dynamic on-demand fallback, Mao et al.,
EuroSys 2025): a reclaimed replica stops taking requests at once and is gone when the
notice runs out, its unfinished requests re-sent elsewhere as a preemption leaves
them; an on-demand replica of the same chip starts at the reclaim, within the notice;
while the chip's spot capacity is gone, what the autoscaler wants on it runs on
demand; an on-demand replica standing in for a spot one stays until the spot one is
ready.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from suanli.autoscale.kinds import Kind
from suanli.autoscale.mix import SPOT_SUFFIX
from suanli.errors import UsageError

AWS_NOTICE_S = 120.0


@dataclass(frozen=True, slots=True)
class SpotTerms:
    price_ratio: float  # spot price / on-demand price
    reclaims_per_hour: float  # per replica, a Poisson process
    notice_s: float = AWS_NOTICE_S
    unavailable_s: float = 0.0  # after a reclaim, no new spot replica of that chip
    max_share: float = 1.0  # at most this share of the load planned on spot
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.price_ratio <= 1:
            raise UsageError(f"--spot-price-ratio must be in (0, 1], got {self.price_ratio}")
        if self.reclaims_per_hour < 0 or self.notice_s < 0 or self.unavailable_s < 0:
            raise UsageError(
                "--spot-reclaims-per-hour, --spot-notice-s and --spot-unavailable-s are >= 0"
            )
        if not 0 <= self.max_share <= 1:
            raise UsageError(f"--spot-max-share must be in [0, 1], got {self.max_share}")


def with_spot_twins(kinds: dict[str, Kind], terms: SpotTerms) -> dict[str, Kind]:
    """Each kind, and beside it its spot twin: the same chip and layout at the spot price."""
    out = dict(kinds)
    for name, kind in kinds.items():
        twin = replace(
            kind,
            name=name + SPOT_SUFFIX,
            usd_per_hour=kind.usd_per_hour * terms.price_ratio,
            spot=True,
            on_demand=name,
        )
        out[twin.name] = twin
    return out
