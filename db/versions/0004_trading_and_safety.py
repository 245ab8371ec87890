"""trading and safety: orders, fills, positions, accounts, order events, trading state, kill events, emergency and risk snapshots

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_tasks.storage.types import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "broker_accounts",
        sa.Column("broker", sa.String(length=20), nullable=False),
        sa.Column("cash", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("day_start_equity", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("peak_equity", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("broker", name=op.f("pk_broker_accounts")),
    )
    op.create_table(
        "kill_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state_before", sa.String(length=10), nullable=False),
        sa.Column("state_after", sa.String(length=10), nullable=False),
        sa.Column("timings_ms", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kill_events")),
    )
    op.create_index(op.f("ix_kill_events_ts"), "kill_events", ["ts"], unique=False)
    op.create_table(
        "order_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=20), nullable=False),
        sa.Column("check", sa.String(length=40), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_events")),
    )
    op.create_index(op.f("ix_order_events_client_order_id"), "order_events", ["client_order_id"], unique=False)
    op.create_index(op.f("ix_order_events_event"), "order_events", ["event"], unique=False)
    op.create_index(op.f("ix_order_events_ts"), "order_events", ["ts"], unique=False)
    op.create_table(
        "orders",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=False),
        sa.Column("broker", sa.String(length=20), nullable=False),
        sa.Column("broker_order_id", sa.String(length=64), nullable=True),
        sa.Column("symbol", sa.String(length=12), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("qty", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("order_type", sa.String(length=10), nullable=False),
        sa.Column("limit_price", sa.Numeric(precision=24, scale=8), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("filled_qty", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("avg_fill_price", sa.Numeric(precision=24, scale=8), nullable=True),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("submitted_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("client_order_id", name=op.f("uq_orders_client_order_id")),
    )
    op.create_index(op.f("ix_orders_broker_order_id"), "orders", ["broker_order_id"], unique=False)
    op.create_index(op.f("ix_orders_created_at"), "orders", ["created_at"], unique=False)
    op.create_index(op.f("ix_orders_status"), "orders", ["status"], unique=False)
    op.create_index(op.f("ix_orders_symbol"), "orders", ["symbol"], unique=False)
    op.create_table(
        "positions",
        sa.Column("broker", sa.String(length=20), nullable=False),
        sa.Column("symbol", sa.String(length=12), nullable=False),
        sa.Column("qty", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("avg_price", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("realized_pnl", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("broker", "symbol", name=op.f("pk_positions")),
    )
    op.create_table(
        "risk_snapshots",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("broker", sa.String(length=20), nullable=False),
        sa.Column("equity", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("daily_pnl", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("gross_exposure", sa.Float(), nullable=False),
        sa.Column("net_exposure", sa.Float(), nullable=False),
        sa.Column("gross_leverage", sa.Float(), nullable=True),
        sa.Column("var_95", sa.Float(), nullable=True),
        sa.Column("es_95", sa.Float(), nullable=True),
        sa.Column("drawdown_pct", sa.Float(), nullable=True),
        sa.Column("risk_score", sa.Float(), nullable=False),
        sa.Column("breaches", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_snapshots")),
    )
    op.create_index(op.f("ix_risk_snapshots_ts"), "risk_snapshots", ["ts"], unique=False)
    op.create_table(
        "trading_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trading_state")),
    )
    op.create_table(
        "emergency_snapshots",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("kill_event_id", sa.BigInteger(), nullable=True),
        sa.Column("open_orders", sa.JSON(), nullable=False),
        sa.Column("positions", sa.JSON(), nullable=False),
        sa.Column("breakers", sa.JSON(), nullable=False),
        sa.Column("file_path", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["kill_event_id"], ["kill_events.id"], name=op.f("fk_emergency_snapshots_kill_event_id_kill_events"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emergency_snapshots")),
    )
    op.create_index(op.f("ix_emergency_snapshots_ts"), "emergency_snapshots", ["ts"], unique=False)
    op.create_table(
        "fills",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("broker", sa.String(length=20), nullable=False),
        sa.Column("symbol", sa.String(length=12), nullable=False),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("qty", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("price", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_fills_order_id_orders"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fills")),
    )
    op.create_index(op.f("ix_fills_order_id"), "fills", ["order_id"], unique=False)
    op.create_index(op.f("ix_fills_symbol"), "fills", ["symbol"], unique=False)
    op.create_index(op.f("ix_fills_ts"), "fills", ["ts"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_fills_ts"), table_name="fills")
    op.drop_index(op.f("ix_fills_symbol"), table_name="fills")
    op.drop_index(op.f("ix_fills_order_id"), table_name="fills")
    op.drop_table("fills")
    op.drop_index(op.f("ix_emergency_snapshots_ts"), table_name="emergency_snapshots")
    op.drop_table("emergency_snapshots")
    op.drop_table("trading_state")
    op.drop_index(op.f("ix_risk_snapshots_ts"), table_name="risk_snapshots")
    op.drop_table("risk_snapshots")
    op.drop_table("positions")
    op.drop_index(op.f("ix_orders_symbol"), table_name="orders")
    op.drop_index(op.f("ix_orders_status"), table_name="orders")
    op.drop_index(op.f("ix_orders_created_at"), table_name="orders")
    op.drop_index(op.f("ix_orders_broker_order_id"), table_name="orders")
    op.drop_table("orders")
    op.drop_index(op.f("ix_order_events_ts"), table_name="order_events")
    op.drop_index(op.f("ix_order_events_event"), table_name="order_events")
    op.drop_index(op.f("ix_order_events_client_order_id"), table_name="order_events")
    op.drop_table("order_events")
    op.drop_index(op.f("ix_kill_events_ts"), table_name="kill_events")
    op.drop_table("kill_events")
    op.drop_table("broker_accounts")
