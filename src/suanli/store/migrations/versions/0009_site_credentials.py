"""Site credentials: an attached engine's token, sealed (``credential``), or the name of
the service's environment variable that holds it (``credential_env``).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("credential", sa.Text, nullable=True))
        batch.add_column(sa.Column("credential_env", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("credential_env")
        batch.drop_column("credential")
