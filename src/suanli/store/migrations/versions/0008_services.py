"""Services: an endpoint whose replicas are jobs (``jobs.service`` names the service).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("service", sa.String(63), nullable=True))
        batch.create_index("ix_jobs_service", ["service"])
    op.create_table(
        "services",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("pinned", sa.Integer, nullable=True),
        sa.Column("desired", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("status", sa.String(255), nullable=True),
        sa.Column("observed", sa.JSON, nullable=True),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("device_s", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("services")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_service")
        batch.drop_column("service")
