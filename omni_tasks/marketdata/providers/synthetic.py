"""The offline ``synthetic`` feed: a seeded random walk with a realistic OHLCV shape.

Deterministic: the same symbol and session always give the same bar, whatever
range is asked for, so a re-run backfill stores identical rows. Bars exist
only in exchange sessions (half days included). Every row says
``provider=synthetic``: THIS DATA IS NOT REAL, and it never stands in for a
real provider unless the operator put it in the provider order.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from functools import lru_cache

import numpy as np
import pandas as pd

from omni_tasks.contracts.bars import TIMEFRAMES, canonical_bars, empty_bars
from omni_tasks.marketdata import calendar
from omni_tasks.marketdata.providers.base import BarRequest, BarResult, Capabilities

_MAX_SESSIONS = 12_000  # daily draws per symbol: sessions from 2000 well past 2040
#: Session 0 of the walk. Sessions before it come from a second walk run backwards from the
#: same base price, so bars from 2000 on stay what they always were when history is widened.
_EPOCH = date(2000, 1, 3)
_MAX_BEFORE = 40_000  # XNYS sessions from 1885 to 2000 (Saturday sessions included) with room


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


@lru_cache(maxsize=2048)
def _past_path(symbol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """open, high, low, close, volume of the sessions before the epoch, newest first (k = 0 is the session before it)."""
    rng = np.random.default_rng(_seed("daily-before", symbol))
    base = 20.0 + (_seed("base", symbol) % 48_000) / 100.0
    vol = 0.012 + (_seed("vol", symbol) % 20) / 1000.0
    returns = rng.normal(0.0003, vol, _MAX_BEFORE)
    gaps = rng.normal(0.0, vol / 4, _MAX_BEFORE)
    wick_hi = np.abs(rng.normal(0.0, vol / 2, _MAX_BEFORE))
    wick_lo = np.abs(rng.normal(0.0, vol / 2, _MAX_BEFORE))
    # The close of the session before the epoch is the base (the forward walk's "previous close").
    close = base * np.exp(-np.concatenate(([0.0], np.cumsum(returns[:-1]))))
    prev = np.concatenate((close[1:], [close[-1]]))
    open_ = prev * np.exp(gaps)
    high = np.maximum(open_, close) * np.exp(wick_hi)
    low = np.minimum(open_, close) * np.exp(-wick_lo)
    avg_volume = 2e5 + (_seed("volume", symbol) % 50) * 1e5
    volume = np.round(avg_volume * rng.lognormal(0.0, 0.35, _MAX_BEFORE))
    return open_, high, low, close, volume


@lru_cache(maxsize=1)
def _session_index() -> dict[date, int]:
    all_sessions = calendar.sessions(_EPOCH, date(2100, 1, 1))
    return {d: i for i, d in enumerate(all_sessions)}


def _positions(days: list[date]) -> dict[date, int]:
    """Each session's place in the walk: 0.. from the epoch on, -1, -2, ... before it."""
    index = _session_index()
    early = [d for d in days if d < _EPOCH]
    out = {d: index[d] for d in days if d >= _EPOCH}
    if early:
        before = calendar.sessions(min(early), _EPOCH - timedelta(days=1))
        out.update({d: i - len(before) for i, d in enumerate(before) if d in set(early)})
    return out


def _ohlcv(symbol: str, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """open, high, low, close, volume at these walk positions (negative: before the epoch)."""
    after, before = _daily_path(symbol), None
    out = [np.empty(len(positions)) for _ in range(5)]
    late = positions >= 0
    for k in range(5):
        out[k][late] = after[k][positions[late]]
    if (~late).any():
        before = _past_path(symbol)
        for k in range(5):
            out[k][~late] = before[k][-positions[~late] - 1]
    return out[0], out[1], out[2], out[3], out[4]


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
        if timeframe.code == "1Day":
            days = [ts.date() for ts in starts]
            where = _positions(days)
            open_, high, low, close, volume = _ohlcv(request.symbol, np.array([where[d] for d in days], dtype=np.int64))
            frame = pd.DataFrame({"ts": starts, "open": open_, "high": high, "low": low, "close": close, "volume": volume})
        else:
            frame = self._intraday(request.symbol, starts)
            frame = frame[frame["ts"].isin(requested)].reset_index(drop=True)
        frame["vwap"] = (frame["high"] + frame["low"] + frame["close"]) / 3.0
        frame["trade_count"] = np.maximum(1, (frame["volume"] // 100)).astype("int64")
        bars = canonical_bars(frame, symbol=request.symbol, timeframe=request.timeframe, provider="synthetic", feed="synthetic", adjustment=request.adjustment)
        return BarResult(bars, notes=["synthetic data: not real"])

    @staticmethod
    def _intraday(symbol: str, starts: pd.DatetimeIndex) -> pd.DataFrame:
        ny = starts.tz_convert(calendar.calendar().tz)
        where = _positions(sorted(set(ny.date)))
        days = sorted(where)
        open_, high, low, close, volume = _ohlcv(symbol, np.array([where[d] for d in days], dtype=np.int64))
        row_of = {d: k for k, d in enumerate(days)}
        frames = []
        for session_date, positions in pd.Series(range(len(starts)), index=ny.date).groupby(level=0):
            i = row_of[session_date]
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
