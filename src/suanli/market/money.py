"""Money as integer micro-dollars: exact sums, no float rounding anywhere in the ledger.

A price per device-hour times seconds is rounded once, half up, to a micro-dollar
(`cost_micro`), so a bill is the sum of what each line says, and what a quote said
is what is billed.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from suanli.errors import SuanliError

MICRO = 1_000_000  # micro-dollars per dollar
MAX_USD = Decimal(10) ** 12  # any amount above a trillion dollars is a typo


class MoneyError(SuanliError, ValueError):
    """An amount that is not a finite, non-negative number of dollars."""


def to_micro(usd: float | str | Decimal) -> int:
    """Dollars (as typed by a person: "2.5", 2.5) to micro-dollars, exactly."""
    try:
        d = Decimal(str(usd))
    except InvalidOperation as exc:
        raise MoneyError(f"{usd!r} is not an amount of dollars; give a number like 2.50") from exc
    if not d.is_finite() or d < 0 or d > MAX_USD:
        raise MoneyError(f"{usd!r} dollars: give a finite amount between 0 and {MAX_USD}")
    return int((d * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd(micro: int) -> str:
    """Micro-dollars as a dollar string with six decimals (what JSON carries: exact)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def cost_micro(price_micro_per_hour: int, units: int, seconds: float) -> int:
    """What ``units`` devices cost for ``seconds`` at a price per device-hour, in micro-dollars."""
    exact = Decimal(price_micro_per_hour) * units * Decimal(repr(float(seconds))) / 3600
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def fee_of(amount_micro: int, fee_ppm: int) -> int:
    """The platform's share (parts per million) of a charge, rounded half up."""
    return (amount_micro * fee_ppm + 500_000) // 1_000_000
