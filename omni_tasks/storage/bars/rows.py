"""The rows of a bar frame as the store keeps them: the canonical frame checked and unpacked into numpy arrays, and its checksum.

:func:`unpack` is the boundary every write crosses: columns and dtypes of
:func:`~omni_tasks.contracts.bars.empty_bars` (or pandas' ``str`` dtype for the
text columns), nothing missing that the table requires, text that fits its
columns, known timeframes and adjustments; anything else is a ValueError naming
the problem. Duplicate keys are resolved there, the last row winning.

Timestamps are stored with microsecond precision (PostgreSQL's): nanoseconds in a
frame are floored to the microsecond here, and keys are compared after that.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from omni_tasks.contracts.bars import ADJUSTMENTS, BAR_COLUMNS, SYMBOL_PATTERN, TIMEFRAMES

KEY_COLUMNS: Final = ("symbol", "timeframe", "ts", "feed", "adjustment")
#: The non-key columns compared to decide whether a stored row changed.
VALUE_COLUMNS: Final = ("open", "high", "low", "close", "volume", "vwap", "trade_count", "provider")
TEXT_COLUMNS: Final = ("symbol", "timeframe", "feed", "adjustment", "provider")
FLOAT_COLUMNS: Final = ("open", "high", "low", "close", "volume", "vwap")
#: Widths of the text columns in the ``bars`` table (characters).
TEXT_WIDTHS: Final = {"symbol": 12, "timeframe": 8, "feed": 16, "adjustment": 8, "provider": 32}

#: Column order of the staging table, the COPY stream and the SQLite upsert (keys first, the order of the bars primary key).
STAGE_COLUMNS: Final = (*KEY_COLUMNS, *VALUE_COLUMNS)
CHECKSUM_VERSION: Final = b"omni-bars-checksum/1\n"


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

    def __len__(self) -> int:
        return len(self.ts_us)

    def take(self, rows: np.ndarray) -> Rows:
        return Rows(
            text={name: column.take(rows) for name, column in self.text.items()},
            ts_us=self.ts_us[rows],
            floats={name: values[rows] for name, values in self.floats.items()},
            trade_count=self.trade_count[rows],
            trade_count_null=self.trade_count_null[rows],
            duplicates=self.duplicates,
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

    rows = Rows(text, ts_us, floats, trade_count_values, trade_count_null, duplicates=0)
    keep = last_of_each_key(rows)
    if keep is not None:
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


def last_of_each_key(rows: Rows) -> np.ndarray | None:
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
