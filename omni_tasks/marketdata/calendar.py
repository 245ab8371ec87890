"""The exchange calendar (exchange_calendars, XNYS): sessions, their open and close, expected bars.

An exchange closure (holiday, ad hoc closure) is not a gap, and a half day has
fewer minutes: everything that plans or checks bars asks this module.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import exchange_calendars as xcals
import pandas as pd

from omni_tasks.contracts.bars import Timeframe
from omni_tasks.settings import EARLIEST_CALENDAR_DATE

EXCHANGE = "XNYS"
#: The first session the calendar is built from unless an earlier date is asked for (built in ~0.2 s).
CALENDAR_START = "2000-01-03"
#: The first session exchange_calendars knows for XNYS: nothing earlier can be planned or checked.
FIRST_SESSION: date = EARLIEST_CALENDAR_DATE

_built: dict[str, xcals.ExchangeCalendar] = {}
_lock = threading.Lock()


def calendar(name: str = EXCHANGE, *, covering: date | None = None) -> xcals.ExchangeCalendar:
    """The exchange calendar from 2000 (or from ``covering``, when earlier) to a year ahead.

    Built once per process and widened on demand: a request reaching back
    before the calendar's first session rebuilds it from that date (the whole
    XNYS history back to 1885 takes under half a second), and the wider
    calendar is kept. Dates before :data:`FIRST_SESSION` are clamped to it.
    """
    want = max(min(covering or date.fromisoformat(CALENDAR_START), date.fromisoformat(CALENDAR_START)), FIRST_SESSION)
    with _lock:
        cal = _built.get(name)
        if cal is None or want < pd.Timestamp(cal.first_session).date():
            end = (pd.Timestamp.now(tz=UTC) + pd.Timedelta(days=366)).strftime("%Y-%m-%d")
            cal = xcals.get_calendar(name, start=want.isoformat(), end=end)
            _built[name] = cal
        return cal


def first_session(name: str = EXCHANGE) -> date:
    """The first session of the calendar as built now (it widens when asked for earlier dates)."""
    return pd.Timestamp(calendar(name).first_session).date()


def schedule(start: date, end: date, name: str = EXCHANGE) -> pd.DataFrame:
    """Sessions with start <= session date <= end: index = session date, columns open/close (UTC)."""
    cal = calendar(name, covering=pd.Timestamp(start).date())
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
