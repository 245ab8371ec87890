"""The bar store: canonical bar frames in and out of the ``bars`` table, through :class:`BarStore`.

Writes are idempotent upserts keyed by (symbol, timeframe, ts, feed,
adjustment): a row whose values did not change is not written at all (its
``ingested_at`` stays), so re-running any backfill leaves the table as it was.
In the database a series (symbol, timeframe, feed, adjustment) is named by a
``bar_series`` id and ``bars`` is keyed by (series_id, ts): a narrow key the
server maintains cheaply.

The rooms, each of one purpose:

* :mod:`.rows`: the frame checked and unpacked at the boundary, duplicate keys, series, digests, checksums;
* :mod:`.postgres`: the PostgreSQL write (fresh ranges COPYed straight in, re-runs recognised by digest,
  the rest through a staging table and one upsert statement);
* :mod:`.sqlite`: the SQLite upsert (batched ``executemany`` under ``BEGIN IMMEDIATE``);
* :mod:`.reads`: canonical frames out, preferred feed first, and what is stored; deletes by key;
* :mod:`.quarantine`: rows that failed their checks, kept in ``rejected_rows``.

Plain Python: no Celery here. Tasks call a :class:`BarStore` built from an engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
from sqlalchemy import Engine

from omni_tasks.storage.bars import quarantine, reads
from omni_tasks.storage.bars.postgres import upsert_postgresql
from omni_tasks.storage.bars.rows import Clock, checksum, unpack
from omni_tasks.storage.bars.sqlite import upsert_sqlite


@dataclass(frozen=True)
class UpsertResult:
    """What one :meth:`BarStore.upsert` did.

    ``inserted`` new keys, ``updated`` keys whose values changed, ``unchanged``
    keys already stored with the same values (not written), ``duplicates``
    input rows dropped because a later row had the same key, ``seconds`` wall
    time of the whole call (checks, encoding and the database). ``phases``:
    where those seconds went, in order (PostgreSQL: ``prepare`` checks and
    de-duplication, ``digest`` hashing each series and recording the digests,
    ``series`` their ids and the re-run check, ``copy`` encoding and COPY
    (straight into bars, or into staging), overlapped, ``upsert`` the staged
    rows' INSERT statement, ``commit``; SQLite: ``prepare``, ``upsert``, ``commit``).
    """

    inserted: int
    updated: int
    unchanged: int
    seconds: float
    duplicates: int = 0
    phases: Mapping[str, float] = field(default_factory=dict)
    rerun_series: int = 0

    @property
    def rows(self) -> int:
        """Distinct keys written or confirmed: inserted + updated + unchanged."""
        return self.inserted + self.updated + self.unchanged

    @property
    def changed(self) -> int:
        return self.inserted + self.updated


class BarStore:
    """Canonical bars in a SQL database (PostgreSQL or SQLite) through an SQLAlchemy engine."""

    #: Symbols per statement in :meth:`read_many` (bound parameters stay well inside every driver's limit).
    read_batch_symbols = reads.READ_BATCH_SYMBOLS

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        #: PostgreSQL upserts that met a concurrent insert of one of their keys and were redone with ON CONFLICT.
        self.fallbacks = 0
        if self.dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"BarStore supports PostgreSQL and SQLite, not {self.dialect!r}")

    # ---- writes ---------------------------------------------------------------------

    def upsert(self, bars: pd.DataFrame) -> UpsertResult:
        """Store a canonical bar frame; rows already stored with the same values are left alone.

        The frame must be canonical (columns and dtypes of :func:`frames.empty_bars`,
        or pandas' ``str`` dtype for the text columns, as :func:`frames.canonical_bars`
        makes them); anything else is a ValueError naming the problem. Values
        are not validated here beyond what the table needs (no missing key or
        price, known timeframe and adjustment, symbols that look like symbols):
        run :func:`frames.split_valid` first.

        Duplicate keys inside the frame: the last row wins, deterministically
        (they are removed before anything reaches the database, and counted
        in ``UpsertResult.duplicates``). ``ingested_at`` is set to the
        database's ``now()`` (PostgreSQL; the clock here on SQLite) for new rows
        and rows whose values changed, and kept otherwise. One transaction:
        all rows are stored or none.

        Concurrent upserts of the same keys are safe (no error, no duplicate)
        but not ordered: which writer's values end up stored is not defined.
        Backfill partitions do not overlap, so this does not arise there.
        """
        clock = Clock()
        rows = unpack(bars)
        clock.lap("prepare")
        if not len(rows):
            return UpsertResult(0, 0, 0, clock.total(), rows.duplicates, clock.phases)
        rerun_series = 0
        if self.dialect == "postgresql":
            written = upsert_postgresql(self.engine, rows, clock)
            inserted, updated, rerun_series = written.inserted, written.updated, written.skipped_series
            self.fallbacks += int(written.fell_back)
        else:
            inserted, updated = upsert_sqlite(self.engine, rows, clock)
        unchanged = len(rows) - inserted - updated
        return UpsertResult(inserted, updated, unchanged, clock.total(), rows.duplicates, clock.phases, rerun_series)

    def delete(self, keys: pd.DataFrame) -> int:
        """Delete the stored bars with these keys (columns symbol, timeframe, ts, feed, adjustment; others ignored); returns how many.

        Rows without a symbol or ts are skipped. The digests of the series
        touched are forgotten, so a later re-run writes those bars again.
        """
        return quarantine.delete_bars(self.engine, keys)

    def quarantine(self, rejected: pd.DataFrame, *, partition_id: int | None, stage: str = "ingest") -> int:
        """Keep rows that failed :func:`frames.split_valid` in ``rejected_rows``; returns how many (see :func:`.quarantine.quarantine`)."""
        return quarantine.quarantine(self.engine, rejected, partition_id=partition_id, stage=stage)

    # ---- reads ----------------------------------------------------------------------

    def read(
        self,
        symbol: str,
        timeframe: str,
        start: datetime,
        end: datetime,
        *,
        feeds: Sequence[str] = reads.FEED_PREFERENCE,
        adjustment: str = "raw",
    ) -> pd.DataFrame:
        """The bars of ``symbol`` with ``start <= ts < end`` (timezone-aware), as a canonical frame sorted by ts.

        For each timestamp the bar of the first feed in ``feeds`` that has one
        is returned (feeds not listed are never returned); ``adjustment``
        picks raw or adjusted bars. Dtypes are exactly :func:`frames.empty_bars`'s.
        """
        return self.read_many([symbol], timeframe, start, end, feeds=feeds, adjustment=adjustment)

    def read_many(
        self,
        symbols: Sequence[str],
        timeframe: str,
        start: datetime,
        end: datetime,
        *,
        feeds: Sequence[str] = reads.FEED_PREFERENCE,
        adjustment: str = "raw",
    ) -> pd.DataFrame:
        """:meth:`read` for many symbols in one statement per batch: one canonical frame sorted by (symbol, ts).

        A scan or a validation reads hundreds of symbols; one query for all of
        them costs a fraction of one call per symbol (mostly frame building).
        """
        return reads.read_many(
            self.engine, symbols, timeframe, start, end, feeds=feeds, adjustment=adjustment, batch_symbols=self.read_batch_symbols
        )

    def last_ts(self, symbol: str, timeframe: str, feed: str, adjustment: str) -> datetime | None:
        """The start of the latest stored bar for this series (UTC), or None when there is none."""
        return reads.last_ts(self.engine, symbol, timeframe, feed, adjustment)

    def stored_feeds(self, symbols: Sequence[str], timeframe: str, adjustment: str, start: datetime, end: datetime) -> tuple[str, ...]:
        """The feeds of the bars stored for ``symbols`` with ``start <= ts < end``, most preferred first (unknown feeds last)."""
        return reads.stored_feeds(self.engine, symbols, timeframe, adjustment, start, end)

    def count(self, symbol: str | None = None, timeframe: str | None = None) -> int:
        """Stored bars, all feeds and adjustments, optionally of one symbol and/or timeframe."""
        return reads.count(self.engine, symbol, timeframe)

    @staticmethod
    def checksum(frame: pd.DataFrame) -> str:
        """A sha256 (hex) of the rows as the store keeps them, independent of row order (see :func:`.rows.checksum`)."""
        return checksum(frame)
