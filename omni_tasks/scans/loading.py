"""Bars for a scan: many symbols' bars in one query, with the bar store's feed preference.

A scan reads each symbol's last :attr:`Lookbacks.window_bars` bars that had
ended by ``as_of`` (see :mod:`omni_tasks.scans.indicators`). The range read
is that many sessions' worth back on the exchange calendar plus a margin (10%
and 5 bars) for provider holes, so a symbol with a missing day still gets a
full window; older bars would change nothing.

:class:`BatchBarReader` reads a whole chunk of symbols in one statement.
:meth:`BarStore.read <omni_tasks.storage.bars.BarStore.read>` reads one
symbol per call and costs about 20 ms a call here, mostly building the frame,
so 500 symbols took ~10 s that way against well under a second this way.
The batch read applies the same rule as ``BarStore.read`` (per symbol and
timestamp the bar of the most preferred feed listed; raw or adjusted by
``adjustment``) and returns the same canonical frame (a test holds them equal);
it belongs in ``BarStore`` as ``read_many`` and can move there unchanged.
:class:`PerSymbolReader` adapts anything with ``BarStore.read``'s signature.

Plain Python: no Celery here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sqlalchemy import DateTime, Engine, case, func, select, type_coerce

from omni_tasks.marketdata import calendar
from omni_tasks.marketdata.frames import BAR_COLUMNS, empty_bars, parse_timeframe
from omni_tasks.scans.indicators import utc_instant
from omni_tasks.scans.scanner import ScanConfig
from omni_tasks.storage.bars import FEED_PREFERENCE
from omni_tasks.storage.models import Bar

#: Read this many more bars than the window needs (fraction, plus _MARGIN_BARS), for holes in the data.
_MARGIN: float = 0.10
_MARGIN_BARS: int = 5


class BarReader(Protocol):
    """One symbol's bars: :meth:`BarStore.read`'s signature."""

    def read(
        self, symbol: str, timeframe: str, start: datetime, end: datetime, *, feeds: Sequence[str] = ..., adjustment: str = ...
    ) -> pd.DataFrame: ...


class ManyBarReader(Protocol):
    """Many symbols' bars as one long canonical frame sorted by (symbol, ts): what :func:`load_bars` reads through."""

    def read_many(
        self, symbols: Sequence[str], timeframe: str, start: datetime, end: datetime, *, feeds: Sequence[str] = ..., adjustment: str = ...
    ) -> pd.DataFrame: ...


