"""Bar and quote frames for the scan tests: hand-written tiny frames, seeded random walks, synthetic-feed bars."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from omni_tasks.contracts.bars import canonical_bars
from omni_tasks.marketdata import calendar
from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.providers.synthetic import SyntheticBars


def sessions(count: int, *, last: date = date(2024, 12, 31)) -> list[date]:
    """The last ``count`` exchange sessions up to ``last``."""
    found = calendar.sessions(date(2000, 1, 3), last)
    assert len(found) >= count
    return found[-count:]


def after_close(day: date) -> datetime:
    """An instant safely after ``day``'s session closed (the next 00:00 UTC)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + pd.Timedelta(days=1)


def bars(symbol: str, days: Sequence[date], ohlcv: Sequence[Sequence[float]], *, feed: str = "sip") -> pd.DataFrame:
    """Canonical daily bars of one symbol from rows of (open, high, low, close, volume)."""
    rows = np.asarray(ohlcv, dtype=np.float64)
    frame = pd.DataFrame({"ts": pd.to_datetime(list(days)), "open": rows[:, 0], "high": rows[:, 1], "low": rows[:, 2], "close": rows[:, 3], "volume": rows[:, 4]})
    return canonical_bars(frame, symbol=symbol, timeframe="1Day", provider="alpaca" if feed in ("sip", "iex") else feed, feed=feed, adjustment="raw")


def random_walk(symbol: str, days: Sequence[date], *, seed: int) -> pd.DataFrame:
    """A seeded random OHLCV walk with gaps, wicks and lognormal volume, as canonical daily bars."""
    rng = np.random.default_rng(seed)
    n = len(days)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0005, 0.02, n)))
    open_ = np.concatenate(([50.0], close[:-1])) * np.exp(rng.normal(0.0, 0.01, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.01, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.01, n)))
    volume = np.round(1e6 * rng.lognormal(0.0, 0.5, n))
    return bars(symbol, days, np.column_stack([open_, high, low, close, volume]))


def synthetic(symbols: Sequence[str], start: date, end: date) -> pd.DataFrame:
    """The offline synthetic feed's daily bars for ``symbols`` with start <= session < end."""
    provider = SyntheticBars()
    lo = datetime(start.year, start.month, start.day, tzinfo=UTC)
    hi = datetime(end.year, end.month, end.day, tzinfo=UTC)
    return pd.concat([provider.fetch_bars(BarRequest(s, "1Day", lo, hi, feed="synthetic")).bars for s in symbols], ignore_index=True)


def quotes(rows: Sequence[tuple[str, datetime, float, float]]) -> pd.DataFrame:
    """A quote frame (canonical columns) from (symbol, ts, bid, ask)."""
    return pd.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "ts": pd.to_datetime([r[1] for r in rows], utc=True),
            "bid": [r[2] for r in rows],
            "bid_size": 100.0,
            "ask": [r[3] for r in rows],
            "ask_size": 100.0,
            "source": "test",
        }
    )
