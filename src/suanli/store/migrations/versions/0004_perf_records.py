"""Measured vs predicted step time of finished jobs, for per-(family, chip) corrections.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "perf_records",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("family", sa.String(63), nullable=False),
        sa.Column("chip", sa.String(127), nullable=False),
        sa.Column("measured_s", sa.Float, nullable=False),
        sa.Column("predicted_s", sa.Float, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("perf_records")
