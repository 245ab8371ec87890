"""The bar store: canonical bar frames in and out of the ``bars`` table.

Writes are idempotent upserts keyed by (symbol, timeframe, ts, feed,
adjustment): a row whose values did not change is not written at all (its
``ingested_at`` stays), so re-running any backfill leaves the table as it was.

* PostgreSQL: one transaction; ``CREATE TEMP TABLE ... ON COMMIT DROP``; a
  binary ``COPY`` of the frame into it, encoded column-wise with numpy
  (:mod:`omni_tasks.storage.pgcopy`) and kept in the frame's row order; then
  one statement: ``INSERT INTO bars ... SELECT ... FROM staging ON CONFLICT
  (key) DO UPDATE ... WHERE (bars.values) IS DISTINCT FROM (EXCLUDED.values)``,
  with the staged rows already stored unchanged filtered out first (so a
  re-run locks and writes nothing) and the keys not stored at all split off
  into a plain ``INSERT`` in the same statement (ON CONFLICT's speculative
  insertion made a fresh 1M-row load cost about 1.6x the server CPU). Should another
  transaction insert one of those keys meanwhile, the statement fails with a
  unique violation, is rolled back to a savepoint and the plain
  ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` runs instead. The counts
  come back as numbers aggregated in SQL, never a million rows.
* SQLite: the same upsert as batched ``executemany`` in one ``BEGIN
  IMMEDIATE`` transaction.

Reads return canonical frames (dtypes exactly as :func:`frames.empty_bars`)
and choose, per timestamp, the most preferred feed present: IEX and SIP bars
(and raw and adjusted bars) are stored side by side and never overwrite each
other (DESIGN section 5).

Timestamps are stored with microsecond precision (PostgreSQL's): nanoseconds
in a frame are floored to the microsecond on the way in, and keys are
compared after that.

Plain Python: no Celery here. Tasks call a :class:`BarStore` built from an engine.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pandas as pd
import psycopg2.errors
from sqlalchemy import DateTime, Engine, case, func, insert, select, type_coerce

from omni_tasks.contracts.bars import ADJUSTMENTS, BAR_COLUMNS, SYMBOL_PATTERN, TIMEFRAMES, empty_bars
from omni_tasks.contracts.feeds import FEEDS
from omni_tasks.storage import pgcopy
from omni_tasks.storage.models import Bar, RejectedRow

KEY_COLUMNS: Final = ("symbol", "timeframe", "ts", "feed", "adjustment")
#: The non-key columns compared to decide whether a stored row changed.
VALUE_COLUMNS: Final = ("open", "high", "low", "close", "volume", "vwap", "trade_count", "provider")
TEXT_COLUMNS: Final = ("symbol", "timeframe", "feed", "adjustment", "provider")
FLOAT_COLUMNS: Final = ("open", "high", "low", "close", "volume", "vwap")
#: Widths of the text columns in the ``bars`` table (characters).
TEXT_WIDTHS: Final = {"symbol": 12, "timeframe": 8, "feed": 16, "adjustment": 8, "provider": 32}
#: Feeds in the order reads prefer them (the list's home is :mod:`omni_tasks.contracts.feeds`).
FEED_PREFERENCE: Final = FEEDS

#: Column order of the staging table and of the COPY stream (keys first, the order of the bars primary key).
_STAGE_COLUMNS: Final = (*KEY_COLUMNS, *VALUE_COLUMNS)
_SQLITE_BATCH_ROWS: Final = 50_000
_SQLITE_TS_FORMAT_LEN: Final = 26  # 'YYYY-MM-DD HH:MM:SS.ffffff', SQLAlchemy's SQLite DATETIME storage format
#: Years 1000..9999: the range where the SQLite text format has a fixed width (and sorts as it should).
_SQLITE_MIN_US: Final = int(np.datetime64("1000-01-01T00:00:00", "us").astype(np.int64))
_SQLITE_MAX_US: Final = int(np.datetime64("9999-12-31T23:59:59.999999", "us").astype(np.int64)) + 1
_CHECKSUM_VERSION: Final = b"omni-bars-checksum/1\n"


@dataclass(frozen=True)
class UpsertResult:
    """What one :meth:`BarStore.upsert` did.

    ``inserted`` new keys, ``updated`` keys whose values changed, ``unchanged``
    keys already stored with the same values (not written), ``duplicates``
    input rows dropped because a later row had the same key, ``seconds`` wall
    time of the whole call (checks, encoding and the database). ``phases``:
    where those seconds went, in order (PostgreSQL: ``prepare`` checks and
    de-duplication, ``copy`` encoding and COPY into staging, overlapped,
    ``upsert`` the INSERT statement, ``commit``; SQLite: ``prepare``, ``upsert``,
    ``commit``).
    """

    inserted: int
    updated: int
    unchanged: int
    seconds: float
    duplicates: int = 0
    phases: Mapping[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Distinct keys written or confirmed: inserted + updated + unchanged."""
        return self.inserted + self.updated + self.unchanged

    @property
    def changed(self) -> int:
        return self.inserted + self.updated


