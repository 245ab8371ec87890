"""The exchange calendar (exchange_calendars, XNYS): sessions, their open and close, expected bars.

An exchange closure (holiday, ad hoc closure) is not a gap, and a half day has
fewer minutes: everything that plans or checks bars asks this module.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import exchange_calendars as xcals
import pandas as pd

from omni_tasks import inputs
from omni_tasks.marketdata.frames import Timeframe

EXCHANGE = "XNYS"
CALENDAR_START = inputs.EARLIEST_DATE.isoformat()


@lru_cache(maxsize=4)
def calendar(name: str = EXCHANGE) -> xcals.ExchangeCalendar:
    """The exchange calendar from 2000 to a year ahead (built once per process: it takes ~1 s)."""
    end = (pd.Timestamp.now(tz=UTC) + pd.Timedelta(days=366)).strftime("%Y-%m-%d")
    return xcals.get_calendar(name, start=CALENDAR_START, end=end)


def schedule(start: date, end: date, name: str = EXCHANGE) -> pd.DataFrame:
    """Sessions with start <= session date <= end: index = session date, columns open/close (UTC)."""
    cal = calendar(name)
    first, last = pd.Timestamp(cal.first_session), pd.Timestamp(cal.last_session)
    lo, hi = max(pd.Timestamp(start), first), min(pd.Timestamp(end), last)
    if lo > hi:
        return pd.DataFrame({"open": pd.Series([], dtype="datetime64[ns, UTC]"), "close": pd.Series([], dtype="datetime64[ns, UTC]")})
    return cal.schedule.loc[lo:hi, ["open", "close"]]


def sessions(start: date, end: date, name: str = EXCHANGE) -> list[date]:
    return [ts.date() for ts in schedule(start, end, name).index]


def expected_bar_starts(timeframe: Timeframe, start: datetime, end: datetime, name: str = EXCHANGE) -> pd.DatetimeIndex:
    """Start times (UTC) of every bar the exchange's sessions produce in [start, end).

    Daily bars are labelled by session date at 00:00 UTC (frames.canonical_bars);
    intraday bars start every ``timeframe.delta`` from each session's open to
    its close (half days close early).
    """
    start_utc, end_utc = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    sched = schedule(start_utc.date() - timedelta(days=1), end_utc.date(), name)
    if timeframe.code == "1Day":
        labels = pd.DatetimeIndex(sched.index).tz_localize("UTC")
        return labels[(labels >= start_utc) & (labels < end_utc)]
    step = pd.Timedelta(timeframe.delta)
    pieces = [
        pd.date_range(row.open, row.close - pd.Timedelta(nanoseconds=1), freq=step, tz="UTC")
        for row in sched.itertuples()
    ]
    if not pieces:
        return pd.DatetimeIndex([], tz="UTC")
    starts = pieces[0].append(pieces[1:]) if len(pieces) > 1 else pieces[0]
    return starts[(starts >= start_utc) & (starts < end_utc)]


def is_open(at: datetime, name: str = EXCHANGE) -> bool:
    """Is the exchange in a regular session at ``at`` (aware)?"""
    return bool(calendar(name).is_open_on_minute(pd.Timestamp(at).tz_convert("UTC"), ignore_breaks=True))
