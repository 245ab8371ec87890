"""backfill_partitions: resume_at, when a deferred partition (waiting for a provider's quota) runs again

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_tasks.storage.types import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("backfill_partitions") as batch:
        batch.add_column(sa.Column("resume_at", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backfill_partitions") as batch:
        batch.drop_column("resume_at")
