"""Reads of the bar store: canonical frames out of the ``bars`` table, and what is stored.

Reads return canonical frames (dtypes exactly as :func:`~omni_tasks.contracts.bars.empty_bars`)
and choose, per timestamp, the most preferred feed present: IEX and SIP bars
(and raw and adjusted bars) are stored side by side and never overwrite each
other (DESIGN section 5): they are different series (``bar_series``), and
``bars`` is keyed by (series_id, ts).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import numpy as np
import pandas as pd
from sqlalchemy import DateTime, Engine, case, func, select, type_coerce

from omni_tasks.contracts.bars import BAR_COLUMNS, empty_bars
from omni_tasks.contracts.feeds import FEEDS
from omni_tasks.storage.bars.rows import SERIES_COLUMNS, TEXT_COLUMNS
from omni_tasks.storage.models import Bar, BarSeries

#: Feeds in the order reads prefer them (the list's home is :mod:`omni_tasks.contracts.feeds`).
FEED_PREFERENCE: Final = FEEDS
#: Symbols per statement in :func:`read_many` (bound parameters stay well inside every driver's limit).
READ_BATCH_SYMBOLS: Final = 1000


def read_many(
    engine: Engine,
    symbols: Sequence[str],
    timeframe: str,
    start: datetime,
    end: datetime,
    *,
    feeds: Sequence[str] = FEED_PREFERENCE,
    adjustment: str = "raw",
    batch_symbols: int = READ_BATCH_SYMBOLS,
) -> pd.DataFrame:
    """The bars of ``symbols`` with ``start <= ts < end`` (timezone-aware): one canonical frame sorted by (symbol, ts).

    For each timestamp the bar of the first feed in ``feeds`` that has one is
    returned (feeds not listed are never returned); ``adjustment`` picks raw or
    adjusted bars. Dtypes are exactly :func:`~omni_tasks.contracts.bars.empty_bars`'s.
    One statement per ``batch_symbols`` symbols.

    A scan or a validation reads hundreds of symbols; one query for all of
    them costs a fraction of one call per symbol (mostly frame building).
    """
    feeds = tuple(feeds)
    if not feeds:
        raise ValueError("feeds is empty: name at least one feed, most preferred first")
    start_utc, end_utc = aware(start, "start"), aware(end, "end")
    names = sorted(set(symbols))
    preference = case({feed: rank for rank, feed in enumerate(feeds)}, value=BarSeries.feed)
    rows: list[Any] = []
    with engine.connect() as connection:
        for first in range(0, len(names), batch_symbols):
            conditions = (
                BarSeries.symbol.in_(names[first : first + batch_symbols]),
                BarSeries.timeframe == timeframe,
                BarSeries.adjustment == adjustment,
                BarSeries.feed.in_(feeds),
                Bar.ts >= start_utc,
                Bar.ts < end_utc,
            )
            if len(feeds) == 1:
                statement = (
                    select(*(_column(name) for name in BAR_COLUMNS))
                    .join_from(Bar, BarSeries, BarSeries.id == Bar.series_id)
                    .where(*conditions)
                    .order_by(BarSeries.symbol, Bar.ts)
                )
            else:
                ranked = (
                    select(
                        *(_column(name) for name in BAR_COLUMNS),
                        func.row_number().over(partition_by=(BarSeries.symbol, Bar.ts), order_by=preference).label("pick"),
                    )
                    .join_from(Bar, BarSeries, BarSeries.id == Bar.series_id)
                    .where(*conditions)
                    .subquery()
                )
                statement = (
                    select(*(ranked.c[name] for name in BAR_COLUMNS)).where(ranked.c.pick == 1).order_by(ranked.c.symbol, ranked.c.ts)
                )
            rows.extend(connection.execute(statement).all())
    return _frame(rows)


def last_ts(engine: Engine, symbol: str, timeframe: str, feed: str, adjustment: str) -> datetime | None:
    """The start of the latest stored bar for this series (UTC), or None when there is none."""
    statement = (
        select(func.max(Bar.ts))
        .join_from(Bar, BarSeries, BarSeries.id == Bar.series_id)
        .where(BarSeries.symbol == symbol, BarSeries.timeframe == timeframe, BarSeries.feed == feed, BarSeries.adjustment == adjustment)
    )
    with engine.connect() as connection:
        return connection.execute(statement).scalar_one_or_none()


def stored_feeds(
    engine: Engine, symbols: Sequence[str], timeframe: str, adjustment: str, start: datetime, end: datetime
) -> tuple[str, ...]:
    """The feeds of the bars stored for ``symbols`` with ``start <= ts < end``, most preferred first (unknown feeds last)."""
    stored = (
        select(Bar.series_id).where(Bar.series_id == BarSeries.id, Bar.ts >= aware(start, "start"), Bar.ts < aware(end, "end")).exists()
    )
    statement = (
        select(BarSeries.feed)
        .where(BarSeries.symbol.in_(sorted(set(symbols))), BarSeries.timeframe == timeframe, BarSeries.adjustment == adjustment, stored)
        .distinct()
    )
    with engine.connect() as connection:
        found = {str(f) for f in connection.execute(statement).scalars()}
    return tuple(sorted(found, key=lambda f: (FEED_PREFERENCE.index(f) if f in FEED_PREFERENCE else len(FEED_PREFERENCE), f)))


def count(engine: Engine, symbol: str | None = None, timeframe: str | None = None) -> int:
    """Stored bars, all feeds and adjustments, optionally of one symbol and/or timeframe."""
    statement = select(func.count()).select_from(Bar)
    if symbol is not None or timeframe is not None:
        statement = statement.join(BarSeries, BarSeries.id == Bar.series_id)
    if symbol is not None:
        statement = statement.where(BarSeries.symbol == symbol)
    if timeframe is not None:
        statement = statement.where(BarSeries.timeframe == timeframe)
    with engine.connect() as connection:
        return int(connection.execute(statement).scalar_one())


def _column(name: str) -> Any:
    """A column to select, by canonical name: the series' text from bar_series, the rest from bars.

    ts skips UtcDateTime's per-row conversion (the frame converts the column at once).
    """
    if name == "ts":
        return type_coerce(Bar.ts, DateTime(timezone=True)).label("ts")
    if name in SERIES_COLUMNS:
        return getattr(BarSeries, name).label(name)
    return getattr(Bar, name)


def _frame(rows: Sequence[Any]) -> pd.DataFrame:
    """A canonical frame from result rows in BAR_COLUMNS order (dtypes as frames.empty_bars)."""
    if not rows:
        return empty_bars()
    columns = list(zip(*rows, strict=True))
    data: dict[str, Any] = {}
    for position, name in enumerate(BAR_COLUMNS):
        values = columns[position]
        if name in TEXT_COLUMNS:
            data[name] = pd.Series(np.array(values, dtype=object), dtype=object)
        elif name == "ts":
            data[name] = pd.Series(pd.to_datetime(list(values), utc=True)).astype("datetime64[ns, UTC]")
        elif name == "trade_count":
            data[name] = pd.Series(pd.array(values, dtype="Int64"))
        else:
            data[name] = pd.Series(np.array([np.nan if v is None else v for v in values], dtype=np.float64))
    frame = pd.DataFrame(data)
    return frame.astype(empty_bars().dtypes.to_dict())


def aware(value: datetime, name: str) -> datetime:
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(f"{name} {value!r} is naive: give a timezone-aware (UTC) datetime")
    return stamp.tz_convert("UTC").to_pydatetime()
