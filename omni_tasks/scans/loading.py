"""Bars for a scan: many symbols' bars in one query, with the bar store's feed preference.

A scan reads each symbol's last :attr:`Lookbacks.window_bars` bars that had
ended by ``as_of`` (see :mod:`omni_tasks.scans.indicators`). The range read
is that many sessions' worth back on the exchange calendar plus a margin (10%
and 5 bars) for provider holes, so a symbol with a missing day still gets a
full window; older bars would change nothing.

:meth:`BarStore.read_many <omni_tasks.storage.bars.BarStore.read_many>`
reads a whole chunk of symbols in one statement; one ``BarStore.read`` call per
symbol cost about 20 ms a call here, so 500 symbols took ~10 s that way.
:class:`PerSymbolReader` adapts anything with ``BarStore.read``'s signature
(the slow way, kept for comparison).

Plain Python: no Celery here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import pandas as pd

from omni_tasks.contracts.bars import empty_bars, parse_timeframe
from omni_tasks.marketdata import calendar
from omni_tasks.scans.indicators import utc_instant
from omni_tasks.scans.scanner import ScanConfig
from omni_tasks.storage.bars import FEED_PREFERENCE

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


class PerSymbolReader:
    """:class:`ManyBarReader` over anything with ``BarStore.read``: one call per symbol (the slow way, for comparison)."""

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

    ``reader``: a :class:`~omni_tasks.storage.bars.BarStore` (or :class:`PerSymbolReader`).
    Per symbol and timestamp the most preferred of ``feeds`` is read. A
    symbol with no bars simply has no rows (pass the same ``symbols`` to
    :func:`~omni_tasks.scans.scanner.scan_chunk` so it is reported).
    """
    stamp = utc_instant(as_of, "as_of")
    start = history_start(stamp, config.timeframe, config.lookbacks.window_bars)
    return reader.read_many(sorted(set(symbols)), config.timeframe, start, stamp.to_pydatetime(), feeds=feeds, adjustment=adjustment)
