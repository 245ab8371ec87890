"""Frames for the validation tests: realistic synthetic bars (SyntheticBars on the real XNYS calendar) and quotes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from functools import lru_cache

import numpy as np
import pandas as pd

from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.validation import ValidationResult, validate_bars


def utc(d: date | str, hour: int = 0, minute: int = 0) -> datetime:
    day = date.fromisoformat(d) if isinstance(d, str) else d
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


@lru_cache(maxsize=64)
def _bars(symbol: str, timeframe: str, start: datetime, end: datetime) -> pd.DataFrame:
    return SyntheticBars().fetch_bars(BarRequest(symbol, timeframe, start, end)).bars


def synthetic(symbols: Sequence[str], start: str, end: str, timeframe: str = "1Min") -> pd.DataFrame:
    """Canonical synthetic bars of ``symbols`` for [start, end) (dates), one symbol after another, index 0..n-1."""
    frames = [_bars(s, timeframe, utc(start), utc(end)) for s in symbols]
    return pd.concat(frames, ignore_index=True).copy()


def validate(frame: pd.DataFrame, start: str, end: str, timeframe: str = "1Min", **kwargs: object) -> ValidationResult:
    return validate_bars(frame, timeframe=timeframe, start=utc(start), end=utc(end), **kwargs)  # type: ignore[arg-type]


def found(result: ValidationResult) -> list[tuple[int | None, str]]:
    """(row, check) of every violation, in order."""
    return [(None if pd.isna(r) else int(r), str(c)) for r, c in zip(result.violations["row"], result.violations["check"], strict=True)]


def quotes(symbols: Sequence[str] = ("AAPL", "MSFT"), n: int = 20, *, last: datetime | None = None) -> pd.DataFrame:
    """Well-formed canonical quotes, one per second per symbol, the last at ``last`` (default 2024-11-26 15:00Z)."""
    last = last or utc("2024-11-26", 15)
    rng = np.random.default_rng(3)
    rows = []
    for k, symbol in enumerate(symbols):
        mid = 100.0 + 50 * k + np.cumsum(rng.normal(0, 0.01, n))
        ts = pd.date_range(end=pd.Timestamp(last), periods=n, freq="1s", tz="UTC")
        rows.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "ts": ts,
                    "bid": np.round(mid - 0.01, 2),
                    "bid_size": rng.integers(1, 20, n) * 100.0,
                    "ask": np.round(mid + 0.01, 2),
                    "ask_size": rng.integers(1, 20, n) * 100.0,
                    "source": "alpaca-iex",
                }
            )
        )
    out = pd.concat(rows, ignore_index=True)
    out["ts"] = out["ts"].astype("datetime64[ns, UTC]")
    return out