@dataclass
class _TextColumn:
    codes: np.ndarray  # int64 codes into categories
    categories: list[str]

    def values(self) -> np.ndarray:
        """The strings, one per row, as a Python-object array."""
        return np.asarray(self.categories, dtype=object)[self.codes] if self.categories else np.empty(0, dtype=object)

    def take(self, rows: np.ndarray) -> _TextColumn:
        return _TextColumn(self.codes[rows], self.categories)


@dataclass
class _Rows:
    """A canonical frame checked and unpacked into numpy arrays, duplicate keys removed (last wins)."""

    text: dict[str, _TextColumn]
    ts_us: np.ndarray  # int64 microseconds since the Unix epoch, UTC
    floats: dict[str, np.ndarray]  # float64; vwap NaN means NULL
    trade_count: np.ndarray  # int64, 0 where NULL
    trade_count_null: np.ndarray  # bool
    duplicates: int

    def __len__(self) -> int:
        return len(self.ts_us)

    def take(self, rows: np.ndarray) -> _Rows:
        return _Rows(
            text={name: column.take(rows) for name, column in self.text.items()},
            ts_us=self.ts_us[rows],
            floats={name: values[rows] for name, values in self.floats.items()},
            trade_count=self.trade_count[rows],
            trade_count_null=self.trade_count_null[rows],
            duplicates=self.duplicates,
        )


