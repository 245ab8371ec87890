"""backfill_partitions: data_from, where the provider's series of the symbol begins inside the partition

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_tasks.storage.types import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("backfill_partitions") as batch:
        batch.add_column(sa.Column("data_from", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backfill_partitions") as batch:
        batch.drop_column("data_from")
