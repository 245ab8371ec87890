"""The numpy binary COPY encoder decoded by PostgreSQL itself: every value back exactly, in order."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from omni_tasks.storage import pgcopy
from tests.unit.test_pgcopy import sample

pytestmark = pytest.mark.services


def test_pgcopy_postgresql_decodes_every_value(pg_database: Callable[[], str]) -> None:
    from omni_tasks.storage.engine import make_engine

    columns, rows, _ = sample(12_000)
    engine = make_engine(pg_database())
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SET TIME ZONE 'UTC'")
        cursor.execute("CREATE TEMP TABLE decoded (ord serial, t text, c varchar(8), f float8, i int8, s int4, b bool, ts timestamptz)")
        cursor.copy_expert(
            "COPY decoded (t, c, f, i, s, b, ts) FROM STDIN (FORMAT binary)",
            pgcopy.ChunkReader(pgcopy.copy_chunks(columns)),
            size=1 << 16,
        )
        cursor.execute("SELECT t, c, f, i, s, b, ts FROM decoded ORDER BY ord")
        back = [tuple(row) for row in cursor.fetchall()]
    finally:
        raw.close()
        engine.dispose()
    assert len(back) == len(rows)
    assert back == rows, "PostgreSQL reads back exactly the values encoded, in the order given"
