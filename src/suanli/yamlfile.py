"""Small helpers every YAML reader shares: where a problem is, and how big a file really is.

Job specs, pool files and simulator inputs all report a pydantic error with the
line it is on and its key path, and all refuse a file whose aliases expand to
far more values than it shows.
"""

from __future__ import annotations

from typing import Any

import yaml


def line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """1-based line of the YAML node at ``loc`` (a pydantic error's location), or of the
    deepest part of it that exists (a missing key: the mapping that lacks it)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else 1
    for key in loc:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if getattr(k, "value", None) == key:
                    nxt = v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            nxt = node.value[key] if 0 <= key < len(node.value) else None
        if nxt is None:
            continue  # a pydantic-only part (a union member's tag): skip it, keep walking
        node = nxt
        line = node.start_mark.line + 1
    return line


def dotted(loc: tuple[Any, ...]) -> str:
    """``("nodes", 0, "gpus")`` -> ``nodes[0].gpus``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def expanded_size(data: Any, budget: int) -> int:
    """Values in ``data`` counting an alias as many times as it is used, stopping past
    ``budget``: a "billion laughs" file is a few hundred bytes whose expansion is not."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > budget:
            return count
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


JSON_TYPES = (str, int, float, bool, type(None))


def not_json(data: Any) -> tuple[str, str] | None:
    """The first value JSON cannot hold (a date, a set, bytes, a non-string key) as
    (its dotted path, its type's name); None when the whole document is JSON-shaped.
    Call it after ``expanded_size``: a document that refers to itself never ends."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    return dotted(loc), f"{type(k).__name__} key ({k!r})"
                stack.append(((*loc, k), v))
        elif isinstance(item, list):
            stack.extend(((*loc, i), v) for i, v in enumerate(item))
        elif not isinstance(item, JSON_TYPES):
            return dotted(loc), type(item).__name__
    return None
