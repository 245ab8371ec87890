"""The offline ``synthetic`` feed: a seeded random walk with a realistic OHLCV shape.

Deterministic: the same symbol and session always give the same bar, whatever
range is asked for, so a re-run backfill stores identical rows. Bars exist
only in exchange sessions (half days included). Every row says
``provider=synthetic``: THIS DATA IS NOT REAL, and it never stands in for a
real provider unless the operator put it in the provider order.
"""

from __future__ import annotations

import hashlib
from datetime import date
from functools import lru_cache

import numpy as np
import pandas as pd

from omni_tasks.marketdata import calendar
from omni_tasks.marketdata.frames import TIMEFRAMES, canonical_bars, empty_bars
from omni_tasks.marketdata.providers.base import BarRequest, BarResult, Capabilities

_MAX_SESSIONS = 12_000  # daily draws per symbol: sessions from 2000 well past 2040


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@lru_cache(maxsize=2048)
def _daily_path(symbol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """open, high, low, close, volume for every session since the calendar's start."""
    rng = np.random.default_rng(_seed("daily", symbol))
    base = 20.0 + (_seed("base", symbol) % 48_000) / 100.0
    vol = 0.012 + (_seed("vol", symbol) % 20) / 1000.0
    returns = rng.normal(0.0003, vol, _MAX_SESSIONS)
    gaps = rng.normal(0.0, vol / 4, _MAX_SESSIONS)
    wick_hi = np.abs(rng.normal(0.0, vol / 2, _MAX_SESSIONS))
    wick_lo = np.abs(rng.normal(0.0, vol / 2, _MAX_SESSIONS))
    close = base * np.exp(np.cumsum(returns))
    prev = np.concatenate(([base], close[:-1]))
    open_ = prev * np.exp(gaps)
    high = np.maximum(open_, close) * np.exp(wick_hi)
    low = np.minimum(open_, close) * np.exp(-wick_lo)
    avg_volume = 2e5 + (_seed("volume", symbol) % 50) * 1e5
    volume = np.round(avg_volume * rng.lognormal(0.0, 0.35, _MAX_SESSIONS))
    return open_, high, low, close, volume


@lru_cache(maxsize=1)
def _session_index() -> dict[date, int]:
    all_sessions = calendar.sessions(date.fromisoformat(calendar.CALENDAR_START), date(2100, 1, 1))
    return {d: i for i, d in enumerate(all_sessions)}


class SyntheticBars:
    """Offline bars for any symbol: provider ``synthetic``, feed ``synthetic``."""

    name = "synthetic"
    capabilities = Capabilities(
        timeframes=frozenset(TIMEFRAMES),
        rate_limit_per_min=1_000_000,
        needs_key=False,
        feeds=frozenset({"synthetic"}),
        adjustments=frozenset({"raw", "split", "dividend", "all"}),
    )

    def available(self) -> bool:
        return True

    def fetch_bars(self, request: BarRequest) -> BarResult:
        timeframe = TIMEFRAMES[request.timeframe]
        starts = calendar.expected_bar_starts(timeframe, request.start, request.end)
        if len(starts) == 0:
            return BarResult(empty_bars(), notes=["no sessions in range"])
        if timeframe.intraday:
            # Shape whole sessions, then cut: a bar never depends on the range asked for.
            first = pd.Timestamp(starts[0].tz_convert(calendar.calendar().tz).date()).tz_localize("UTC")
            last = pd.Timestamp(starts[-1].tz_convert(calendar.calendar().tz).date()).tz_localize("UTC") + pd.Timedelta(days=1)
            requested = starts
            starts = calendar.expected_bar_starts(timeframe, first.to_pydatetime(), last.to_pydatetime())
        open_, high, low, close, volume = _daily_path(request.symbol)
        index = _session_index()
        if timeframe.code == "1Day":
            rows = [index[ts.date()] for ts in starts]
            frame = pd.DataFrame({"ts": starts, "open": open_[rows], "high": high[rows], "low": low[rows], "close": close[rows], "volume": volume[rows]})
        else:
            frame = self._intraday(request.symbol, starts, open_, high, low, close, volume, index)
            frame = frame[frame["ts"].isin(requested)].reset_index(drop=True)
        frame["vwap"] = (frame["high"] + frame["low"] + frame["close"]) / 3.0
        frame["trade_count"] = np.maximum(1, (frame["volume"] // 100)).astype("int64")
        bars = canonical_bars(frame, symbol=request.symbol, timeframe=request.timeframe, provider="synthetic", feed="synthetic", adjustment=request.adjustment)
        return BarResult(bars, notes=["synthetic data: not real"])

    @staticmethod
    def _intraday(symbol: str, starts: pd.DatetimeIndex, open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray, index: dict[date, int]) -> pd.DataFrame:
        ny = starts.tz_convert(calendar.calendar().tz)
        frames = []
        for session_date, positions in pd.Series(range(len(starts)), index=ny.date).groupby(level=0):
            i = index[session_date]
            n = len(positions)
            rng = np.random.default_rng(_seed("intraday", symbol, session_date.isoformat(), n))
            steps = rng.normal(0.0, 1.0, n)
            walk = np.cumsum(steps) - np.linspace(0, 1, n) * steps.sum()  # a bridge: ends where it starts
            span = np.log(high[i] / low[i]) / 4
            path = np.exp(np.linspace(np.log(open_[i]), np.log(close[i]), n + 1)[1:] + walk * span / max(1.0, np.abs(walk).max()))
            bar_open = np.concatenate(([open_[i]], path[:-1]))
            wick = np.abs(rng.normal(0.0, span / 6, n))
            bar_high = np.maximum(bar_open, path) * np.exp(wick)
            bar_low = np.minimum(bar_open, path) * np.exp(-wick)
            weights = 1.5 - np.sin(np.linspace(0, np.pi, n))  # the U-shaped intraday volume profile
            bar_volume = np.round(volume[i] * weights / weights.sum())
            frames.append(pd.DataFrame({"ts": starts[positions.to_numpy()], "open": bar_open, "high": bar_high, "low": bar_low, "close": path, "volume": bar_volume}))
        return pd.concat(frames, ignore_index=True)
