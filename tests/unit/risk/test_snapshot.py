"""Snapshot inputs: which mark each position gets, and daily returns from bars (gaps, late listings, the benchmark)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from omni_tasks.contracts.quotes import LatestQuote
from omni_tasks.contracts.venue import VenuePosition
from omni_tasks.risk.snapshot import Close, choose_marks, daily_history
from tests.unit.scans.factories import bars

NOW = datetime(2025, 7, 1, 15, 0, tzinfo=UTC)
NOW_NS = int(NOW.timestamp() * 1e9)
DAYS = [date(2025, 6, 23), date(2025, 6, 24), date(2025, 6, 25), date(2025, 6, 26), date(2025, 6, 27)]


def _quote(symbol: str, mid: str, age_s: float) -> LatestQuote:
    ts = NOW_NS - int(age_s * 1e9)
    price = Decimal(mid)
    return LatestQuote(symbol, price - Decimal("0.01"), price + Decimal("0.01"), 100.0, 100.0, ts, ts, price, 1.0, None, None)


def _close_bars(symbol: str, closes: list[float], days: list[date] = DAYS) -> pd.DataFrame:
    return bars(symbol, days, [(c, c, c, c, 1000.0) for c in closes])


def test_marks_prefer_a_fresh_quote_then_the_close_then_the_broker_then_the_cost() -> None:
    positions = [
        VenuePosition("AAA", Decimal("10"), Decimal("90"), Decimal("99")),  # fresh quote
        VenuePosition("BBB", Decimal("5"), Decimal("40"), Decimal("41")),  # quote 30 s old: the close
        VenuePosition("CCC", Decimal("-3"), Decimal("20"), Decimal("21")),  # no quote, no close: the broker's price
        VenuePosition("DDD", Decimal("1"), Decimal("7.5"), None),  # nothing at all: the cost
    ]
    quotes = {"AAA": _quote("AAA", "100.50", 1.0), "BBB": _quote("BBB", "45", 30.0)}
    closes = {
        "AAA": Close(Decimal("98"), datetime(2025, 6, 30, tzinfo=UTC)),
        "BBB": Close(Decimal("44"), datetime(2025, 6, 30, tzinfo=UTC)),
    }
    marks = choose_marks(positions, quotes, closes, max_quote_age_s=10.0, now_ns=NOW_NS)
    assert {s: (m.price, m.source) for s, m in marks.items()} == {
        "AAA": (Decimal("100.50"), "quote"),
        "BBB": (Decimal("44"), "close"),
        "CCC": (Decimal("21"), "broker"),
        "DDD": (Decimal("7.5"), "cost"),
    }
    assert marks["AAA"].as_of == datetime(2025, 7, 1, 14, 59, 59, tzinfo=UTC)
    assert marks["BBB"].as_of == datetime(2025, 6, 30, tzinfo=UTC)
    assert marks["BBB"].to_json() == {"price": "44", "source": "close", "as_of": "2025-06-30T00:00:00+00:00"}
    # A quote exactly at the age limit is still fresh.
    edge = choose_marks(positions[1:2], {"BBB": _quote("BBB", "45", 10.0)}, closes, max_quote_age_s=10.0, now_ns=NOW_NS)
    assert edge["BBB"].source == "quote"


def test_daily_returns_from_closes_with_a_gap_a_late_listing_and_the_benchmark() -> None:
    frame = pd.concat(
        [
            _close_bars("AAA", [100.0, 110.0, 99.0, 99.0, 108.9]),
            _close_bars("BBB", [50.0, 51.0, 52.02], [DAYS[0], DAYS[1], DAYS[3]]),  # no bar on the 25th, none on the 27th
            _close_bars("NEW", [10.0, 12.0], DAYS[3:]),  # listed on the 26th
            _close_bars("SPY", [400.0, 404.0, 404.0, 399.96, 403.9596]),
            _close_bars("ZZZ", [1.0, 2.0, 3.0, 4.0, 5.0]),  # not asked for
        ],
        ignore_index=True,
    )
    history = daily_history(frame, ["AAA", "BBB", "NEW", "NONE"], "SPY", lookback_days=10)
    assert history.symbols == ("AAA", "BBB", "NEW", "NONE")
    assert [s.date() for s in history.sessions] == DAYS[1:]
    expected = np.array(
        [
            # AAA: +10%, -10%, 0, +10%; BBB: +2%, carried (0), +2% over the gap, carried (0); NEW: none, none, none, +20%
            [0.10, 0.02, np.nan, np.nan],
            [-0.10, 0.0, np.nan, np.nan],
            [0.0, 0.02, np.nan, np.nan],
            [0.10, 0.0, 0.20, np.nan],
        ]
    )
    np.testing.assert_allclose(history.returns, expected, rtol=0, atol=1e-12)
    assert history.benchmark is not None
    np.testing.assert_allclose(history.benchmark, [0.01, 0.0, -0.01, 0.01], rtol=0, atol=1e-12)
    assert history.closes["BBB"] == Close(Decimal("52.02"), datetime(2025, 6, 26, tzinfo=UTC))
    assert history.closes["NEW"].price == Decimal("12.0")
    assert "NONE" not in history.closes
    assert history.returns.flags["C_CONTIGUOUS"]


def test_daily_returns_keep_only_the_lookback_and_survive_no_bars_at_all() -> None:
    frame = _close_bars("AAA", [100.0, 101.0, 102.01, 103.0301, 104.060401])
    history = daily_history(frame, ["AAA"], "SPY", lookback_days=2)
    np.testing.assert_allclose(history.returns[:, 0], [0.01, 0.01], rtol=1e-12)
    assert [s.date() for s in history.sessions] == DAYS[3:]
    assert history.benchmark is None
    empty = daily_history(frame.iloc[0:0], ["AAA", "BBB"], "SPY", lookback_days=250)
    assert empty.returns.shape == (0, 2)
    assert empty.sessions == ()
    assert empty.closes == {}


@pytest.mark.parametrize("lookback", [1, 3, 4])
def test_the_lookback_counts_returns_not_bars(lookback: int) -> None:
    history = daily_history(_close_bars("AAA", [1.0, 2.0, 3.0, 4.0, 5.0]), ["AAA"], None, lookback_days=lookback)
    assert history.returns.shape == (min(lookback, 4), 1)
