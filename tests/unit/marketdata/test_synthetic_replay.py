"""The offline feeds: ``synthetic`` (deterministic, sessions only) and ``replay`` (Parquet/CSV files)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from omni_tasks.contracts.bars import BAR_COLUMNS, TIMEFRAMES, split_valid
from omni_tasks.marketdata import calendar
from omni_tasks.marketdata.errors import MalformedPayload, UnknownSymbol
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest
from omni_tasks.marketdata.providers.replay import ReplayBars
from omni_tasks.marketdata.providers.synthetic import SyntheticBars


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _fetch(symbol: str, timeframe: str, start: datetime, end: datetime, **kwargs: str) -> pd.DataFrame:
    return SyntheticBars().fetch_bars(BarRequest(symbol, timeframe, start, end, **kwargs)).bars


# ---- synthetic ------------------------------------------------------------------------


def test_synthetic_and_replay_implement_the_provider_protocol(tmp_path: Path) -> None:
    assert isinstance(SyntheticBars(), BarProvider)
    assert isinstance(ReplayBars(tmp_path), BarProvider)


def test_synthetic_same_symbol_and_range_gives_identical_frame() -> None:
    first = _fetch("AAPL", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 9))
    second = SyntheticBars().fetch_bars(BarRequest("AAPL", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 9))).bars
    assert len(first) == 5 * 390
    pd.testing.assert_frame_equal(first, second)


def test_synthetic_different_symbols_give_different_paths() -> None:
    a = _fetch("AAPL", "1Day", _utc(2024, 3, 1), _utc(2024, 4, 1))
    m = _fetch("MSFT", "1Day", _utc(2024, 3, 1), _utc(2024, 4, 1))
    assert len(a) == len(m) > 0
    assert not (a["close"].to_numpy() == m["close"].to_numpy()).any()


@pytest.mark.parametrize("timeframe", ["1Min", "5Min", "1Hour", "1Day"])
def test_synthetic_sub_range_of_whole_sessions_equals_slice_of_larger_range(timeframe: str) -> None:
    large = _fetch("MSFT", timeframe, _utc(2024, 2, 26), _utc(2024, 3, 16))
    small = _fetch("MSFT", timeframe, _utc(2024, 3, 5), _utc(2024, 3, 8))
    sliced = large[(large["ts"] >= small["ts"].min()) & (large["ts"] <= small["ts"].max())].reset_index(drop=True)
    assert len(small) > 0
    pd.testing.assert_frame_equal(small, sliced)


def test_synthetic_sub_range_inside_a_session_equals_slice_of_the_whole_session() -> None:
    whole = _fetch("AAPL", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 5))
    hour = _fetch("AAPL", "1Min", _utc(2024, 3, 4, 15), _utc(2024, 3, 4, 16))
    sliced = whole[(whole["ts"] >= _utc(2024, 3, 4, 15)) & (whole["ts"] < _utc(2024, 3, 4, 16))].reset_index(drop=True)
    assert len(hour) == 60
    pd.testing.assert_frame_equal(hour, sliced)


def test_synthetic_holiday_has_no_bars() -> None:
    result = SyntheticBars().fetch_bars(BarRequest("AAPL", "1Min", _utc(2024, 12, 25), _utc(2024, 12, 26)))
    assert result.bars.empty
    assert list(result.bars.columns) == list(BAR_COLUMNS)
    assert result.notes == ["no sessions in range"]


def test_synthetic_weekend_has_no_bars() -> None:
    assert _fetch("AAPL", "5Min", _utc(2024, 3, 9), _utc(2024, 3, 11)).empty


def test_synthetic_half_day_has_210_one_minute_bars_ending_at_the_early_close() -> None:
    bars = _fetch("AAPL", "1Min", _utc(2024, 11, 29), _utc(2024, 11, 30))
    assert len(bars) == 210
    assert bars["ts"].iloc[0] == pd.Timestamp("2024-11-29 14:30", tz="UTC")
    assert bars["ts"].iloc[-1] == pd.Timestamp("2024-11-29 17:59", tz="UTC")


@pytest.mark.parametrize("timeframe", ["1Min", "15Min", "1Hour"])
def test_synthetic_intraday_bars_are_exactly_the_session_bars(timeframe: str) -> None:
    # Christmas week 2024: a half day (24th), a holiday (25th), a weekend.
    start, end = _utc(2024, 12, 23), _utc(2024, 12, 31)
    bars = _fetch("SPY", timeframe, start, end)
    expected = calendar.expected_bar_starts(TIMEFRAMES[timeframe], start, end)
    assert pd.DatetimeIndex(bars["ts"]).equals(expected)
    assert bars["ts"].is_unique
    assert bars["ts"].is_monotonic_increasing
    assert not (bars["ts"].dt.date == date(2024, 12, 25)).any()


def test_synthetic_daily_bars_are_labelled_by_their_session_dates() -> None:
    bars = _fetch("SPY", "1Day", _utc(2024, 1, 1), _utc(2024, 1, 13))
    sessions = calendar.sessions(date(2024, 1, 1), date(2024, 1, 12))
    assert [ts.date() for ts in bars["ts"]] == sessions


@pytest.mark.parametrize(
    ("timeframe", "start", "end"),
    [("1Min", _utc(2024, 11, 25), _utc(2024, 12, 3)), ("5Min", _utc(2024, 6, 3), _utc(2024, 6, 29)), ("1Day", _utc(2022, 1, 1), _utc(2024, 1, 1))],
)
def test_synthetic_output_passes_the_boundary_contract_with_no_rejected_rows(timeframe: str, start: datetime, end: datetime) -> None:
    bars = _fetch("NVDA", timeframe, start, end, adjustment="split")
    valid, rejected = split_valid(bars)
    assert len(bars) > 0
    assert rejected.empty, rejected["reason"].head().tolist()
    assert len(valid) == len(bars)
    assert list(bars.columns) == list(BAR_COLUMNS)
    assert set(bars["provider"]) == {"synthetic"}
    assert set(bars["feed"]) == {"synthetic"}
    assert set(bars["adjustment"]) == {"split"}
    assert set(bars["symbol"]) == {"NVDA"}
    assert set(bars["timeframe"]) == {timeframe}


def test_synthetic_says_its_data_is_not_real() -> None:
    result = SyntheticBars().fetch_bars(BarRequest("AAPL", "1Day", _utc(2024, 3, 1), _utc(2024, 3, 8)))
    assert "synthetic data: not real" in result.notes


# ---- replay -----------------------------------------------------------------------------


def _recording() -> pd.DataFrame:
    """Two 1Min bars and one 5Min bar on 2024-03-04, plus a 1Min bar the next day; one SIP row, one without a feed."""
    return pd.DataFrame(
        {
            "ts": ["2024-03-04T14:30:00Z", "2024-03-04T14:31:00Z", "2024-03-04T14:30:00Z", "2024-03-05T14:30:00Z"],
            "timeframe": ["1Min", "1Min", "5Min", "1Min"],
            "open": [10.0, 10.5, 10.0, 11.0],
            "high": [11.0, 11.5, 12.0, 12.0],
            "low": [9.5, 10.0, 9.0, 10.5],
            "close": [10.5, 11.0, 11.5, 11.5],
            "volume": [100.0, 200.0, 1500.0, 300.0],
            "feed": ["sip", None, "sip", "iex"],
        }
    )


@pytest.fixture(params=["csv", "parquet"])
def replay_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    frame = _recording()
    if request.param == "csv":
        frame.to_csv(tmp_path / "AAPL.csv", index=False)
    else:
        frame.to_parquet(tmp_path / "AAPL.parquet", index=False)
    return tmp_path


def test_replay_reads_file_and_filters_timeframe_and_range(replay_dir: Path) -> None:
    request = BarRequest("AAPL", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 5))
    bars = ReplayBars(replay_dir).fetch_bars(request).bars
    assert list(bars.columns) == list(BAR_COLUMNS)
    assert list(bars["ts"]) == [pd.Timestamp("2024-03-04 14:30", tz="UTC"), pd.Timestamp("2024-03-04 14:31", tz="UTC")]
    assert list(bars["volume"]) == [100.0, 200.0], "the 5Min bar and the next day's bar are filtered out"
    assert set(bars["timeframe"]) == {"1Min"}
    assert set(bars["provider"]) == {"replay"}
    assert split_valid(bars)[1].empty


def test_replay_keeps_the_feed_the_file_records(replay_dir: Path) -> None:
    bars = ReplayBars(replay_dir).fetch_bars(BarRequest("AAPL", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 6))).bars
    by_ts = dict(zip(bars["ts"].dt.strftime("%m-%d %H:%M"), bars["feed"], strict=True))
    assert by_ts == {"03-04 14:30": "sip", "03-04 14:31": "replay", "03-05 14:30": "iex"}
    assert bars["ts"].is_monotonic_increasing


def test_replay_five_minute_request_gets_only_five_minute_rows(replay_dir: Path) -> None:
    bars = ReplayBars(replay_dir).fetch_bars(BarRequest("AAPL", "5Min", _utc(2024, 3, 4), _utc(2024, 3, 6))).bars
    assert len(bars) == 1
    assert bars["volume"].iloc[0] == 1500.0
    assert bars["feed"].iloc[0] == "sip"


def test_replay_range_end_is_exclusive(replay_dir: Path) -> None:
    bars = ReplayBars(replay_dir).fetch_bars(BarRequest("AAPL", "1Min", _utc(2024, 3, 4, 14, 30), _utc(2024, 3, 4, 14, 31))).bars
    assert list(bars["volume"]) == [100.0]


def test_replay_range_without_rows_is_empty_with_a_note(replay_dir: Path) -> None:
    result = ReplayBars(replay_dir).fetch_bars(BarRequest("AAPL", "1Min", _utc(2023, 1, 3), _utc(2023, 1, 4)))
    assert result.bars.empty
    assert "no bars in range" in result.notes[0]


def test_replay_unknown_symbol_raises_unknown_symbol_naming_it(replay_dir: Path) -> None:
    with pytest.raises(UnknownSymbol, match="MSFT") as info:
        ReplayBars(replay_dir).fetch_bars(BarRequest("MSFT", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 5)))
    assert info.value.provider == "replay"


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_replay_file_missing_columns_is_malformed_payload_naming_them(tmp_path: Path, suffix: str) -> None:
    frame = _recording().drop(columns=["high", "volume"])
    if suffix == "csv":
        frame.to_csv(tmp_path / "AAPL.csv", index=False)
    else:
        frame.to_parquet(tmp_path / "AAPL.parquet", index=False)
    with pytest.raises(MalformedPayload) as info:
        ReplayBars(tmp_path).fetch_bars(BarRequest("AAPL", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 5)))
    message = str(info.value)
    assert "high" in message
    assert "volume" in message
    assert "open" not in message.split("missing columns", 1)[1]
    assert f"AAPL.{suffix}" in message


def test_replay_unreadable_file_is_malformed_payload(tmp_path: Path) -> None:
    (tmp_path / "AAPL.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(MalformedPayload, match="cannot be read"):
        ReplayBars(tmp_path).fetch_bars(BarRequest("AAPL", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 5)))


def test_replay_filters_by_recorded_adjustment(tmp_path: Path) -> None:
    frame = pd.concat([_recording().assign(adjustment="raw"), _recording().assign(adjustment="split", close=[10.25, 10.75, 11.0, 11.25])])
    frame.to_parquet(tmp_path / "AAPL.parquet", index=False)
    bars = ReplayBars(tmp_path).fetch_bars(BarRequest("AAPL", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 5), adjustment="split")).bars
    assert list(bars["close"]) == [10.25, 10.75]
    assert set(bars["adjustment"]) == {"split"}


def test_replay_availability_follows_the_folder(tmp_path: Path) -> None:
    assert ReplayBars(tmp_path).available() is True
    assert ReplayBars(tmp_path / "missing").available() is False
    assert ReplayBars(None).available() is False
    with pytest.raises(UnknownSymbol, match="no replay folder"):
        ReplayBars(None).fetch_bars(BarRequest("AAPL", "1Min", _utc(2024, 3, 4), _utc(2024, 3, 5)))


@pytest.mark.parametrize("clock", ["T00:00:00Z", "T05:00:00Z", ""], ids=["utc-midnight-label", "new-york-midnight", "naive-date"])
def test_replay_daily_bars_keep_their_session_dates(tmp_path: Path, clock: str) -> None:
    days = [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4)]
    pd.DataFrame(
        {"ts": [f"{d.isoformat()}{clock}" for d in days], "timeframe": "1Day", "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 1e6}
    ).to_csv(tmp_path / "AAPL.csv", index=False)
    bars = ReplayBars(tmp_path).fetch_bars(BarRequest("AAPL", "1Day", _utc(2024, 1, 2), _utc(2024, 1, 5))).bars
    assert [ts.date() for ts in bars["ts"]] == days
    assert (bars["ts"].dt.hour == 0).all()


def test_synthetic_recorded_to_replay_round_trips_intraday(tmp_path: Path) -> None:
    start = _utc(2024, 3, 4)
    original = _fetch("AAPL", "5Min", start, start + timedelta(days=2))
    original.to_parquet(tmp_path / "AAPL.parquet", index=False)
    replayed = ReplayBars(tmp_path).fetch_bars(BarRequest("AAPL", "5Min", start, start + timedelta(days=2))).bars
    assert (replayed["feed"] == "synthetic").all(), "the recorded feed is kept"
    assert (replayed["provider"] == "replay").all()
    cols = ["ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]
    pd.testing.assert_frame_equal(replayed[cols], original[cols])
