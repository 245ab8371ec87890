"""foundation: task runs, audit log, worker heartbeats

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_tasks.storage.types import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "task_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("outcome_id", sa.String(36), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(50), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("args_json", sa.Text(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("delivery", sa.Integer(), nullable=False),
        sa.Column("sent_at", UtcDateTime(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=False),
        sa.Column("runtime_s", sa.Float(), nullable=False),
        sa.Column("queue_wait_s", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_runs")),
        sa.UniqueConstraint("outcome_id", name=op.f("uq_task_runs_outcome_id")),
    )
    op.create_index(op.f("ix_task_runs_task_id"), "task_runs", ["task_id"])
    op.create_index(op.f("ix_task_runs_name"), "task_runs", ["name"])
    op.create_index("ix_task_runs_finished_at", "task_runs", ["finished_at"])
    op.create_index("ix_task_runs_state_finished_at", "task_runs", ["state", "finished_at"])

    op.create_table(
        "audit_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_ts"), "audit_log", ["ts"])
    op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"])

    op.create_table(
        "worker_heartbeats",
        sa.Column("instance_id", sa.String(200), nullable=False),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("queues", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen", UtcDateTime(), nullable=False),
        sa.Column("active", sa.Integer(), nullable=False),
        sa.Column("processed", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_worker_heartbeats")),
    )
    op.create_index(op.f("ix_worker_heartbeats_hostname"), "worker_heartbeats", ["hostname"])


def downgrade() -> None:
    op.drop_table("worker_heartbeats")
    op.drop_table("audit_log")
    op.drop_table("task_runs")
