"""A retry's earliest start; nodes and jobs the service itself owns.

``jobs.not_before``: a job re-queued for a retry waits out its backoff until
then (a preempted job is re-queued without one, which the exit code alone
could not tell apart). Nodes the executor reports and the calibration jobs
the service submits were owned by the literal ``admin``, a name a provider
or user token could also carry; they now belong to ``system:executor``, a
name no token can take.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SYSTEM = "system:executor"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("not_before", sa.Float, nullable=True))
    nodes = sa.table("nodes", sa.column("owner", sa.String), sa.column("executor", sa.String))
    op.execute(
        nodes.update()
        .where(nodes.c.owner == "admin", nodes.c.executor != "agent")
        .values(owner=SYSTEM)
    )
    jobs = sa.table("jobs", sa.column("owner", sa.String), sa.column("name", sa.String))
    op.execute(
        jobs.update()
        .where(jobs.c.owner == "admin", jobs.c.name.like("calibrate-%"))
        .values(owner=SYSTEM)
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("not_before")
