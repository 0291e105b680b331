"""Shared fixtures: catalog lookups, a small system builder, and a store on each database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from suanli.catalog import get_accelerator, get_model
from suanli.catalog.types import ModelArch
from suanli.perf import System, make_system
from suanli.store import Base, Store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PG_URL = os.environ.get("SUANLI_TEST_PG_URL")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared data sets live beside the project root")
    return SHARED


def system(name: str, **kw: object) -> System:
    return make_system(get_accelerator(name), **kw)  # type: ignore[arg-type]


def model(name: str) -> ModelArch:
    return get_model(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The API suite runs on both databases; .ci/run starts a throwaway PostgreSQL."""
    if request.param == "sqlite":
        yield Store.sqlite(tmp_path)
        return
    if not PG_URL:
        pytest.skip("SUANLI_TEST_PG_URL is not set (.ci/run starts a PostgreSQL server for it)")
    s = Store(PG_URL)
    yield s
    Base.metadata.drop_all(s.engine)
    with s.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    s.engine.dispose()
