"""Exchange sessions as numpy arrays: where a bar may start, and why the exchange was closed when it was.

A :class:`SessionGrid` holds one exchange's sessions for one timeframe (open,
close, the regular close of that weekday, so half days are known) and the
weekdays it did not trade (holiday or ad hoc closure, with the name).
:func:`xnys_grid` builds it from :mod:`omni_tasks.marketdata.calendar`
(exchange_calendars, XNYS); tests build it by hand with
:meth:`SessionGrid.from_sessions` to check gap detection on generated calendars.

All instants are int64 nanoseconds since the epoch, UTC. Bar starts follow
:func:`omni_tasks.marketdata.calendar.expected_bar_starts`: intraday bars start
every ``timeframe.delta`` from each session's open to its close (a half day
closes early); a daily bar is labelled by its session date at 00:00 UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time
from functools import lru_cache
from typing import Final

import numpy as np
import pandas as pd

from omni_tasks.contracts.bars import EXCHANGE_TZ, TIMEFRAMES, Timeframe
from omni_tasks.marketdata import calendar

NS_PER_DAY: Final = 86_400 * 10**9
NAT: Final = np.iinfo(np.int64).min

#: Names of XNYS ad hoc closures since 2000 (exchange_calendars lists the dates, not why).
ADHOC_NAMES: Final = {
    date(2001, 9, 11): "September 11 attacks",
    date(2001, 9, 12): "September 11 attacks",
    date(2001, 9, 13): "September 11 attacks",
    date(2001, 9, 14): "September 11 attacks",
    date(2004, 6, 11): "National Day of Mourning for President Reagan",
    date(2007, 1, 2): "National Day of Mourning for President Ford",
    date(2012, 10, 29): "Hurricane Sandy",
    date(2012, 10, 30): "Hurricane Sandy",
    date(2018, 12, 5): "National Day of Mourning for President George H. W. Bush",
    date(2025, 1, 9): "National Day of Mourning for President Carter",
}


def utc_index(ns: np.ndarray) -> pd.DatetimeIndex:
    """int64 ns (NaT as int64 min) as a ``datetime64[ns, UTC]`` index."""
    return pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).astype("datetime64[ns]")).tz_localize("UTC")


@dataclass(frozen=True)
class SessionGrid:
    """The sessions of one exchange for one timeframe, as sorted arrays (int64 ns UTC).

    ``regular_opens``/``regular_closes`` are the hours a regular day on that
    date would have had: a session whose close is earlier is a half day.
    ``closure_*`` are the weekdays without a session: ``kind`` is ``holiday``
    or ``adhoc_closure``, with regular-day hours so a closure can be placed in
    a window.
    """

    timeframe: Timeframe
    dates: np.ndarray  # datetime64[D], sorted
    opens: np.ndarray
    closes: np.ndarray
    regular_opens: np.ndarray
    regular_closes: np.ndarray
    closure_dates: np.ndarray  # datetime64[D], sorted
    closure_kinds: np.ndarray  # object: "holiday" | "adhoc_closure"
    closure_names: np.ndarray  # object
    closure_opens: np.ndarray
    closure_closes: np.ndarray
    tz: str = EXCHANGE_TZ

    @property
    def daily(self) -> bool:
        return not self.timeframe.intraday

    @property
    def step_ns(self) -> int:
        return int(self.timeframe.delta.total_seconds()) * 10**9

    @property
    def labels(self) -> np.ndarray:
        """Daily bar labels: each session date at 00:00 UTC (int64 ns)."""
        return self.dates.astype("datetime64[ns]").astype(np.int64)

    @classmethod
    def from_sessions(
        cls,
        timeframe: Timeframe | str,
        dates: np.ndarray | list[date],
        opens: np.ndarray,
        closes: np.ndarray,
        *,
        regular_opens: np.ndarray | None = None,
        regular_closes: np.ndarray | None = None,
        closures: list[tuple[date, str, str, int, int]] | None = None,
        tz: str = EXCHANGE_TZ,
    ) -> SessionGrid:
        """A grid from explicit sessions (e.g. a generated calendar in a test).

        ``opens``/``closes`` are int64 ns UTC; ``closures`` are
        ``(date, kind, name, regular_open_ns, regular_close_ns)``.
        """
        tf = TIMEFRAMES[timeframe] if isinstance(timeframe, str) else timeframe
        d = np.asarray(dates, dtype="datetime64[D]")
        o, c = np.asarray(opens, dtype=np.int64), np.asarray(closes, dtype=np.int64)
        order = np.argsort(d, kind="stable")
        closures = sorted(closures or [])
        return cls(
            timeframe=tf,
            dates=d[order],
            opens=o[order],
            closes=c[order],
            regular_opens=(o if regular_opens is None else np.asarray(regular_opens, dtype=np.int64))[order],
            regular_closes=(c if regular_closes is None else np.asarray(regular_closes, dtype=np.int64))[order],
            closure_dates=np.array([x[0] for x in closures], dtype="datetime64[D]"),
            closure_kinds=np.array([x[1] for x in closures], dtype=object),
            closure_names=np.array([x[2] for x in closures], dtype=object),
            closure_opens=np.array([x[3] for x in closures], dtype=np.int64),
            closure_closes=np.array([x[4] for x in closures], dtype=np.int64),
            tz=tz,
        )

    # ---- where a bar may start ----------------------------------------------------

    def locate(self, ts_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(session index or -1, on a bar start) for each instant.

        Intraday: the session whose [open, close) holds the instant, and whether
        the instant is ``open + k * delta``. Daily: the session whose label
        (date at 00:00 UTC) equals the instant. NaT (int64 min) is in no session.
        """
        ts = np.asarray(ts_ns, dtype=np.int64)
        n = len(self.dates)
        if n == 0 or len(ts) == 0:
            return np.full(len(ts), -1, dtype=np.int64), np.zeros(len(ts), dtype=bool)
        if self.daily:
            labels = self.labels
            idx = np.clip(np.searchsorted(labels, ts, side="left"), 0, n - 1)
            hit = (labels[idx] == ts) & (ts != NAT)
            return np.where(hit, idx, -1), hit
        idx = np.searchsorted(self.opens, ts, side="right") - 1
        safe = np.clip(idx, 0, n - 1)
        inside = (idx >= 0) & (ts < self.closes[safe]) & (ts != NAT)
        on_grid = inside & ((ts - self.opens[safe]) % self.step_ns == 0)
        return np.where(inside, idx, -1), on_grid

    def session_dates_of(self, ts_ns: np.ndarray, session: np.ndarray) -> np.ndarray:
        """The session date of each instant (datetime64[D]): its session's, else its date in the exchange's zone
        (intraday) or in UTC (daily); NaT for NaT."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        out = np.full(len(ts), np.datetime64("NaT"), dtype="datetime64[D]")
        known = session >= 0
        out[known] = self.dates[session[known]]
        rest = ~known & (ts != NAT)
        if rest.any():
            stamps = pd.DatetimeIndex(ts[rest].astype("datetime64[ns]")).tz_localize("UTC")
            if not self.daily:
                stamps = stamps.tz_convert(self.tz)
            out[rest] = stamps.tz_localize(None).normalize().to_numpy().astype("datetime64[D]")
        return out

    # ---- what a window should hold ------------------------------------------------

    def window(self, start_ns: int, end_ns: int, as_of_ns: int) -> Window:
        """The bars expected with ``start <= bar start < end``, complete by ``as_of``.

        An intraday bar is complete at ``start + delta``; a daily bar at its
        session's close. Sessions without an expected bar are left out.
        """
        step = self.step_ns
        if self.daily:
            labels = self.labels
            keep = (labels >= start_ns) & (labels < end_ns) & (self.closes <= as_of_ns)
            sess = np.flatnonzero(keep)
            starts = labels[sess]
            start_session = np.arange(len(sess), dtype=np.int64)
        else:
            lo = int(np.searchsorted(self.closes, start_ns, side="right"))
            hi = int(np.searchsorted(self.opens, end_ns, side="left"))
            cand = np.arange(lo, max(lo, hi), dtype=np.int64)
            counts = -((self.opens[cand] - self.closes[cand]) // step)  # ceil((close - open) / step)
            total = int(counts.sum())
            first = np.repeat(np.cumsum(counts) - counts, counts)
            starts = np.repeat(self.opens[cand], counts) + (np.arange(total, dtype=np.int64) - first) * step
            owner = np.repeat(np.arange(len(cand), dtype=np.int64), counts)
            keep = (starts >= start_ns) & (starts < end_ns) & (starts + step <= as_of_ns)
            starts, owner = starts[keep], owner[keep]
            used = np.unique(owner)
            sess = cand[used]
            start_session = np.searchsorted(used, owner)
        offsets = np.searchsorted(start_session, np.arange(len(sess) + 1))
        return Window(self, int(start_ns), int(end_ns), int(as_of_ns), sess, starts, start_session, offsets)

    def closures_between(self, start_ns: int, end_ns: int) -> np.ndarray:
        """Indices of closures whose regular-day hours (daily: date at 00:00 UTC) fall in [start, end)."""
        if len(self.closure_dates) == 0:
            return np.zeros(0, dtype=np.int64)
        if self.daily:
            labels = self.closure_dates.astype("datetime64[ns]").astype(np.int64)
            return np.flatnonzero((labels >= start_ns) & (labels < end_ns))
        return np.flatnonzero((self.closure_opens < end_ns) & (self.closure_closes > start_ns))


@dataclass(frozen=True)
class Window:
    """The bars one validation run expects: ``starts`` (sorted int64 ns) and their sessions.

    ``sessions`` index the grid; ``start_session[i]`` is the position in
    ``sessions`` of ``starts[i]``; the starts of session ``j`` are
    ``starts[offsets[j]:offsets[j + 1]]``.
    """

    grid: SessionGrid
    start_ns: int
    end_ns: int
    as_of_ns: int
    sessions: np.ndarray
    starts: np.ndarray
    start_session: np.ndarray
    offsets: np.ndarray

    @property
    def dates(self) -> np.ndarray:
        return self.grid.dates[self.sessions]

    @property
    def half_days(self) -> np.ndarray:
        """Per window session: does it close before a regular day's close?"""
        return self.grid.closes[self.sessions] < self.grid.regular_closes[self.sessions]

    def after_early_close(self, j: int) -> tuple[int, int, int]:
        """(first, end, bars): the regular-day bars of half-day session ``j`` after its close, inside the window."""
        g, s, step = self.grid, int(self.sessions[j]), self.grid.step_ns
        if g.daily:
            return 0, 0, 0
        regular = np.arange(int(g.regular_opens[s]), int(g.regular_closes[s]), step, dtype=np.int64)
        lost = regular[(regular >= g.closes[s]) & (regular >= self.start_ns) & (regular < self.end_ns) & (regular + step <= self.as_of_ns)]
        if len(lost) == 0:
            return 0, 0, 0
        return int(lost[0]), int(lost[-1]) + step, len(lost)

    def closure_bars(self, k: int) -> tuple[int, int, int]:
        """(first, end, bars) a regular day would have had on closure ``k`` (a grid closure index)."""
        g, step = self.grid, self.grid.step_ns
        if g.daily:
            label = int(g.closure_dates[k].astype("datetime64[ns]").astype(np.int64))
            return label, label + NS_PER_DAY, 1
        regular = np.arange(int(g.closure_opens[k]), int(g.closure_closes[k]), step, dtype=np.int64)
        regular = regular[(regular >= self.start_ns) & (regular < self.end_ns)]
        if len(regular) == 0:
            return 0, 0, 0
        return int(regular[0]), int(regular[-1]) + step, len(regular)


