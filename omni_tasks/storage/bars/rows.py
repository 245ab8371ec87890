"""The rows of a bar frame as the store keeps them: the canonical frame checked and unpacked into numpy arrays, and its checksum.

:func:`unpack` is the boundary every write crosses: columns and dtypes of
:func:`~omni_tasks.contracts.bars.empty_bars` (or pandas' ``str`` dtype for the
text columns), nothing missing that the table requires, text that fits its
columns, known timeframes and adjustments; anything else is a ValueError naming
the problem. Duplicate keys are resolved there, the last row winning.

Timestamps are stored with microsecond precision (PostgreSQL's): nanoseconds in a
frame are floored to the microsecond here, and keys are compared after that.

The table is keyed by (series, ts), a series being one (symbol, timeframe, feed,
adjustment): :class:`Rows` numbers the frame's series (``series``, in order of
first appearance), :func:`spans` puts them in key order with each series' first
and last timestamp, and :func:`digests` hashes each series' rows as they are
stored, the fingerprint a re-run is recognised by.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd

from omni_tasks.contracts.bars import ADJUSTMENTS, BAR_COLUMNS, SYMBOL_PATTERN, TIMEFRAMES

KEY_COLUMNS: Final = ("symbol", "timeframe", "ts", "feed", "adjustment")
#: The text columns that make a series (the key without ts).
SERIES_COLUMNS: Final = ("symbol", "timeframe", "feed", "adjustment")
#: The non-key columns compared to decide whether a stored row changed.
VALUE_COLUMNS: Final = ("open", "high", "low", "close", "volume", "vwap", "trade_count", "provider")
TEXT_COLUMNS: Final = ("symbol", "timeframe", "feed", "adjustment", "provider")
FLOAT_COLUMNS: Final = ("open", "high", "low", "close", "volume", "vwap")
#: Widths of the text columns in the ``bars`` table (characters).
TEXT_WIDTHS: Final = {"symbol": 12, "timeframe": 8, "feed": 16, "adjustment": 8, "provider": 32}

#: Column order of the bars table, the COPY stream, the staging table and the SQLite upsert (the primary key first).
STORED_COLUMNS: Final = ("series_id", "ts", *VALUE_COLUMNS)
CHECKSUM_VERSION: Final = b"omni-bars-checksum/1\n"
DIGEST_VERSION: Final = b"omni-bars-digest/1\n"
#: How one stored row is hashed in a series digest (values as stored; NULLs as 0 with a flag).
_DIGEST_ROW: Final = np.dtype([("ts", "<i8"), *((name, "<f8") for name in FLOAT_COLUMNS), ("trade_count", "<i8"), ("nulls", "u1")])


@dataclass
class TextColumn:
    codes: np.ndarray  # int64 codes into categories
    categories: list[str]

    def values(self) -> np.ndarray:
        """The strings, one per row, as a Python-object array."""
        return np.asarray(self.categories, dtype=object)[self.codes] if self.categories else np.empty(0, dtype=object)

    def take(self, rows: np.ndarray) -> TextColumn:
        return TextColumn(self.codes[rows], self.categories)


@dataclass
class Rows:
    """A canonical frame checked and unpacked into numpy arrays, duplicate keys removed (last wins)."""

    text: dict[str, TextColumn]
    ts_us: np.ndarray  # int64 microseconds since the Unix epoch, UTC
    floats: dict[str, np.ndarray]  # float64; vwap NaN means NULL
    trade_count: np.ndarray  # int64, 0 where NULL
    trade_count_null: np.ndarray  # bool
    duplicates: int
    #: Per row, its series (symbol, timeframe, feed, adjustment) numbered 0.. in order of first appearance.
    series: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    #: True when the rows are in key order already: each series contiguous, ts strictly increasing.
    in_key_order: bool = False

    def __len__(self) -> int:
        return len(self.ts_us)

    @property
    def series_count(self) -> int:
        return int(self.series.max()) + 1 if len(self.series) else 0

    def take(self, rows: np.ndarray) -> Rows:
        return Rows(
            text={name: column.take(rows) for name, column in self.text.items()},
            ts_us=self.ts_us[rows],
            floats={name: values[rows] for name, values in self.floats.items()},
            trade_count=self.trade_count[rows],
            trade_count_null=self.trade_count_null[rows],
            duplicates=self.duplicates,
            series=self.series[rows],
            in_key_order=self.in_key_order,
        )


def unpack(bars: pd.DataFrame) -> Rows:
    """Check that ``bars`` is a canonical frame and unpack it; ValueError names the first problem."""
    if not isinstance(bars, pd.DataFrame):
        raise ValueError(f"expected a canonical bar frame (pandas DataFrame), got {type(bars).__name__}")
    columns = [str(c) for c in bars.columns]
    if columns != list(BAR_COLUMNS):
        missing = [c for c in BAR_COLUMNS if c not in columns]
        extra = [c for c in columns if c not in BAR_COLUMNS]
        if missing or extra:
            parts = ([f"missing columns {', '.join(missing)}"] if missing else []) + (
                [f"unexpected columns {', '.join(extra)}"] if extra else []
            )
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

    text = {name: text_column(bars[name], name) for name in TEXT_COLUMNS}
    check_text_values(text)

    rows = Rows(text, ts_us, floats, trade_count_values, trade_count_null, duplicates=0, series=series_codes(text, len(ts_us)))
    keep = last_of_each_key(rows)
    if keep is None:
        rows.in_key_order = True
    elif len(keep) < len(rows):
        rows = rows.take(keep)
        rows.duplicates = len(bars) - len(keep)
    return rows


def text_column(series: pd.Series, name: str) -> TextColumn:
    dtype = series.dtype
    if not (pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.StringDtype)):
        raise ValueError(f"not a canonical bar frame: column {name!r} has dtype {dtype}, expected strings (object or str)")
    if len(series) == 0:
        return TextColumn(np.empty(0, dtype=np.int64), [])
    missing = int(series.isna().sum())
    if missing:
        raise ValueError(f"not a canonical bar frame: column {name!r} has {missing} missing values (it is required)")
    values = series.array
    first = values[0]
    if isinstance(first, str) and bool((series == first).all()):
        # Provenance columns are usually one value repeated: one comparison pass is
        # several times cheaper than hashing every element.
        return TextColumn(np.zeros(len(series), dtype=np.int64), [first])
    codes, uniques = pd.factorize(values)
    categories = list(uniques)
    for value in categories:
        if not isinstance(value, str):
            raise ValueError(f"not a canonical bar frame: column {name!r} holds a {type(value).__name__} ({value!r}), expected strings")
    return TextColumn(np.asarray(codes, dtype=np.int64), categories)


def check_text_values(text: dict[str, TextColumn]) -> None:
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


def series_codes(text: dict[str, TextColumn], n: int) -> np.ndarray:
    """One integer per row for its (symbol, timeframe, feed, adjustment), numbered 0.. in order of first appearance."""
    varying = [name for name in SERIES_COLUMNS if len(text[name].categories) > 1]
    if len(varying) == 1:
        return text[varying[0]].codes  # factorised in order of first appearance already
    codes = np.zeros(n, dtype=np.int64)
    for name in varying:
        column = text[name]
        if len(column.categories) > 1:
            # Re-factorised after each step, so the codes stay below n and in order of first appearance.
            codes, _ = pd.factorize(codes * len(column.categories) + column.codes)
            codes = np.asarray(codes, dtype=np.int64)
    return codes


def last_of_each_key(rows: Rows) -> np.ndarray | None:
    """Row positions to keep so each key appears once (its last row), in input order.

    None when the rows are in key order already (each series contiguous, ts
    strictly increasing: no duplicates, nothing to move); all positions when
    there are no duplicates but the rows are not in key order.
    """
    n = len(rows)
    if n < 2:
        return None
    series_id = rows.series
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
    return np.flatnonzero(~duplicated)


@dataclass(frozen=True)
class Spans:
    """The rows in key order and where each series lies in it (index: the series number)."""

    order: np.ndarray | None  # row positions in key order; None when the rows are in key order already
    starts: np.ndarray  # per series, its first position in key order
    stops: np.ndarray  # per series, one past its last
    lo_us: np.ndarray  # per series, its first ts (microseconds since the epoch)
    hi_us: np.ndarray  # per series, its last ts

    @property
    def counts(self) -> np.ndarray:
        return self.stops - self.starts

    def positions(self, series: np.ndarray) -> np.ndarray:
        """Row positions (into :class:`Rows`), in key order, of the rows of the given series (ascending numbers)."""
        if not len(series):
            return np.empty(0, dtype=np.int64)
        if len(series) == len(self.starts):
            keyed = np.arange(int(self.stops[-1]), dtype=np.int64)
        else:
            starts, stops = self.starts[series], self.stops[series]
            lengths = stops - starts
            # Concatenated aranges: each run starts at its start, one per row after it.
            offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
            keyed = np.arange(int(lengths.sum()), dtype=np.int64) + offsets
        return keyed if self.order is None else self.order[keyed]


def spans(rows: Rows) -> Spans:
    """Put the rows in key order (series number, then ts) and find each series' run and time span."""
    n = len(rows)
    order = None if rows.in_key_order else np.lexsort((rows.ts_us, rows.series))
    series = rows.series if order is None else rows.series[order]
    ts = rows.ts_us if order is None else rows.ts_us[order]
    k = rows.series_count
    boundaries = np.flatnonzero(series[1:] != series[:-1]) + 1
    starts = np.concatenate([[0], boundaries]).astype(np.int64) if n else np.empty(0, dtype=np.int64)
    stops = np.concatenate([boundaries, [n]]).astype(np.int64) if n else np.empty(0, dtype=np.int64)
    if len(starts) != k:
        raise AssertionError(f"{len(starts)} runs for {k} series")  # numbered in order of first appearance: every number has rows
    return Spans(order, starts, stops, ts[starts] if n else starts, ts[stops - 1] if n else stops)


