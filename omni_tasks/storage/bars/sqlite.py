"""The bar store's SQLite upsert: batched ``executemany`` of ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` in one ``BEGIN IMMEDIATE`` transaction.

The same tables as on PostgreSQL: the frame's series get their ``bar_series``
ids first (new ones added), then rows keyed by (series_id, ts). A row whose
values did not change is not written (its ``ingested_at`` stays). Inserted keys
are counted as the growth of the stored rows of the frame's series and time
span, under the write lock; the rest of the changed rows were updates.
``bar_digests`` is not used here: SQLite has no statement triggers to keep it
honest against other writers, and its upsert is the small-scale path.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
from sqlalchemy import Engine

from omni_tasks.storage.bars.rows import FLOAT_COLUMNS, STORED_COLUMNS, VALUE_COLUMNS, Clock, Rows, columns_sql, series_keys, spans

_SQLITE_BATCH_ROWS: Final = 50_000
_SQLITE_TS_FORMAT_LEN: Final = 26  # 'YYYY-MM-DD HH:MM:SS.ffffff', SQLAlchemy's SQLite DATETIME storage format
#: Years 1000..9999: the range where the SQLite text format has a fixed width (and sorts as it should).
_SQLITE_MIN_US: Final = int(np.datetime64("1000-01-01T00:00:00", "us").astype(np.int64))
_SQLITE_MAX_US: Final = int(np.datetime64("9999-12-31T23:59:59.999999", "us").astype(np.int64)) + 1


def upsert_sqlite(engine: Engine, rows: Rows, clock: Clock) -> tuple[int, int]:
    """Upsert ``rows`` in one ``BEGIN IMMEDIATE`` transaction: (inserted, updated)."""
    ingested_at = _sqlite_timestamps(np.array([_now_us()], dtype=np.int64))[0]
    keys = series_keys(rows, spans(rows))
    span = (_sqlite_timestamps(rows.ts_us.min(keepdims=True))[0], _sqlite_timestamps(rows.ts_us.max(keepdims=True))[0])
    raw = engine.raw_connection()
    dbapi: Any = raw.dbapi_connection
    previous = dbapi.isolation_level
    try:
        # Autocommit at the driver level so that BEGIN IMMEDIATE is ours: the write lock is
        # taken before the first count, so no other writer can change the counts under us.
        dbapi.isolation_level = None
        cursor = dbapi.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            ids = _sqlite_series_ids(cursor, keys)
            before = _sqlite_count(cursor, sorted(set(ids.tolist())), span)
            changed = 0
            for batch in _sqlite_batches(rows, ids, ingested_at):
                cursor.executemany(_SQLITE_UPSERT, batch)
                changed += cursor.rowcount
            inserted = _sqlite_count(cursor, sorted(set(ids.tolist())), span) - before
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


def _sqlite_series_ids(cursor: Any, keys: list[tuple[str, str, str, str]]) -> np.ndarray:
    """The bar_series id of each key (by series number), adding the missing ones in order."""
    cursor.executemany("INSERT OR IGNORE INTO bar_series (symbol, timeframe, feed, adjustment) VALUES (?, ?, ?, ?)", keys)
    found: dict[tuple[str, str, str, str], int] = {}
    for start in range(0, len(keys), 200):
        chunk = keys[start : start + 200]
        marks = " OR ".join("(symbol = ? AND timeframe = ? AND feed = ? AND adjustment = ?)" for _ in chunk)
        cursor.execute(f"SELECT symbol, timeframe, feed, adjustment, id FROM bar_series WHERE {marks}", [v for key in chunk for v in key])  # noqa: S608 - placeholders only
        found.update({tuple(row[:4]): int(row[4]) for row in cursor.fetchall()})
    return np.array([found[key] for key in keys], dtype=np.int64)


_SQLITE_UPSERT: Final = f"""
INSERT INTO bars ({columns_sql("", STORED_COLUMNS)}, ingested_at) VALUES ({", ".join("?" * (len(STORED_COLUMNS) + 1))})
ON CONFLICT (series_id, ts) DO UPDATE
SET {", ".join(f"{name} = excluded.{name}" for name in VALUE_COLUMNS)}, ingested_at = excluded.ingested_at
WHERE ({columns_sql("bars.", VALUE_COLUMNS)}) IS NOT ({columns_sql("excluded.", VALUE_COLUMNS)})
"""  # noqa: S608 - constant column names and placeholders


def _sqlite_timestamps(ts_us: np.ndarray) -> list[str]:
    """Microseconds since the epoch as SQLAlchemy stores DATETIME on SQLite: 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC)."""
    if ts_us.size and (ts_us.min() < _SQLITE_MIN_US or ts_us.max() >= _SQLITE_MAX_US):
        raise ValueError("timestamps must fall between the years 1000 and 9999 to be stored in SQLite")
    text = np.datetime_as_string(ts_us.astype("datetime64[us]"), unit="us").astype(f"U{_SQLITE_TS_FORMAT_LEN}")
    chars = text.view("U1").reshape(-1, _SQLITE_TS_FORMAT_LEN)
    chars[:, 10] = " "
    return text.tolist()


def _sqlite_batches(rows: Rows, ids: np.ndarray, ingested_at: str) -> Iterator[list[tuple[Any, ...]]]:
    provider = np.asarray(rows.text["provider"].categories, dtype=object)
    for start in range(0, len(rows), _SQLITE_BATCH_ROWS):
        part = slice(start, start + _SQLITE_BATCH_ROWS)
        columns: list[list[Any]] = [ids[rows.series[part]].tolist(), _sqlite_timestamps(rows.ts_us[part])]
        for name in FLOAT_COLUMNS:
            values = rows.floats[name][part].astype(object)
            values[np.isnan(rows.floats[name][part])] = None
            columns.append(values.tolist())
        counts = rows.trade_count[part].astype(object)
        counts[rows.trade_count_null[part]] = None
        columns.append(counts.tolist())
        columns.append(provider[rows.text["provider"].codes[part]].tolist())
        columns.append([ingested_at] * len(columns[0]))
        yield list(zip(*columns, strict=True))


def _sqlite_count(cursor: Any, series_ids: list[int], span: tuple[str, str]) -> int:
    """Stored rows of these series within [span]: a superset of the keys an upsert can insert, counted on the key index."""
    total = 0
    for start in range(0, len(series_ids), 500):
        chunk = series_ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        cursor.execute(f"SELECT count(*) FROM bars WHERE series_id IN ({marks}) AND ts >= ? AND ts <= ?", (*chunk, *span))  # noqa: S608 - placeholders only
        total += int(cursor.fetchone()[0])
    return total


def _now_us() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1_000_000)
