"""Kubernetes sites: the namespace suanli's Volcano Jobs go to, the image they run in
unless a job names its own, and the API server's CA certificate (public, not sealed);
and every site's preemption notice.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("namespace", sa.String(63), nullable=True))
        batch.add_column(sa.Column("image", sa.String(255), nullable=True))
        batch.add_column(sa.Column("ca_cert", sa.Text, nullable=True))
        batch.add_column(sa.Column("preemption_notice_s", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("preemption_notice_s")
        batch.drop_column("ca_cert")
        batch.drop_column("image")
        batch.drop_column("namespace")