def series_keys(rows: Rows, where: Spans) -> list[tuple[str, str, str, str]]:
    """(symbol, timeframe, feed, adjustment) of each series, by series number."""
    first = where.positions(np.arange(rows.series_count))[where.starts] if len(rows) else np.empty(0, dtype=np.int64)
    columns = [np.asarray(rows.text[name].categories, dtype=object)[rows.text[name].codes[first]] for name in SERIES_COLUMNS]
    return list(zip(*(c.tolist() for c in columns), strict=True))


def digests(rows: Rows, where: Spans) -> list[str]:
    """Per series (by number): a blake2b (hex) of its rows as the store keeps them, in key order; ``ingested_at`` is not part of it.

    Two writes of the same rows of a series give the same digest, whatever the
    rows' order in the frame or the other series in it.
    """
    n = len(rows)
    if not n:
        return []
    order = where.order

    def keyed(values: np.ndarray) -> np.ndarray:
        return values if order is None else values[order]

    vwap = keyed(rows.floats["vwap"])
    vwap_null = np.isnan(vwap)
    count_null = keyed(rows.trade_count_null)
    # Column by column, each contiguous in key order; NULLs hashed as 0 with a flag (NaN payloads vary).
    columns = [keyed(rows.ts_us).astype("<i8", copy=False)]
    columns += [keyed(rows.floats[name]).astype("<f8", copy=False) for name in FLOAT_COLUMNS if name != "vwap"]
    columns.append(np.where(vwap_null, 0.0, vwap).astype("<f8", copy=False))
    columns.append(np.where(count_null, 0, keyed(rows.trade_count)).astype("<i8", copy=False))
    columns.append(vwap_null.astype(np.uint8) | (count_null.astype(np.uint8) << 1))
    columns = [np.ascontiguousarray(column) for column in columns]
    provider = rows.text["provider"]
    single = len(provider.categories) == 1
    provider_codes = None if single else keyed(provider.codes)
    out = []
    for start, stop in zip(where.starts.tolist(), where.stops.tolist(), strict=True):
        digest = hashlib.blake2b(DIGEST_VERSION, digest_size=32)
        digest.update(f"rows={stop - start}\n".encode())
        for column in columns:
            digest.update(column[start:stop].data)
        if provider_codes is None:
            digest.update(b"provider:" + provider.categories[0].encode("utf-8"))
        else:
            used, local = np.unique(provider_codes[start:stop], return_inverse=True)
            names = [provider.categories[int(code)] for code in used]
            ranking = np.argsort(np.array(names, dtype=object), kind="stable")
            rank = np.empty(len(ranking), dtype=np.int64)
            rank[ranking] = np.arange(len(ranking))
            digest.update(b"providers:" + "\x00".join(sorted(names)).encode("utf-8") + b"\n")
            digest.update(rank[local].astype("<u4").tobytes())
        out.append(digest.hexdigest())
    return out


