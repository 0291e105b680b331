"""Shared fixtures: catalog lookups and a small system builder."""

from __future__ import annotations

from pathlib import Path

import pytest

from suanli.catalog import get_accelerator, get_model
from suanli.catalog.types import ModelArch
from suanli.perf import System, make_system

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared data sets live beside the project root")
    return SHARED


def system(name: str, **kw: object) -> System:
    return make_system(get_accelerator(name), **kw)  # type: ignore[arg-type]


def model(name: str) -> ModelArch:
    return get_model(name)
