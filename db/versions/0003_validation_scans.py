"""validation and scans: quality reports, series verdicts, scan runs and results; quarantine stage

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_tasks.storage.types import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("rejected_rows") as batch:
        batch.add_column(sa.Column("stage", sa.String(12), nullable=False, server_default="ingest"))
    op.create_table(
        "quality_reports",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.String(12), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("session", sa.Date(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expected", sa.Integer(), nullable=False),
        sa.Column("present", sa.Integer(), nullable=False),
        sa.Column("completeness", sa.Float(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("gaps", sa.JSON(), nullable=False),
        sa.Column("violations", sa.JSON(), nullable=False),
        sa.Column("outliers", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quality_reports")),
        sa.UniqueConstraint("symbol", "timeframe", "session", name="uq_quality_reports_symbol_day"),
    )
    op.create_index(op.f("ix_quality_reports_status"), "quality_reports", ["status"])
    op.create_table(
        "series_validation",
        sa.Column("symbol", sa.String(12), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("checked_at", UtcDateTime(), nullable=False),
        sa.Column("through", sa.Date(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("symbol", "timeframe", name=op.f("pk_series_validation")),
    )
    op.create_table(
        "scan_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("as_of", UtcDateTime(), nullable=False),
        sa.Column("symbols", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("stale_input", sa.Boolean(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_runs")),
    )
    op.create_index(op.f("ix_scan_runs_created_at"), "scan_runs", ["created_at"])
    op.create_table(
        "scan_results",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(12), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("indicators", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("stale_input", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["scan_runs.id"], name=op.f("fk_scan_results_run_id_scan_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "symbol", name=op.f("pk_scan_results")),
    )


def downgrade() -> None:
    op.drop_table("scan_results")
    op.drop_table("scan_runs")
    op.drop_table("series_validation")
    op.drop_table("quality_reports")
    with op.batch_alter_table("rejected_rows") as batch:
        batch.drop_column("stage")
