"""Moving a job's data between regions: bandwidth and round-trip time per region pair.

A job whose dataset (or checkpoint) sits in one region and runs in another
first moves it over the WAN: ``size x 8 / Gbit/s + one round trip``, the bulk
rate of a provisioned link (a single TCP flow over a long fat pipe gets less
unless tuned; the file's ``gbps`` is what a transfer gets, not the line rate).
The table is data with a source per link (``wan:`` in a simulator's cluster
file); a pair it does not list takes ``default`` where one is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: with no table at all, a pair of different regions is ranked by size alone at this
#: rate: it orders sites (same region first, then by bytes), it measures nothing
RANK_ONLY_GBPS = 1.0


@dataclass(frozen=True)
class Link:
    gbps: float  # what one transfer gets between the two regions, Gbit/s
    rtt_ms: float = 0.0
    source: str = ""


@dataclass
class Wan:
    links: dict[frozenset[str], Link] = field(default_factory=dict)
    default: Link | None = None

    def link(self, a: str, b: str) -> Link | None:
        return self.links.get(frozenset((a, b)), self.default)

    def transfer_s(self, size_gb: float, src: str, dst: str) -> float:
        """Seconds to move ``size_gb`` from region ``src`` to ``dst`` (0 within one)."""
        if size_gb <= 0 or not src or src == dst:
            return 0.0
        link = self.link(src, dst) or Link(RANK_ONLY_GBPS)
        return size_gb * 8.0 / link.gbps + link.rtt_ms / 1000.0


Region = Annotated[str, Field(min_length=1, max_length=63)]


class LinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gbps: float = Field(gt=0, le=100_000)
    rtt_ms: float = Field(default=0.0, ge=0, le=10_000)
    source: str = Field(min_length=1, description="where the figures come from")


class PairSpec(LinkSpec):
    a: Region
    b: Region


class WanSpec(BaseModel):
    """A WAN table: links between region pairs, each with its source."""

    model_config = ConfigDict(extra="forbid")
    links: list[PairSpec] = Field(default_factory=list, max_length=10_000)
    default: LinkSpec | None = None

    def wan(self) -> Wan:
        links = {frozenset((p.a, p.b)): Link(p.gbps, p.rtt_ms, p.source) for p in self.links}
        d = self.default
        return Wan(links, Link(d.gbps, d.rtt_ms, d.source) if d else None)
