"""Alembic environment: run migrations on the connection the Store hands over."""

from __future__ import annotations

from alembic import context

from suanli.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=True
)  # SQLite alters tables by copying them
with context.begin_transaction():
    context.run_migrations()
