"""Helpers shared by the loop tests: put a job straight in the store, read it back."""

from __future__ import annotations

from typing import Any

from suanli.jobs.spec import parse_job_spec
from suanli.store import Store
from suanli.store.models import JobRow


def submit(store: Store, spec: dict[str, Any]) -> int:
    """Queue a job as the API would (validated spec, one transaction); returns its id."""
    full = parse_job_spec({"name": "j", **spec}).model_dump()
    with store.tx() as s:
        return store.add_job(s, full, "t").id


def get(store: Store, jid: int) -> JobRow:
    with store.tx() as s:
        row = s.get(JobRow, jid)
        assert row is not None
        return row