def _regular_hours(dates: pd.DatetimeIndex, at: time, tz: str) -> np.ndarray:
    wall = dates + pd.Timedelta(hours=at.hour, minutes=at.minute)
    return wall.tz_localize(tz).tz_convert("UTC").as_unit("ns").asi8


def xnys_grid(timeframe: str, covering: date | None = None) -> SessionGrid:
    """Every XNYS session the calendar knows (2000, or ``covering`` when earlier, to a year ahead)
    and every weekday it was closed, for ``timeframe``.

    Built once per process per timeframe and calendar span (the calendar widens on demand:
    :func:`omni_tasks.marketdata.calendar.calendar`).
    """
    cal = calendar.calendar(covering=covering)
    return _xnys_grid(timeframe, pd.Timestamp(cal.first_session).date())


@lru_cache(maxsize=8)
def _xnys_grid(timeframe: str, first_session: date) -> SessionGrid:
    cal = calendar.calendar(covering=first_session)
    tz = str(cal.tz)
    sched = cal.schedule
    dates = pd.DatetimeIndex(sched.index)
    regular_open, regular_close = cal.open_times[-1][1], cal.close_times[-1][1]
    weekdays = pd.bdate_range(dates[0], dates[-1])
    closed = weekdays.difference(dates)
    names = cal.regular_holidays.holidays(dates[0], dates[-1], return_name=True)
    adhoc = set(pd.DatetimeIndex(cal.adhoc_holidays))
    kinds = np.array(["adhoc_closure" if d in adhoc else "holiday" for d in closed], dtype=object)
    labels = np.array(
        [ADHOC_NAMES.get(d.date(), "ad hoc closure") if d in adhoc else str(names.get(d, "exchange holiday")) for d in closed],
        dtype=object,
    )
    return SessionGrid(
        timeframe=TIMEFRAMES[timeframe],
        dates=dates.to_numpy().astype("datetime64[D]"),
        opens=pd.DatetimeIndex(sched["open"]).as_unit("ns").asi8.copy(),
        closes=pd.DatetimeIndex(sched["close"]).as_unit("ns").asi8.copy(),
        regular_opens=_regular_hours(dates, regular_open, tz),
        regular_closes=_regular_hours(dates, regular_close, tz),
        closure_dates=closed.to_numpy().astype("datetime64[D]"),
        closure_kinds=kinds,
        closure_names=labels,
        closure_opens=_regular_hours(closed, regular_open, tz),
        closure_closes=_regular_hours(closed, regular_close, tz),
        tz=tz,
    )
