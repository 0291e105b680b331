"""Queues: weight, quota per device type, reclaimable.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queues",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("quota_milli", sa.JSON, nullable=False),
        sa.Column("reclaimable", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("queues")