class BatchBarReader:
    """Bars of many symbols from the ``bars`` table in one statement (PostgreSQL or SQLite)."""

    #: Symbols per statement (bound parameters stay well inside every driver's limit).
    batch_symbols = 1000

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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
        """The bars of ``symbols`` with ``start <= ts < end`` (timezone-aware), as BarStore.read returns them
        per symbol, concatenated and sorted by (symbol, ts). Dtypes exactly :func:`frames.empty_bars`'s."""
        feeds = tuple(feeds)
        if not feeds:
            raise ValueError("feeds is empty: name at least one feed, most preferred first")
        start_utc, end_utc = utc_instant(start, "start").to_pydatetime(), utc_instant(end, "end").to_pydatetime()
        names = sorted(set(symbols))
        preference = case({feed: rank for rank, feed in enumerate(feeds)}, value=Bar.feed)
        rows: list[Sequence[object]] = []
        with self.engine.connect() as connection:
            for first in range(0, len(names), self.batch_symbols):
                ranked = (
                    select(
                        *(_column(name) for name in BAR_COLUMNS),
                        func.row_number().over(partition_by=(Bar.symbol, Bar.ts), order_by=preference).label("pick"),
                    )
                    .where(
                        Bar.symbol.in_(names[first : first + self.batch_symbols]),
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
        return _bar_frame(rows)


class PerSymbolReader:
    """:class:`ManyBarReader` over anything with ``BarStore.read``: one call per symbol (slow: see the module docstring)."""

    def __init__(self, reader: BarReader) -> None:
        self.reader = reader

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
        parts = [self.reader.read(s, timeframe, start, end, feeds=feeds, adjustment=adjustment) for s in sorted(set(symbols))]
        parts = [part for part in parts if len(part)]
        return pd.concat(parts, ignore_index=True) if parts else empty_bars()


def _column(name: str) -> Any:
    """A bars column to select; ts skips UtcDateTime's per-row conversion (the frame converts the column at once)."""
    if name == "ts":
        return type_coerce(Bar.ts, DateTime(timezone=True)).label("ts")
    return getattr(Bar, name)


def _bar_frame(rows: Sequence[Sequence[object]]) -> pd.DataFrame:
    """A canonical frame from result rows in BAR_COLUMNS order, built column-wise."""
    if not rows:
        return empty_bars()
    columns = dict(zip(BAR_COLUMNS, zip(*rows, strict=True), strict=True))
    dtypes = empty_bars().dtypes
    data: dict[str, object] = {}
    for name in BAR_COLUMNS:
        values = columns[name]
        if name == "ts":
            # Aware datetimes from PostgreSQL, naive UTC from SQLite: utc=True reads both as UTC.
            data[name] = pd.DatetimeIndex(pd.to_datetime(list(values), utc=True)).as_unit("ns")
        elif name == "trade_count":
            data[name] = pd.array(list(values), dtype="Int64")
        elif dtypes[name] == np.float64:
            data[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        else:
            data[name] = pd.Series(np.array(values, dtype=object), dtype=dtypes[name])
    return pd.DataFrame(data)


def history_start(as_of: datetime | str | pd.Timestamp, timeframe: str, bars: int) -> datetime:
    """The start (UTC) of a range holding the last ``bars`` bars (plus the margin) that ended by ``as_of``.

    Daily: the session date (00:00 UTC label) that many complete sessions
    back. Intraday: the open of the session that many full sessions' bars back.
    Never before the calendar's first session.
    """
    stamp = utc_instant(as_of, "as_of")
    frame = parse_timeframe(timeframe)
    wanted = math.ceil(bars * (1 + _MARGIN)) + _MARGIN_BARS
    per_session = 1 if not frame.intraday else math.ceil(timedelta(minutes=390) / frame.delta)
    sessions_back = math.ceil(wanted / per_session) + (0 if not frame.intraday else 1)
    days_back = int(sessions_back * 1.6) + 15  # about 0.69 sessions per calendar day, with room for holidays
    schedule = calendar.schedule((stamp - pd.Timedelta(days=days_back)).date(), stamp.date())
    # Intraday: sessions that have opened (the one in progress counts); daily: sessions that have closed.
    complete = schedule[schedule["open"] < stamp] if frame.intraday else schedule[schedule["close"] <= stamp]
    if len(complete) == 0:
        return (stamp - pd.Timedelta(days=days_back)).to_pydatetime()
    pick = complete.iloc[max(0, len(complete) - sessions_back)]
    if frame.intraday:
        return pd.Timestamp(pick["open"]).tz_convert("UTC").to_pydatetime()
    return pd.Timestamp(pick.name).tz_localize("UTC").to_pydatetime()


def load_bars(
    reader: ManyBarReader,
    symbols: Iterable[str],
    *,
    as_of: datetime | str | pd.Timestamp,
    config: ScanConfig,
    feeds: Sequence[str] = FEED_PREFERENCE,
    adjustment: str = "raw",
) -> pd.DataFrame:
    """The bars a scan of ``symbols`` at ``as_of`` reads, as one long canonical frame (sorted by symbol, ts).

    ``reader``: a :class:`BatchBarReader` (or :class:`PerSymbolReader`).
    Per symbol and timestamp the most preferred of ``feeds`` is read. A
    symbol with no bars simply has no rows (pass the same ``symbols`` to
    :func:`~omni_tasks.scans.scanner.scan_chunk` so it is reported).
    """
    stamp = utc_instant(as_of, "as_of")
    start = history_start(stamp, config.timeframe, config.lookbacks.window_bars)
    return reader.read_many(sorted(set(symbols)), config.timeframe, start, stamp.to_pydatetime(), feeds=feeds, adjustment=adjustment)
