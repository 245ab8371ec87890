"""Alembic revisions in db/ migrate SQLite and PostgreSQL to the models, with no drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import inspect

from omni_tasks.contracts import bars as frames
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import AuditLog, Bar, Base
from omni_tasks.storage.types import UtcDateTime


def _roundtrip(url: str) -> None:
    engine = make_engine(url)
    try:
        migrations.upgrade(engine)
        migrations.upgrade(engine)  # idempotent
        assert migrations.current_revision(engine) == migrations.head_revision(engine)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        assert migrations.drift(engine) == [], "models and migrations disagree: write a revision"
        factory = session_factory(engine)
        stamp = datetime(2026, 3, 9, 14, 30, tzinfo=UTC)
        with factory() as session, session.begin():
            session.add(AuditLog(ts=stamp, actor="test", action="migrate", subject="db", detail={"ok": True}))
        with factory() as session:
            row = session.query(AuditLog).one()
            assert row.ts == stamp
            assert row.ts.tzinfo is not None, "timestamps come back timezone-aware UTC"
        migrations.command.downgrade(migrations.alembic_config(engine), "base")
        assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
        migrations.upgrade(engine)
        assert migrations.drift(engine) == []
    finally:
        engine.dispose()


def test_migrations_on_sqlite_reach_head_without_drift(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'omni.sqlite3'}")


@pytest.mark.services
def test_migrations_on_postgresql_reach_head_without_drift(pg_database) -> None:  # type: ignore[no-untyped-def]
    _roundtrip(pg_database())


def test_naive_timestamps_are_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'omni.sqlite3'}")
    migrations.upgrade(engine)
    factory = session_factory(engine)
    with pytest.raises(Exception, match="timezone-aware"), factory() as session, session.begin():
        session.add(AuditLog(ts=datetime(2026, 1, 1), actor="t", action="a", subject="s", detail={}))  # the point of the test
    engine.dispose()


# ---- 0009: bars keyed by (series_id, ts), existing bars carried over ---------------------------------


def _old_bars_table() -> sa.Table:
    """The bars table as revisions 0002-0008 made it (five-column key, four of them text)."""
    return sa.Table(
        "bars", sa.MetaData(),
        sa.Column("symbol", sa.String(12)), sa.Column("timeframe", sa.String(8)), sa.Column("ts", UtcDateTime()),
        sa.Column("feed", sa.String(16)), sa.Column("adjustment", sa.String(8)),
        *(sa.Column(name, sa.Double()) for name in ("open", "high", "low", "close", "volume", "vwap")),
        sa.Column("trade_count", sa.BigInteger()), sa.Column("provider", sa.String(32)), sa.Column("ingested_at", UtcDateTime()),
    )  # fmt: skip


def _old_frames() -> list[pd.DataFrame]:
    """Series that must stay apart: IEX and SIP, raw and split-adjusted, two timeframes; NULLs scattered."""
    out = []
    start = datetime(2026, 3, 9, 14, 30, tzinfo=UTC)
    for i, (symbol, timeframe, feed, adjustment, n) in enumerate(
        [("AAPL", "1Min", "sip", "raw", 40), ("AAPL", "1Min", "iex", "raw", 30), ("AAPL", "1Min", "sip", "split", 25),
         ("BRK.B", "1Day", "sip", "raw", 10), ("MSFT", "1Min", "iex", "raw", 35)]
    ):  # fmt: skip
        step = timedelta(days=1) if timeframe == "1Day" else timedelta(minutes=1)
        close = 50.0 + 10 * i + np.arange(n) * 0.25
        raw = pd.DataFrame({
            "ts": [start + k * step for k in range(n)], "open": close - 0.1, "high": close + 0.3, "low": close - 0.3, "close": close,
            "volume": 100.0 + np.arange(n), "vwap": np.where(np.arange(n) % 7 == 3, np.nan, close), "trade_count": pd.array(
                [None if k % 5 == 2 else 10 + k for k in range(n)], dtype="Int64"),
        })  # fmt: skip
        out.append(
            frames.canonical_bars(
                raw, symbol=symbol, timeframe=timeframe, provider="alpaca" if i % 2 else "yahoo", feed=feed, adjustment=adjustment
            )
        )
    return out


def _carry_over(url: str) -> None:
    engine = make_engine(url)
    try:
        migrations.upgrade(engine, "0008")
        pieces = _old_frames()
        ingested = datetime(2026, 3, 10, 1, 2, 3, 456789, tzinfo=UTC)
        records = []
        for piece in pieces:
            for row in piece.to_dict(orient="records"):
                records.append({**row, "ts": row["ts"].to_pydatetime(), "vwap": None if pd.isna(row["vwap"]) else row["vwap"],
                                "trade_count": None if pd.isna(row["trade_count"]) else int(row["trade_count"]), "ingested_at": ingested})  # fmt: skip
        with engine.begin() as connection:
            connection.execute(sa.insert(_old_bars_table()), records)
        migrations.upgrade(engine)
        assert migrations.drift(engine) == []
        store = BarStore(engine)
        wide = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
        assert store.count() == len(records)
        for piece in pieces:
            symbol, timeframe, feed, adjustment = (str(piece[c].iloc[0]) for c in ("symbol", "timeframe", "feed", "adjustment"))
            back = store.read(symbol, timeframe, *wide, feeds=(feed,), adjustment=adjustment)
            pd.testing.assert_frame_equal(back, piece.astype(frames.empty_bars().dtypes.to_dict()))
        with engine.connect() as connection:
            assert set(connection.execute(sa.select(Bar.ingested_at).distinct()).scalars()) == {ingested}, "ingested_at carried over"
        again = store.upsert(pd.concat(pieces, ignore_index=True))
        print(f"after the migration: {store.count()} bars read back identical; writing them again changed {again.changed}")
        assert again.changed == 0, "the carried-over bars are the same bars: writing them again changes nothing"
        migrations.command.downgrade(migrations.alembic_config(engine), "0008")
        with engine.connect() as connection:
            old = _old_bars_table()
            back_rows = (
                connection.execute(sa.select(old).order_by(old.c.symbol, old.c.timeframe, old.c.feed, old.c.adjustment, old.c.ts))
                .mappings()
                .all()
            )
        expected = sorted(records, key=lambda r: (r["symbol"], r["timeframe"], r["feed"], r["adjustment"], r["ts"]))
        assert [dict(r) for r in back_rows] == expected, "a downgrade carries every bar back"
    finally:
        engine.dispose()


def test_migration_0009_carries_existing_bars_over_on_sqlite(tmp_path: Path) -> None:
    _carry_over(f"sqlite:///{tmp_path / 'omni.sqlite3'}")


@pytest.mark.services
def test_migration_0009_carries_existing_bars_over_on_postgresql(pg_database) -> None:  # type: ignore[no-untyped-def]
    _carry_over(pg_database())
