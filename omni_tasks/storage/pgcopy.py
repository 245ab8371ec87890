"""PostgreSQL binary COPY, encoded column-wise with numpy.

The binary COPY format (PostgreSQL docs, "COPY ... Binary Format") is a
header, one tuple per row and a trailer::

    b"PGCOPY\\n\\xff\\r\\n\\x00" + int32 flags (0) + int32 header-extension length (0)
    per row: int16 field count, then per field int32 byte length (-1 = NULL) and the bytes
    b"\\xff\\xff"

all integers big-endian. Packing each row with ``struct`` in Python is the
slow path (a few hundred thousand rows/s at best). Here a block of rows is
laid out in the *widest* row shape (every text field as wide as its longest
value, every nullable field present), which a numpy structured dtype
describes exactly (packed, big-endian fields, ``S<n>`` for text). Constants
(the field count, fixed lengths, single-valued text) come from a template;
each varying column is one vectorised assignment. Where rows are narrower
than the widest shape (a shorter symbol, a NULL), a byte mask drops the
padding and the row's length fields say so; a block where every row has the
widest shape is sent as is. Rows stay in input order, which matters: rows
that arrive in primary-key order go into a B-tree far faster (PostgreSQL
appends to the rightmost leaf without descending the tree).

Low-cardinality text (symbols, feeds, providers) is factorised once, so each
row costs an integer gather rather than an encode. Blocks are sized to stay
in a CPU cache: filling a structured array column by column is memory-bound
otherwise.

Supported types: ``text`` (also right for ``varchar`` columns: same wire
format), ``float8``, ``int8``, ``int4``, ``bool`` and ``timestamptz``
(given as int64 nanoseconds since the Unix epoch, UTC; sent as PostgreSQL's
microseconds since 2000-01-01, floor-divided: sub-microsecond digits are
dropped, as PostgreSQL itself keeps microseconds).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00"
HEADER: Final = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER: Final = b"\xff\xff"

#: Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000
#: Target size of one encoded block: comfortably inside a per-core L2 cache.
BLOCK_BYTES: Final = 512 * 1024
#: A block whose narrower values (NULLs, shorter texts) are in at most one row in this many is compacted run by run.
SPARSE_SHARE: Final = 8

_FIXED: Final[dict[str, str]] = {"float8": ">f8", "int8": ">i8", "int4": ">i4", "bool": "u1", "timestamptz": ">i8"}
PG_TYPES: Final = frozenset({"text", *_FIXED})


@dataclass(frozen=True)
class Column:
    """One column to COPY.

    ``values``: for fixed-width types a numeric array (``timestamptz``: int64
    ns since the Unix epoch, UTC); for ``text`` an integer array of codes into
    ``categories``. ``nulls``: a boolean mask, True where the value is NULL
    (None: no NULLs). Build text columns with :func:`text_column`.
    """

    name: str
    pg_type: str
    values: np.ndarray
    nulls: np.ndarray | None = None
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.pg_type not in PG_TYPES:
            raise ValueError(f"column {self.name!r}: unsupported type {self.pg_type!r} (choose from {', '.join(sorted(PG_TYPES))})")
        if self.nulls is not None and len(self.nulls) != len(self.values):
            raise ValueError(f"column {self.name!r}: {len(self.nulls)} null flags for {len(self.values)} values")
        if self.pg_type == "text" and len(self.values) and (int(np.min(self.values)) < 0 or int(np.max(self.values)) >= max(1, len(self.categories))):
            raise ValueError(f"column {self.name!r}: codes outside its {len(self.categories)} categories")


def text_column(name: str, values: Sequence[object] | np.ndarray | pd.Series) -> Column:
    """A text column from strings (missing values become NULL), factorised into codes."""
    codes, uniques = pd.factorize(pd.Series(values, copy=False).to_numpy(dtype=object), use_na_sentinel=True)
    nulls = codes < 0
    categories = tuple(str(u) for u in uniques)
    return Column(name, "text", np.where(nulls, 0, codes).astype(np.int64), nulls if nulls.any() else None, categories)


def timestamptz_column(name: str, values: pd.Series | pd.DatetimeIndex) -> Column:
    """A timestamptz column from timezone-aware timestamps (NaT becomes NULL)."""
    index = pd.DatetimeIndex(values)
    if index.tz is None:
        raise ValueError(f"column {name!r}: naive timestamps; give timezone-aware UTC")
    nulls = np.asarray(index.isna())
    ns = index.tz_convert("UTC").as_unit("ns").asi8
    return Column(name, "timestamptz", np.where(nulls, 0, ns), nulls if nulls.any() else None)


def copy_chunks(columns: Sequence[Column]) -> Iterator[bytes | memoryview]:
    """The whole binary COPY stream (header, rows in order, trailer) as a sequence of buffers.

    Row data comes as buffers of about :data:`BLOCK_BYTES` each, encoded
    lazily: a consumer streaming them to the server overlaps the encoding
    with the server's parsing.
    """
    if not columns:
        raise ValueError("no columns to copy")
    n = len(columns[0].values)
    for column in columns:
        if len(column.values) != n:
            raise ValueError(f"column {column.name!r} has {len(column.values)} values, expected {n}")
    encoder = _Encoder(columns)
    yield HEADER
    for start in range(0, n, encoder.block_rows):
        yield encoder.block(start, min(n, start + encoder.block_rows))
    yield TRAILER


def copy_bytes(columns: Sequence[Column]) -> bytes:
    """The whole binary COPY stream in one byte string (tests and small loads)."""
    return b"".join(bytes(memoryview(chunk)) for chunk in copy_chunks(columns))


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of buffers (bytes or memoryviews), for ``cursor.copy_expert``."""

    def __init__(self, chunks: Iterable[bytes | memoryview]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            rest = bytes(self._pending) + b"".join(bytes(memoryview(c)) for c in self._chunks)
            self._pending = memoryview(b"")
            return rest
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._pending = memoryview(chunk).cast("B")
        out, self._pending = self._pending[:size], self._pending[size:]
        return bytes(out)

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class _Field:
    """One column in the widest row shape: its length field, its value field and how rows narrow it."""

    def __init__(self, column: Column) -> None:
        self.column = column
        self.name = column.name
        self.length_name = f"{column.name}#len"
        self.nulls = column.nulls
        if column.pg_type == "text":
            encoded = [c.encode("utf-8") for c in column.categories]
            if any(b"\x00" in e for e in encoded):
                raise ValueError(f"column {column.name!r}: text contains a NUL character, which PostgreSQL cannot store")
            self.byte_lengths = np.array([len(e) for e in encoded] or [0], dtype=np.int64)
            self.width = int(self.byte_lengths.max())
            # Every value as wide as the widest; the mask drops the NUL padding per row.
            self.table = np.array(encoded or [b""], dtype=f"S{max(1, self.width)}")
            self.single = len(encoded) == 1
            self.ragged = bool((self.byte_lengths != self.width).any()) if not self.single else False
            self.fixed: np.ndarray | None = None
            self.dtype = self.table.dtype if self.width else None
        else:
            dtype = np.dtype(_FIXED[column.pg_type])
            values = np.asarray(column.values)
            if column.pg_type == "timestamptz":
                values = np.floor_divide(values.astype(np.int64, copy=False), 1000) - PG_EPOCH_OFFSET_US
            elif column.pg_type == "bool":
                values = values.astype(bool).astype(np.uint8)
            # Byte-swapped once here, so the per-block copies are plain copies.
            self.fixed = np.ascontiguousarray(values, dtype=dtype)
            self.width = dtype.itemsize
            self.single = False
            self.ragged = False
            self.dtype = dtype
            self.byte_lengths = np.array([self.width], dtype=np.int64)
            self.table = np.empty(0, dtype="S1")

    def fields(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = [(self.length_name, ">i4")]
        if self.width:
            out.append((self.name, self.dtype))
        return out

    def constants(self) -> dict[str, object]:
        """Field values that are the same in every row (NULLs and short texts are patched per block)."""
        out: dict[str, object] = {self.length_name: self.width}
        if self.single and self.width:
            out[self.name] = self.table[0]
        return out

    def fill(self, block: np.ndarray, rows: slice) -> np.ndarray | None:
        """Write this column's rows into ``block``; returns per-row byte lengths when rows are narrower (else None)."""
        lengths: np.ndarray | None = None
        if self.fixed is not None:
            block[self.name] = self.fixed[rows]
        elif not self.single:
            codes = self.column.values[rows]
            if self.width:
                block[self.name] = self.table[codes]
            if self.ragged:
                lengths = self.byte_lengths[codes]
        nulls = None if self.nulls is None else self.nulls[rows]
        if nulls is not None and nulls.any():
            lengths = np.where(nulls, -1, self.width if lengths is None else lengths)
        elif lengths is not None and bool((lengths == self.width).all()):
            lengths = None
        if lengths is not None:
            block[self.length_name] = lengths
        return lengths


class _Encoder:
    def __init__(self, columns: Sequence[Column]) -> None:
        self.fields = [_Field(column) for column in columns]
        layout: list[tuple[str, object]] = [("#fields", ">i2")]
        constants: dict[str, object] = {"#fields": len(self.fields)}
        for field in self.fields:
            layout.extend(field.fields())
            constants.update(field.constants())
        self.dtype = np.dtype(layout)
        self.row_bytes = self.dtype.itemsize
        self.block_rows = max(1, BLOCK_BYTES // self.row_bytes)
        one = np.zeros(1, dtype=self.dtype)
        for name, value in constants.items():
            one[name] = value
        # Copied as raw bytes: numpy copies a structured array field by field, several times slower.
        self.template = np.repeat(one, self.block_rows).view(np.uint8)
        self.keep_all = np.ones(self.block_rows * self.row_bytes, dtype=bool)
        # Where each field's value bytes start within the widest row.
        layout_fields = self.dtype.fields
        assert layout_fields is not None
        self.offsets = {field.name: int(layout_fields[field.name][1]) for field in self.fields if field.width}

    def block(self, start: int, stop: int) -> memoryview:
        count = stop - start
        raw = self.template[: count * self.row_bytes].copy()
        block = raw.view(self.dtype)
        rows = slice(start, stop)
        narrower: list[tuple[_Field, np.ndarray]] = []
        for field in self.fields:
            lengths = field.fill(block, rows)
            if lengths is not None and field.width:
                narrower.append((field, lengths))
        if not narrower:
            return raw.data
        sparse = self._drop_sparse(raw, count, narrower)
        if sparse is not None:
            return sparse
        keep = self.keep_all[: count * self.row_bytes].copy().reshape(count, self.row_bytes)
        for field, lengths in narrower:
            offset = self.offsets[field.name]
            # Keep the first max(length, 0) bytes of the value (a NULL keeps none).
            keep[:, offset : offset + field.width] = np.arange(field.width) < lengths[:, None]
        return raw[keep.reshape(-1)].data

    def _drop_sparse(self, raw: np.ndarray, count: int, narrower: list[tuple[_Field, np.ndarray]]) -> memoryview | None:
        """The block without the padding of its narrower values when few rows have any (a NULL here and there): the
        bytes between them copied as runs, far cheaper than a byte mask over the whole block. None when many rows do."""
        starts: list[np.ndarray] = []
        stops: list[np.ndarray] = []
        total = 0
        for field, lengths in narrower:
            rows = np.flatnonzero(lengths < field.width)
            total += len(rows)
            if total * SPARSE_SHARE > count:
                return None
            base = rows * self.row_bytes + self.offsets[field.name]
            starts.append(base + np.maximum(lengths[rows], 0))
            stops.append(base + field.width)
        drop_starts = np.concatenate(starts)
        drop_stops = np.concatenate(stops)
        order = np.argsort(drop_starts, kind="stable")
        keep_starts = np.concatenate([[0], drop_stops[order]]).tolist()
        keep_stops = np.concatenate([drop_starts[order], [len(raw)]]).tolist()
        return np.concatenate([raw[a:b] for a, b in zip(keep_starts, keep_stops, strict=True)]).data
