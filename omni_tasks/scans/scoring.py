"""The combined scan score and rank, cross-sectional over the whole universe.

For each indicator ``x`` of :data:`~omni_tasks.scans.indicators.INDICATORS`,
over the symbols that can be scored (no ``reason``), in symbol order:

1. winsorise: clip ``x`` to its ``q`` and ``1 - q`` quantiles across the
   universe (numpy's linear interpolation; ``q`` = ``winsor_quantile``, 0.05
   by default, 0 = no clipping), so one outlier cannot dominate a z-score;
2. z-score: ``z = (x_w - mean(x_w)) / std(x_w)`` (population standard
   deviation, ddof 0); an indicator with no spread (one symbol, or all equal)
   has ``z = 0`` for everyone. Unitless.

``score = sum(weight[i] * z[i])`` over the indicators in that fixed order
(weights from :class:`ScoreWeights`), and ``rank`` 1 is the highest score;
equal scores are ranked by symbol (A before B), so ranks are always 1..K with
no ties. A symbol with a ``reason`` keeps its row with no z-scores, score or
rank. The frame comes back ranked: scored rows by rank, then the others by
symbol.

Every statistic depends only on the set of scored symbols and their values,
never on the order rows arrive in (the frame is sorted by symbol first): this
is what lets a chunked scan merge into exactly the one-shot result.

Plain Python: no Celery here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Final

import numpy as np
import pandas as pd

from omni_tasks.scans.indicators import INDICATORS

#: Columns score() adds, after the indicator frame's.
Z_COLUMNS: Final = tuple(f"z_{name}" for name in INDICATORS)
SCORE_COLUMNS: Final = (*Z_COLUMNS, "score", "rank")


@dataclass(frozen=True)
class ScoreWeights:
    """Weights of each indicator's z-score in the combined score (unitless; a negative weight prefers low values).

    The default is a trend-following profile, absolute weights summing to 1:
    strength of the trend (``momentum_pct`` 0.30; ``from_high_pct`` 0.20:
    stocks near their 52-week high tend to keep going), confirmed by
    participation (``volume_surge_x`` 0.15) and by ``rsi`` (0.10) and today's
    ``gap_pct`` (0.10), and per unit of risk: ``atr_pct`` -0.15 marks down
    the most volatile names. A weight of 0 leaves an indicator out of the
    score (its z-score is still reported).
    """

    momentum_pct: float = 0.30
    volume_surge_x: float = 0.15
    atr_pct: float = -0.15
    gap_pct: float = 0.10
    rsi: float = 0.10
    from_high_pct: float = 0.20

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"ScoreWeights.{name} must be a finite number, not {value!r}")
        if all(value == 0 for value in asdict(self).values()):
            raise ValueError("ScoreWeights: every weight is 0, so every score would be 0")

    def vector(self) -> np.ndarray:
        """The weights in INDICATORS order."""
        return np.array([float(getattr(self, name)) for name in INDICATORS], dtype=np.float64)


def check_winsor_quantile(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0.0 <= value < 0.5):
        raise ValueError(f"winsor_quantile must be a number in [0, 0.5), not {value!r}")
    return float(value)


def score(indicators: pd.DataFrame, *, weights: ScoreWeights, winsor_quantile: float = 0.05) -> pd.DataFrame:
    """The indicator frame with ``z_<indicator>`` columns, ``score`` and ``rank`` (Int64, 1 = best) added, ranked.

    ``indicators`` has one row per symbol (a repeated symbol is a ValueError),
    the :data:`INDICATORS` columns and ``reason`` (missing where the symbol
    can be scored). A row without a reason but with a non-finite indicator
    gets a reason here rather than a score.
    """
    q = check_winsor_quantile(winsor_quantile)
    missing = [name for name in ("symbol", "reason", *INDICATORS) if name not in indicators.columns]
    if missing:
        raise ValueError(f"not an indicator frame: missing column(s) {', '.join(missing)}")
    repeated = indicators["symbol"][indicators["symbol"].duplicated()]
    if len(repeated):
        raise ValueError(f"symbol(s) appear more than once: {', '.join(sorted(map(str, repeated.unique()))[:5])}")

    frame = indicators.sort_values("symbol", kind="stable").reset_index(drop=True)
    values = frame[list(INDICATORS)].to_numpy(dtype=np.float64, na_value=np.nan)
    reason = np.array([None if pd.isna(r) else str(r) for r in frame["reason"]], dtype=object)
    undefined = ~np.isfinite(values).all(axis=1) & pd.isna(reason)
    for row in np.flatnonzero(undefined):
        bad = [name for name, ok in zip(INDICATORS, np.isfinite(values[row]), strict=True) if not ok]
        reason[row] = f"{', '.join(bad)} undefined"
    scored = pd.isna(reason)

    z = np.full(values.shape, np.nan)
    if scored.any():
        z[scored] = zscores(values[scored], q)
    total = np.full(len(frame), np.nan)
    w = weights.vector()
    if scored.any():
        acc = np.zeros(int(scored.sum()))
        for i in range(len(INDICATORS)):  # a fixed order of additions, whatever numpy's reductions do
            acc = acc + w[i] * z[scored, i]
        total[scored] = acc

    rank = pd.array([pd.NA] * len(frame), dtype="Int64")
    positions = np.flatnonzero(scored)
    if len(positions):
        symbols = frame["symbol"].to_numpy(dtype=object)[positions]
        order = np.lexsort((symbols.astype(str), -total[positions]))
        rank[positions[order]] = np.arange(1, len(positions) + 1)

    out = frame.copy()
    out["reason"] = pd.Series(reason, dtype="str")
    for i, name in enumerate(Z_COLUMNS):
        out[name] = z[:, i]
    out["score"] = total
    out["rank"] = rank
    by_rank = np.lexsort((out["symbol"].to_numpy(dtype=object).astype(str), out["rank"].to_numpy(dtype=np.float64, na_value=np.inf)))
    return out.iloc[by_rank].reset_index(drop=True)


def zscores(values: np.ndarray, winsor_quantile: float) -> np.ndarray:
    """Column-wise winsorised z-scores of a (symbols x indicators) array of finite values (see the module docstring)."""
    out = np.zeros(values.shape, dtype=np.float64)
    for i in range(values.shape[1]):
        x = values[:, i]
        if winsor_quantile > 0 and len(x) > 1:
            low, high = np.quantile(x, [winsor_quantile, 1.0 - winsor_quantile])
            x = np.clip(x, low, high)
        if x.min() == x.max():
            continue  # no spread: z = 0 (np.std of equal values can come out a rounding error above 0)
        spread = float(np.std(x))
        if spread > 0 and math.isfinite(spread):
            out[:, i] = (x - np.mean(x)) / spread
    return out
