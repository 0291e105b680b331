"""The market: accounts, offers, orders, leases, the ledger, spot prices, idle policies.

Also ``jobs.preempt_reason``/``preempt_grace_s``: a stop another controller asks
of the jobs controller (a reclaimed spot lease), begun with the site's notice.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("preempt_reason", sa.String(128), nullable=True))
        batch.add_column(sa.Column("preempt_grace_s", sa.Float, nullable=True))
    op.create_table(
        "accounts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("credit_limit_micro", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "market_offers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("provider", sa.String(64), nullable=False, index=True),
        sa.Column("accelerator", sa.String(63), nullable=False),
        sa.Column("region", sa.String(63), nullable=False),
        sa.Column("site", sa.String(63), nullable=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("price_micro", sa.BigInteger, nullable=False),
        sa.Column("units", sa.JSON, nullable=False),
        sa.Column("starts_at", sa.Float, nullable=False),
        sa.Column("ends_at", sa.Float, nullable=False),
        sa.Column("min_term_s", sa.Float, nullable=False),
        sa.Column("notice_s", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("auto", sa.Boolean, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "market_orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("buyer", sa.String(64), nullable=False, index=True),
        sa.Column("accelerator", sa.String(63), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("regions", sa.JSON, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("remaining_s", sa.Float, nullable=False),
        sa.Column("max_price_micro", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("workload", sa.JSON, nullable=True),
        sa.Column("idempotency_key", sa.String(128), nullable=True, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "market_leases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "order_id", sa.Integer, sa.ForeignKey("market_orders.id"), nullable=False, index=True
        ),
        sa.Column(
            "offer_id", sa.Integer, sa.ForeignKey("market_offers.id"), nullable=False, index=True
        ),
        sa.Column("buyer", sa.String(64), nullable=False, index=True),
        sa.Column("provider", sa.String(64), nullable=False, index=True),
        sa.Column("accelerator", sa.String(63), nullable=False),
        sa.Column("region", sa.String(63), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("price_micro", sa.BigInteger, nullable=False),
        sa.Column("units", sa.JSON, nullable=False),
        sa.Column("starts_at", sa.Float, nullable=False),
        sa.Column("ends_at", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("end_reason", sa.String(128), nullable=True),
        sa.Column("billed_until", sa.Float, nullable=False),
        sa.Column("hold_micro", sa.BigInteger, nullable=False),
        sa.Column("used_unit_s", sa.Float, nullable=False),
        sa.Column("metered_at", sa.Float, nullable=False),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("txn", sa.String(160), nullable=False, index=True),
        sa.Column("leg", sa.Integer, nullable=False),
        sa.Column("account", sa.String(64), nullable=False, index=True),
        sa.Column("amount_micro", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("memo", sa.String(256), nullable=False),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.UniqueConstraint("txn", "leg", name="uq_ledger_txn_leg"),
    )
    op.create_table(
        "market_prices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("accelerator", sa.String(63), nullable=False, index=True),
        sa.Column("region", sa.String(63), nullable=False),
        sa.Column("price_micro", sa.BigInteger, nullable=True),
        sa.Column("volume", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "market_idle_policies",
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("idle_s", sa.Float, nullable=False),
        sa.Column("floor_micro", sa.BigInteger, nullable=False),
        sa.Column("notice_s", sa.Float, nullable=False),
        sa.Column("hours", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for t in (
        "market_idle_policies",
        "market_prices",
        "ledger_entries",
        "market_leases",
        "market_orders",
        "market_offers",
        "accounts",
    ):
        op.drop_table(t)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("preempt_grace_s")
        batch.drop_column("preempt_reason")