class BarStore:
    """Canonical bars in a SQL database (PostgreSQL or SQLite) through an SQLAlchemy engine."""

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
        clock = _Clock()
        rows = _unpack(bars)
        clock.lap("prepare")
        if not len(rows):
            return UpsertResult(0, 0, 0, clock.total(), rows.duplicates, clock.phases)
        if self.dialect == "postgresql":
            inserted, updated = self._upsert_postgresql(rows, clock)
        else:
            inserted, updated = self._upsert_sqlite(rows, clock)
        unchanged = len(rows) - inserted - updated
        return UpsertResult(inserted, updated, unchanged, clock.total(), rows.duplicates, clock.phases)

    def _upsert_postgresql(self, rows: _Rows, clock: _Clock) -> tuple[int, int]:
        with self.engine.connect() as connection:
            dbapi = connection.connection.dbapi_connection
            assert dbapi is not None
            with connection.begin():
                cursor = dbapi.cursor()
                try:
                    cursor.execute(_PG_CREATE_STAGING)
                    cursor.copy_expert(_PG_COPY, pgcopy.ChunkReader(pgcopy.copy_chunks(_copy_columns(rows))), size=1 << 20)
                    clock.lap("copy")
                    cursor.execute("SAVEPOINT bars_upsert")
                    try:
                        cursor.execute(_PG_UPSERT_SPLIT)
                    except psycopg2.errors.UniqueViolation:
                        # A key we saw as new was inserted by someone else meanwhile: the one-statement upsert is always right.
                        cursor.execute("ROLLBACK TO SAVEPOINT bars_upsert")
                        cursor.execute(_PG_UPSERT)
                        self.fallbacks += 1
                    counts = cursor.fetchone()
                    assert counts is not None
                    inserted, updated = counts
                    clock.lap("upsert")
                finally:
                    cursor.close()
            clock.lap("commit")
        return int(inserted), int(updated)

    def _upsert_sqlite(self, rows: _Rows, clock: _Clock) -> tuple[int, int]:
        ingested_at = _sqlite_timestamps(np.array([_now_us()], dtype=np.int64))[0]
        symbols = _used(rows.text["symbol"])
        timeframes = _used(rows.text["timeframe"])
        span = (_sqlite_timestamps(rows.ts_us.min(keepdims=True))[0], _sqlite_timestamps(rows.ts_us.max(keepdims=True))[0])
        raw = self.engine.raw_connection()
        dbapi: Any = raw.dbapi_connection
        previous = dbapi.isolation_level
        try:
            # Autocommit at the driver level so that BEGIN IMMEDIATE is ours: the write lock is
            # taken before the first count, so no other writer can change the counts under us.
            dbapi.isolation_level = None
            cursor = dbapi.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                before = _sqlite_count(cursor, symbols, timeframes, span)
                changed = 0
                for batch in _sqlite_batches(rows, ingested_at):
                    cursor.executemany(_SQLITE_UPSERT, batch)
                    changed += cursor.rowcount
                inserted = _sqlite_count(cursor, symbols, timeframes, span) - before
                clock.lap("upsert")
                cursor.execute("COMMIT")
                clock.lap("commit")
            except BaseException:
                if dbapi.in_transaction:
                    cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()
        finally:
            dbapi.isolation_level = previous
            raw.close()
        return inserted, changed - inserted

    def quarantine(self, rejected: pd.DataFrame, *, partition_id: int | None, stage: str = "ingest") -> int:
        """Keep rows that failed :func:`frames.split_valid` in ``rejected_rows``; returns how many.

        ``rejected`` has a ``reason`` column and whatever else the provider
        sent (it need not be canonical). Each row's original values are kept
        in ``payload`` as JSON (timestamps ISO 8601, missing values null,
        infinities as strings); ``ts`` is NULL when the row has none or it is
        not a timestamp.
        """
        if rejected.empty:
            return 0
        created_at = datetime.now(tz=UTC)
        records = []
        for row in rejected.to_dict(orient="records"):
            payload = {str(k): _json_value(v) for k, v in row.items() if k != "reason"}
            records.append(
                {
                    "created_at": created_at,
                    "symbol": _text(row.get("symbol"), TEXT_WIDTHS["symbol"]),
                    "timeframe": _text(row.get("timeframe"), TEXT_WIDTHS["timeframe"]),
                    "ts": _timestamp_or_none(row.get("ts")),
                    "provider": _text(row.get("provider"), TEXT_WIDTHS["provider"]),
                    "feed": _text(row.get("feed"), TEXT_WIDTHS["feed"]),
                    "reason": _text(row.get("reason"), None) or "no reason given",
                    "payload": payload,
                    "partition_id": partition_id,
                    "stage": stage,
                }
            )
        with self.engine.begin() as connection:
            connection.execute(insert(RejectedRow), records)
        return len(records)

    # ---- reads ----------------------------------------------------------------------

    def read(
        self,
        symbol: str,
        timeframe: str,
        start: datetime,
        end: datetime,
        *,
        feeds: Sequence[str] = FEED_PREFERENCE,
        adjustment: str = "raw",
    ) -> pd.DataFrame:
        """The bars of ``symbol`` with ``start <= ts < end`` (timezone-aware), as a canonical frame sorted by ts.

        For each timestamp the bar of the first feed in ``feeds`` that has one
        is returned (feeds not listed are never returned); ``adjustment``
        picks raw or adjusted bars. Dtypes are exactly :func:`frames.empty_bars`'s.
        """
        return self.read_many([symbol], timeframe, start, end, feeds=feeds, adjustment=adjustment)

    #: Symbols per statement in :meth:`read_many` (bound parameters stay well inside every driver's limit).
    read_batch_symbols = 1000

    def read_many(
        self,
        symbols: Sequence[str],
        timeframe: str,
        start: datetime,
        end: datetime,
        *,
        feeds: Sequence[str] = FEED_PREFERENCE,
        adjustment: str = "raw",
    ) -> pd.DataFrame:
        """:meth:`read` for many symbols in one statement per batch: one canonical frame sorted by (symbol, ts).

        A scan or a validation reads hundreds of symbols; one query for all of
        them costs a fraction of one call per symbol (mostly frame building).
        """
        feeds = tuple(feeds)
        if not feeds:
            raise ValueError("feeds is empty: name at least one feed, most preferred first")
        start_utc, end_utc = _aware(start, "start"), _aware(end, "end")
        names = sorted(set(symbols))
        preference = case({feed: rank for rank, feed in enumerate(feeds)}, value=Bar.feed)
        rows: list[Any] = []
        with self.engine.connect() as connection:
            for first in range(0, len(names), self.read_batch_symbols):
                ranked = (
                    select(
                        *(_column(name) for name in BAR_COLUMNS),
                        func.row_number().over(partition_by=(Bar.symbol, Bar.ts), order_by=preference).label("pick"),
                    )
                    .where(
                        Bar.symbol.in_(names[first : first + self.read_batch_symbols]),
                        Bar.timeframe == timeframe,
                        Bar.adjustment == adjustment,
                        Bar.ts >= start_utc,
                        Bar.ts < end_utc,
                        Bar.feed.in_(feeds),
                    )
                    .subquery()
                )
                statement = select(*(ranked.c[name] for name in BAR_COLUMNS)).where(ranked.c.pick == 1).order_by(ranked.c.symbol, ranked.c.ts)
                rows.extend(connection.execute(statement).all())
        return _frame(rows)

    def last_ts(self, symbol: str, timeframe: str, feed: str, adjustment: str) -> datetime | None:
        """The start of the latest stored bar for this series (UTC), or None when there is none."""
        statement = select(func.max(Bar.ts)).where(Bar.symbol == symbol, Bar.timeframe == timeframe, Bar.feed == feed, Bar.adjustment == adjustment)
        with self.engine.connect() as connection:
            return connection.execute(statement).scalar_one_or_none()

    def stored_feeds(self, symbols: Sequence[str], timeframe: str, adjustment: str, start: datetime, end: datetime) -> tuple[str, ...]:
        """The feeds of the bars stored for ``symbols`` with ``start <= ts < end``, most preferred first (unknown feeds last)."""
        statement = (
            select(Bar.feed)
            .where(
                Bar.symbol.in_(sorted(set(symbols))),
                Bar.timeframe == timeframe,
                Bar.adjustment == adjustment,
                Bar.ts >= _aware(start, "start"),
                Bar.ts < _aware(end, "end"),
            )
            .distinct()
        )
        with self.engine.connect() as connection:
            found = {str(f) for f in connection.execute(statement).scalars()}
        return tuple(sorted(found, key=lambda f: (FEED_PREFERENCE.index(f) if f in FEED_PREFERENCE else len(FEED_PREFERENCE), f)))

    def count(self, symbol: str | None = None, timeframe: str | None = None) -> int:
        """Stored bars, all feeds and adjustments, optionally of one symbol and/or timeframe."""
        statement = select(func.count()).select_from(Bar)
        if symbol is not None:
            statement = statement.where(Bar.symbol == symbol)
        if timeframe is not None:
            statement = statement.where(Bar.timeframe == timeframe)
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    @staticmethod
    def checksum(frame: pd.DataFrame) -> str:
        """A sha256 (hex) of the rows as the store keeps them; independent of row order.

        The frame is prepared as :meth:`upsert` would store it (ts floored to
        microseconds, duplicate keys resolved last-wins), sorted by key, and
        hashed column by column with NULLs marked. So the same rows give the
        same checksum whatever their order, and the checksum of a frame equals
        the checksum of the same rows read back with :meth:`read`. ``ingested_at``
        is not part of it.
        """
        rows = _unpack(frame)
        ranks = {name: _sort_ranks(rows.text[name]) for name in TEXT_COLUMNS}
        order = np.lexsort((ranks["adjustment"], ranks["feed"], rows.ts_us, ranks["timeframe"], ranks["symbol"]))
        digest = hashlib.sha256(_CHECKSUM_VERSION)
        digest.update(f"rows={len(order)}\n".encode())

        def section(name: str, data: bytes) -> None:
            digest.update(f"{name}:{len(data)}\n".encode())
            digest.update(data)

        for name in BAR_COLUMNS:
            if name in TEXT_COLUMNS:
                values = rows.text[name].values()[order]
                section(name, "\x00".join(values.tolist()).encode("utf-8"))
            elif name == "ts":
                section(name, rows.ts_us[order].astype("<i8").tobytes())
            elif name == "trade_count":
                nulls = rows.trade_count_null[order]
                section(name + "#null", nulls.astype(np.uint8).tobytes())
                section(name, np.where(nulls, 0, rows.trade_count[order]).astype("<i8").tobytes())
            else:
                values = rows.floats[name][order]
                nulls = np.isnan(values)
                section(name + "#null", nulls.astype(np.uint8).tobytes())
                section(name, np.where(nulls, 0.0, values).astype("<f8").tobytes())
        return digest.hexdigest()


