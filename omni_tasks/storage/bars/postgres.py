"""The bar store's PostgreSQL upsert: a binary COPY into a staging table, then one statement.

One transaction; ``CREATE TEMP TABLE ... ON COMMIT DROP``; a binary ``COPY`` of
the rows into it, encoded column-wise with numpy (:mod:`omni_tasks.storage.pgcopy`)
and kept in the frame's row order; then one statement: ``INSERT INTO bars ...
SELECT ... FROM staging ON CONFLICT (key) DO UPDATE ... WHERE (bars.values) IS
DISTINCT FROM (EXCLUDED.values)``, with the staged rows already stored unchanged
filtered out first (so a re-run locks and writes nothing) and the keys not stored
at all split off into a plain ``INSERT`` in the same statement (ON CONFLICT's
speculative insertion made a fresh 1M-row load cost about 1.6x the server CPU).
Should another transaction insert one of those keys meanwhile, the statement fails
with a unique violation, is rolled back to a savepoint and the plain ``INSERT ...
ON CONFLICT DO UPDATE ... WHERE`` runs instead. The counts come back as numbers
aggregated in SQL, never a million rows.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import psycopg2.errors
from sqlalchemy import Engine

from omni_tasks.storage import pgcopy
from omni_tasks.storage.bars.rows import KEY_COLUMNS, STAGE_COLUMNS, TEXT_COLUMNS, VALUE_COLUMNS, Clock, Rows, columns_sql


def upsert_postgresql(engine: Engine, rows: Rows, clock: Clock) -> tuple[int, int, bool]:
    """Upsert ``rows`` in one transaction (see the module docstring): (inserted, updated, whether the fallback ran)."""
    fell_back = False
    with engine.connect() as connection:
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
                    fell_back = True
                counts = cursor.fetchone()
                assert counts is not None
                inserted, updated = counts
                clock.lap("upsert")
            finally:
                cursor.close()
        clock.lap("commit")
    return int(inserted), int(updated), fell_back


def _copy_columns(rows: Rows) -> list[pgcopy.Column]:
    out: list[pgcopy.Column] = []
    for name in STAGE_COLUMNS:
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


_PG_CREATE_STAGING: Final = """
CREATE TEMP TABLE bars_staging (
    symbol text NOT NULL, timeframe text NOT NULL, ts timestamptz NOT NULL, feed text NOT NULL, adjustment text NOT NULL,
    open float8 NOT NULL, high float8 NOT NULL, low float8 NOT NULL, close float8 NOT NULL, volume float8 NOT NULL,
    vwap float8, trade_count int8, provider text NOT NULL
) ON COMMIT DROP
"""
_PG_COPY: Final = f"COPY bars_staging ({columns_sql('', STAGE_COLUMNS)}) FROM STDIN (FORMAT binary)"
_PG_SET_VALUES: Final = ", ".join(f"{name} = EXCLUDED.{name}" for name in VALUE_COLUMNS) + ", ingested_at = EXCLUDED.ingested_at"
_PG_CHANGED: Final = f"({columns_sql('b.', VALUE_COLUMNS)}) IS DISTINCT FROM ({columns_sql('EXCLUDED.', VALUE_COLUMNS)})"

# The upsert, as one statement. The NOT EXISTS keeps rows already stored unchanged away
# from ON CONFLICT, which would otherwise lock (and so dirty and WAL-log) every one of
# them on a re-run; the ON CONFLICT ... WHERE stays the guard for rows that change under
# us. RETURNING (xmax = 0) is true for a freshly inserted row and false for one updated
# by ON CONFLICT: counted in SQL, so no row travels back to Python.
_PG_UPSERT: Final = f"""
WITH upserted AS (
    INSERT INTO bars AS b ({columns_sql("", STAGE_COLUMNS)}, ingested_at)
    SELECT {columns_sql("s.", STAGE_COLUMNS)}, now()
    FROM bars_staging AS s
    WHERE NOT EXISTS (
        SELECT FROM bars AS stored
        WHERE ({columns_sql("stored.", KEY_COLUMNS)}) = ({columns_sql("s.", KEY_COLUMNS)})
          AND ({columns_sql("stored.", VALUE_COLUMNS)}) IS NOT DISTINCT FROM ({columns_sql("s.", VALUE_COLUMNS)})
    )
    ON CONFLICT ({columns_sql("", KEY_COLUMNS)}) DO UPDATE SET {_PG_SET_VALUES}
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
    SELECT {columns_sql("s.", STAGE_COLUMNS)}, stored.symbol IS NULL AS is_new
    FROM bars_staging AS s
    LEFT JOIN bars AS stored ON ({columns_sql("stored.", KEY_COLUMNS)}) = ({columns_sql("s.", KEY_COLUMNS)})
    WHERE stored.symbol IS NULL
       OR ({columns_sql("stored.", VALUE_COLUMNS)}) IS DISTINCT FROM ({columns_sql("s.", VALUE_COLUMNS)})
), fresh AS (
    INSERT INTO bars ({columns_sql("", STAGE_COLUMNS)}, ingested_at)
    SELECT {columns_sql("", STAGE_COLUMNS)}, now() FROM classified WHERE is_new
    RETURNING 1
), changed AS (
    INSERT INTO bars AS b ({columns_sql("", STAGE_COLUMNS)}, ingested_at)
    SELECT {columns_sql("", STAGE_COLUMNS)}, now() FROM classified WHERE NOT is_new
    ON CONFLICT ({columns_sql("", KEY_COLUMNS)}) DO UPDATE SET {_PG_SET_VALUES}
    WHERE {_PG_CHANGED}
    RETURNING (b.xmax = 0) AS inserted
)
SELECT (SELECT count(*) FROM fresh) + (SELECT count(*) FROM changed WHERE inserted), (SELECT count(*) FROM changed WHERE NOT inserted)
"""  # noqa: S608 - built from the constant column names above, no input
