"""Templates, their filters, and the headers every console page carries."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from suanli import readable

HERE = Path(__file__).parent
#: no inline script or style may run: a job name or a log line is a stranger's text
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def age(seconds: float | None) -> str:
    return "-" if seconds is None else readable.age(seconds)


def when(at: float | None) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int) or (float(v).is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    return f"{v:,.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"


def usd(v: float | str | None) -> str:
    """Dollars to the cent; the API's money is a decimal string (exact micro-dollars)."""
    if v is None:
        return "-"
    x = float(v)
    return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"


def hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    h = seconds / 3600
    return f"{h / 24:,.1f} days" if h >= 48 else f"{h:,.2f} h"


def as_yaml(v: Any) -> str:
    return yaml.safe_dump(v, sort_keys=False, allow_unicode=True, default_flow_style=False)


def chart(data: Any) -> Markup:
    """A chart's data for console.js, in a JSON script element (never run: its type is
    not JavaScript); ``<`` is escaped so that no string in it can close the element."""
    text = json.dumps(readable.finite(data), separators=(",", ":")).replace("<", "\\u003c")
    return Markup(f'<script type="application/json" class="chart-data">{text}</script>')


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(
    exit=readable.exit_status,
    age=age,
    when=when,
    num=num,
    usd=usd,
    hours=hours,
    as_yaml=as_yaml,
    chart=chart,
)


def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(HEADERS)
    return response
