"""Stale series: a series that stopped (its last bar is too old) or froze (the close does not move).

* **stale**: the symbol's last clean bar is more than ``stale_bars`` expected
  bars before the end of the window (or before ``as_of``): counted in expected
  bars from the exchange calendar, so a weekend or a holiday never makes a
  series stale.
* **flat**: ``flat_bars`` or more consecutive bars with the same close: a
  frozen feed, or a provider repeating the last price. Flagged once per run,
  on the run's first bar.
* **filled**: a bar with zero volume whose open, high, low and close all equal
  the previous close: the signature of a provider forward-filling a minute
  without trades. Validation never fills anything itself; a filled bar from a
  provider is flagged so it is on record.

* **zero volume**: a bar without volume in a series that normally trades
  (most of its bars have volume): a session without trades in a liquid name
  is rare enough to be looked at (a halt, a feed that lost the volume).

All four are flags for review, not quarantine: the rows are real rows.
"""

from __future__ import annotations

import numpy as np


def flat_runs(codes: np.ndarray, close: np.ndarray, min_bars: int) -> tuple[np.ndarray, np.ndarray]:
    """(first position, length) of every run of >= ``min_bars`` equal closes, over bars sorted by (symbol code, ts)."""
    n = len(close)
    if n == 0 or min_bars < 1:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    same = np.zeros(n, dtype=bool)
    same[1:] = (codes[1:] == codes[:-1]) & (close[1:] == close[:-1])
    starts = np.flatnonzero(~same)
    lengths = np.diff(np.append(starts, n))
    keep = lengths >= min_bars
    return starts[keep], lengths[keep]


def filled_bars(codes: np.ndarray, open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Positions of bars that look forward-filled (zero volume, a flat bar at the previous close), sorted by (code, ts)."""
    n = len(close)
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    prev_close = np.empty(n)
    prev_close[0] = np.nan
    prev_close[1:] = close[:-1]
    same_symbol = np.zeros(n, dtype=bool)
    same_symbol[1:] = codes[1:] == codes[:-1]
    hit = same_symbol & (volume == 0) & (open_ == close) & (high == close) & (low == close) & (close == prev_close)
    return np.flatnonzero(hit)


def volume_share(codes: np.ndarray, volume: np.ndarray, n_symbols: int) -> np.ndarray:
    """Per symbol code: the share (0..1) of its bars with a positive volume (NaN without bars)."""
    bars = np.bincount(codes, minlength=n_symbols).astype(np.float64)
    traded = np.bincount(codes, weights=(volume > 0).astype(np.float64), minlength=n_symbols)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bars > 0, traded / np.maximum(bars, 1), np.nan)


def zero_volume_bars(codes: np.ndarray, volume: np.ndarray, n_symbols: int, *, liquid_share: float, min_bars: int) -> np.ndarray:
    """Positions (sorted by code, ts) of zero-volume bars in series that trade on at least ``liquid_share`` of at least ``min_bars`` bars."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    share = volume_share(codes, volume, n_symbols)
    bars = np.bincount(codes, minlength=n_symbols)
    liquid = (bars >= min_bars) & (share >= liquid_share)
    return np.flatnonzero((volume == 0) & liquid[codes])


def bars_behind(last_present: np.ndarray, n_expected: int, *, explained: np.ndarray | None = None) -> np.ndarray:
    """Expected bars after each symbol's last present bar (``last_present`` -1: none present, all are behind).

    ``explained`` (symbols x expected bars, non-zero where the backfill ledger
    says there is no data): those bars are not counted behind.
    """
    behind = n_expected - 1 - last_present
    if explained is None or n_expected == 0:
        return behind
    after = np.arange(n_expected)[None, :] > last_present[:, None]
    return behind - ((explained != 0) & after).sum(axis=1)
