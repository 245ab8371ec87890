"""Property tests (hypothesis): the OHLC invariants, and gap detection on generated calendars."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_tasks.validation import BarChecks, SessionGrid, detect_gaps, validate_bars
from omni_tasks.validation.checks import bar_row_checks
from omni_tasks.validation.grid import NS_PER_DAY
from tests.unit.validation.helpers import synthetic, utc

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAME_PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # each example runs pandera too
MINUTE = 60 * 10**9

prices = st.floats(min_value=0.01, max_value=1e5, allow_nan=False, allow_infinity=False)
fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def ohlc_rows(draw: st.DrawFn, max_rows: int = 40) -> pd.DataFrame:
    """A canonical frame of consistent bars: high = max(o, c) + x, low = min(o, c) - y, low > 0, volume >= 0."""
    n = draw(st.integers(1, max_rows))
    rows = [draw(st.tuples(prices, prices, fractions, st.floats(0.0, 0.99), st.floats(0.0, 1e9))) for _ in range(n)]
    o = np.array([r[0] for r in rows])
    c = np.array([r[1] for r in rows])
    high = np.maximum(o, c) * (1 + np.array([r[2] for r in rows]))
    low = np.minimum(o, c) * (1 - np.array([r[3] for r in rows]))
    ts = pd.date_range("2024-11-25T14:30:00Z", periods=n, freq="1min").as_unit("ns")
    return pd.DataFrame(
        {
            "symbol": "AAPL",
            "timeframe": "1Min",
            "ts": ts,
            "open": o,
            "high": high,
            "low": low,
            "close": c,
            "volume": np.array([r[4] for r in rows]),
            "vwap": (high + low + c) / 3,
            "trade_count": pd.array([1] * n, dtype="Int64"),
            "provider": "synthetic",
            "feed": "synthetic",
            "adjustment": "raw",
        }
    )


def _quarantine_checks(frame: pd.DataFrame) -> list[tuple[int, str]]:
    result = validate_bars(frame, timeframe="1Min", start=utc("2024-11-25"), end=utc("2024-11-26"))
    q = result.violations[result.violations["action"] == "quarantine"]
    assert len(result.clean) + len(result.quarantine) == len(frame)
    return [(int(r), str(c)) for r, c in zip(q["row"], q["check"], strict=True)]


@FRAME_PROPERTY
@given(ohlc_rows())
def test_property_consistent_bars_pass_every_invariant(frame: pd.DataFrame) -> None:
    prices_ = {k: frame[k].to_numpy() for k in ("open", "high", "low", "close")}
    codes = np.zeros(len(frame), dtype=np.int64)
    assert bar_row_checks(codes, frame["ts"].array.asi8, prices_, frame["volume"].to_numpy(), vwap=frame["vwap"].to_numpy()) == []
    assert _quarantine_checks(frame) == []
    BarChecks.validate(frame, lazy=True)


CORRUPTIONS = {
    "nan": "not_null",
    "high_below": "ohlc_high",
    "low_above": "ohlc_low",
    "non_positive": "positive_price",
    "infinite": "positive_price",
    "negative_volume": "volume_non_negative",
    "duplicate": "duplicate_ts",
    "earlier": "ts_order",
    "off_grid": "outside_session",
}


@FRAME_PROPERTY
@given(ohlc_rows(), st.data())
def test_property_any_single_corruption_is_caught_at_its_row_only(frame: pd.DataFrame, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(sorted(CORRUPTIONS)), label="kind")
    row = data.draw(st.integers(0, len(frame) - 1), label="row")
    column = data.draw(st.sampled_from(["open", "high", "low", "close"]), label="column")
    f = frame.copy()
    if kind == "nan":
        f.loc[row, data.draw(st.sampled_from(["open", "high", "low", "close", "volume"]))] = np.nan
    elif kind == "high_below":
        f.loc[row, "high"] = max(f.at[row, "open"], f.at[row, "close"]) * (1 - data.draw(st.floats(1e-6, 0.5)))
    elif kind == "low_above":
        f.loc[row, "low"] = min(f.at[row, "open"], f.at[row, "close"]) * (1 + data.draw(st.floats(1e-6, 0.5)))
    elif kind == "non_positive":
        f.loc[row, column] = -data.draw(st.floats(0.0, 1e5))
    elif kind == "infinite":
        f.loc[row, column] = np.inf
    elif kind == "negative_volume":
        f.loc[row, "volume"] = -data.draw(st.floats(1e-3, 1e9))
    elif kind == "duplicate":
        f = pd.concat([f.iloc[: row + 1], f.iloc[[row]], f.iloc[row + 1 :]], ignore_index=True)
        row += 1
    elif kind == "earlier":
        if len(f) < 2:
            return
        row = max(row, 1)
        order = list(range(len(f)))
        order[row - 1], order[row] = row, row - 1  # the later bar first: the row after it goes back in time
        f = f.iloc[order].reset_index(drop=True)
    elif kind == "off_grid":
        f.loc[row, "ts"] = f.at[row, "ts"] + pd.Timedelta(seconds=data.draw(st.integers(1, 59)))
    got = _quarantine_checks(f)
    assert {r for r, _ in got} == {row}, got
    assert CORRUPTIONS[kind] in {c for _, c in got}, got
    with pytest.raises(pa.errors.SchemaErrors) as info:  # the pandera model agrees on the row
        BarChecks.validate(f, lazy=True)
    assert {int(i) for i in info.value.failure_cases["index"].dropna()} == {row}


# ---- gap detection on generated calendars -------------------------------------------------


@st.composite
def generated_calendar(draw: st.DrawFn) -> tuple[SessionGrid, int, int]:
    """1-4 sessions on consecutive made-up days, random hours and lengths, some half days, maybe a holiday between."""
    timeframe = draw(st.sampled_from(["1Min", "5Min", "15Min"]))
    step = {"1Min": 1, "5Min": 5, "15Min": 15}[timeframe] * MINUTE
    first = date(2031, 3, 3)
    n = draw(st.integers(1, 4))
    holiday_after = draw(st.integers(-1, n - 1))
    dates, opens, closes, regular_closes, closures = [], [], [], [], []
    day = first
    for j in range(n):
        midnight = int(pd.Timestamp(day).value)
        open_ = midnight + draw(st.integers(0, 600)) * MINUTE
        close = open_ + draw(st.integers(1, 30)) * step - draw(st.integers(0, 1)) * (step // 2)  # may end mid-bar
        dates.append(day)
        opens.append(open_)
        closes.append(close)
        regular_closes.append(close + draw(st.integers(0, 5)) * step)  # > close: a half day
        day += timedelta(days=1)
        if j == holiday_after:
            m = int(pd.Timestamp(day).value)
            closures.append((day, "holiday", "Generated Day", m + 14 * 60 * MINUTE, m + 15 * 60 * MINUTE))
            day += timedelta(days=1)
    grid = SessionGrid.from_sessions(timeframe, dates, np.array(opens), np.array(closes), regular_closes=np.array(regular_closes), closures=closures, tz="UTC")
    return grid, int(pd.Timestamp(first).value), int(pd.Timestamp(day).value) + NS_PER_DAY


def _cells(stretches: pd.DataFrame, kind: str, symbols: list[str], step: int) -> set[tuple[int, int]]:
    out = set()
    for row in stretches[stretches["kind"] == kind].itertuples():
        first, end = row.start.value, row.end.value
        assert (end - first) == row.bars * step, row  # a stretch is contiguous: bars x step
        out |= {(symbols.index(row.symbol), t) for t in range(first, end, step)}
    return out


@PROPERTY
@given(generated_calendar(), st.integers(1, 3), st.data())
def test_property_removed_bars_are_reported_exactly_and_classified(cal: tuple[SessionGrid, int, int], n_symbols: int, data: st.DataObject) -> None:
    grid, start, end = cal
    window = grid.window(start, end, end + NS_PER_DAY)
    starts, step = window.starts, grid.step_ns
    symbols = [f"S{i}" for i in range(n_symbols)]
    removed = np.array(data.draw(st.lists(st.booleans(), min_size=n_symbols * len(starts), max_size=n_symbols * len(starts))), dtype=bool).reshape(n_symbols, len(starts))
    codes, ts = np.nonzero(~removed)
    gaps = detect_gaps(window, symbols, codes, starts[ts])

    nobody: np.ndarray = np.asarray(removed.all(axis=0), dtype=bool)
    whole = np.array([nobody[window.start_session == j].all() for j in window.start_session])
    halt_cols = nobody & ~whole if n_symbols >= 2 else np.zeros(len(starts), dtype=bool)
    want_halt = {(s, int(starts[c])) for s, c in zip(*np.nonzero(removed & halt_cols), strict=True)}
    want_hole = {(s, int(starts[c])) for s, c in zip(*np.nonzero(removed & ~halt_cols), strict=True)}
    assert _cells(gaps.stretches, "provider_hole", symbols, step) == want_hole
    assert _cells(gaps.stretches, "halt", symbols, step) == want_halt
    assert set(gaps.stretches.loc[gaps.stretches["is_gap"], "kind"]) <= {"provider_hole", "halt"}
    assert int(gaps.present.sum()) == int((~removed).sum())
    assert gaps.missing["provider_hole"].sum() == len(want_hole)
    assert gaps.missing["halt"].sum() == len(want_halt)

    # Stretches are maximal: two stretches of one symbol and kind never touch inside a session.
    real = gaps.stretches[gaps.stretches["is_gap"]].sort_values(["symbol", "start"])
    for (_, a), (_, b) in zip(real.iloc[:-1].iterrows(), real.iloc[1:].iterrows(), strict=True):
        assert not (a["symbol"] == b["symbol"] and a["kind"] == b["kind"] and a["session"] == b["session"] and a["end"] == b["start"])

    # Closures and half days are classified, never gaps.
    closed = gaps.stretches[~gaps.stretches["is_gap"]]
    assert len(closed[closed["kind"] == "holiday"]) == n_symbols * len(grid.closure_dates)
    half = window.half_days
    for j in np.flatnonzero(half):
        s = window.sessions[j]
        bars = len(range(int(grid.closes[s]) + (-(int(grid.closes[s]) - int(grid.opens[s])) % step), int(grid.regular_closes[s]), step))
        assert gaps.missing["half_day"][:, j].tolist() == [bars] * n_symbols


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_real_calendar_removed_bars_are_exactly_the_provider_holes(data: st.DataObject) -> None:
    frame = synthetic(["AAPL", "MSFT"], "2024-11-27", "2024-11-30")  # a regular day, Thanksgiving, a half day
    drop = np.array(data.draw(st.lists(st.booleans(), min_size=len(frame), max_size=len(frame))), dtype=bool)
    drop &= np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).random(len(frame)) < 0.05
    kept = frame[~drop].reset_index(drop=True)
    result = validate_bars(kept, timeframe="1Min", start=utc("2024-11-27"), end=utc("2024-11-30"))
    removed = frame[drop]
    both = removed.groupby("ts")["symbol"].nunique()
    halted = set(both[both == 2].index)
    gaps = result.gaps[result.gaps["is_gap"]]
    got = {(r.symbol, t, r.kind) for r in gaps.itertuples() for t in pd.date_range(r.start, r.end, freq="1min", inclusive="left")}
    want = {(s, t, "halt" if t in halted else "provider_hole") for s, t in zip(removed["symbol"], removed["ts"], strict=True)}
    assert got == want
    assert set(result.gaps.loc[~result.gaps["is_gap"], "kind"]) == {"holiday", "half_day"}
