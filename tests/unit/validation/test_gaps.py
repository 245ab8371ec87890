"""Gap classification on the real XNYS calendar: closures and half days are not gaps; a removed bar is a provider hole."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from omni_tasks.contracts.bars import TIMEFRAMES
from omni_tasks.marketdata import calendar
from omni_tasks.validation import xnys_grid
from tests.unit.validation.helpers import found, synthetic, utc, validate

WEEK = ("2024-11-25", "2024-12-03")  # Thanksgiving 2024-11-28 (holiday), 2024-11-29 (half day, closes 13:00 ET)


def _drop(frame: pd.DataFrame, symbol: str, *stamps: str) -> pd.DataFrame:
    gone = frame["symbol"].eq(symbol) & frame["ts"].isin([pd.Timestamp(s) for s in stamps])
    assert gone.sum() == len(stamps)
    return frame[~gone].reset_index(drop=True)


def _gaps(result: object) -> pd.DataFrame:
    return result.gaps[result.gaps["is_gap"]]  # type: ignore[attr-defined]


def test_gaps_holiday_and_half_day_are_classified_and_are_not_gaps() -> None:
    frame = synthetic(["AAPL", "MSFT"], *WEEK)
    result = validate(frame, *WEEK)
    print(result.gaps[["symbol", "session", "start", "end", "bars", "kind", "reason"]].to_string())
    assert found(result) == []
    assert result.ok
    assert _gaps(result).empty
    assert set(result.gaps["kind"]) == {"holiday", "half_day"}
    holiday = result.gaps[result.gaps["kind"] == "holiday"]
    assert set(holiday["session"]) == {date(2024, 11, 28)}
    assert set(holiday["bars"]) == {390}
    assert "Thanksgiving" in holiday["reason"].iloc[0]
    half = result.gaps[result.gaps["kind"] == "half_day"]
    assert set(half["start"]) == {pd.Timestamp("2024-11-29T18:00:00Z")}
    assert set(half["bars"]) == {180}
    reports = result.reports.set_index(["symbol", "session"])
    assert reports.loc[("AAPL", date(2024, 11, 28)), "status"] == "holiday"
    assert reports.loc[("AAPL", date(2024, 11, 28)), "closure_name"] == "Thanksgiving"
    assert reports.loc[("AAPL", date(2024, 11, 29)), ["status", "expected_bars", "present_bars", "half_day_bars"]].tolist() == ["half_day", 210, 210, 180]
    sessions = result.reports[result.reports["expected_bars"] > 0]
    assert (sessions["completeness"] == 1.0).all()
    assert (sessions["missing_bars"] == 0).all()
    assert result.closures.to_dict("records") == [{"date": date(2024, 11, 28), "kind": "holiday", "name": "Thanksgiving"}]


def test_gaps_a_removed_bar_is_a_provider_hole_and_nothing_else_is() -> None:
    frame = _drop(synthetic(["AAPL", "MSFT"], *WEEK), "AAPL", "2024-11-26T15:00:00Z")
    result = validate(frame, *WEEK)
    holes = _gaps(result)
    print(holes[["symbol", "session", "start", "bars", "kind", "reason"]].to_string())
    assert holes[["symbol", "session", "start", "end", "bars", "kind"]].to_dict("records") == [
        {"symbol": "AAPL", "session": date(2024, 11, 26), "start": pd.Timestamp("2024-11-26T15:00:00Z"), "end": pd.Timestamp("2024-11-26T15:01:00Z"), "bars": 1, "kind": "provider_hole"}
    ]
    day = result.reports.set_index(["symbol", "session"]).loc[("AAPL", date(2024, 11, 26))]
    assert (day["expected_bars"], day["present_bars"], day["provider_hole_bars"], day["gap_stretches"]) == (390, 389, 1, 1)
    assert day["completeness"] == pytest.approx(389 / 390)
    assert not result.ok
    assert found(result) == []


def test_gaps_a_removed_bar_before_a_half_days_early_close_is_a_hole_the_minutes_after_are_not() -> None:
    frame = _drop(synthetic(["AAPL", "MSFT"], "2024-11-29", "2024-11-30"), "MSFT", "2024-11-29T17:58:00Z", "2024-11-29T17:59:00Z")
    result = validate(frame, "2024-11-29", "2024-11-30")
    holes = _gaps(result)
    assert holes[["symbol", "start", "bars", "kind"]].to_dict("records") == [{"symbol": "MSFT", "start": pd.Timestamp("2024-11-29T17:58:00Z"), "bars": 2, "kind": "provider_hole"}]
    assert set(result.gaps.loc[~result.gaps["is_gap"], "kind"]) == {"half_day"}


def test_gaps_minutes_missing_for_every_symbol_are_a_probable_halt_for_one_symbol_a_hole() -> None:
    stamps = ("2024-11-26T17:00:00Z", "2024-11-26T17:01:00Z", "2024-11-26T17:02:00Z")
    frame = synthetic(["AAPL", "MSFT", "SPY"], *WEEK)
    for symbol in ("AAPL", "MSFT", "SPY"):
        frame = _drop(frame, symbol, *stamps)
    result = validate(frame, *WEEK)
    halts = _gaps(result)
    print(halts[["symbol", "start", "bars", "kind", "reason"]].to_string())
    assert list(halts["kind"]) == ["halt"] * 3
    assert list(halts["bars"]) == [3] * 3
    assert "probable trading halt" in halts["reason"].iloc[0]
    alone = validate(_drop(synthetic(["AAPL"], *WEEK), "AAPL", *stamps), *WEEK)
    assert list(_gaps(alone)["kind"]) == ["provider_hole"]


def test_gaps_a_whole_session_missing_for_every_symbol_is_missing_data_not_a_halt() -> None:
    frame = synthetic(["AAPL", "MSFT"], *WEEK)
    frame = frame[frame["ts"].dt.date != date(2024, 11, 26)].reset_index(drop=True)
    result = validate(frame, *WEEK)
    holes = _gaps(result)
    assert set(holes["kind"]) == {"provider_hole"}
    assert list(holes["bars"]) == [390, 390]


def test_gaps_adhoc_closure_carter_day_of_mourning_is_a_closure_not_a_gap() -> None:
    week = ("2025-01-06", "2025-01-11")
    for timeframe in ("1Min", "1Day"):
        result = validate(synthetic(["AAPL", "MSFT"], *week, timeframe), *week, timeframe)
        assert found(result) == []
        assert result.ok
        assert _gaps(result).empty
        closure = result.gaps[result.gaps["kind"] == "adhoc_closure"]
        assert set(closure["session"]) == {date(2025, 1, 9)}
        assert "Carter" in closure["reason"].iloc[0]
        assert result.closures[["date", "kind"]].to_dict("records") == [{"date": date(2025, 1, 9), "kind": "adhoc_closure"}]
        status = result.reports.set_index(["symbol", "session"]).loc[("AAPL", date(2025, 1, 9)), "status"]
        assert status == "adhoc_closure"
        print(timeframe, result.closures.to_dict("records"), "sessions:", sorted(set(result.reports.loc[result.reports["expected_bars"] > 0, "session"])))


def test_gaps_hurricane_sandy_daily_is_two_closures_and_a_removed_session_is_a_hole() -> None:
    window = ("2012-10-22", "2012-11-03")
    frame = synthetic(["AAPL"], *window, "1Day")
    result = validate(frame, *window, "1Day")
    assert _gaps(result).empty
    assert result.closures["date"].tolist() == [date(2012, 10, 29), date(2012, 10, 30)]
    assert set(result.closures["name"]) == {"Hurricane Sandy"}
    removed = validate(_drop(frame, "AAPL", "2012-11-01T00:00:00Z"), *window, "1Day")
    assert _gaps(removed)[["session", "bars", "kind"]].to_dict("records") == [{"session": date(2012, 11, 1), "bars": 1, "kind": "provider_hole"}]


def test_gaps_daily_half_day_is_a_full_session_and_bush_funeral_is_an_adhoc_closure() -> None:
    result = validate(synthetic(["AAPL"], "2018-12-03", "2018-12-08", "1Day"), "2018-12-03", "2018-12-08", "1Day")
    assert result.closures.to_dict("records") == [{"date": date(2018, 12, 5), "kind": "adhoc_closure", "name": "National Day of Mourning for President George H. W. Bush"}]
    daily = validate(synthetic(["AAPL"], *WEEK, "1Day"), *WEEK, "1Day")
    day = daily.reports.set_index("session").loc[date(2024, 11, 29)]
    assert (day["status"], day["expected_bars"], day["present_bars"], day["half_day_bars"]) == ("half_day", 1, 1, 0)
    assert _gaps(daily).empty


def test_gaps_a_requested_symbol_without_rows_is_all_holes_and_stale() -> None:
    result = validate(synthetic(["AAPL"], "2024-11-25", "2024-11-26"), "2024-11-25", "2024-11-26", symbols=["AAPL", "NVDA"])
    series = result.series.set_index("symbol")
    assert series.loc["NVDA", ["rows", "present_bars", "bars_behind", "stale"]].tolist() == [0, 0, 390, True]
    assert not series.loc["AAPL", "stale"]
    assert _gaps(result)[["symbol", "bars", "kind"]].to_dict("records") == [{"symbol": "NVDA", "bars": 390, "kind": "provider_hole"}]
    assert found(result) == [(None, "stale")]
    assert result.violations["symbol"].tolist() == ["NVDA"]


def test_gaps_bars_not_complete_at_as_of_are_not_expected_and_staleness_is_measured_to_as_of() -> None:
    frame = synthetic(["AAPL"], "2024-11-26", "2024-11-27")
    as_of = utc("2024-11-26", 16, 0)
    upto = frame[frame["ts"] < pd.Timestamp(as_of)].reset_index(drop=True)
    result = validate(upto, "2024-11-26", "2024-11-27", as_of=as_of)
    assert result.ok
    assert result.reports["expected_bars"].tolist() == [90]
    behind = validate(upto.iloc[:-10], "2024-11-26", "2024-11-27", as_of=as_of)
    assert found(behind) == [(79, "stale")]
    assert behind.series["bars_behind"].tolist() == [10]


def test_gaps_quarantined_bar_is_its_own_kind_of_gap() -> None:
    frame = synthetic(["AAPL", "MSFT"], "2024-11-25", "2024-11-26")
    frame.loc[10, "close"] = np.nan
    result = validate(frame, "2024-11-25", "2024-11-26")
    assert _gaps(result)[["symbol", "bars", "kind"]].to_dict("records") == [{"symbol": "AAPL", "bars": 1, "kind": "quarantined"}]
    assert result.reports.set_index("symbol").loc["AAPL", "quarantined_bars"] == 1


@pytest.mark.parametrize("timeframe", ["1Min", "5Min", "15Min", "1Hour", "1Day"])
@pytest.mark.parametrize("window", [WEEK, ("2024-10-28", "2024-11-09"), ("2025-01-06", "2025-01-11")], ids=["thanksgiving", "dst_end", "carter"])
def test_gaps_grid_expected_starts_equal_the_calendar_modules(timeframe: str, window: tuple[str, str]) -> None:
    start, end = utc(window[0]), utc(window[1])
    far = datetime(2100, 1, 1, tzinfo=UTC)
    ours = xnys_grid(timeframe).window(int(pd.Timestamp(start).value), int(pd.Timestamp(end).value), int(pd.Timestamp(far).value)).starts
    theirs = calendar.expected_bar_starts(TIMEFRAMES[timeframe], start, end).as_unit("ns").asi8
    assert np.array_equal(ours, theirs)
    assert len(ours) > 0
    assert end - start > timedelta(days=4)


def test_gaps_quality_reports_are_typed_records_ready_for_storage() -> None:
    frame = _drop(synthetic(["AAPL"], *WEEK), "AAPL", "2024-11-26T15:00:00Z")
    frame.loc[3, "volume"] = -1.0
    reports = validate(frame, *WEEK).quality_reports()
    assert len(reports) == 6  # 5 sessions and Thanksgiving
    by_day = {r.session: r.to_record() for r in reports}
    assert by_day[date(2024, 11, 28)]["completeness"] is None
    assert by_day[date(2024, 11, 28)]["closure_name"] == "Thanksgiving"
    assert by_day[date(2024, 11, 25)]["violations"] == {"volume_non_negative": 1}
    assert by_day[date(2024, 11, 25)]["quarantined_rows"] == 1
    assert by_day[date(2024, 11, 25)]["quarantined_bars"] == 1
    assert by_day[date(2024, 11, 26)]["provider_hole_bars"] == 1
    assert all(type(v) in (str, int, float, dict, type(None), date) for record in by_day.values() for v in record.values())
