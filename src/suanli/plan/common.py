"""Shared planner types: options, results and the infeasibility error."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from suanli.errors import SuanliError

#: Called with (done, total) as the search advances; the CLI draws a progress bar.
Progress = Callable[[int, int], None]


class InfeasibleError(SuanliError):
    """No option satisfies the request; the message names the binding constraint."""


@dataclass
class PlanResult:
    """What a planner returns: options best first, and why the rest were rejected."""

    options: list[dict[str, Any]]
    rejected: Counter[str] = field(default_factory=Counter)
    candidates_evaluated: int = 0
    wall_s: float = 0.0
    infeasible: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "options": self.options,
            "rejected": dict(self.rejected.most_common()),
            "candidates_evaluated": self.candidates_evaluated,
            "wall_s": self.wall_s,
        }
        if self.infeasible is not None:
            out["infeasible"] = self.infeasible
        if self.notes:
            out["notes"] = self.notes
        return out


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` in increasing order."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})
