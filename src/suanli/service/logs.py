"""The service's own log: one line per job transition and per executor outage.

``suanli up --log-format json`` writes one JSON object per line (for Loki, Elastic,
``jq``); the default is text. Fields a line carries beyond its message (``job``,
``queue``, ``from``, ``to``, ``node``, ``reason``; ``executor``, ``failures``,
``down_s``) are passed as ``extra`` and become keys of the JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: what every LogRecord has: anything else on a record came in through ``extra``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (Unix seconds), ``level``, ``logger``, ``msg``, the
    record's ``extra`` fields, and ``exc`` (the traceback as text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send the ``suanli`` loggers to stderr as ``fmt`` (``text`` or ``json``)."""
    if fmt not in ("text", "json"):
        raise SystemExit(f"error: unknown log format {fmt!r}; use text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    handler.set_name("suanli")
    root = logging.getLogger("suanli")
    root.handlers = [h for h in root.handlers if h.get_name() != "suanli"] + [handler]
    root.setLevel(level)


def transition(
    log: logging.Logger,
    job: int,
    queue: str,
    old: str,
    new: str,
    reason: str = "",
    node: str = "",
) -> None:
    """``job 7 queued→running (queue default, node n1): reason``, one line per transition."""
    where = f"queue {queue}" + (f", node {node}" if node else "")
    log.info(
        "job %s %s→%s (%s)%s",
        job,
        old,
        new,
        where,
        f": {reason}" if reason else "",
        extra={
            "job": job,
            "queue": queue,
            "from": old,
            "to": new,
            "node": node or None,
            "reason": reason or None,
        },
    )


class Outage:
    """An executor that cannot be reached, told as one story instead of a traceback per
    tick: a line when it begins (with the reason), a count every ``every`` failed
    attempts while it lasts, and a line when it ends (how long, how many attempts)."""

    def __init__(
        self,
        executor: str,
        log: logging.Logger,
        every: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.executor, self.log, self.every, self.clock = executor, log, every, clock
        self.since: float | None = None  # when it began; None: the executor answers
        self.failures = 0
        self.source = ""  # what failed last (``nodes``, ``start``)

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, reason: str, source: str = "") -> None:
        """One more attempt (of ``source``: listing nodes, starting a job) the executor did
        not answer."""
        self.source = source
        fields = {"executor": self.executor, "reason": reason}
        if self.since is None:
            self.since, self.failures = self.clock(), 1
            self.log.warning(
                "executor %s unavailable: %s",
                self.executor,
                reason,
                extra={**fields, "failures": 1},
            )
            return
        self.failures += 1
        if self.failures % self.every == 0:
            down_s = self.clock() - self.since
            self.log.warning(
                "executor %s still unavailable after %.0f s, %d failed attempts: %s",
                self.executor,
                down_s,
                self.failures,
                reason,
                extra={**fields, "failures": self.failures, "down_s": round(down_s, 1)},
            )

    def answered(self, source: str | None = None) -> None:
        """The executor answered (``source``: only that kind of call): an outage under way
        is over, unless what answered is not what last failed (the node list answers while
        starts are refused: the outage goes on)."""
        if self.since is None or (source is not None and source != self.source):
            return
        down_s = self.clock() - self.since
        self.log.info(
            "executor %s back after %.0f s, %d failed attempts",
            self.executor,
            down_s,
            self.failures,
            extra={"executor": self.executor, "failures": self.failures, "down_s": down_s},
        )
        self.since, self.failures = None, 0
