"""Scan indicators: hand-computed values on a tiny frame, loop implementations on random data, which bars and quotes count."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from omni_tasks.scans.indicators import INDICATORS, Lookbacks, bar_ends, compute_indicators
from tests.unit.scans.factories import after_close, bars, quotes, random_walk, sessions

# Six sessions: Tue 2 .. Tue 9 January 2024 (closes at 21:00 UTC).
DAYS = [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4), date(2024, 1, 5), date(2024, 1, 8), date(2024, 1, 9)]
#         open  high  low  close volume
TINY = [
    (10.0, 11.0, 9.0, 10.0, 100.0),
    (10.0, 12.0, 10.0, 11.0, 200.0),
    (11.0, 13.0, 10.0, 12.0, 300.0),
    (12.0, 13.0, 11.0, 11.0, 100.0),
    (11.0, 11.5, 9.0, 10.0, 200.0),
    (11.0, 14.0, 11.0, 13.0, 600.0),
]
# Short lookbacks so every number can be worked by hand: N=2, V=3, n=m=3, H=6 (window 6 bars, need 4).
SHORT = Lookbacks(momentum_bars=2, volume_bars=3, atr_bars=3, rsi_bars=3, high_bars=6)
AFTER = after_close(DAYS[-1])


def _one(frame: pd.DataFrame, **kwargs: object) -> pd.Series:
    out = compute_indicators(frame, **kwargs)  # type: ignore[arg-type]
    assert len(out) == 1
    return out.iloc[0]


# ---- hand-computed values ----------------------------------------------------------------


def test_tiny_frame_every_indicator_matches_the_hand_computed_value() -> None:
    row = _one(bars("AAA", DAYS, TINY), as_of=AFTER, lookbacks=SHORT)

    # momentum: c6 / c4 - 1 = 13 / 11 - 1 = 2/11
    assert row["momentum_pct"] == pytest.approx(2 / 11 * 100, rel=1e-12)  # 18.1818...%
    # volume surge: 600 / mean(300, 100, 200) = 600 / 200
    assert row["volume_surge_x"] == pytest.approx(3.0, rel=1e-12)
    # true ranges of bars 2..6: 2, 3, 2, 2.5, 4 (bar 6: |14 - 10| beats 14 - 11)
    # ATR: seed (2 + 3 + 2) / 3 = 7/3; (7/3 * 2 + 2.5) / 3 = 43/18; (43/18 * 2 + 4) / 3 = 79/27
    assert row["atr_pct"] == pytest.approx(79 / 27 / 13 * 100, rel=1e-12)  # 22.5071...%
    # gap: o6 / c5 - 1 = 11 / 10 - 1
    assert row["gap_pct"] == pytest.approx(10.0, rel=1e-12)
    # changes +1 +1 -1 -1 +3; gains seed 2/3, losses 1/3; then 4/9, 5/9; then 35/27, 10/27
    # RSI = 100 - 100 / (1 + 3.5)
    assert row["rsi"] == pytest.approx(100 - 100 / 4.5, rel=1e-12)  # 77.777...
    # 52-week high over all 6 bars: 14; 13 / 14 - 1
    assert row["from_high_pct"] == pytest.approx(-100 / 14, rel=1e-12)  # -7.142857...%

    assert row["bars"] == 6
    assert row["high_bars"] == 6
    assert row["last_close"] == 13.0
    assert row["price"] == 13.0
    assert row["price_source"] == "close"
    assert row["last_ts"] == pd.Timestamp("2024-01-09", tz="UTC")
    assert pd.isna(row["reason"])
    assert pd.isna(row["notes"])


def test_only_the_last_window_bars_are_read_and_wilder_is_seeded_at_the_window_start() -> None:
    lookbacks = Lookbacks(momentum_bars=2, volume_bars=3, atr_bars=3, rsi_bars=3, high_bars=5)  # window: bars 2..6
    row = _one(bars("AAA", DAYS, TINY), as_of=AFTER, lookbacks=lookbacks)

    # true ranges of bars 3..6 within the window: 3, 2, 2.5, 4; ATR seed (3 + 2 + 2.5) / 3 = 2.5, then (2.5 * 2 + 4) / 3 = 3
    assert row["atr_pct"] == pytest.approx(3 / 13 * 100, rel=1e-12)
    # window closes 11 12 11 10 13: changes +1 -1 -1 +3; seeds 1/3 and 2/3, then 11/9 and 4/9: RS 2.75
    assert row["rsi"] == pytest.approx(100 - 100 / 3.75, rel=1e-12)
    assert row["bars"] == 6
    assert row["high_bars"] == 5


def test_more_history_than_the_window_changes_nothing() -> None:
    days = sessions(400)
    full = random_walk("AAA", days, seed=3)
    lookbacks = Lookbacks()
    recent = full.iloc[-lookbacks.window_bars :].reset_index(drop=True)
    as_of = after_close(days[-1])
    long_row, short_row = _one(full, as_of=as_of), _one(recent, as_of=as_of)
    for name in INDICATORS:
        assert long_row[name] == short_row[name], name
    assert long_row["bars"] == 400
    assert short_row["bars"] == lookbacks.window_bars


def test_flat_series_rsi_is_50_and_rising_series_rsi_is_100() -> None:
    flat = [(10.0, 10.0, 10.0, 10.0, 100.0)] * 6
    rising = [(10.0 + i, 10.5 + i, 9.5 + i, 10.0 + i, 100.0) for i in range(6)]
    frame = pd.concat([bars("FLAT", DAYS, flat), bars("UP", DAYS, rising)], ignore_index=True)
    out = compute_indicators(frame, as_of=AFTER, lookbacks=SHORT).set_index("symbol")
    assert out.loc["FLAT", "rsi"] == 50.0
    assert out.loc["UP", "rsi"] == 100.0
    assert out.loc["FLAT", "atr_pct"] == 0.0


# ---- against plain loops on random data -------------------------------------------------------


def _loop_atr(high: list[float], low: list[float], close: list[float], n: int) -> float:
    true_ranges = [max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1])) for i in range(1, len(close))]
    atr = sum(true_ranges[:n]) / n
    for tr in true_ranges[n:]:
        atr = (atr * (n - 1) + tr) / n
    return atr


def _loop_rsi(close: list[float], n: int) -> float:
    changes = [close[i] - close[i - 1] for i in range(1, len(close))]
    gain = sum(max(d, 0.0) for d in changes[:n]) / n
    loss = sum(max(-d, 0.0) for d in changes[:n]) / n
    for d in changes[n:]:
        gain = (gain * (n - 1) + max(d, 0.0)) / n
        loss = (loss * (n - 1) + max(-d, 0.0)) / n
    if loss == 0:
        return 50.0 if gain == 0 else 100.0
    return 100.0 - 100.0 / (1.0 + gain / loss)


LENGTHS = {"AAA": 15, "BBB": 21, "CCC": 60, "DDD": 252, "EEE": 400}


@pytest.fixture(scope="module")
def random_universe() -> tuple[pd.DataFrame, datetime]:
    days = sessions(max(LENGTHS.values()))
    frames = [random_walk(symbol, days[-length:], seed=seed) for seed, (symbol, length) in enumerate(LENGTHS.items())]
    # Shuffle rows: the indicators must not depend on the input order.
    frame = pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=11).reset_index(drop=True)
    return frame, after_close(days[-1])


def test_atr_and_rsi_match_plain_loops_on_random_data(random_universe: tuple[pd.DataFrame, datetime]) -> None:
    frame, as_of = random_universe
    lookbacks = Lookbacks()
    out = compute_indicators(frame, as_of=as_of, lookbacks=lookbacks).set_index("symbol")
    for symbol in LENGTHS:
        mine = frame[frame["symbol"] == symbol].sort_values("ts").iloc[-lookbacks.window_bars :]
        high, low, close = (mine[name].tolist() for name in ("high", "low", "close"))
        expected_atr_pct = _loop_atr(high, low, close, 14) / close[-1] * 100
        assert out.loc[symbol, "atr_pct"] == pytest.approx(expected_atr_pct, rel=1e-12), symbol
        assert out.loc[symbol, "rsi"] == pytest.approx(_loop_rsi(close, 14), rel=1e-12), symbol


def test_momentum_surge_gap_and_high_match_a_direct_computation(random_universe: tuple[pd.DataFrame, datetime]) -> None:
    frame, as_of = random_universe
    out = compute_indicators(frame, as_of=as_of).set_index("symbol")
    for symbol, length in LENGTHS.items():
        mine = frame[frame["symbol"] == symbol].sort_values("ts")
        c, o, h, v = (mine[name].to_numpy() for name in ("close", "open", "high", "volume"))
        if length >= 21:
            assert out.loc[symbol, "momentum_pct"] == pytest.approx((c[-1] / c[-21] - 1) * 100, rel=1e-12)
            assert out.loc[symbol, "volume_surge_x"] == pytest.approx(v[-1] / v[-21:-1].mean(), rel=1e-12)
        assert out.loc[symbol, "gap_pct"] == pytest.approx((o[-1] / c[-2] - 1) * 100, rel=1e-12)
        assert out.loc[symbol, "from_high_pct"] == pytest.approx((c[-1] / h[-252:].max() - 1) * 100, rel=1e-12)
        assert out.loc[symbol, "high_bars"] == min(length, 252)


# ---- which bars count ---------------------------------------------------------------------------


def test_daily_bar_is_used_only_once_its_session_has_closed() -> None:
    frame = bars("AAA", DAYS, TINY)
    before = _one(frame, as_of=datetime(2024, 1, 9, 20, 59, tzinfo=UTC), lookbacks=SHORT)
    at_close = _one(frame, as_of=datetime(2024, 1, 9, 21, 0, tzinfo=UTC), lookbacks=SHORT)
    assert before["bars"] == 5
    assert before["last_ts"] == pd.Timestamp("2024-01-08", tz="UTC")
    assert at_close["bars"] == 6
    assert at_close["last_ts"] == pd.Timestamp("2024-01-09", tz="UTC")


def test_bar_ends_follow_the_calendar_half_days_and_bar_size() -> None:
    labels = pd.DatetimeIndex(["2024-07-03", "2024-07-05", "2024-07-06"], tz="UTC").as_unit("ns").asi8  # half day, full day, a Saturday
    ends = pd.DatetimeIndex(bar_ends(labels, "1Day")).tz_localize("UTC")
    assert list(ends) == [pd.Timestamp("2024-07-03T17:00Z"), pd.Timestamp("2024-07-05T20:00Z"), pd.Timestamp("2024-07-07T00:00Z")]
    minute = pd.DatetimeIndex(["2024-07-05T14:30Z"]).as_unit("ns").asi8
    assert pd.Timestamp(int(bar_ends(minute, "5Min")[0]), tz="UTC") == pd.Timestamp("2024-07-05T14:35Z")


# ---- quotes ----------------------------------------------------------------------------------------


def test_quote_newer_than_the_last_bar_replaces_the_close_for_momentum_and_high() -> None:
    as_of = datetime(2024, 1, 10, 15, 0, tzinfo=UTC)
    latest = quotes([("AAA", datetime(2024, 1, 10, 14, 45, tzinfo=UTC), 13.9, 14.1)])
    row = _one(bars("AAA", DAYS, TINY), as_of=as_of, lookbacks=SHORT, quotes=latest)
    assert row["price_source"] == "quote"
    assert row["price"] == pytest.approx(14.0)
    assert row["momentum_pct"] == pytest.approx((14 / 11 - 1) * 100, rel=1e-12)  # mid 14 against c4 = 11
    assert row["from_high_pct"] == pytest.approx(0.0, abs=1e-12)  # mid 14 against the high 14
    assert row["atr_pct"] == pytest.approx(79 / 27 / 13 * 100, rel=1e-12)  # still per the last close
    assert row["last_close"] == 13.0


def test_quotes_not_newer_than_the_last_bar_or_after_as_of_are_not_used() -> None:
    as_of = datetime(2024, 1, 10, 15, 0, tzinfo=UTC)
    latest = quotes(
        [
            ("AAA", datetime(2024, 1, 9, 20, 0, tzinfo=UTC), 20.0, 20.2),  # during the last bar's session
            ("BBB", datetime(2024, 1, 10, 15, 1, tzinfo=UTC), 20.0, 20.2),  # after as_of
        ]
    )
    frame = pd.concat([bars("AAA", DAYS, TINY), bars("BBB", DAYS, TINY)], ignore_index=True)
    out = compute_indicators(frame, as_of=as_of, lookbacks=SHORT, quotes=latest)
    assert list(out["price_source"]) == ["close", "close"]
    assert list(out["price"]) == [13.0, 13.0]


def test_latest_quote_wins_and_a_crossed_one_is_ignored_with_a_note() -> None:
    as_of = datetime(2024, 1, 10, 15, 0, tzinfo=UTC)
    latest = quotes(
        [
            ("AAA", datetime(2024, 1, 10, 14, 0, tzinfo=UTC), 15.0, 15.2),
            ("AAA", datetime(2024, 1, 10, 14, 30, tzinfo=UTC), 13.9, 14.1),  # the latest
            ("BBB", datetime(2024, 1, 10, 14, 30, tzinfo=UTC), 14.2, 14.0),  # crossed
        ]
    )
    frame = pd.concat([bars("AAA", DAYS, TINY), bars("BBB", DAYS, TINY)], ignore_index=True)
    out = compute_indicators(frame, as_of=as_of, lookbacks=SHORT, quotes=latest).set_index("symbol")
    assert out.loc["AAA", "price"] == pytest.approx(14.0)
    assert out.loc["AAA", "price_source"] == "quote"
    assert out.loc["BBB", "price"] == 13.0
    assert out.loc["BBB", "price_source"] == "close"
    assert "crossed" in out.loc["BBB", "notes"]
    assert pd.isna(out.loc["BBB", "reason"])  # still scored, on the close


# ---- symbols that cannot be scored keep their row ------------------------------------------------------


def test_short_and_missing_histories_are_reported_with_counts_not_dropped() -> None:
    frame = pd.concat([bars("AAA", DAYS, TINY), bars("SHORT", DAYS[-3:], TINY[-3:])], ignore_index=True)
    out = compute_indicators(frame, as_of=AFTER, lookbacks=SHORT, symbols=["AAA", "SHORT", "NONE"]).set_index("symbol")
    assert list(out.index) == ["AAA", "NONE", "SHORT"]
    assert pd.isna(out.loc["AAA", "reason"])
    assert out.loc["SHORT", "reason"] == "insufficient history (3 bars, need 4)"
    assert out.loc["NONE", "reason"] == "insufficient history (0 bars, need 4)"
    assert out.loc["NONE", "bars"] == 0
    assert pd.isna(out.loc["NONE", "last_ts"])
    assert pd.isna(out.loc["NONE", "price_source"])
    assert out.loc["SHORT", "gap_pct"] == pytest.approx((11 / 10 - 1) * 100)  # what can be computed still is


def test_invalid_bars_mixed_feeds_and_no_volume_each_get_a_reason() -> None:
    broken = bars("NAN", DAYS, TINY)
    broken.loc[3, "close"] = np.nan
    mixed = pd.concat([bars("MIX", DAYS[:3], TINY[:3], feed="iex"), bars("MIX", DAYS[3:], TINY[3:], feed="sip")], ignore_index=True)
    silent = bars("ZERO", DAYS, [(*row[:4], 0.0) for row in TINY])
    frame = pd.concat([broken, mixed, silent], ignore_index=True)
    out = compute_indicators(frame, as_of=AFTER, lookbacks=SHORT).set_index("symbol")
    assert out.loc["NAN", "reason"] == "invalid bars: 1 in the scan window with missing or non-positive prices or volume"
    assert out.loc["MIX", "reason"].startswith("volume surge undefined: the last 4 bars come from more than one feed")
    assert out.loc["ZERO", "reason"] == "volume surge undefined: no volume in the previous 3 bars"


def test_repeated_timestamps_are_invalid_bars() -> None:
    frame = bars("AAA", DAYS, TINY)
    frame = pd.concat([frame, frame.iloc[[2]]], ignore_index=True)
    row = _one(frame, as_of=AFTER, lookbacks=SHORT)
    assert row["reason"] == "invalid bars: 1 repeated timestamps in the scan window"


# ---- refused input ----------------------------------------------------------------------------------------


def test_empty_bars_without_symbols_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no bars to scan"):
        compute_indicators(bars("AAA", DAYS, TINY).iloc[0:0], as_of=AFTER)


def test_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        compute_indicators(bars("AAA", DAYS, TINY), as_of=datetime(2024, 1, 10))  # the point of the test


def test_bars_of_symbols_outside_the_named_universe_are_refused() -> None:
    with pytest.raises(ValueError, match="not in the scan's symbols: AAA"):
        compute_indicators(bars("AAA", DAYS, TINY), as_of=AFTER, symbols=["BBB"])


def test_mixed_timeframes_and_missing_columns_are_refused() -> None:
    frame = bars("AAA", DAYS, TINY)
    other = frame.assign(timeframe="1Hour", symbol="BBB")
    with pytest.raises(ValueError, match="one timeframe per scan"):
        compute_indicators(pd.concat([frame, other], ignore_index=True), as_of=AFTER)
    with pytest.raises(ValueError, match="configured for 1Hour"):
        compute_indicators(frame, as_of=AFTER, timeframe="1Hour")
    with pytest.raises(ValueError, match="missing column"):
        compute_indicators(frame.drop(columns=["volume"]), as_of=AFTER)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_lookbacks_must_be_positive_whole_bars(bad: object) -> None:
    with pytest.raises(ValueError, match="momentum_bars"):
        Lookbacks(momentum_bars=bad)  # type: ignore[arg-type]


def test_default_lookbacks_need_21_bars_and_read_252() -> None:
    assert Lookbacks().required_bars == 21
    assert Lookbacks().window_bars == 252
    assert math.isclose(Lookbacks(high_bars=10).window_bars, 21)
