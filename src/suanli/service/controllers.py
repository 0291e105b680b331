"""Controllers: one per resource kind, each reconciling stored desired state with the world.

The loop runs them in order at the start of each tick. A controller's failure is
its own: it is logged once (again only when the error changes), counted, and
the others and the scheduler run on (see DESIGN.md, "The service as controllers").
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("suanli.controllers")
#: failures per controller since the service started (for /metrics and the console)
FAILURES: Counter[str] = Counter()


class Controller(Protocol):
    name: str

    def reconcile(self, now: float) -> None: ...


def run_controllers(controllers: Sequence[Controller], now: float, failing: dict[str, str]) -> None:
    for c in controllers:
        try:
            c.reconcile(now)
        except Exception as exc:  # one controller's fault never stops the others
            FAILURES[c.name] += 1
            said = f"{type(exc).__name__}: {exc}"
            if failing.get(c.name) != said:
                failing[c.name] = said
                log.exception("controller %s failed (logged once until it changes)", c.name)
        else:
            if failing.pop(c.name, None) is not None:
                log.info("controller %s recovered", c.name)
