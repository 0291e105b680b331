"""Sites and nodes as resources; jobs run as gang members and stop asynchronously.

A job's process handle moves from four columns (one process) to ``members`` (one
handle per gang member, local or Ray), and a stop in progress is recorded so the
loop never blocks for a grace period and a restart finishes the stop.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("region", sa.String(63), nullable=False),
        sa.Column("pue", sa.Float, nullable=False),
        sa.Column("carbon_g_per_kwh", sa.Float, nullable=False),
        sa.Column("power_price_per_kwh", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("site", sa.String(63), sa.ForeignKey("sites.name"), nullable=True),
        sa.Column("executor", sa.String(16), nullable=False),
        sa.Column("cpu_cores", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("devices", sa.JSON, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("members", sa.JSON, nullable=True))
        batch.add_column(sa.Column("stop_reason", sa.String(64), nullable=True))
        batch.add_column(sa.Column("stop_deadline", sa.Float, nullable=True))
    # running jobs keep their one process as member 0
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Integer),
        sa.column("pid", sa.Integer),
        sa.column("start_time", sa.Float),
        sa.column("stdout_path", sa.Text),
        sa.column("stderr_path", sa.Text),
        sa.column("devices", sa.String),
        sa.column("members", sa.JSON),
    )
    conn = op.get_bind()
    for row in conn.execute(sa.select(jobs).where(jobs.c.pid.is_not(None))).mappings():
        devs = [int(d) for d in (row["devices"] or "").split(",") if d]
        member = {
            "job_id": str(row["id"]),
            "pid": row["pid"],
            "start_time": row["start_time"] or 0.0,
            "stdout": row["stdout_path"] or "",
            "stderr": row["stderr_path"] or "",
            "node": "local",
            "rank": 0,
            "devices": devs,
        }
        conn.execute(jobs.update().where(jobs.c.id == row["id"]).values(members=[member]))
    with op.batch_alter_table("jobs") as batch:
        for col in ("pid", "start_time", "stdout_path", "stderr_path"):
            batch.drop_column(col)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pid", sa.Integer, nullable=True))
        batch.add_column(sa.Column("start_time", sa.Float, nullable=True))
        batch.add_column(sa.Column("stdout_path", sa.Text, nullable=True))
        batch.add_column(sa.Column("stderr_path", sa.Text, nullable=True))
        for col in ("members", "stop_reason", "stop_deadline"):
            batch.drop_column(col)
    op.drop_table("nodes")
    op.drop_table("sites")