def sort_ranks(column: TextColumn) -> np.ndarray:
    """Per-row rank of each string in code point order (so sorting does not depend on first appearance)."""
    order = sorted(range(len(column.categories)), key=column.categories.__getitem__)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[column.codes] if len(order) else np.empty(0, dtype=np.int64)


def checksum(frame: pd.DataFrame) -> str:
    """A sha256 (hex) of the rows as the store keeps them; independent of row order.

    The frame is prepared as :meth:`BarStore.upsert <omni_tasks.storage.bars.BarStore.upsert>` would store it (ts floored to
    microseconds, duplicate keys resolved last-wins), sorted by key, and
    hashed column by column with NULLs marked. So the same rows give the
    same checksum whatever their order, and the checksum of a frame equals
    the checksum of the same rows read back with ``BarStore.read``. ``ingested_at``
    is not part of it.
    """
    rows = unpack(frame)
    ranks = {name: sort_ranks(rows.text[name]) for name in TEXT_COLUMNS}
    order = np.lexsort((ranks["adjustment"], ranks["feed"], rows.ts_us, ranks["timeframe"], ranks["symbol"]))
    digest = hashlib.sha256(CHECKSUM_VERSION)
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


class Clock:
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


def columns_sql(prefix: str, names: Sequence[str]) -> str:
    return ", ".join(f"{prefix}{name}" for name in names)
