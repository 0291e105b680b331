"""Request traces for serving: the Azure LLM inference traces (Splitwise, ISCA'24) or any
CSV with an arrival time, a prompt length and an output length per request."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from suanli.errors import SuanliError

#: column names the reader accepts for each field (Azure's first)
TIME_COLUMNS = ("TIMESTAMP", "arrival_s", "timestamp")
PROMPT_COLUMNS = ("ContextTokens", "prompt_tokens", "input_len")
OUTPUT_COLUMNS = ("GeneratedTokens", "output_tokens", "output_len")
#: copies of a request under ``rate_scale`` land this close to it: bursts of a minute
#: or more keep their shape, and no k identical prompts arrive in the same instant
RATE_JITTER_S = 30.0


class TraceFileError(SuanliError, ValueError):
    """A serving trace that cannot be read; the message says which line and why."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival_s: float  # from the first request of the (sliced) trace
    prompt: int
    output: int


def _column(header: list[str], names: tuple[str, ...], path: Path) -> str:
    for n in names:
        if n in header:
            return n
    raise TraceFileError(
        f"{path}: no column {' or '.join(names)} (columns: {', '.join(header)}); "
        "a serving trace needs an arrival time, prompt tokens and output tokens"
    )


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        # Azure's timestamps carry 7 fractional digits; datetime takes 6
        head, _, frac = value.strip().partition(".")
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}").timestamp()


def read_trace(
    path: str | Path,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    time_scale: float = 1.0,
    rate_scale: int = 1,
    max_prompt: int | None = None,
    seed: int = 0,
) -> list[TraceRequest]:
    """Requests from ``start_s`` for ``duration_s`` of the trace.

    ``time_scale`` divides arrival times (2 = the same requests in half the time: the
    bursts shorten too). ``rate_scale`` k keeps the time axis and sends each request k
    times, each copy within ``RATE_JITTER_S`` of the original (k services with this one's
    traffic shape: minute-scale bursts stay as they were). Prompts longer than
    ``max_prompt`` are clipped to it.
    """
    p = Path(path)
    if time_scale <= 0:
        raise TraceFileError(f"--time-scale must be > 0, got {time_scale}")
    if rate_scale < 1:
        raise TraceFileError(f"--rate-scale must be a whole number >= 1, got {rate_scale}")
    try:
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise TraceFileError(f"{p}: cannot read the trace ({exc.strerror})") from exc
    if not rows:
        raise TraceFileError(f"{p}: the trace has no requests")
    header = list(rows[0])
    tc = _column(header, TIME_COLUMNS, p)
    pc = _column(header, PROMPT_COLUMNS, p)
    oc = _column(header, OUTPUT_COLUMNS, p)
    raw = []
    for n, row in enumerate(rows, start=2):
        try:
            raw.append((_seconds(row[tc]), int(row[pc]), int(row[oc])))
        except (TypeError, ValueError) as exc:
            raise TraceFileError(f"{p}:{n}: cannot read this request ({exc})") from exc
    raw.sort()
    rng = random.Random(seed)
    t0 = raw[0][0] + start_s
    out = []
    for t, prompt, output in raw:
        if t < t0 or (duration_s is not None and t - t0 >= duration_s):
            continue
        if max_prompt is not None:
            prompt = min(prompt, max_prompt)
        at = (t - t0) / time_scale
        out.append(TraceRequest(at, max(1, prompt), max(1, output)))
        for _ in range(rate_scale - 1):
            jitter = at + rng.uniform(-RATE_JITTER_S, RATE_JITTER_S)
            out.append(TraceRequest(max(0.0, jitter), max(1, prompt), max(1, output)))
    out.sort(key=lambda r: r.arrival_s)
    if not out:
        raise TraceFileError(f"{p}: no requests between {start_s} s and the end of the slice")
    return out
