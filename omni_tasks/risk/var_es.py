"""Value at risk and expected shortfall, historical and parametric, from a P&L vector or returns and values.

The conventions (signs, interpolation, the parametric formulas) are those of :mod:`omni_tasks.risk.figures`,
which computes every other figure from the same P&L vector. Plain numpy, no I/O: this is the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final

import numpy as np

from omni_tasks.core.errors import OmniError

#: Confidence levels every VaR/ES figure is computed at.
LEVELS: Final = (0.95, 0.99)


class RiskInputError(OmniError, ValueError):
    """Inputs the risk figures cannot be computed from (shapes, infinities, unknown score keys)."""


def level_key(level: float) -> str:
    """``0.95`` -> ``"95"``: the suffix of the figure names (``var_95_hist``)."""
    return f"{level * 100:g}"


@dataclass(frozen=True)
class VarEs:
    """Value at risk and expected shortfall of one P&L series, in USD (positive = loss), per level."""

    days: int
    historical_var: dict[float, float]
    historical_es: dict[float, float]
    parametric_var: dict[float, float]
    parametric_es: dict[float, float]
    #: Standard deviation of the daily P&L (ddof 1), USD.
    pnl_std: float

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for level in self.historical_var:
            key = level_key(level)
            out[f"var_{key}_hist"] = self.historical_var[level]
            out[f"es_{key}_hist"] = self.historical_es[level]
            out[f"var_{key}_param"] = self.parametric_var[level]
            out[f"es_{key}_param"] = self.parametric_es[level]
        return out


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(level) for level in levels)
    if not out or any(not (0.5 <= level < 1.0) for level in out):
        raise RiskInputError(f"confidence levels must be in [0.5, 1): got {list(levels)}")
    return out


def var_es_from_pnl(pnl: np.ndarray, *, levels: Sequence[float] = LEVELS) -> VarEs:
    """VaR and ES (historical and parametric) of a daily P&L series (USD, gains positive).

    Needs at least two finite values. One ``np.partition`` finds every order
    statistic the interpolated quantiles need (no full sort).
    """
    chosen = check_levels(levels)
    pnl = np.asarray(pnl, dtype=np.float64)
    n = pnl.shape[0]
    if pnl.ndim != 1 or n < 2:
        raise RiskInputError(f"need a P&L vector of at least 2 days, got shape {pnl.shape}")
    if not np.isfinite(pnl).all():
        raise RiskInputError("the P&L series has NaN or infinite values")
    losses = -pnl
    positions = np.array([(n - 1) * level for level in chosen])
    lows = np.floor(positions).astype(np.intp)
    highs = np.minimum(lows + 1, n - 1)
    ordered = np.partition(losses, np.unique(np.concatenate([lows, highs])))
    std = float(np.std(pnl, ddof=1))
    historical_var, historical_es, parametric_var, parametric_es = {}, {}, {}, {}
    normal = NormalDist()
    for level, h, lo, hi in zip(chosen, positions, lows, highs, strict=True):
        below, above = float(ordered[lo]), float(ordered[hi])
        var = min(above, _lerp(below, above, float(h - lo)))
        historical_var[level] = var
        historical_es[level] = float(losses[losses >= var].mean())
        z = normal.inv_cdf(level)
        parametric_var[level] = z * std
        parametric_es[level] = std * normal.pdf(z) / (1.0 - level)
    return VarEs(n, historical_var, historical_es, parametric_var, parametric_es, std)


def _lerp(a: float, b: float, t: float) -> float:
    """Linear interpolation written as numpy's quantile writes it (so the figures match it to the last bit)."""
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def var_es(returns: np.ndarray, values: np.ndarray, *, levels: Sequence[float] = LEVELS) -> VarEs:
    """VaR and ES of the holdings ``values`` (USD) over the daily ``returns`` (days x positions).

    The fast path: one matrix-vector product for the P&L series, then
    :func:`var_es_from_pnl`. The returns must be finite where it matters (a NaN
    or infinity in a held column is an error here; :func:`compute_metrics`
    applies the NaN policy first).
    """
    returns, values = check_shapes(returns, values)
    return var_es_from_pnl(returns @ values, levels=levels)


def check_shapes(returns: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    returns = np.asarray(returns, dtype=np.float64)
    if values.ndim != 1:
        raise RiskInputError(f"values must be a vector (one market value per position), got shape {values.shape}")
    if returns.ndim != 2 or returns.shape[1] != values.shape[0]:
        raise RiskInputError(f"returns must be days x positions with {values.shape[0]} columns, got shape {returns.shape}")
    if not np.isfinite(values).all():
        raise RiskInputError("a position's market value is NaN or infinite")
    return returns, values
