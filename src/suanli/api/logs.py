"""Reading a job's log files for ``GET /v1/jobs/ID/logs``: from their end, from an offset,
or their last lines — never a whole file into memory.

A job writes several files (stdout and stderr of each member), so a position in its log is
one byte offset per file, in the order the job lists them: the cursor ``"12,0"``. The
answer's ``X-Log-Offset`` header is the cursor to pass next time; a file shorter than its
offset was replaced (a retry starts new files) and is read from its start again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

#: bytes read backwards per step when looking for the last lines of a file
TAIL_CHUNK = 64 << 10


class CursorError(ValueError):
    """An ``offset`` that is not whole byte offsets >= 0, one per log file."""


def log_files(members: list[dict[str, Any]] | None) -> list[Path]:
    """Each member's stdout and stderr, in order, once each (a Ray gang's share one)."""
    paths: list[Path] = []
    for m in members or []:
        for key in ("stdout", "stderr"):
            path = str(m.get(key) or "")
            if path and Path(path) not in paths:
                paths.append(Path(path))
    return paths


def parse_cursor(text: str) -> list[int]:
    """``"12,0"`` -> ``[12, 0]``; ``""`` is the start of every file."""
    if text == "":
        return []
    offsets = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"-?[0-9]{1,19}", part):
            raise CursorError(
                f"offset: {text!r} is not byte offsets (one per log file, comma-separated, "
                "as X-Log-Offset gave them)"
            )
        if int(part) < 0:
            raise CursorError(f"offset: {part} is negative; byte offsets start at 0")
        offsets.append(int(part))
    return offsets


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _text(data: bytes) -> tuple[str, int]:
    """Decoded text and the bytes it used: a UTF-8 character cut at the end is left for
    the next read rather than turned into a replacement character."""
    for cut in range(4):
        try:
            return data[: len(data) - cut].decode(), len(data) - cut
        except UnicodeDecodeError as exc:
            if exc.reason != "unexpected end of data":
                break
    return data.decode(errors="replace"), len(data)


def read_from(paths: list[Path], cursor: list[int], max_bytes: int) -> tuple[str, list[int]]:
    """What each file holds past its offset (at most ``max_bytes`` of each), and the next
    cursor."""
    text, after = "", []
    for i, path in enumerate(paths):
        start = cursor[i] if i < len(cursor) else 0
        if _size(path) < start:  # replaced by a shorter file: read the new one whole
            start = 0
        try:
            with path.open("rb") as fh:
                fh.seek(start)
                part, used = _text(fh.read(max_bytes))
        except OSError:
            part, used = "", 0
        text += part
        after.append(start + used)
    return text, after


def last_lines(paths: list[Path], lines: int, max_bytes: int) -> tuple[str, list[int]]:
    """The last ``lines`` lines of the files together (each read backwards, at most
    ``max_bytes`` of it), and the cursor at their ends."""
    parts, ends = [], []
    for path in paths:
        try:
            with path.open("rb") as fh:
                end = fh.seek(0, os.SEEK_END)
                start, data = end, b""
                while start > 0 and data.count(b"\n") <= lines and end - start < max_bytes:
                    step = min(TAIL_CHUNK, start, max_bytes - (end - start))
                    start -= step
                    fh.seek(start)
                    data = fh.read(step) + data
        except OSError:
            end, data = 0, b""
        parts.append(data.decode(errors="replace"))
        ends.append(end)
    text = "".join(parts)
    kept = text.splitlines(keepends=True)[-lines:]
    return "".join(kept), ends


def last_bytes(paths: list[Path], max_bytes: int) -> tuple[str, list[int]]:
    """The last ``max_bytes`` of each file, and the cursor at their ends."""
    text, ends = "", []
    for path in paths:
        try:
            with path.open("rb") as fh:
                end = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, end - max_bytes))
                data = fh.read(end - fh.tell())
        except OSError:
            end, data = 0, b""
        text += data.decode(errors="replace")
        ends.append(end)
    return text, ends


def cursor_header(cursor: list[int]) -> dict[str, str]:
    return {"X-Log-Offset": ",".join(str(o) for o in cursor)}
