"""Errors a user can cause.

Each says what was wrong and what to do about it, in one line, so the CLI can
print it as is and the API can return it as a 4xx JSON body.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SuanliError(Exception):
    """Base class of every error a user can cause (bad name, bad layout, bad file)."""


class UnknownNameError(SuanliError, KeyError):
    """A catalog name that does not exist; the message lists the nearest names."""

    def __init__(
        self, kind: str, name: str, known: Iterable[str], listing: str | None = None
    ) -> None:
        known_list = sorted(known)
        near = difflib.get_close_matches(name.lower(), known_list, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        msg = f"unknown {kind} {name!r}{hint} (see `suanli catalog list {listing or kind + 's'}`)"
        super().__init__(msg)
        self.kind = kind
        self.name = name
        self.suggestions = near

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InvalidLayoutError(SuanliError, ValueError):
    """A parallel or serving layout that cannot exist (names the broken constraint)."""


class InvalidCompressionError(SuanliError, ValueError):
    """A pruning ratio or a distillation teacher that cannot be applied."""


class CatalogFileError(SuanliError, ValueError):
    """A catalog or model file that cannot be read (names the file and the field)."""


class UsageError(SuanliError, ValueError):
    """A command-line option with a value it cannot take (names the option)."""
