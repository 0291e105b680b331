"""Services keep their arrival rates per decision period ([t_s, arrivals/s, period_s]):
the forecasting autoscalers read the last hour of them, and a restarted service would
otherwise forecast from nothing, meeting the next burst as if there had never been one.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("rates", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("rates")
