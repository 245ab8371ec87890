"""The numpy binary COPY encoder: byte for byte against a struct-packed reference (PostgreSQL decoding it: tests/integration/test_pgcopy_postgres.py)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from omni_tasks.storage import pgcopy
from omni_tasks.storage.pgcopy import Column

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def reference_encoding(rows: list[tuple[object, ...]], types: list[str]) -> bytes:
    """The slow, obvious encoder: struct.pack per field, per row (None is NULL)."""
    out = [pgcopy.HEADER]
    for row in rows:
        out.append(struct.pack(">h", len(row)))
        for value, pg_type in zip(row, types, strict=True):
            if value is None:
                out.append(struct.pack(">i", -1))
            elif pg_type == "text":
                data = str(value).encode("utf-8")
                out.append(struct.pack(">i", len(data)) + data)
            elif pg_type == "float8":
                out.append(struct.pack(">id", 8, value))
            elif pg_type == "int8":
                out.append(struct.pack(">iq", 8, value))
            elif pg_type == "int4":
                out.append(struct.pack(">ii", 4, value))
            elif pg_type == "bool":
                out.append(struct.pack(">i?", 1, value))
            elif pg_type == "timestamptz":
                assert isinstance(value, datetime)
                delta = value - PG_EPOCH
                out.append(struct.pack(">iq", 8, (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds))
    out.append(pgcopy.TRAILER)
    return b"".join(out)


def sample(n: int, seed: int = 5) -> tuple[list[Column], list[tuple[object, ...]], list[str]]:
    """n rows of every supported type, with NULLs, empty and multi-byte text of varying lengths."""
    rng = np.random.default_rng(seed)
    words = np.array(["A", "BRK.B", "", "ÄÖÜ", "GOOGL", "日本", "X" * 30], dtype=object)
    text = words[rng.integers(0, len(words), n)]
    text_nulls = rng.random(n) < 0.1
    text_values = [None if null else str(t) for t, null in zip(text, text_nulls, strict=True)]
    constant = ["sip"] * n
    floats = rng.normal(100.0, 50.0, n)
    float_nulls = rng.random(n) < 0.2
    ints = rng.integers(-(2**62), 2**62, n)
    int_nulls = rng.random(n) < 0.2
    small = rng.integers(-(2**31), 2**31, n, dtype=np.int64)
    flags = rng.random(n) < 0.5
    micros = rng.integers(-10**15, 10**15, n)  # about 1968..2031 around the PG epoch
    stamps = [PG_EPOCH + timedelta(microseconds=int(m)) for m in micros]
    ts_ns = np.array([(s - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000 for s in stamps], dtype=np.int64)
    ts_ns = ts_ns + rng.integers(0, 1000, n)  # sub-microsecond digits are floored away

    columns = [
        pgcopy.text_column("t", text_values),
        pgcopy.text_column("c", constant),
        Column("f", "float8", floats, float_nulls),
        Column("i", "int8", ints, int_nulls),
        Column("s", "int4", small),
        Column("b", "bool", flags),
        Column("ts", "timestamptz", ts_ns),
    ]
    rows: list[tuple[object, ...]] = [
        (
            text_values[k], "sip",
            None if float_nulls[k] else float(floats[k]),
            None if int_nulls[k] else int(ints[k]),
            int(small[k]), bool(flags[k]), stamps[k],
        )
        for k in range(n)
    ]
    return columns, rows, ["text", "text", "float8", "int8", "int4", "bool", "timestamptz"]


def test_pgcopy_one_row_matches_known_bytes() -> None:
    columns = [
        pgcopy.text_column("t", ["ab"]),
        Column("i", "int8", np.array([1])),
        Column("f", "float8", np.array([np.nan]), np.array([True])),
        Column("ts", "timestamptz", np.array([946_684_800_000_001_999])),  # 2000-01-01T00:00:00.000001999Z
        Column("b", "bool", np.array([True])),
        Column("s", "int4", np.array([-2])),
    ]
    expected = (
        b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
        + b"\x00\x06"
        + b"\x00\x00\x00\x02ab"
        + b"\x00\x00\x00\x08" + b"\x00\x00\x00\x00\x00\x00\x00\x01"
        + b"\xff\xff\xff\xff"
        + b"\x00\x00\x00\x08" + b"\x00\x00\x00\x00\x00\x00\x00\x01"
        + b"\x00\x00\x00\x01\x01"
        + b"\x00\x00\x00\x04\xff\xff\xff\xfe"
        + b"\xff\xff"
    )
    assert pgcopy.copy_bytes(columns) == expected


@pytest.mark.parametrize("n", [0, 1, 7, 25_000])
def test_pgcopy_matches_the_struct_reference_in_row_order(n: int) -> None:
    columns, rows, types = sample(n)
    assert pgcopy.copy_bytes(columns) == reference_encoding(rows, types)


@pytest.mark.parametrize("share", [0.0005, 0.01, 0.05, 0.3])
def test_pgcopy_rare_nulls_and_short_texts_match_the_struct_reference(share: float) -> None:
    """Blocks where few rows are narrower take the run-by-run path, many rows the byte mask: the same bytes either way."""
    n = 30_000
    rng = np.random.default_rng(11)
    text = ["AAPL" if rng.random() >= share else "X" for _ in range(n)]
    floats = rng.normal(100.0, 5.0, n)
    float_nulls = rng.random(n) < share
    float_nulls[[0, n - 1]] = True  # the first and the last row of the stream
    ints = rng.integers(0, 10**6, n)
    int_nulls = rng.random(n) < share
    columns = [
        pgcopy.text_column("t", text),
        Column("f", "float8", floats, float_nulls),
        Column("i", "int8", ints, int_nulls),
        Column("s", "int4", rng.integers(0, 1000, n)),
    ]
    rows = [
        (text[k], None if float_nulls[k] else float(floats[k]), None if int_nulls[k] else int(ints[k]), int(columns[3].values[k]))
        for k in range(n)
    ]
    assert pgcopy.copy_bytes(columns) == reference_encoding(rows, ["text", "float8", "int8", "int4"])


def test_pgcopy_chunk_reader_serves_any_read_size() -> None:
    columns, _, _ = sample(3_000)
    whole = pgcopy.copy_bytes(columns)
    for size in (1, 7, 8192, 1 << 20):
        reader = pgcopy.ChunkReader(pgcopy.copy_chunks(columns))
        pieces = []
        while piece := reader.read(size):
            assert len(piece) <= size
            pieces.append(piece)
        assert b"".join(pieces) == whole
    assert pgcopy.ChunkReader(pgcopy.copy_chunks(columns)).read() == whole


def test_pgcopy_refuses_what_postgresql_cannot_take() -> None:
    with pytest.raises(ValueError, match="NUL"):
        pgcopy.copy_bytes([pgcopy.text_column("t", ["a\x00b"])])
    with pytest.raises(ValueError, match="expected 2"):
        pgcopy.copy_bytes([Column("a", "int8", np.array([1, 2])), Column("b", "int8", np.array([1]))])
    with pytest.raises(ValueError, match="unsupported type"):
        Column("a", "numeric", np.array([1]))
    with pytest.raises(ValueError, match="naive"):
        pgcopy.timestamptz_column("ts", pd.Series(pd.to_datetime(["2026-01-01"])))
    with pytest.raises(ValueError, match="codes outside"):
        Column("t", "text", np.array([0, 2]), categories=("a", "b"))
