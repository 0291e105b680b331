"""Durations, exits and numbers as people (and JSON readers) take them, the same in the
terminal and the console."""

import math
from typing import Any


def age(seconds: float) -> str:
    """A duration for people: ``42s``, ``27m``, ``3h12m``, ``2d4h`` (two units at most)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"


def exit_status(code: int | None) -> str:
    """A job's exit for people: ``-`` before there is one, the number, or the signal that
    ended it (a negative code is a signal's number: -15 is ``SIGTERM``)."""
    if code is None:
        return "-"
    if code < 0:
        import signal

        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return str(code)


def finite(data: Any) -> Any:
    """NaN and infinities as None, all the way down: JSON has no such numbers (Python
    writes ``NaN``, which a browser's ``JSON.parse`` and most tools refuse)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data