# ---- the frame at the boundary -------------------------------------------------------


def _unpack(bars: pd.DataFrame) -> _Rows:
    """Check that ``bars`` is a canonical frame and unpack it; ValueError names the first problem."""
    if not isinstance(bars, pd.DataFrame):
        raise ValueError(f"expected a canonical bar frame (pandas DataFrame), got {type(bars).__name__}")
    columns = [str(c) for c in bars.columns]
    if columns != list(BAR_COLUMNS):
        missing = [c for c in BAR_COLUMNS if c not in columns]
        extra = [c for c in columns if c not in BAR_COLUMNS]
        if missing or extra:
            parts = ([f"missing columns {', '.join(missing)}"] if missing else []) + ([f"unexpected columns {', '.join(extra)}"] if extra else [])
            raise ValueError(f"not a canonical bar frame: {'; '.join(parts)} (expected {', '.join(BAR_COLUMNS)})")
        raise ValueError(f"not a canonical bar frame: columns out of order ({', '.join(columns)}); expected {', '.join(BAR_COLUMNS)}")

    ts = bars["ts"]
    if not (isinstance(ts.dtype, pd.DatetimeTZDtype) and ts.dtype.unit == "ns" and str(ts.dtype.tz) == "UTC"):
        raise ValueError(f"not a canonical bar frame: column 'ts' has dtype {ts.dtype}, expected datetime64[ns, UTC]")
    ts_ns = ts.array.asi8 if hasattr(ts.array, "asi8") else ts.to_numpy().view("i8")
    if ts.isna().any():
        raise ValueError(f"not a canonical bar frame: column 'ts' has {int(ts.isna().sum())} missing timestamps")
    ts_us = np.floor_divide(np.asarray(ts_ns, dtype=np.int64), 1000)

    floats: dict[str, np.ndarray] = {}
    for name in FLOAT_COLUMNS:
        series = bars[name]
        if series.dtype != np.float64:
            raise ValueError(f"not a canonical bar frame: column {name!r} has dtype {series.dtype}, expected float64")
        values = series.to_numpy(dtype=np.float64, copy=False)
        if name != "vwap":
            nans = int(np.isnan(values).sum())
            if nans:
                raise ValueError(f"not a canonical bar frame: column {name!r} has {nans} missing values (it is required)")
        floats[name] = values

    trade_count = bars["trade_count"]
    if not isinstance(trade_count.dtype, pd.Int64Dtype):
        raise ValueError(f"not a canonical bar frame: column 'trade_count' has dtype {trade_count.dtype}, expected Int64")
    trade_count_null = trade_count.isna().to_numpy()
    trade_count_values = trade_count.to_numpy(dtype=np.int64, na_value=0)

    text = {name: _text_column(bars[name], name) for name in TEXT_COLUMNS}
    _check_text_values(text)

    rows = _Rows(text, ts_us, floats, trade_count_values, trade_count_null, duplicates=0)
    keep = _last_of_each_key(rows)
    if keep is not None:
        rows = rows.take(keep)
        rows.duplicates = len(bars) - len(keep)
    return rows


