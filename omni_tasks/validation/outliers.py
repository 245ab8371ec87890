"""Outliers: returns far from a symbol's usual returns, by a robust z-score. Flagged for review, never quarantined.

For each symbol, over its clean bars in time order::

    r = log(close_t / close_{t-1})
    z = |r - median(r)| / (1.4826 * MAD(r))        MAD = median(|r - median(r)|)

and a bar is an outlier when ``z > k`` (default 8). 1.4826 x MAD estimates the
standard deviation of normal returns without being dragged by the outliers
themselves. When more than half the returns are identical (an illiquid
symbol's minutes) MAD is 0; the scale then falls back to 1.2533 x the mean
absolute deviation (the same estimate for normal data), and a symbol whose
returns are all equal is not scored. A symbol with fewer than
``min_returns`` returns is not scored either (its ``returns_scored`` says so).

Intraday bars are scored on returns inside a session only: the overnight move
(last bar of one session to the first of the next) belongs to a different
distribution and is judged on daily bars, where every return is session to
session. A return across missing bars (a provider hole, a halt) spans ``k``
bar intervals and is divided by sqrt(k), as a random walk's k-bar return
grows, so a gap alone does not make an outlier. The flagged row is the bar
the jump goes into.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MAD_TO_SD = 1.4826
MEAN_AD_TO_SD = 1.2533


@dataclass(frozen=True)
class Outliers:
    """Positions (into the arrays given) of the outlier bars, their log return, robust z and bar intervals spanned; per symbol code
    the returns scored (0 when the symbol could not be scored), the median and the scale used."""

    positions: np.ndarray
    log_return: np.ndarray
    z: np.ndarray
    bars_apart: np.ndarray
    scored: np.ndarray
    median: np.ndarray
    scale: np.ndarray


def robust_outliers(
    codes: np.ndarray,
    close: np.ndarray,
    no_return: np.ndarray,
    n_symbols: int,
    *,
    bars_apart: np.ndarray | None = None,
    k: float = 8.0,
    min_returns: int = 20,
) -> Outliers:
    """Outliers among bars sorted by (symbol code, ts).

    ``no_return[i]`` is True where no return goes into bar ``i`` (a symbol's
    first bar; intraday, a session's first bar). ``bars_apart[i]`` is how many
    bar intervals bar ``i`` is from the one before (1 without a gap; default
    all 1). ``close`` must be positive. ``log_return`` is the raw return; the
    median, scale and z are of returns per sqrt(bar interval).
    """
    n = len(close)
    log_close = np.log(close)
    raw = np.full(n, np.nan)
    if n > 1:
        raw[1:] = log_close[1:] - log_close[:-1]
    raw[no_return] = np.nan
    r = raw if bars_apart is None else raw / np.sqrt(np.maximum(bars_apart, 1.0))
    has = ~np.isnan(r)
    g, rv = codes[has], r[has]
    counts = np.bincount(g, minlength=n_symbols)
    median = np.full(n_symbols, np.nan)
    scale = np.full(n_symbols, np.nan)
    if len(rv):
        by = pd.Series(rv).groupby(g)
        med = by.median()
        median[med.index.to_numpy()] = med.to_numpy()
        dev = np.abs(rv - median[g])
        dev_by = pd.Series(dev).groupby(g)
        mad = dev_by.median()
        mean_ad = dev_by.mean()
        scale_mad = MAD_TO_SD * mad.to_numpy()
        scale_mean = MEAN_AD_TO_SD * mean_ad.to_numpy()
        scale[mad.index.to_numpy()] = np.where(scale_mad > 0, scale_mad, scale_mean)
    scorable = (counts >= min_returns) & (scale > 0)
    scored = np.where(scorable, counts, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(r - median[codes]) / scale[codes]
    hit = has & scorable[codes] & (z > k)
    positions = np.flatnonzero(hit)
    apart = np.ones(len(positions)) if bars_apart is None else np.maximum(bars_apart[positions], 1.0)
    return Outliers(positions, raw[positions], z[positions], apart, scored, median, scale)


def outlier_reasons(out: Outliers, k: float) -> list[str]:
    return [
        f"log return {r:+.4f} from the previous bar{'' if a == 1 else f' ({a:g} bars earlier, scaled by 1/sqrt({a:g}))'} is {z:.1f} robust deviations from the median (k={k:g})"
        for r, z, a in zip(out.log_return, out.z, out.bars_apart, strict=True)
    ]
