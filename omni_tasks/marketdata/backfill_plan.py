"""Planning a backfill: a request checked and split into partitions of whole sessions, the nightly
incremental plan, and stored bars verified against the exchange calendar.

A partition is small enough to finish well inside the broker's visibility
timeout (a year of daily bars, a week of minute bars). The ledger that records
a plan as a job is :mod:`omni_tasks.marketdata.backfill`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import structlog

from omni_tasks.contracts.bars import ADJUSTMENTS, TIMEFRAMES, check_symbol
from omni_tasks.core.errors import OmniError
from omni_tasks.marketdata import calendar
from omni_tasks.settings import DEFAULT_EARLIEST_BACKFILL

_log = structlog.get_logger("omni.backfill")

#: Sessions per partition, per timeframe: each partition is a few thousand bars at most.
SESSIONS_PER_PARTITION: dict[str, int] = {"1Min": 5, "5Min": 20, "15Min": 60, "30Min": 120, "1Hour": 250, "1Day": 260}
#: Bars a provider returns per page (Alpaca: up to 10,000): for the call estimate.
ROWS_PER_CALL = 10_000


class BackfillRequestError(OmniError, ValueError):
    """A backfill request that must be refused before anything is enqueued."""


@dataclass(frozen=True)
class PartitionSpec:
    symbol: str
    timeframe: str
    start: datetime
    end: datetime
    feed: str
    adjustment: str
    sessions: int
    expected_bars: int

    @property
    def calls(self) -> int:
        return max(1, -(-self.expected_bars // ROWS_PER_CALL))


@dataclass
class Plan:
    partitions: list[PartitionSpec] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(p.calls for p in self.partitions)

    @property
    def expected_bars(self) -> int:
        return sum(p.expected_bars for p in self.partitions)


def check_request(
    symbols: Sequence[str],
    timeframe: str,
    start: date,
    end: date,
    feed: str,
    adjustment: str,
    *,
    today: date | None = None,
    earliest: date = DEFAULT_EARLIEST_BACKFILL,
) -> list[str]:
    """Validate a request; returns the cleaned symbols or raises BackfillRequestError naming the problem.

    ``earliest``: the first date a backfill may start (OMNI_BACKFILL_EARLIEST_DATE).
    """
    today = today or datetime.now(tz=UTC).date()
    if not symbols:
        raise BackfillRequestError("no symbols given")
    cleaned: list[str] = []
    for raw in symbols:
        try:
            symbol = check_symbol(raw)
        except ValueError as exc:
            raise BackfillRequestError(str(exc)) from None
        if symbol not in cleaned:
            cleaned.append(symbol)
    if timeframe not in TIMEFRAMES:
        raise BackfillRequestError(f"unknown timeframe {timeframe!r}: choose from {', '.join(TIMEFRAMES)}")
    if adjustment not in ADJUSTMENTS:
        raise BackfillRequestError(f"unknown adjustment {adjustment!r}: choose from {', '.join(ADJUSTMENTS)}")
    if feed not in {"iex", "sip"}:
        raise BackfillRequestError(f"unknown feed {feed!r}: iex or sip")
    if end <= start:
        raise BackfillRequestError(
            f"impossible date range: end {end.isoformat()} is not after start {start.isoformat()} (end is exclusive)"
        )
    if start > today:
        raise BackfillRequestError(f"start {start.isoformat()} is in the future (today is {today.isoformat()} UTC)")
    if start < earliest:
        raise BackfillRequestError(
            f"start {start.isoformat()} is before {earliest.isoformat()}, the earliest backfill date (OMNI_BACKFILL_EARLIEST_DATE)"
        )
    if start < calendar.FIRST_SESSION:
        raise BackfillRequestError(
            f"start {start.isoformat()} is before {calendar.FIRST_SESSION.isoformat()}, the first session of the exchange calendar"
        )
    return cleaned


def plan(
    symbols: Sequence[str],
    timeframe: str,
    start: date,
    end: date,
    *,
    feed: str = "iex",
    adjustment: str = "raw",
    today: date | None = None,
    earliest: date = DEFAULT_EARLIEST_BACKFILL,
) -> Plan:
    """Partitions of whole sessions in [start, end) (end exclusive, capped at tomorrow)."""
    today = today or datetime.now(tz=UTC).date()
    cleaned = check_request(symbols, timeframe, start, end, feed, adjustment, today=today, earliest=earliest)
    end = min(end, today + timedelta(days=1))
    session_days = calendar.sessions(start, end - timedelta(days=1))
    if not session_days:
        raise BackfillRequestError(f"no trading sessions between {start.isoformat()} and {end.isoformat()} (exclusive)")
    chunk = SESSIONS_PER_PARTITION[timeframe]
    tf = TIMEFRAMES[timeframe]
    result = Plan()
    for i in range(0, len(session_days), chunk):
        days = session_days[i : i + chunk]
        p_start = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC)
        p_end = datetime.combine(days[-1] + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        expected = len(calendar.expected_bar_starts(tf, p_start, p_end))
        for symbol in cleaned:
            result.partitions.append(PartitionSpec(symbol, timeframe, p_start, p_end, feed, adjustment, len(days), expected))
    return result


def incremental_plan(
    symbols: Sequence[str],
    *,
    store: Any,
    timeframe: str,
    feed: str,
    adjustment: str,
    overlap_days: int,
    lookback_days: int,
    today: date | None = None,
    feeds: Sequence[str] | None = None,
    earliest: date = DEFAULT_EARLIEST_BACKFILL,
) -> Plan:
    """The nightly plan: from each symbol's last stored bar minus an overlap (or the lookback) to today.

    ``feeds``: the feeds stored rows may carry for this request (router.serving_feeds);
    the latest bar of any of them counts. Default: the requested feed only.
    """
    today = today or datetime.now(tz=UTC).date()
    end = today + timedelta(days=1)
    combined = Plan()
    look_in = tuple(feeds) if feeds else (feed,)
    for symbol in symbols:
        stamps = [t for t in (store.last_ts(symbol, timeframe, f, adjustment) for f in look_in) if t is not None]
        last = max(stamps) if stamps else None
        start = (last.date() - timedelta(days=overlap_days)) if last is not None else today - timedelta(days=lookback_days)
        start = max(start, earliest)
        try:
            combined.partitions.extend(
                plan([symbol], timeframe, start, end, feed=feed, adjustment=adjustment, today=today, earliest=earliest).partitions
            )
        except BackfillRequestError as exc:
            _log.info("nothing to backfill", symbol=symbol, reason=str(exc))
    return combined


@dataclass(frozen=True)
class VerifyRow:
    symbol: str
    expected: int
    stored: int
    missing: int
    outside_sessions: int
    first_missing: str | None


def verify(
    symbols: Sequence[str],
    *,
    store: Any,
    timeframe: str,
    start: date,
    end: date,
    feed: str,
    adjustment: str,
    feeds: Sequence[str] | None = None,
) -> list[VerifyRow]:
    """Stored bars against the exchange calendar: bars missing in sessions, bars outside sessions.

    ``feeds`` (most preferred first) are the feeds that count; default: the requested feed only.
    """
    tf = TIMEFRAMES[timeframe]
    lo = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    hi = datetime.combine(end, datetime.min.time(), tzinfo=UTC)
    expected = calendar.expected_bar_starts(tf, lo, hi)
    out: list[VerifyRow] = []
    # One read for every symbol (a call per symbol costs ~20 ms of query and frame building each).
    stored_all = store.read_many(list(symbols), timeframe, lo, hi, feeds=tuple(feeds) if feeds else (feed,), adjustment=adjustment)
    by_symbol = {str(s): part["ts"] for s, part in stored_all.groupby("symbol", sort=False)}
    for symbol in symbols:
        have = pd.DatetimeIndex(by_symbol.get(symbol, stored_all["ts"].iloc[:0]))
        missing = expected.difference(have)
        outside = have.difference(expected)
        out.append(
            VerifyRow(symbol, len(expected), len(have), len(missing), len(outside), missing[0].isoformat() if len(missing) else None)
        )
    return out