def _text_column(series: pd.Series, name: str) -> _TextColumn:
    dtype = series.dtype
    if not (pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.StringDtype)):
        raise ValueError(f"not a canonical bar frame: column {name!r} has dtype {dtype}, expected strings (object or str)")
    if len(series) == 0:
        return _TextColumn(np.empty(0, dtype=np.int64), [])
    missing = int(series.isna().sum())
    if missing:
        raise ValueError(f"not a canonical bar frame: column {name!r} has {missing} missing values (it is required)")
    values = series.array
    first = values[0]
    if isinstance(first, str) and bool((series == first).all()):
        # Provenance columns are usually one value repeated: one comparison pass is
        # several times cheaper than hashing every element.
        return _TextColumn(np.zeros(len(series), dtype=np.int64), [first])
    codes, uniques = pd.factorize(values)
    categories = list(uniques)
    for value in categories:
        if not isinstance(value, str):
            raise ValueError(f"not a canonical bar frame: column {name!r} holds a {type(value).__name__} ({value!r}), expected strings")
    return _TextColumn(np.asarray(codes, dtype=np.int64), categories)


def _check_text_values(text: dict[str, _TextColumn]) -> None:
    """What the table needs of the key and provenance columns (checked once per distinct value)."""
    for name, column in text.items():
        width = TEXT_WIDTHS[name]
        for value in column.categories:
            if len(value) > width:
                raise ValueError(f"column {name!r}: {value!r} is longer than the table's {width} characters")
            if not value:
                raise ValueError(f"column {name!r}: empty string")
    for value in text["symbol"].categories:
        if not SYMBOL_PATTERN.match(value):
            raise ValueError(f"column 'symbol': {value!r} is not a ticker symbol (run frames.split_valid first)")
    for value in text["timeframe"].categories:
        if value not in TIMEFRAMES:
            raise ValueError(f"column 'timeframe': unknown timeframe {value!r} (choose from {', '.join(TIMEFRAMES)})")
    for value in text["adjustment"].categories:
        if value not in ADJUSTMENTS:
            raise ValueError(f"column 'adjustment': unknown adjustment {value!r} (choose from {', '.join(ADJUSTMENTS)})")


