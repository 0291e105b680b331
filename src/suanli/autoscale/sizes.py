"""The request-size distribution the chip-mix optimizer plans for: requests counted by
size bucket in bins of time, over the same past the forecasts read (30 minutes).

The optimizer used to take the sizes of the last 2,000 requests. At a busy service's
rate that is under a minute, and a burst's tail is not its head: on the Azure code
trace (x8) the last 2,000 requests before a burst were small ones, the mix planned
for them held 4 H100s where the history's sizes asked for 5, and the burst that
followed missed its TTFT for 5% of all requests. A window in time weighs the sizes as
the forecast weighs the rates, whatever the rate, and its counts per bucket and minute
are a few kilobytes to keep in the store (a restarted controller plans from the same
sizes as the one before it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from suanli.autoscale.mix import SizeBuckets

#: the forecasts' past (`suanli.autoscale.scalers`: 120 rates at 15 s)
SIZES_WINDOW_S = 1800.0
BIN_S = 60.0


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
            self._forget(t_s)
        counts[self.buckets.of(prompt, output)] += n

    def extend(self, t_s: float, sizes: Iterable[tuple[int, int]]) -> None:
        for prompt, output in sizes:
            self.add(t_s, prompt, output)

    def _forget(self, now_s: float) -> None:
        oldest = self._oldest(now_s)
        for b in [b for b in self.bins if b < oldest]:
            del self.bins[b]

    def _oldest(self, now_s: float) -> int:
        """The oldest bin within the window: the one holding ``now - window``."""
        return math.floor((now_s - self.window_s) / self.bin_s)

    def counts(self, now_s: float) -> list[int]:
        """Requests per bucket over the window ending ``now_s``."""
        oldest, newest = self._oldest(now_s), math.floor(now_s / self.bin_s)
        out = [0] * self.buckets.count
        for b, counts in self.bins.items():
            if oldest <= b <= newest:
                for i, n in enumerate(counts):
                    out[i] += n
        return out

    def shares(self, now_s: float) -> list[float] | None:
        """Each bucket's share of the window's requests; None when it saw none."""
        counts = self.counts(now_s)
        total = sum(counts)
        return [n / total for n in counts] if total else None

    def to_json(self) -> dict[str, Any]:
        """What the store keeps: the bins with requests, as ``{bin: {bucket: count}}``
        (the grid is fixed in code; a bin is ``bin_s`` of time)."""
        return {
            "bin_s": self.bin_s,
            "bins": {
                str(b): {str(i): n for i, n in enumerate(c) if n} for b, c in self.bins.items()
            },
        }

    def load(self, kept: Any, now_s: float) -> None:
        """Counts the store kept (`to_json`) added to these; anything malformed is left
        out (a store is written by this code, but a restart must not fail on it)."""
        if not isinstance(kept, dict) or kept.get("bin_s") != self.bin_s:
            return
        oldest = self._oldest(now_s)
        for key, counts in (kept.get("bins") or {}).items():
            try:
                b = int(key)
                items = [(int(i), int(n)) for i, n in dict(counts).items()]
            except (TypeError, ValueError):
                continue
            if b < oldest:
                continue
            row = self.bins.setdefault(b, [0] * self.buckets.count)
            for i, n in items:
                if 0 <= i < len(row) and n > 0:
                    row[i] += n
