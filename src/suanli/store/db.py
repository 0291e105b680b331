"""The store: one SQLAlchemy engine; every write is one transaction (all or nothing)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from suanli.errors import SuanliError
from suanli.store.models import JobEventRow, JobRow, TokenRow


class OwnerRoleError(SuanliError, ValueError):
    """A token for an owner that already has tokens of another role."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, url: str) -> None:
        kwargs: dict[str, object] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):

            @event.listens_for(self.engine, "connect")
            def _wal(conn, _):  # type: ignore[no-untyped-def]
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

        self.migrate()
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (creates it on a new database)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        """The schema's current Alembic revision."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @classmethod
    def sqlite(cls, data_dir: Path) -> Store:
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{data_dir / 'suanli.db'}")

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        with self._session() as s, s.begin():
            yield s

    # --- tokens ------------------------------------------------------------------
    def create_token(self, role: str, owner: str) -> str:
        """A new token; an owner has one role (a provider named like an admin would
        otherwise manage the admin's nodes, a user see the admin's jobs)."""
        token = "sl_" + secrets.token_urlsafe(24)
        with self.tx() as s:
            other = s.scalar(select(TokenRow.role).where(TokenRow.owner == owner))
            if other is not None and other != role:
                raise OwnerRoleError(
                    f"owner {owner!r} already has {other} tokens; one owner has one role "
                    "(choose another owner name)"
                )
            s.add(
                TokenRow(
                    token_hash=hash_token(token), role=role, owner=owner, created_at=time.time()
                )
            )
        return token

    def find_token(self, token: str) -> TokenRow | None:
        with self.tx() as s:
            return s.scalar(select(TokenRow).where(TokenRow.token_hash == hash_token(token)))

    def has_admin(self) -> bool:
        with self.tx() as s:
            return s.scalar(select(TokenRow).where(TokenRow.role == "admin").limit(1)) is not None

    # --- jobs --------------------------------------------------------------------
    def add_job(
        self, s: Session, spec: dict[str, Any], owner: str, idempotency_key: str | None = None
    ) -> JobRow:
        """Queue a validated job spec (``JobSpec.model_dump()``) in transaction ``s``."""
        now = time.time()
        row = JobRow(
            name=str(spec["name"]),
            owner=owner,
            spec=spec,
            state="queued",
            attempts=0,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
        )
        s.add(row)
        s.flush()
        self.event(s, row.id, "submitted", f"by {owner}")
        return row

    def event(self, s: Session, job_id: int, kind: str, message: str) -> None:
        s.add(JobEventRow(job_id=job_id, at=time.time(), kind=kind, message=message))

    def events(self, job_id: int) -> list[JobEventRow]:
        with self.tx() as s:
            return list(
                s.scalars(
                    select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id)
                )
            )
