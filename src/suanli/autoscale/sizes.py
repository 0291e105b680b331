"""The request-size distribution the chip-mix optimizer plans for: requests counted by
size bucket in bins of a minute, over the last 30 minutes (the forecast's past at its
default 15 s period: 120 rates).

The optimizer used to take the sizes of the last 2,000 requests. At a busy service's
rate that is under a minute, and a burst's tail is not its head: on the Azure code
trace (x8) the last 2,000 requests before a burst were small ones, an H100 fleet
planned for them held 4 H100s where the history's sizes asked for 5, and the burst
that followed kept 95.1% of requests within the SLO. Thirty minutes of counts give
the distribution whatever the rate, and they are a few kilobytes to keep in the store
(a restarted controller plans from the same sizes as the one before it).

A service idle for longer than the window plans, when load returns, for the sizes of
its last 30 minutes of traffic: the live router learns a request's size when it is
answered, and a service waking from zero would otherwise plan no mix until its first
replica had started and answered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from suanli.autoscale.mix import SizeBuckets

SIZES_WINDOW_S = 1800.0
BIN_S = 60.0
#: a stored count above this is not one this code wrote (a minute at a million/s)
MAX_STORED_COUNT = 60_000_000


@dataclass
class SizeHistory:
    """Requests per size bucket, in bins of ``bin_s`` seconds, over ``window_s``."""

    buckets: SizeBuckets = field(default_factory=SizeBuckets)
    window_s: float = SIZES_WINDOW_S
    bin_s: float = BIN_S
    #: bin (start time // bin_s) -> requests per bucket
    bins: dict[int, list[int]] = field(default_factory=dict)

    def add(self, t_s: float, prompt: int, output: int, n: int = 1) -> None:
        b = math.floor(t_s / self.bin_s)
        counts = self.bins.get(b)
        if counts is None:
            counts = self.bins[b] = [0] * self.buckets.count
            # a new minute: what is older than the window before it is not needed again
            for old in [o for o in self.bins if o < b - self._span()]:
                del self.bins[old]
        counts[self.buckets.of(prompt, output)] += n

    def copy(self) -> SizeHistory:
        return SizeHistory(
            self.buckets, self.window_s, self.bin_s, {b: list(c) for b, c in self.bins.items()}
        )

    def _span(self) -> int:
        """Bins before the newest one that the window reaches into."""
        return math.ceil(self.window_s / self.bin_s)

    def window(self, now_s: float) -> list[int]:
        """The bins counted at ``now_s``: those of the last ``window_s``; with none there,
        those of the last ``window_s`` of traffic before it (see the module's note)."""
        now_bin = math.floor(now_s / self.bin_s)
        past = [b for b in self.bins if b <= now_bin]
        if not past:
            return []
        newest = now_bin if any(b >= now_bin - self._span() for b in past) else max(past)
        return sorted(b for b in past if b >= newest - self._span())

    def counts(self, now_s: float) -> list[int]:
        """Requests per bucket over the window at ``now_s``."""
        out = [0] * self.buckets.count
        for b in self.window(now_s):
            for i, n in enumerate(self.bins[b]):
                out[i] += n
        return out

    def shares(self, now_s: float) -> list[float] | None:
        """Each bucket's share of the window's requests; None when it saw none."""
        counts = self.counts(now_s)
        total = sum(counts)
        return [n / total for n in counts] if total else None

    def to_json(self, now_s: float) -> dict[str, Any]:
        """What the store keeps: the window's bins with requests, as ``{bin: {bucket:
        count}}``, with the grid's size (its edges are fixed in code)."""
        return {
            "bin_s": self.bin_s,
            "buckets": self.buckets.count,
            "bins": {
                str(b): {str(i): n for i, n in enumerate(self.bins[b]) if n}
                for b in self.window(now_s)
            },
        }

    def load(self, kept: Any, now_s: float) -> None:
        """Counts the store kept (`to_json`) added to these. Anything malformed, of
        another bin or grid, or from after ``now_s`` is left out: the store is written by
        this code, but a restart must not fail on what it finds there."""
        if not isinstance(kept, dict):
            return
        bins = kept.get("bins")
        if (
            kept.get("bin_s") != self.bin_s
            or kept.get("buckets") != self.buckets.count
            or not isinstance(bins, dict)
        ):
            return
        now_bin = math.floor(now_s / self.bin_s)
        for key, counts in bins.items():
            if not isinstance(counts, dict):
                continue
            try:
                b = int(key)
                items = [(int(i), int(n)) for i, n in counts.items()]
            except (TypeError, ValueError, OverflowError):
                continue
            if b > now_bin:
                continue
            for i, n in items:
                if 0 <= i < self.buckets.count and 0 < n <= MAX_STORED_COUNT:
                    self.bins.setdefault(b, [0] * self.buckets.count)[i] += n
