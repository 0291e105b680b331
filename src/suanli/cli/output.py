"""Shared output helpers: JSON for scripts, Rich tables for people."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from suanli.readable import age as age  # the CLI modules import them from here
from suanli.readable import exit_status as exit_status
from suanli.readable import finite

console = Console()
if not console.is_terminal:  # piped or captured: do not squeeze tables to 80 columns
    console = Console(width=140)


def print_json(obj: Any) -> None:
    """One JSON object on stdout (no Rich markup, so scripts can parse it)."""
    print(json.dumps(finite(obj), indent=2, sort_keys=False))


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: significant digits, thousands separators, no noise."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    """A two-column table; a long title goes on its own line above it."""
    if len(title) > 40:
        console.print(f"[bold]{title}[/bold]")
        title = ""
    table = Table(title=title or None, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, fmt(v))
    return table


def table(title: str, cols: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print rows as a table (cells as text)."""
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console.print(t)


def listing(
    rows: list[dict[str, Any]],
    json_out: bool,
    title: str,
    cols: Sequence[str],
    cells: Callable[[dict[str, Any]], Sequence[Any]],
) -> None:
    """What a list command prints: the API's rows as JSON, or a table of ``cells(row)``."""
    if json_out:
        print_json(rows)
    else:
        table(title, cols, (cells(r) for r in rows))


def held_devices(node: dict[str, Any]) -> str:
    """``0:j7 1:j7 2:-``: each device and the jobs holding it (``other``: not yours)."""
    taken = {a["index"]: a["jobs"] for a in node.get("allocation") or []}
    if not node["devices"]:
        return "-"

    def who(jobs: list[str]) -> str:
        return ",".join(j if j == "other" else f"j{j}" for j in jobs) or "-"

    return " ".join(f"{d['index']}:{who(taken.get(d['index'], []))}" for d in node["devices"])
