"""Backfill planning: requests refused before anything is enqueued, partitions of whole sessions, the nightly plan."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from omni_tasks.contracts.bars import TIMEFRAMES
from omni_tasks.marketdata import calendar
from omni_tasks.marketdata.backfill_plan import (
    ROWS_PER_CALL,
    SESSIONS_PER_PARTITION,
    BackfillRequestError,
    PartitionSpec,
    check_request,
    incremental_plan,
    plan,
)

TODAY = date(2025, 6, 16)  # a Monday


def _check(symbols=("AAPL",), timeframe="1Day", start=date(2024, 1, 2), end=date(2024, 2, 1), feed="iex", adjustment="raw"):  # type: ignore[no-untyped-def]
    return check_request(list(symbols), timeframe, start, end, feed, adjustment, today=TODAY)


# ---- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"start": date(2024, 2, 1), "end": date(2024, 2, 1)}, "impossible date range: end 2024-02-01 is not after start 2024-02-01"),
        ({"start": date(2024, 2, 2), "end": date(2024, 2, 1)}, "impossible date range"),
        ({"start": date(2025, 6, 17), "end": date(2025, 7, 1)}, "start 2025-06-17 is in the future"),
        ({"start": date(1961, 12, 1), "end": date(1962, 2, 1)}, "start 1961-12-01 is before 1962-01-02, the earliest backfill date"),
        ({"symbols": ()}, "no symbols given"),
        ({"symbols": ("AAPL", "AAPL;DROP TABLE bars")}, "'AAPL;DROP TABLE bars' is not a ticker symbol"),
        ({"symbols": ("1ABC",)}, "'1ABC' is not a ticker symbol"),
        ({"symbols": ("",)}, "'' is not a ticker symbol"),
        ({"timeframe": "2Min"}, "unknown timeframe '2Min'"),
        ({"timeframe": "1min"}, "unknown timeframe '1min'"),
        ({"feed": "otc"}, "unknown feed 'otc'"),
        ({"adjustment": "none"}, "unknown adjustment 'none'"),
    ],
    ids=["empty-range", "end-before-start", "future-start", "before-earliest", "no-symbols", "injection", "leading-digit", "blank", "timeframe", "timeframe-case", "feed", "adjustment"],
)
def test_backfill_check_request_bad_input_is_refused_naming_the_problem(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(BackfillRequestError) as info:
        _check(**overrides)
    assert message in str(info.value)


def test_backfill_check_request_cleans_and_dedups_symbols() -> None:
    assert _check(symbols=(" aapl ", "AAPL", "msft", "brk.b")) == ["AAPL", "MSFT", "BRK.B"]


def test_backfill_check_request_start_today_is_allowed() -> None:
    assert _check(start=TODAY, end=TODAY + timedelta(days=1)) == ["AAPL"]


@pytest.mark.parametrize(
    ("start", "end"),
    [(date(2024, 12, 25), date(2024, 12, 26)), (date(2024, 3, 9), date(2024, 3, 11)), (date(2025, 1, 9), date(2025, 1, 10))],
    ids=["christmas", "weekend", "ad-hoc-closure"],
)
def test_backfill_plan_range_without_sessions_is_refused(start: date, end: date) -> None:
    with pytest.raises(BackfillRequestError, match="no trading sessions between"):
        plan(["AAPL"], "1Day", start, end, today=TODAY)


def test_backfill_plan_refusals_come_from_check_request() -> None:
    with pytest.raises(BackfillRequestError, match="unknown feed"):
        plan(["AAPL"], "1Day", date(2024, 1, 2), date(2024, 2, 1), feed="otc", today=TODAY)
    with pytest.raises(BackfillRequestError, match="in the future"):
        plan(["AAPL"], "1Day", date(2030, 1, 2), date(2030, 2, 1), today=TODAY)


# ---- partitions ------------------------------------------------------------------------------


def _sessions_of(part: PartitionSpec) -> list[date]:
    return calendar.sessions(part.start.date(), (part.end - timedelta(days=1)).date())


@pytest.mark.parametrize(("timeframe", "start", "end"), [("1Min", date(2024, 11, 1), date(2025, 1, 15)), ("5Min", date(2024, 1, 1), date(2024, 7, 1)), ("1Day", date(2019, 6, 1), date(2024, 6, 1))])
def test_backfill_plan_partitions_cover_every_session_once_with_no_overlap(timeframe: str, start: date, end: date) -> None:
    the_plan = plan(["AAPL"], timeframe, start, end, today=TODAY)
    parts = the_plan.partitions
    covered = [d for p in parts for d in _sessions_of(p)]
    assert covered == calendar.sessions(start, end - timedelta(days=1)), "no gap, no duplicate, in order"
    for earlier, later in zip(parts, parts[1:], strict=False):
        assert earlier.end <= later.start, "partition ranges do not overlap"
    for p in parts:
        assert p.start.tzinfo is not None
        assert p.start.utcoffset() == timedelta(0)
        assert p.start.time() == p.end.time() == datetime.min.time(), "partitions are whole UTC days"
        assert p.sessions == len(_sessions_of(p)) <= SESSIONS_PER_PARTITION[timeframe]
        assert _sessions_of(p)[0] == p.start.date(), "a partition starts on a session"
        assert p.expected_bars == len(calendar.expected_bar_starts(TIMEFRAMES[timeframe], p.start, p.end))


def test_backfill_plan_one_minute_partitions_hold_at_most_five_sessions() -> None:
    parts = plan(["AAPL"], "1Min", date(2024, 11, 1), date(2025, 1, 1), today=TODAY).partitions
    assert max(p.sessions for p in parts) == 5
    assert all(p.expected_bars <= 5 * 390 for p in parts)
    thanksgiving_week = next(p for p in parts if p.start.date() <= date(2024, 11, 29) < p.end.date())
    assert thanksgiving_week.expected_bars == sum(
        len(calendar.expected_bar_starts(TIMEFRAMES["1Min"], datetime.combine(d, datetime.min.time(), tzinfo=UTC), datetime.combine(d + timedelta(days=1), datetime.min.time(), tzinfo=UTC)))
        for d in _sessions_of(thanksgiving_week)
    )
    assert thanksgiving_week.expected_bars % 390 == 210, "the half day has 210 bars"


def test_backfill_plan_splits_every_symbol_into_the_same_partitions() -> None:
    the_plan = plan(["msft", "AAPL", "MSFT"], "1Min", date(2024, 3, 4), date(2024, 3, 16), today=TODAY)
    by_symbol: dict[str, list[tuple[datetime, datetime]]] = {}
    for p in the_plan.partitions:
        by_symbol.setdefault(p.symbol, []).append((p.start, p.end))
    assert set(by_symbol) == {"MSFT", "AAPL"}
    assert by_symbol["MSFT"] == by_symbol["AAPL"]
    assert len(by_symbol["AAPL"]) == 2  # 10 sessions
    assert {(p.feed, p.adjustment) for p in the_plan.partitions} == {("iex", "raw")}


def test_backfill_plan_caps_end_at_tomorrow() -> None:
    the_plan = plan(["AAPL"], "1Day", date(2025, 6, 2), date(2026, 1, 1), today=TODAY)
    assert max(p.end for p in the_plan.partitions) == datetime(2025, 6, 17, tzinfo=UTC)
    assert the_plan.partitions[-1].sessions == 11  # June 2-16, 2025: Juneteenth is later


def test_backfill_plan_end_is_exclusive() -> None:
    the_plan = plan(["AAPL"], "1Day", date(2024, 3, 4), date(2024, 3, 8), today=TODAY)
    assert [d for p in the_plan.partitions for d in _sessions_of(p)] == [date(2024, 3, d) for d in (4, 5, 6, 7)]


def test_backfill_plan_totals_add_up_and_estimate_calls() -> None:
    the_plan = plan(["AAPL", "MSFT"], "1Min", date(2024, 3, 4), date(2024, 3, 9), today=TODAY)
    assert len(the_plan.partitions) == 2
    assert the_plan.expected_bars == 2 * 5 * 390
    assert the_plan.calls == 2, "1950 bars fit in one call per partition"
    big = PartitionSpec("AAPL", "1Min", datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 9, tzinfo=UTC), "iex", "raw", 5, ROWS_PER_CALL + 1)
    assert big.calls == 2


# ---- incremental ---------------------------------------------------------------------------------


class LastStored:
    """The slice of the BarStore interface incremental_plan uses.

    ``last`` maps a symbol to its last bar in every feed, or (symbol, feed) to its last bar in that feed only.
    """

    def __init__(self, last: dict[str, datetime] | dict[tuple[str, str], datetime]) -> None:
        self.last = last
        self.asked: list[tuple[str, str, str, str]] = []

    def last_ts(self, symbol: str, timeframe: str, feed: str, adjustment: str) -> datetime | None:
        self.asked.append((symbol, timeframe, feed, adjustment))
        return self.last.get((symbol, feed), self.last.get(symbol))  # type: ignore[call-overload]


def test_backfill_incremental_plan_starts_at_last_stored_bar_minus_overlap() -> None:
    store = LastStored({"AAPL": datetime(2025, 6, 11, 19, 59, tzinfo=UTC)})
    the_plan = incremental_plan(["AAPL"], store=store, timeframe="1Min", feed="sip", adjustment="split", overlap_days=3, lookback_days=30, today=TODAY)
    days = [d for p in the_plan.partitions for d in _sessions_of(p)]
    assert days == calendar.sessions(date(2025, 6, 8), TODAY)
    assert days[0] == date(2025, 6, 9), "June 8 is a Sunday: the first session after last minus 3 days"
    assert days[-1] == TODAY
    assert store.asked == [("AAPL", "1Min", "sip", "split")]
    assert {(p.feed, p.adjustment) for p in the_plan.partitions} == {("sip", "split")}


def test_backfill_incremental_plan_with_nothing_stored_uses_the_lookback() -> None:
    store = LastStored({"AAPL": datetime(2025, 6, 13, tzinfo=UTC)})
    the_plan = incremental_plan(["AAPL", "NVDA"], store=store, timeframe="1Day", feed="iex", adjustment="raw", overlap_days=1, lookback_days=20, today=TODAY)
    starts = {p.symbol: min(q.start for q in the_plan.partitions if q.symbol == p.symbol) for p in the_plan.partitions}
    assert starts["NVDA"].date() == calendar.sessions(TODAY - timedelta(days=20), TODAY)[0]
    assert starts["AAPL"].date() == date(2025, 6, 12)
    assert max(p.end for p in the_plan.partitions) == datetime(2025, 6, 17, tzinfo=UTC)


def test_backfill_incremental_plan_without_sessions_to_fetch_is_empty_not_an_error() -> None:
    saturday = date(2025, 6, 14)
    store = LastStored({})
    the_plan = incremental_plan(["AAPL"], store=store, timeframe="1Day", feed="iex", adjustment="raw", overlap_days=0, lookback_days=0, today=saturday)
    assert the_plan.partitions == []


def test_backfill_incremental_plan_never_starts_before_the_earliest_date() -> None:
    store = LastStored({})
    default = incremental_plan(["AAPL"], store=store, timeframe="1Day", feed="iex", adjustment="raw", overlap_days=0, lookback_days=30_000, today=TODAY)
    assert default.partitions[0].start == datetime(1962, 1, 2, tzinfo=UTC)
    configured = incremental_plan(
        ["AAPL"], store=store, timeframe="1Day", feed="iex", adjustment="raw", overlap_days=0, lookback_days=30_000, today=TODAY, earliest=date(2000, 1, 3)
    )
    assert configured.partitions[0].start == datetime(2000, 1, 3, tzinfo=UTC)


def test_backfill_incremental_plan_by_default_looks_only_at_the_requested_feed() -> None:
    store = LastStored({("AAPL", "synthetic"): datetime(2025, 6, 12, 19, 55, tzinfo=UTC)})
    the_plan = incremental_plan(["AAPL"], store=store, timeframe="1Day", feed="iex", adjustment="raw", overlap_days=1, lookback_days=20, today=TODAY)
    assert store.asked == [("AAPL", "1Day", "iex", "raw")]
    assert the_plan.partitions[0].start.date() == calendar.sessions(TODAY - timedelta(days=20), TODAY)[0], "synthetic rows do not count for iex"


def test_backfill_incremental_plan_with_feeds_starts_from_the_latest_bar_of_any_of_them() -> None:
    store = LastStored(
        {
            ("AAPL", "iex"): datetime(2025, 6, 3, 19, 59, tzinfo=UTC),
            ("AAPL", "yahoo"): datetime(2025, 6, 12, 19, 59, tzinfo=UTC),
            ("AAPL", "synthetic"): datetime(2025, 6, 9, 19, 59, tzinfo=UTC),
            ("AAPL", "sip"): datetime(2025, 6, 16, 19, 59, tzinfo=UTC),  # not a feed these providers serve
        }
    )
    the_plan = incremental_plan(
        ["AAPL"], store=store, timeframe="1Min", feed="iex", adjustment="raw", overlap_days=1, lookback_days=30, today=TODAY, feeds=("iex", "yahoo", "synthetic")
    )
    assert store.asked == [("AAPL", "1Min", f, "raw") for f in ("iex", "yahoo", "synthetic")]
    assert [d for p in the_plan.partitions for d in _sessions_of(p)] == calendar.sessions(date(2025, 6, 11), TODAY)
    assert {(p.feed, p.adjustment) for p in the_plan.partitions} == {("iex", "raw")}, "partitions request the configured feed, not the serving ones"


def test_backfill_incremental_plan_with_feeds_and_nothing_stored_uses_the_lookback() -> None:
    store = LastStored({("AAPL", "sip"): datetime(2025, 6, 12, tzinfo=UTC)})
    the_plan = incremental_plan(["AAPL"], store=store, timeframe="1Day", feed="iex", adjustment="raw", overlap_days=1, lookback_days=20, today=TODAY, feeds=("iex", "replay"))
    assert store.asked == [("AAPL", "1Day", "iex", "raw"), ("AAPL", "1Day", "replay", "raw")]
    assert the_plan.partitions[0].start.date() == calendar.sessions(TODAY - timedelta(days=20), TODAY)[0]


def test_backfill_incremental_plan_empty_feeds_means_the_requested_feed() -> None:
    store = LastStored({("AAPL", "sip"): datetime(2025, 6, 12, tzinfo=UTC)})
    the_plan = incremental_plan(["AAPL"], store=store, timeframe="1Day", feed="sip", adjustment="raw", overlap_days=1, lookback_days=20, today=TODAY, feeds=())
    assert store.asked == [("AAPL", "1Day", "sip", "raw")]
    assert the_plan.partitions[0].start == datetime(2025, 6, 11, tzinfo=UTC)


def test_backfill_incremental_plan_with_feeds_plans_each_symbol_from_its_own_latest_bar() -> None:
    store = LastStored({("AAPL", "yahoo"): datetime(2025, 6, 12, tzinfo=UTC), ("MSFT", "iex"): datetime(2025, 6, 5, tzinfo=UTC)})
    the_plan = incremental_plan(["AAPL", "MSFT"], store=store, timeframe="1Day", feed="iex", adjustment="raw", overlap_days=0, lookback_days=20, today=TODAY, feeds=("iex", "yahoo"))
    starts = {s: min(p.start for p in the_plan.partitions if p.symbol == s).date() for s in ("AAPL", "MSFT")}
    assert starts == {"AAPL": date(2025, 6, 12), "MSFT": date(2025, 6, 5)}
