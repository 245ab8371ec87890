"""bars keyed by (series_id, ts): bar_series names each (symbol, timeframe, feed, adjustment); bar_digests; existing bars carried over

The old ``bars`` table was keyed by five columns, four of them text: the server
compared and stored those for every row in the primary key. Now a small
``bar_series`` table names each series by an integer and ``bars`` is keyed by
(series_id, ts). ``bar_digests`` records what a write stored so a re-run of the
same rows is recognised without sending them again; on PostgreSQL a statement
trigger empties it whenever something other than the bar store writes to
``bars`` (the store marks its own transactions with ``SET LOCAL
omni.bar_digests = 'kept'``).

Every stored bar is carried over, and back on downgrade.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from omni_tasks.storage.types import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

VALUES = "open, high, low, close, volume, vwap, trade_count, provider, ingested_at"

#: On PostgreSQL: a write to bars from anything but the bar store forgets every digest, before it
#: writes a row. The EXCLUSIVE lock waits for store transactions that may be recording one and keeps
#: new ones out until this transaction ends, so none survives it; taken before any row lock (as the
#: store takes its ROW EXCLUSIVE lock first), it cannot deadlock with a store write.
PG_FORGET_DIGESTS = """
CREATE FUNCTION bars_forget_digests() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('omni.bar_digests', true), '') <> 'kept' THEN
        LOCK TABLE bar_digests IN EXCLUSIVE MODE;
        DELETE FROM bar_digests;
    END IF;
    RETURN NULL;
END
$$
"""
PG_TRIGGER = (
    "CREATE TRIGGER bars_forget_digests BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON bars "
    "FOR EACH STATEMENT EXECUTE FUNCTION bars_forget_digests()"
)


def _text_keyed_bars(name: str) -> None:
    op.create_table(
        name,
        sa.Column("symbol", sa.String(12), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("feed", sa.String(16), nullable=False),
        sa.Column("adjustment", sa.String(8), nullable=False),
        sa.Column("open", sa.Double(), nullable=False),
        sa.Column("high", sa.Double(), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("close", sa.Double(), nullable=False),
        sa.Column("volume", sa.Double(), nullable=False),
        sa.Column("vwap", sa.Double(), nullable=True),
        sa.Column("trade_count", sa.BigInteger(), nullable=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("ingested_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "timeframe", "ts", "feed", "adjustment", name=f"pk_{name}"),
    )


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.rename_table("bars", "bars_text_keyed")
    if postgresql:
        op.execute("ALTER INDEX pk_bars RENAME TO pk_bars_text_keyed")
    op.create_table(
        "bar_series",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.String(12), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("feed", sa.String(16), nullable=False),
        sa.Column("adjustment", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bar_series")),
        sa.UniqueConstraint("symbol", "timeframe", "feed", "adjustment", name="uq_bar_series_key"),
    )
    op.create_table(
        "bars",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("ts", UtcDateTime(), nullable=False),
        sa.Column("open", sa.Double(), nullable=False),
        sa.Column("high", sa.Double(), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("close", sa.Double(), nullable=False),
        sa.Column("volume", sa.Double(), nullable=False),
        sa.Column("vwap", sa.Double(), nullable=True),
        sa.Column("trade_count", sa.BigInteger(), nullable=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("ingested_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "ts", name="pk_bars"),
    )
    op.create_table(
        "bar_digests",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("lo", UtcDateTime(), nullable=False),
        sa.Column("hi", UtcDateTime(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "lo", "hi", name="pk_bar_digests"),
    )
    op.execute(
        "INSERT INTO bar_series (symbol, timeframe, feed, adjustment) "
        "SELECT DISTINCT symbol, timeframe, feed, adjustment FROM bars_text_keyed ORDER BY symbol, timeframe, feed, adjustment"
    )
    op.execute(
        f"INSERT INTO bars (series_id, ts, {VALUES}) "  # noqa: S608 - constant column names
        f"SELECT s.id, o.ts, {', '.join(f'o.{c.strip()}' for c in VALUES.split(','))} FROM bars_text_keyed AS o "
        "JOIN bar_series AS s ON s.symbol = o.symbol AND s.timeframe = o.timeframe AND s.feed = o.feed AND s.adjustment = o.adjustment "
        "ORDER BY s.id, o.ts"
    )
    op.drop_table("bars_text_keyed")
    if postgresql:
        op.execute(PG_FORGET_DIGESTS)
        op.execute(PG_TRIGGER)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute("DROP TRIGGER IF EXISTS bars_forget_digests ON bars")
        op.execute("DROP FUNCTION IF EXISTS bars_forget_digests()")
    op.rename_table("bars", "bars_series_keyed")
    if postgresql:
        op.execute("ALTER INDEX pk_bars RENAME TO pk_bars_series_keyed")
    _text_keyed_bars("bars")
    op.execute(
        f"INSERT INTO bars (symbol, timeframe, ts, feed, adjustment, {VALUES}) "  # noqa: S608 - constant column names
        f"SELECT s.symbol, s.timeframe, b.ts, s.feed, s.adjustment, {', '.join(f'b.{c.strip()}' for c in VALUES.split(','))} "
        "FROM bars_series_keyed AS b JOIN bar_series AS s ON s.id = b.series_id"
    )
    op.drop_table("bars_series_keyed")
    op.drop_table("bar_digests")
    op.drop_table("bar_series")