def _last_of_each_key(rows: _Rows) -> np.ndarray | None:
    """Row positions to keep so each key appears once (its last row), in input order; None if no duplicates."""
    n = len(rows)
    if n < 2:
        return None
    # One integer per (symbol, timeframe, feed, adjustment), re-factorised after each step so it stays below n.
    series_id = np.zeros(n, dtype=np.int64)
    for name in ("symbol", "timeframe", "feed", "adjustment"):
        column = rows.text[name]
        if len(column.categories) > 1:
            series_id, _ = pd.factorize(series_id * len(column.categories) + column.codes)
            series_id = np.asarray(series_id, dtype=np.int64)
    ts = rows.ts_us
    lo, hi = int(ts.min()), int(ts.max())
    groups = int(series_id.max()) + 1
    if (hi - lo + 1) * groups < 2**62:
        key = series_id * (hi - lo + 1) + (ts - lo)
        if bool((key[1:] > key[:-1]).all()):
            return None  # the usual shape (each series contiguous, ts increasing): no duplicates, no hashing
        duplicated = pd.Series(key).duplicated(keep="last").to_numpy()
    else:
        duplicated = pd.DataFrame({"series": series_id, "ts": ts}).duplicated(keep="last").to_numpy()
    if not duplicated.any():
        return None
    return np.flatnonzero(~duplicated)


def _sort_ranks(column: _TextColumn) -> np.ndarray:
    """Per-row rank of each string in code point order (so sorting does not depend on first appearance)."""
    order = sorted(range(len(column.categories)), key=column.categories.__getitem__)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[column.codes] if len(order) else np.empty(0, dtype=np.int64)


def _column(name: str) -> Any:
    """A bars column to select; ts skips UtcDateTime's per-row conversion (the frame converts the column at once)."""
    if name == "ts":
        return type_coerce(Bar.ts, DateTime(timezone=True)).label("ts")
    return getattr(Bar, name)


def _frame(rows: Sequence[Any]) -> pd.DataFrame:
    """A canonical frame from result rows in BAR_COLUMNS order (dtypes as frames.empty_bars)."""
    if not rows:
        return empty_bars()
    columns = list(zip(*rows, strict=True))
    data: dict[str, Any] = {}
    for position, name in enumerate(BAR_COLUMNS):
        values = columns[position]
        if name in TEXT_COLUMNS:
            data[name] = pd.Series(np.array(values, dtype=object), dtype=object)
        elif name == "ts":
            data[name] = pd.Series(pd.to_datetime(list(values), utc=True)).astype("datetime64[ns, UTC]")
        elif name == "trade_count":
            data[name] = pd.Series(pd.array(values, dtype="Int64"))
        else:
            data[name] = pd.Series(np.array([np.nan if v is None else v for v in values], dtype=np.float64))
    frame = pd.DataFrame(data)
    return frame.astype(empty_bars().dtypes.to_dict())


# ---- PostgreSQL ------------------------------------------------------------------


def _copy_columns(rows: _Rows) -> list[pgcopy.Column]:
    out: list[pgcopy.Column] = []
    for name in _STAGE_COLUMNS:
        if name in TEXT_COLUMNS:
            column = rows.text[name]
            out.append(pgcopy.Column(name, "text", column.codes, None, tuple(column.categories)))
        elif name == "ts":
            out.append(pgcopy.Column(name, "timestamptz", rows.ts_us * 1000))
        elif name == "trade_count":
            counts_null = rows.trade_count_null
            out.append(pgcopy.Column(name, "int8", rows.trade_count, counts_null if counts_null.any() else None))
        else:
            values = rows.floats[name]
            nan = np.isnan(values) if name == "vwap" else None
            out.append(pgcopy.Column(name, "float8", values, nan if nan is not None and nan.any() else None))
    return out


def _columns_sql(prefix: str, names: Sequence[str]) -> str:
    return ", ".join(f"{prefix}{name}" for name in names)


