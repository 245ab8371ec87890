"""The bar store's PostgreSQL write: series named by integers, fresh ranges COPYed straight in, re-runs recognised by digest.

``bars`` is keyed by (series_id, ts); ``bar_series`` names each (symbol,
timeframe, feed, adjustment). One call:

1. **Series.** The frame's series get their ids (new ones are added, in a short
   transaction of their own, in the frame's order).
2. **Re-runs.** Each series' rows are hashed as they are stored
   (:func:`.rows.digests`, on a thread of its own, overlapping the round trips
   and the COPY; waited for only when a record of the same span and count
   exists, or to record the digests at the end); a series whose (first ts, last ts, rows, digest)
   equals a ``bar_digests`` record is a re-run of rows already stored, unchanged:
   nothing of it is sent. A record is removed whenever one of its bars may
   change (below, and by the ``bars_forget_digests`` trigger for writes from
   anywhere else), so a match is never stale; a series with any changed row
   does not match and is written as below, so corrections are applied.
3. **Writes**, one transaction, the written series locked (``FOR NO KEY UPDATE``
   on their ``bar_series`` rows, in id order) so writers of one series take
   turns. A series with no stored bar between its first and last ts is
   **fresh**: its rows go by binary COPY straight into ``bars`` (no staging, no
   upsert). The others go by binary COPY into a temporary staging table and
   one statement: the staged rows already stored unchanged are left out, the
   keys not stored yet are inserted plainly, and changed rows go through
   ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the values differ. Should
   another transaction (not a bar store: it takes the series lock) insert one of
   the keys meanwhile, the statement fails with a unique violation and the
   transaction is redone with every series staged and the plain ``ON CONFLICT``
   upsert (:attr:`BarStore.fallbacks <omni_tasks.storage.bars.BarStore.fallbacks>` counts these).
4. **Digests.** The written series' records are replaced: those overlapping a
   series that had rows updated go, as do those inside a written range, and
   the new ones are recorded, in the same transaction.

The counts come back as numbers aggregated in SQL, never a million rows.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import psycopg2.errors
from sqlalchemy import Engine

from omni_tasks.storage import pgcopy
from omni_tasks.storage.bars.rows import (
    FLOAT_COLUMNS,
    STORED_COLUMNS,
    VALUE_COLUMNS,
    Clock,
    Rows,
    Spans,
    columns_sql,
    digests,
    series_keys,
    spans,
)

#: ``timestamptz`` from int8 microseconds since the Unix epoch, exactly.
_US: Final = "(timestamptz '1970-01-01 00:00:00+00' + {} * interval '1 microsecond')"


@dataclass(frozen=True)
class Written:
    inserted: int
    updated: int
    fell_back: bool
    skipped_series: int


def upsert_postgresql(engine: Engine, rows: Rows, clock: Clock) -> Written:
    """Store ``rows`` (see the module docstring)."""
    where = spans(rows)
    keys = series_keys(rows, where)
    # Hashed on a thread of its own (hashlib and numpy let go of the GIL), overlapping the
    # round trips and the COPY; waited for where a digest is first needed.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bar-digests") as hashing:
        return _upsert(engine, rows, where, keys, hashing.submit(digests, rows, where), clock)


def _upsert(
    engine: Engine, rows: Rows, where: Spans, keys: list[tuple[str, str, str, str]], fingerprints: Future[list[str]], clock: Clock
) -> Written:
    with engine.connect() as connection:
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None
        with connection.begin():
            cursor = dbapi.cursor()
            try:
                ids = _series_ids(cursor, keys)
            finally:
                cursor.close()
        with connection.begin():
            cursor = dbapi.cursor()
            try:
                matched = _rerun_series(cursor, ids, where, fingerprints)
            finally:
                cursor.close()
        clock.lap("series")
        todo = np.flatnonzero(~matched)
        if not len(todo):
            clock.lap("upsert")
            clock.lap("commit")
            return Written(0, 0, False, len(ids))
        fell_back = False
        try:
            with connection.begin():
                inserted, updated = _write(dbapi, rows, where, ids, todo, fingerprints, clock, stage_all=False)
        except psycopg2.errors.UniqueViolation:
            # A key we saw as new was inserted by someone else meanwhile: redo it all with the upsert that is always right.
            fell_back = True
            with connection.begin():
                inserted, updated = _write(dbapi, rows, where, ids, todo, fingerprints, clock, stage_all=True)
        clock.lap("commit")
    return Written(inserted, updated, fell_back, len(ids) - len(todo))


def _series_ids(cursor: Any, keys: list[tuple[str, str, str, str]]) -> np.ndarray:
    """The bar_series id of each key, adding the missing ones (in the keys' order); int64 array by series number."""
    columns = [list(column) for column in zip(*keys, strict=True)]
    for _ in range(5):
        cursor.execute(_PG_SERIES, columns)
        found = dict(cursor.fetchall())
        if len(found) == len(keys) and all(v is not None for v in found.values()):
            return np.array([found[n + 1] for n in range(len(keys))], dtype=np.int64)
    raise RuntimeError("could not add bar series (a concurrent writer kept adding the same ones)")


def _rerun_series(cursor: Any, ids: np.ndarray, where: Spans, fingerprints: Future[list[str]]) -> np.ndarray:
    """Per series (by number): True when bar_digests holds exactly these rows (same span, count and digest).

    The records of the same span and count come first; only when there are any is the hashing waited for.
    """
    cursor.execute(_PG_CANDIDATE_DIGESTS, (ids.tolist(), where.lo_us.tolist(), where.hi_us.tolist(), where.counts.tolist()))
    candidates = cursor.fetchall()
    matched = np.zeros(len(ids), dtype=bool)
    if candidates:
        ours = fingerprints.result()
        for number, digest in candidates:
            if ours[number - 1] == digest:
                matched[number - 1] = True
    return matched


def _write(
    dbapi: Any,
    rows: Rows,
    where: Spans,
    ids: np.ndarray,
    todo: np.ndarray,
    fingerprints: Future[list[str]],
    clock: Clock,
    *,
    stage_all: bool,
) -> tuple[int, int]:
    cursor = dbapi.cursor()
    try:
        cursor.execute(_PG_BEGIN_WRITE, (ids[todo].tolist(),))
        cursor.execute(_PG_OVERLAPS, (ids[todo].tolist(), where.lo_us[todo].tolist(), where.hi_us[todo].tolist()))
        found = cursor.fetchone()
        assert found is not None
        now_us, overlapping = found
        staged = todo if stage_all else todo[np.asarray(overlapping, dtype=np.int64) - 1] if overlapping else todo[:0]
        fresh = np.setdiff1d(todo, staged, assume_unique=True)
        inserted = updated = 0
        updated_series: list[int] = []
        if len(fresh):
            positions = where.positions(fresh)
            columns = _copy_columns(rows, positions, ids, ingested_at_ns=int(now_us) * 1000)
            cursor.copy_expert(_PG_COPY_BARS, pgcopy.ChunkReader(pgcopy.copy_chunks(columns)), size=1 << 20)
            inserted += len(positions)
        clock.lap("copy")
        if len(staged):
            positions = where.positions(staged)
            cursor.execute(_PG_CREATE_STAGING)
            columns = _copy_columns(rows, positions, ids, ingested_at_ns=None)
            cursor.copy_expert(_PG_COPY_STAGING, pgcopy.ChunkReader(pgcopy.copy_chunks(columns)), size=1 << 20)
            clock.lap("copy")
            cursor.execute(_PG_UPSERT if stage_all else _PG_UPSERT_SPLIT)
            counts = cursor.fetchone()
            assert counts is not None
            inserted += int(counts[0])
            updated += int(counts[1])
            updated_series = list(counts[2] or [])
        clock.lap("upsert")
        touched = np.isin(ids[todo], np.asarray(updated_series, dtype=np.int64))
        hashed = fingerprints.result()
        clock.lap("digest")
        cursor.execute(
            _PG_RECORD_DIGESTS,
            (
                ids[todo].tolist(), where.lo_us[todo].tolist(), where.hi_us[todo].tolist(), where.counts[todo].tolist(),
                [hashed[n] for n in todo.tolist()], touched.tolist(),
            ),
        )  # fmt: skip
        clock.lap("record")
    finally:
        cursor.close()
    return inserted, updated


def _copy_columns(rows: Rows, positions: np.ndarray, ids: np.ndarray, *, ingested_at_ns: int | None) -> list[pgcopy.Column]:
    out = [
        pgcopy.Column("series_id", "int4", ids[rows.series[positions]]),
        pgcopy.Column("ts", "timestamptz", rows.ts_us[positions] * 1000),
    ]
    for name in FLOAT_COLUMNS:
        values = rows.floats[name][positions]
        nan = np.isnan(values) if name == "vwap" else None
        out.append(pgcopy.Column(name, "float8", values, nan if nan is not None and nan.any() else None))
    counts_null = rows.trade_count_null[positions]
    out.append(pgcopy.Column("trade_count", "int8", rows.trade_count[positions], counts_null if counts_null.any() else None))
    provider = rows.text["provider"]
    out.append(pgcopy.Column("provider", "text", provider.codes[positions], None, tuple(provider.categories)))
    if ingested_at_ns is not None:
        out.append(pgcopy.Column("ingested_at", "timestamptz", np.full(len(positions), ingested_at_ns, dtype=np.int64)))
    return out


_PG_SERIES: Final = """
WITH wanted AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS w(symbol, timeframe, feed, adjustment, n)
), added AS (
    INSERT INTO bar_series (symbol, timeframe, feed, adjustment)
    SELECT w.symbol, w.timeframe, w.feed, w.adjustment FROM wanted AS w
    WHERE NOT EXISTS (
        SELECT FROM bar_series AS s WHERE (s.symbol, s.timeframe, s.feed, s.adjustment) = (w.symbol, w.timeframe, w.feed, w.adjustment)
    )
    ORDER BY w.n
    ON CONFLICT DO NOTHING
    RETURNING id, symbol, timeframe, feed, adjustment
)
SELECT w.n, coalesce(s.id, a.id)
FROM wanted AS w
LEFT JOIN bar_series AS s ON (s.symbol, s.timeframe, s.feed, s.adjustment) = (w.symbol, w.timeframe, w.feed, w.adjustment)
LEFT JOIN added AS a ON (a.symbol, a.timeframe, a.feed, a.adjustment) = (w.symbol, w.timeframe, w.feed, w.adjustment)
"""
_PG_CANDIDATE_DIGESTS: Final = f"""
SELECT w.n, d.digest
FROM unnest(%s::int4[], %s::int8[], %s::int8[], %s::int4[]) WITH ORDINALITY AS w(id, lo, hi, rows, n)
JOIN bar_digests AS d ON d.series_id = w.id AND d.lo = {_US.format("w.lo")} AND d.hi = {_US.format("w.hi")} AND d.rows = w.rows
"""  # noqa: S608 - a constant expression, no input
# The store's own writes keep the digests up to date (the trigger leaves them alone);
# ROW EXCLUSIVE on bar_digests first, so a foreign write's trigger (EXCLUSIVE) is either
# wholly before this transaction or waits for it.
_PG_BEGIN_WRITE: Final = """
SET LOCAL omni.bar_digests = 'kept';
LOCK TABLE bar_digests IN ROW EXCLUSIVE MODE;
SELECT id FROM bar_series WHERE id = ANY(%s::int4[]) ORDER BY id FOR NO KEY UPDATE
"""
_PG_OVERLAPS: Final = f"""
SELECT (extract(epoch FROM now()) * 1000000)::int8, array(
    SELECT w.n FROM unnest(%s::int4[], %s::int8[], %s::int8[]) WITH ORDINALITY AS w(id, lo, hi, n)
    WHERE EXISTS (SELECT FROM bars AS b WHERE b.series_id = w.id AND b.ts BETWEEN {_US.format("w.lo")} AND {_US.format("w.hi")})
    ORDER BY w.n
)
"""  # noqa: S608 - a constant expression, no input
_PG_COPY_BARS: Final = f"COPY bars ({columns_sql('', STORED_COLUMNS)}, ingested_at) FROM STDIN (FORMAT binary)"
_PG_CREATE_STAGING: Final = """
CREATE TEMP TABLE bars_staging (
    series_id int4 NOT NULL, ts timestamptz NOT NULL,
    open float8 NOT NULL, high float8 NOT NULL, low float8 NOT NULL, close float8 NOT NULL, volume float8 NOT NULL,
    vwap float8, trade_count int8, provider text NOT NULL
) ON COMMIT DROP
"""
_PG_COPY_STAGING: Final = f"COPY bars_staging ({columns_sql('', STORED_COLUMNS)}) FROM STDIN (FORMAT binary)"
_PG_SET_VALUES: Final = ", ".join(f"{name} = EXCLUDED.{name}" for name in VALUE_COLUMNS) + ", ingested_at = EXCLUDED.ingested_at"
_PG_CHANGED: Final = f"({columns_sql('b.', VALUE_COLUMNS)}) IS DISTINCT FROM ({columns_sql('EXCLUDED.', VALUE_COLUMNS)})"

# The upsert, as one statement. The NOT EXISTS keeps rows already stored unchanged away
# from ON CONFLICT, which would otherwise lock (and so dirty and WAL-log) every one of
# them; the ON CONFLICT ... WHERE stays the guard for rows that change under us.
# RETURNING (xmax = 0) is true for a freshly inserted row and false for one updated by
# ON CONFLICT: counted in SQL, with the series that had rows updated.
_PG_UPSERT: Final = f"""
WITH upserted AS (
    INSERT INTO bars AS b ({columns_sql("", STORED_COLUMNS)}, ingested_at)
    SELECT {columns_sql("s.", STORED_COLUMNS)}, now()
    FROM bars_staging AS s
    WHERE NOT EXISTS (
        SELECT FROM bars AS stored
        WHERE (stored.series_id, stored.ts) = (s.series_id, s.ts)
          AND ({columns_sql("stored.", VALUE_COLUMNS)}) IS NOT DISTINCT FROM ({columns_sql("s.", VALUE_COLUMNS)})
    )
    ON CONFLICT (series_id, ts) DO UPDATE SET {_PG_SET_VALUES}
    WHERE {_PG_CHANGED}
    RETURNING b.series_id, (b.xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted),
       array_agg(DISTINCT series_id) FILTER (WHERE NOT inserted)
FROM upserted
"""  # noqa: S608 - built from the constant column names above, no input

# The same upsert with the keys not yet stored split off into a plain INSERT: ON
# CONFLICT's speculative insertion (probe the index, insert, confirm) costs far more
# server CPU. One join classifies the staged rows (new / changed / unchanged, from
# this statement's snapshot); new rows are inserted plainly, changed rows go through
# INSERT ... ON CONFLICT DO UPDATE ... WHERE as above. If another transaction inserts
# one of the "new" keys meanwhile, the plain INSERT fails with a unique violation and
# the caller redoes the transaction with _PG_UPSERT.
_PG_UPSERT_SPLIT: Final = f"""
WITH classified AS (
    SELECT {columns_sql("s.", STORED_COLUMNS)}, stored.series_id IS NULL AS is_new
    FROM bars_staging AS s
    LEFT JOIN bars AS stored ON (stored.series_id, stored.ts) = (s.series_id, s.ts)
    WHERE stored.series_id IS NULL
       OR ({columns_sql("stored.", VALUE_COLUMNS)}) IS DISTINCT FROM ({columns_sql("s.", VALUE_COLUMNS)})
), fresh AS (
    INSERT INTO bars ({columns_sql("", STORED_COLUMNS)}, ingested_at)
    SELECT {columns_sql("", STORED_COLUMNS)}, now() FROM classified WHERE is_new
    RETURNING 1
), changed AS (
    INSERT INTO bars AS b ({columns_sql("", STORED_COLUMNS)}, ingested_at)
    SELECT {columns_sql("", STORED_COLUMNS)}, now() FROM classified WHERE NOT is_new
    ON CONFLICT (series_id, ts) DO UPDATE SET {_PG_SET_VALUES}
    WHERE {_PG_CHANGED}
    RETURNING b.series_id, (b.xmax = 0) AS inserted
)
SELECT (SELECT count(*) FROM fresh) + (SELECT count(*) FROM changed WHERE inserted),
       (SELECT count(*) FROM changed WHERE NOT inserted),
       (SELECT array_agg(DISTINCT series_id) FROM changed WHERE NOT inserted)
"""  # noqa: S608 - built from the constant column names above, no input

# Digests after a write: a record overlapping a series that had rows updated may hold old
# values, and one inside a written range is superseded; both go. Then this write's are recorded.
_PG_RECORD_DIGESTS: Final = f"""
CREATE TEMP TABLE bar_digests_written ON COMMIT DROP AS
SELECT w.id, {_US.format("w.lo")} AS lo, {_US.format("w.hi")} AS hi, w.rows, w.digest, w.touched
FROM unnest(%s::int4[], %s::int8[], %s::int8[], %s::int4[], %s::text[], %s::bool[]) AS w(id, lo, hi, rows, digest, touched);
DELETE FROM bar_digests AS d USING bar_digests_written AS w
WHERE d.series_id = w.id AND d.lo <= w.hi AND d.hi >= w.lo AND (w.touched OR (d.lo >= w.lo AND d.hi <= w.hi));
INSERT INTO bar_digests (series_id, lo, hi, rows, digest) SELECT id, lo, hi, rows, digest FROM bar_digests_written
ON CONFLICT (series_id, lo, hi) DO UPDATE SET rows = EXCLUDED.rows, digest = EXCLUDED.digest
"""  # noqa: S608 - a constant expression, no input
