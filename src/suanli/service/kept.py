"""What a service's controller keeps in the store for the one after a restart: its
arrival rates (the forecasts' past), the HPA's recent recommendations (its scale-down
hold), the router's SLO counts (attainment since the service was created) and its
request sizes (the chip-mix optimizer's distribution). A new controller, or a fresh
scaler for a changed spec, starts from these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from suanli.autoscale.scalers import Optimizer, Predictive, Scaler
from suanli.service.replicas import ServiceTraffic
from suanli.store.models import ServiceRow

HISTORY_POINTS = 240
HISTORY_S = 3600.0  # rates older than this are not the forecasts' past


def carry_traffic(traffic: ServiceTraffic, observed: dict[str, Any] | None, now: float) -> None:
    """The router's SLO counts and request sizes go on from those the store kept, once
    per router (a restarted process): a service's attainment is since it was created,
    not since the last restart, and its mix is planned for the sizes it has served."""
    o = observed or {}
    judged, met = o.get("requests_judged"), o.get("requests_met")
    traffic.carry(
        judged if isinstance(judged, int) else 0,
        met if isinstance(met, int) and isinstance(judged, int) and 0 <= met <= judged else 0,
        o.get("sizes"),
        now,
    )


def stored_recommendations(observed: dict[str, Any] | None) -> list[tuple[float, int]]:
    """The HPA's recommendations the store kept (``observed.recommendations``)."""
    out = []
    for item in (observed or {}).get("recommendations") or []:
        if isinstance(item, list) and len(item) == 2:
            t, r = item
            if isinstance(t, int | float) and isinstance(r, int):
                out.append((float(t), r))
    return out


def recent_recommendations(
    history: Sequence[tuple[float, int]], now: float, window_s: float
) -> list[tuple[float, int]]:
    return [(t, r) for t, r in history if now - t < window_s]


def forecasts(scaler: Scaler) -> bool:
    """Whether the policy reads past arrival rates (and so the store keeps them)."""
    return isinstance(scaler, Predictive | Optimizer)


def past_rates(row: ServiceRow, now: float, period_s: float) -> list[float]:
    """The arrival rates the store kept for this service, from the last ``HISTORY_S`` and
    taken at this period (a forecast reads them as equally spaced): a controller that
    restarts, or a spec that changed, forecasts from the same past. The periods the
    service was down are missing, not zeros: nothing was measured."""
    return [
        float(r) for t, r, p in row.rates or [] if now - t < HISTORY_S and math.isclose(p, period_s)
    ]