_PG_CREATE_STAGING: Final = """
CREATE TEMP TABLE bars_staging (
    symbol text NOT NULL, timeframe text NOT NULL, ts timestamptz NOT NULL, feed text NOT NULL, adjustment text NOT NULL,
    open float8 NOT NULL, high float8 NOT NULL, low float8 NOT NULL, close float8 NOT NULL, volume float8 NOT NULL,
    vwap float8, trade_count int8, provider text NOT NULL
) ON COMMIT DROP
"""
_PG_COPY: Final = f"COPY bars_staging ({_columns_sql('', _STAGE_COLUMNS)}) FROM STDIN (FORMAT binary)"
_PG_SET_VALUES: Final = ", ".join(f"{name} = EXCLUDED.{name}" for name in VALUE_COLUMNS) + ", ingested_at = EXCLUDED.ingested_at"
_PG_CHANGED: Final = f"({_columns_sql('b.', VALUE_COLUMNS)}) IS DISTINCT FROM ({_columns_sql('EXCLUDED.', VALUE_COLUMNS)})"

# The upsert, as one statement. The NOT EXISTS keeps rows already stored unchanged away
# from ON CONFLICT, which would otherwise lock (and so dirty and WAL-log) every one of
# them on a re-run; the ON CONFLICT ... WHERE stays the guard for rows that change under
# us. RETURNING (xmax = 0) is true for a freshly inserted row and false for one updated
# by ON CONFLICT: counted in SQL, so no row travels back to Python.
_PG_UPSERT: Final = f"""
WITH upserted AS (
    INSERT INTO bars AS b ({_columns_sql('', _STAGE_COLUMNS)}, ingested_at)
    SELECT {_columns_sql('s.', _STAGE_COLUMNS)}, now()
    FROM bars_staging AS s
    WHERE NOT EXISTS (
        SELECT FROM bars AS stored
        WHERE ({_columns_sql('stored.', KEY_COLUMNS)}) = ({_columns_sql('s.', KEY_COLUMNS)})
          AND ({_columns_sql('stored.', VALUE_COLUMNS)}) IS NOT DISTINCT FROM ({_columns_sql('s.', VALUE_COLUMNS)})
    )
    ON CONFLICT ({_columns_sql('', KEY_COLUMNS)}) DO UPDATE SET {_PG_SET_VALUES}
    WHERE {_PG_CHANGED}
    RETURNING (b.xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted
"""  # noqa: S608 - built from the constant column names above, no input

# The same upsert with the keys not yet stored split off into a plain INSERT: ON
# CONFLICT's speculative insertion (probe the index, insert, confirm) made a fresh
# 1M-row load cost about 1.6x the server CPU of this form. One join classifies the staged rows
# (new / changed / unchanged, from this statement's snapshot); new rows are inserted
# plainly, changed rows go through INSERT ... ON CONFLICT DO UPDATE ... WHERE as above.
# If another transaction inserts one of the "new" keys meanwhile, the plain INSERT fails
# with a unique violation and the caller rolls back to a savepoint and runs _PG_UPSERT.
_PG_UPSERT_SPLIT: Final = f"""
WITH classified AS (
    SELECT {_columns_sql('s.', _STAGE_COLUMNS)}, stored.symbol IS NULL AS is_new
    FROM bars_staging AS s
    LEFT JOIN bars AS stored ON ({_columns_sql('stored.', KEY_COLUMNS)}) = ({_columns_sql('s.', KEY_COLUMNS)})
    WHERE stored.symbol IS NULL
       OR ({_columns_sql('stored.', VALUE_COLUMNS)}) IS DISTINCT FROM ({_columns_sql('s.', VALUE_COLUMNS)})
), fresh AS (
    INSERT INTO bars ({_columns_sql('', _STAGE_COLUMNS)}, ingested_at)
    SELECT {_columns_sql('', _STAGE_COLUMNS)}, now() FROM classified WHERE is_new
    RETURNING 1
), changed AS (
    INSERT INTO bars AS b ({_columns_sql('', _STAGE_COLUMNS)}, ingested_at)
    SELECT {_columns_sql('', _STAGE_COLUMNS)}, now() FROM classified WHERE NOT is_new
    ON CONFLICT ({_columns_sql('', KEY_COLUMNS)}) DO UPDATE SET {_PG_SET_VALUES}
    WHERE {_PG_CHANGED}
    RETURNING (b.xmax = 0) AS inserted
)
SELECT (SELECT count(*) FROM fresh) + (SELECT count(*) FROM changed WHERE inserted), (SELECT count(*) FROM changed WHERE NOT inserted)
"""  # noqa: S608 - built from the constant column names above, no input


