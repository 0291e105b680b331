"""The API does what its OpenAPI document says: Schemathesis generates requests from the
schema (valid ones and invalid ones) against the app, on SQLite and on PostgreSQL, and
every answer must be a documented status with the documented body — never a 500.

Each operation gets ``SUANLI_CONTRACT_EXAMPLES`` generated requests (20; an audit runs
more, e.g. 200, outside the suite's time).

Not checked: that every request valid by the schema is accepted (`positive_data_acceptance`).
Some rules cannot be written in a JSON schema: variables a job may not set (``LD_*``,
device pinning), whether any node could host a job, whether a queue exists. Those are
422 answers naming the field, which the error model documents.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]'")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from suanli.api import create_app  # noqa: E402
from suanli.store import Store  # noqa: E402

PG_URL = os.environ.get("SUANLI_TEST_PG_URL")
EXAMPLES = int(os.environ.get("SUANLI_CONTRACT_EXAMPLES", "20"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.missing_required_header,
    checks.unsupported_method,
]


def _pg_store() -> Store:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    assert PG_URL is not None
    db = f"contract_{os.getpid()}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {db}"))
        conn.execute(text(f"CREATE DATABASE {db}"))
    admin.dispose()
    return Store(make_url(PG_URL).set(database=db).render_as_string(hide_password=False))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    if request.param == "postgresql" and not PG_URL:
        pytest.skip("SUANLI_TEST_PG_URL is not set (.ci/run starts a PostgreSQL server for it)")
    store = (
        _pg_store()
        if request.param == "postgresql"
        else Store.sqlite(Path(tmp_path_factory.mktemp("contract")))
    )
    yield store
    store.engine.dispose()


@pytest.fixture(scope="module")
def api_schema(backend: Store) -> Any:
    app = create_app(backend)
    app.state.store = backend
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples every run: a failure reproduces
)
def test_every_answer_is_documented_and_none_is_a_server_error(case: Any, backend: Store) -> None:
    # an admin token that still works: a generated DELETE /v1/tokens/{id} may revoke one.
    # Looked up, not made afresh per request: a new token is a commit, which was a
    # quarter of this test's time
    token = TOKENS.get(id(backend))
    if token is None or backend.find_token(token) is None:
        token = TOKENS[id(backend)] = backend.create_token("admin", "admin")
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)


TOKENS: dict[int, str] = {}  # the admin token in use, by store
