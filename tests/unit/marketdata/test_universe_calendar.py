"""The default universe and its parsing; the XNYS calendar: sessions, half days, DST, expected bars."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from omni_tasks.contracts.bars import SYMBOL_PATTERN, TIMEFRAMES
from omni_tasks.marketdata import calendar
from omni_tasks.marketdata.universe import DEFAULT_UNIVERSE, load_universe, parse_symbols

# ---- universe -------------------------------------------------------------------------


def test_universe_default_is_100_distinct_valid_symbols() -> None:
    assert len(DEFAULT_UNIVERSE) == 100
    assert len(set(DEFAULT_UNIVERSE)) == 100
    assert all(SYMBOL_PATTERN.match(s) for s in DEFAULT_UNIVERSE)
    assert {"AAPL", "SPY", "QQQ", "BRK.B"} <= set(DEFAULT_UNIVERSE)


def test_universe_parse_symbols_splits_uppercases_dedups_and_drops_comments() -> None:
    text = "aapl, MSFT  spy\n# a comment line, NOT_A_SYMBOL\nmsft,brk.b # trailing comment TSLA\n\n  qqq  \n"
    assert parse_symbols(text) == ["AAPL", "MSFT", "SPY", "BRK.B", "QQQ"]


@pytest.mark.parametrize("bad", ["AAPL;DROP", "1ABC", "TOOLONGSYMBOL", "BRK/B", "$SPY"])
def test_universe_parse_symbols_malformed_symbol_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a ticker symbol") as info:
        parse_symbols(f"AAPL, {bad}")
    assert bad in str(info.value)


def test_universe_load_from_file_wins_over_list_and_default(tmp_path: Path) -> None:
    file = tmp_path / "universe.txt"
    file.write_text("# desk universe\nnvda\namd, intc\n", encoding="utf-8")
    assert load_universe(file, symbols=["AAPL"]) == ["NVDA", "AMD", "INTC"]


def test_universe_load_file_with_no_symbols_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / "empty.txt"
    file.write_text("# nothing here\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lists no symbols"):
        load_universe(file)


def test_universe_load_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ValueError, match="cannot read the universe file") as info:
        load_universe(missing)
    assert str(missing) in str(info.value)


def test_universe_load_from_list_validates_and_dedups() -> None:
    assert load_universe(symbols=["msft", "aapl", "MSFT"]) == ["MSFT", "AAPL"]
    with pytest.raises(ValueError, match="not a ticker symbol"):
        load_universe(symbols=["MSFT", "rm -rf"])


def test_universe_load_without_file_or_list_is_the_default_copy() -> None:
    universe = load_universe()
    assert universe == list(DEFAULT_UNIVERSE)
    universe.append("ZZZZ")
    assert "ZZZZ" not in load_universe(), "callers get a copy, not the module's list"


# ---- calendar ---------------------------------------------------------------------------


def test_calendar_sessions_skip_weekends_and_holidays() -> None:
    assert calendar.sessions(date(2024, 12, 21), date(2024, 12, 31)) == [
        date(2024, 12, 23), date(2024, 12, 24), date(2024, 12, 26), date(2024, 12, 27), date(2024, 12, 30), date(2024, 12, 31),
    ]
    assert calendar.sessions(date(2024, 7, 4), date(2024, 7, 4)) == []
    assert calendar.sessions(date(2025, 1, 9), date(2025, 1, 9)) == [], "the national day of mourning for President Carter (ad hoc closure)"


def test_calendar_sessions_bounds_are_inclusive() -> None:
    assert calendar.sessions(date(2024, 3, 4), date(2024, 3, 5)) == [date(2024, 3, 4), date(2024, 3, 5)]


def test_calendar_schedule_half_day_closes_early() -> None:
    sched = calendar.schedule(date(2024, 11, 27), date(2024, 11, 29))
    assert [d.date() for d in sched.index] == [date(2024, 11, 27), date(2024, 11, 29)]
    assert sched.loc["2024-11-27", "close"] == pd.Timestamp("2024-11-27 21:00", tz="UTC")
    assert sched.loc["2024-11-29", "close"] == pd.Timestamp("2024-11-29 18:00", tz="UTC")


def test_calendar_open_follows_new_york_daylight_saving() -> None:
    sched = calendar.schedule(date(2024, 1, 2), date(2024, 7, 1))
    assert sched.loc["2024-01-02", "open"] == pd.Timestamp("2024-01-02 14:30", tz="UTC")
    assert sched.loc["2024-07-01", "open"] == pd.Timestamp("2024-07-01 13:30", tz="UTC")


def test_calendar_widens_back_to_its_first_session_when_asked_and_nothing_earlier_exists() -> None:
    assert len(calendar.schedule(date(1999, 1, 1), date(1999, 12, 31))) == 252
    assert calendar.sessions(date(1999, 12, 30), date(2000, 1, 4)) == [date(1999, 12, 30), date(1999, 12, 31), date(2000, 1, 3), date(2000, 1, 4)]
    assert calendar.sessions(date(1990, 4, 12), date(1990, 4, 16)) == [date(1990, 4, 12), date(1990, 4, 16)]  # Good Friday 1990
    assert calendar.schedule(date(1880, 1, 1), date(1884, 12, 31)).empty
    assert calendar.first_session() <= date(1990, 4, 12)


@pytest.mark.parametrize(
    ("timeframe", "day", "count"),
    [("1Min", "2024-11-27", 390), ("1Min", "2024-11-29", 210), ("5Min", "2024-11-27", 78), ("1Hour", "2024-11-27", 7), ("1Hour", "2024-11-29", 4), ("1Day", "2024-11-27", 1), ("1Min", "2024-11-28", 0)],
)
def test_calendar_expected_bar_starts_per_session(timeframe: str, day: str, count: int) -> None:
    start = pd.Timestamp(day, tz="UTC").to_pydatetime()
    starts = calendar.expected_bar_starts(TIMEFRAMES[timeframe], start, start + pd.Timedelta(days=1))
    assert len(starts) == count


def test_calendar_expected_one_minute_bars_start_at_open_and_stop_before_close() -> None:
    starts = calendar.expected_bar_starts(TIMEFRAMES["1Min"], datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 7, 2, tzinfo=UTC))
    assert starts[0] == pd.Timestamp("2024-07-01 13:30", tz="UTC")
    assert starts[-1] == pd.Timestamp("2024-07-01 19:59", tz="UTC")
    assert str(starts.tz) == "UTC"


def test_calendar_expected_bar_starts_cut_to_the_half_open_range() -> None:
    starts = calendar.expected_bar_starts(TIMEFRAMES["1Min"], datetime(2024, 11, 27, 15, 0, tzinfo=UTC), datetime(2024, 11, 27, 15, 30, tzinfo=UTC))
    assert len(starts) == 30
    assert starts[0] == pd.Timestamp("2024-11-27 15:00", tz="UTC")
    assert starts[-1] == pd.Timestamp("2024-11-27 15:29", tz="UTC")


def test_calendar_expected_daily_labels_are_session_dates_at_midnight_utc_end_exclusive() -> None:
    labels = calendar.expected_bar_starts(TIMEFRAMES["1Day"], datetime(2024, 12, 23, tzinfo=UTC), datetime(2024, 12, 27, tzinfo=UTC))
    assert list(labels) == [pd.Timestamp(d, tz="UTC") for d in ("2024-12-23", "2024-12-24", "2024-12-26")]


def test_calendar_expected_bar_starts_accept_non_utc_aware_bounds() -> None:
    ny = "America/New_York"
    start = pd.Timestamp("2024-11-27 09:30", tz=ny).to_pydatetime()
    end = pd.Timestamp("2024-11-27 10:00", tz=ny).to_pydatetime()
    starts = calendar.expected_bar_starts(TIMEFRAMES["5Min"], start, end)
    assert list(starts) == list(pd.date_range("2024-11-27 14:30", periods=6, freq="5min", tz="UTC"))


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        ("2024-11-27 14:30", True),
        ("2024-11-27 20:59", True),
        ("2024-11-27 14:29", False),
        ("2024-11-27 21:00", False),
        ("2024-11-29 17:59", True),
        ("2024-11-29 18:30", False),
        ("2024-11-28 16:00", False),
        ("2024-11-30 16:00", False),
    ],
)
def test_calendar_is_open_only_inside_regular_sessions(at: str, expected: bool) -> None:
    assert calendar.is_open(pd.Timestamp(at, tz="UTC").to_pydatetime()) is expected
