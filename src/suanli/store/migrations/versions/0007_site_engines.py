"""Sites with engines: a site may be a Ray cluster suanli runs jobs on, with its health.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("engine", sa.String(16), nullable=True))
        batch.add_column(sa.Column("address", sa.String(255), nullable=True))
        batch.add_column(sa.Column("python", sa.String(255), nullable=True))
        batch.add_column(
            sa.Column("grace_s", sa.Float, nullable=False, server_default=sa.text("300"))
        )
        batch.add_column(sa.Column("seen_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("away_since", sa.Float, nullable=True))
        batch.add_column(sa.Column("status", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        for name in ("status", "away_since", "seen_at", "grace_s", "python", "address", "engine"):
            batch.drop_column(name)