# ---- SQLite ----------------------------------------------------------------------

_SQLITE_UPSERT: Final = f"""
INSERT INTO bars ({_columns_sql('', _STAGE_COLUMNS)}, ingested_at) VALUES ({', '.join('?' * (len(_STAGE_COLUMNS) + 1))})
ON CONFLICT ({_columns_sql('', KEY_COLUMNS)}) DO UPDATE
SET {', '.join(f'{name} = excluded.{name}' for name in VALUE_COLUMNS)}, ingested_at = excluded.ingested_at
WHERE ({_columns_sql('bars.', VALUE_COLUMNS)}) IS NOT ({_columns_sql('excluded.', VALUE_COLUMNS)})
"""  # noqa: S608 - constant column names and placeholders


def _sqlite_timestamps(ts_us: np.ndarray) -> list[str]:
    """Microseconds since the epoch as SQLAlchemy stores DATETIME on SQLite: 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC)."""
    if ts_us.size and (ts_us.min() < _SQLITE_MIN_US or ts_us.max() >= _SQLITE_MAX_US):
        raise ValueError("timestamps must fall between the years 1000 and 9999 to be stored in SQLite")
    text = np.datetime_as_string(ts_us.astype("datetime64[us]"), unit="us").astype(f"U{_SQLITE_TS_FORMAT_LEN}")
    chars = text.view("U1").reshape(-1, _SQLITE_TS_FORMAT_LEN)
    chars[:, 10] = " "
    return text.tolist()


def _sqlite_batches(rows: _Rows, ingested_at: str) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, len(rows), _SQLITE_BATCH_ROWS):
        part = slice(start, start + _SQLITE_BATCH_ROWS)
        columns: list[list[Any]] = []
        for name in _STAGE_COLUMNS:
            if name in TEXT_COLUMNS:
                column = rows.text[name]
                columns.append(np.asarray(column.categories, dtype=object)[column.codes[part]].tolist())
            elif name == "ts":
                columns.append(_sqlite_timestamps(rows.ts_us[part]))
            elif name == "trade_count":
                values = rows.trade_count[part].astype(object)
                values[rows.trade_count_null[part]] = None
                columns.append(values.tolist())
            else:
                values = rows.floats[name][part].astype(object)
                values[np.isnan(rows.floats[name][part])] = None
                columns.append(values.tolist())
        columns.append([ingested_at] * len(columns[0]))
        yield list(zip(*columns, strict=True))


def _sqlite_count(cursor: Any, symbols: list[str], timeframes: list[str], span: tuple[str, str]) -> int:
    """Stored rows of these symbols and timeframes within [span]: a superset of the keys an upsert
    can insert, counted on the key index (symbol, timeframe, ts, ...) rather than the whole table."""
    total = 0
    timeframe_marks = ", ".join("?" * len(timeframes))
    for start in range(0, len(symbols), 500):
        chunk = symbols[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        cursor.execute(
            f"SELECT count(*) FROM bars WHERE symbol IN ({marks}) AND timeframe IN ({timeframe_marks}) AND ts >= ? AND ts <= ?",  # noqa: S608 - placeholders only
            (*chunk, *timeframes, *span),
        )
        total += int(cursor.fetchone()[0])
    return total


def _used(column: _TextColumn) -> list[str]:
    """The distinct values present in the rows, sorted."""
    return sorted({column.categories[i] for i in np.unique(column.codes)})


# ---- small conversions -------------------------------------------------------------


class _Clock:
    """Wall-clock laps for UpsertResult.phases."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


def _now_us() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1_000_000)


def _aware(value: datetime, name: str) -> datetime:
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(f"{name} {value!r} is naive: give a timezone-aware (UTC) datetime")
    return stamp.tz_convert("UTC").to_pydatetime()


def _text(value: Any, width: int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return ""
    text = str(value)
    return text[:width] if width is not None else text


def _timestamp_or_none(value: Any) -> datetime | None:
    """A UTC datetime from a timestamp-like cell (naive taken as UTC, as frames.canonical_bars does), else None."""
    if not isinstance(value, datetime | np.datetime64 | str) or value is pd.NaT:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    if stamp is pd.NaT or pd.isna(stamp):
        return None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def _json_value(value: Any) -> Any:
    """A JSON-safe copy of one cell: timestamps ISO 8601, missing values null, non-finite floats as strings."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, bool | int | str):
        return value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
