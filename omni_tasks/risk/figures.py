"""Portfolio risk figures from positions and daily returns: plain numpy, vectorised, no I/O.

    result = var_es(returns, values)                  # VaR/ES only (the hot path)
    figures = compute_metrics(portfolio, history)     # everything a snapshot reports

Conventions (every function here):

- ``values``: the signed market value of each position in USD (short is
  negative), as a float vector of length k (positions).
- ``returns``: daily *simple* returns, a (days x k) float matrix, oldest day
  first; column j is position j. Built from daily closes by the caller.
- The portfolio's P&L series is ``pnl = returns @ values``: what the holdings
  as they are now would have made (positive) or lost on each day of the
  lookback. One matrix-vector product; every VaR/ES figure, the Sharpe ratio
  and the beta come from this one vector.
- Losses are positive numbers: VaR and ES are reported in USD as the loss at
  the given confidence level. They are not clipped: a history in which even
  the worst days were gains gives a negative VaR, and it says so.
- Historical VaR at level a is the a-quantile of the losses ``-pnl`` with
  linear interpolation between order statistics (numpy's and pandas' default,
  ``method="linear"``); historical ES is the mean of the losses at or beyond
  that VaR. Parametric (normal, zero mean over one day) VaR is ``z_a * s`` and
  ES is ``s * phi(z_a) / (1 - a)``, where ``s = sqrt(w' S w)`` is the standard
  deviation of the P&L with S the sample covariance (ddof 1) of the returns.
  ``w' S w`` is exactly the sample variance of ``pnl``, so the k x k covariance
  is never formed: the parametric figures cost nothing beyond the same product.
- NaN policy: a NaN return means "no return that day" (the position had no
  bar yet, or a gap the caller did not fill). It counts as a zero return
  (price carried forward), and the position's count of real returns is kept:
  when any held position has fewer than ``min_history_days`` real returns,
  VaR, ES, Sharpe and beta are None with a reason naming the positions (their
  risk would be understated). Infinite returns are bad input (a zero price
  somewhere) and raise :class:`RiskInputError` naming the symbols.
- Percentages are percent (2.0 is 2%); leverage is a multiple (1.5 is 1.5x).

A figure that cannot be computed is None, never a made-up zero, and
``RiskMetrics.notes`` says why (metric name -> reason).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import numpy as np

from omni_tasks.risk.var_es import LEVELS, RiskInputError, check_levels, check_shapes, level_key, var_es_from_pnl

TRADING_DAYS_PER_YEAR: Final = 252
#: The correlation matrix is kept in the figures (and so in the snapshot JSON) up to this many held positions.
MATRIX_MAX_POSITIONS: Final = 30
#: Columns per block when the pairwise correlations are computed (bounds memory for thousands of positions).
_CORRELATION_BLOCK: Final = 512

#: Weights of the risk score (see :func:`risk_score`): how much one limit at 100% of its threshold weighs.
SCORE_WEIGHTS: Final[Mapping[str, float]] = {
    "daily_loss": 0.9,
    "drawdown": 0.9,
    "gross_leverage": 0.8,
    "concentration": 0.6,
    "var_99": 0.6,
    "position_notional": 0.5,
    "correlation": 0.4,
}


# ---- the full set of figures ------------------------------------------------------------


@dataclass(frozen=True)
class Portfolio:
    """What is held now. Money (``equity``, ``cash``, the equity marks) is exact Decimal;
    ``values`` (signed market values, USD, one per symbol) are floats for the arithmetic.

    ``peak_equity``: the highest equity known (the broker's mark, or a history of
    marks); the current equity counts too, so the peak is never below it.
    """

    symbols: tuple[str, ...]
    values: np.ndarray
    equity: Decimal
    cash: Decimal
    day_start_equity: Decimal
    peak_equity: Decimal


@dataclass(frozen=True)
class History:
    """Daily simple returns of the held symbols (``returns[:, j]`` is ``symbols[j]``), oldest first,
    and the benchmark's returns on the same days (None when there is no benchmark data)."""

    returns: np.ndarray
    benchmark: np.ndarray | None = None


@dataclass(frozen=True)
class RiskMetrics:
    """Every figure of one recalculation. None means "cannot be computed"; ``notes[name]`` says why."""

    positions: int
    equity: Decimal
    cash: Decimal
    daily_pnl: Decimal
    day_start_equity: Decimal
    peak_equity: Decimal
    gross_exposure: float
    net_exposure: float
    long_exposure: float
    short_exposure: float
    gross_leverage: float | None
    net_leverage: float | None
    concentration_pct: float | None
    concentration_symbol: str | None
    largest_position_usd: float
    largest_position_symbol: str | None
    drawdown_from_peak_pct: float | None
    drawdown_from_day_start_pct: float | None
    history_days: int
    var: dict[str, float | None]
    pnl_std_usd: float | None
    sharpe: float | None
    beta: float | None
    max_pair_correlation: float | None
    max_pair: tuple[str, str] | None
    correlation_symbols: tuple[str, ...] | None
    correlation_matrix: list[list[float | None]] | None
    nan_returns_filled: int
    notes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON primitives only; floats are finite (a non-finite value would be a bug, so it raises)."""
        out: dict[str, Any] = {
            "positions": self.positions,
            "equity": str(self.equity),
            "cash": str(self.cash),
            "daily_pnl": str(self.daily_pnl),
            "day_start_equity": str(self.day_start_equity),
            "peak_equity": str(self.peak_equity),
            "gross_exposure": self.gross_exposure,
            "net_exposure": self.net_exposure,
            "long_exposure": self.long_exposure,
            "short_exposure": self.short_exposure,
            "gross_leverage": self.gross_leverage,
            "net_leverage": self.net_leverage,
            "concentration_pct": self.concentration_pct,
            "concentration_symbol": self.concentration_symbol,
            "largest_position_usd": self.largest_position_usd,
            "largest_position_symbol": self.largest_position_symbol,
            "drawdown_from_peak_pct": self.drawdown_from_peak_pct,
            "drawdown_from_day_start_pct": self.drawdown_from_day_start_pct,
            "history_days": self.history_days,
            **self.var,
            "pnl_std_usd": self.pnl_std_usd,
            "sharpe": self.sharpe,
            "beta": self.beta,
            "max_pair_correlation": self.max_pair_correlation,
            "max_pair": list(self.max_pair) if self.max_pair else None,
            "correlation_symbols": list(self.correlation_symbols) if self.correlation_symbols is not None else None,
            "correlation_matrix": self.correlation_matrix,
            "nan_returns_filled": self.nan_returns_filled,
            "notes": dict(self.notes),
        }
        _check_finite(out)
        return out


def _check_finite(value: Any, path: str = "metrics") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} is {value}: risk figures must be finite")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def _var_names(levels: Sequence[float]) -> list[str]:
    names = []
    for level in levels:
        key = level_key(level)
        names += [f"var_{key}_hist", f"es_{key}_hist", f"var_{key}_param", f"es_{key}_param"]
    return names


def compute_metrics(
    portfolio: Portfolio,
    history: History,
    *,
    risk_free_rate_pct: float = 0.0,
    min_history_days: int = 20,
    levels: Sequence[float] = LEVELS,
) -> RiskMetrics:
    """Every risk figure of ``portfolio`` over ``history`` (see the module docstring for conventions).

    ``risk_free_rate_pct``: annual, percent; the Sharpe ratio subtracts it
    (divided by 252) from the daily returns. Sharpe and beta use the
    portfolio's daily returns over the lookback as it is held now
    (``pnl / equity``), the same series as VaR.
    """
    chosen = check_levels(levels)
    if min_history_days < 2:
        raise RiskInputError(f"min_history_days must be at least 2, got {min_history_days}")
    returns, values = check_shapes(history.returns, portfolio.values)
    symbols = tuple(portfolio.symbols)
    if len(symbols) != values.shape[0]:
        raise RiskInputError(f"{len(symbols)} symbols for {values.shape[0]} market values")
    notes: dict[str, str] = {}
    equity = Decimal(portfolio.equity)
    equity_f = float(equity)
    day_start = Decimal(portfolio.day_start_equity)
    peak = max(Decimal(portfolio.peak_equity), equity)

    held = values != 0.0
    h_symbols = tuple(s for s, keep in zip(symbols, held, strict=True) if keep)
    v = values[held]
    k = v.shape[0]
    r = returns if bool(held.all()) else returns[:, held]
    days = r.shape[0]

    gross = float(np.abs(v).sum())
    net = float(v.sum())
    long_ = float(v[v > 0].sum())
    short = float(-v[v < 0].sum())
    if k:
        biggest = int(np.argmax(np.abs(v)))
        largest, largest_symbol = float(abs(v[biggest])), h_symbols[biggest]
    else:
        largest, largest_symbol = 0.0, None

    if equity > 0:
        gross_leverage: float | None = gross / equity_f
        net_leverage: float | None = net / equity_f
        concentration: float | None = largest / equity_f * 100.0
    elif k == 0:
        gross_leverage = net_leverage = concentration = 0.0
    else:
        gross_leverage = net_leverage = concentration = None
        for name in ("gross_leverage", "net_leverage", "concentration_pct"):
            notes[name] = f"equity is not positive ({equity}) while positions are held"

    drawdown_peak: float | None = None
    if peak > 0:
        drawdown_peak = max(0.0, float((peak - equity) / peak) * 100.0)
    else:
        notes["drawdown_from_peak_pct"] = f"peak equity is not positive ({peak})"
    drawdown_day: float | None = None
    if day_start > 0:
        drawdown_day = max(0.0, float((day_start - equity) / day_start) * 100.0)
    else:
        notes["drawdown_from_day_start_pct"] = f"day-start equity is not positive ({day_start})"

    # ---- the NaN policy, then the one P&L series
    filled = 0
    short_history: list[str] = []
    if k:
        finite = np.isfinite(r)
        if not finite.all():
            infinite = np.isinf(r).any(axis=0)
            if infinite.any():
                bad = [h_symbols[j] for j in np.flatnonzero(infinite)]
                raise RiskInputError(f"infinite daily returns for {', '.join(bad[:10])}: a zero or missing close in their bars")
            filled = int(r.size - np.count_nonzero(finite))
            r = np.where(finite, r, 0.0)
        valid_days = finite.sum(axis=0) if filled else np.full(k, days)
        short_history = [h_symbols[j] for j in np.flatnonzero(valid_days < min_history_days)]

    var_figures: dict[str, float | None] = dict.fromkeys(_var_names(chosen))
    pnl_std: float | None = None
    sharpe: float | None = None
    beta: float | None = None
    history_reason: str | None = None
    if k == 0:
        var_figures = dict.fromkeys(var_figures, 0.0)
        pnl_std = 0.0
        notes["sharpe"] = "no positions: the portfolio's returns have no variance"
        beta = 0.0
    elif days < min_history_days:
        history_reason = f"{days} days of returns, fewer than the {min_history_days} required"
    elif short_history:
        shown = ", ".join(short_history[:10]) + (f" and {len(short_history) - 10} more" if len(short_history) > 10 else "")
        history_reason = f"fewer than {min_history_days} daily returns for {shown}"
    if history_reason is not None:
        for name in [*var_figures, "pnl_std_usd", "sharpe", "beta"]:
            notes[name] = history_reason
    elif k:
        pnl = r @ v
        figures = var_es_from_pnl(pnl, levels=chosen)
        var_figures = {name: float(x) for name, x in figures.as_dict().items()}
        pnl_std = figures.pnl_std
        sharpe, beta = _sharpe_and_beta(pnl, equity_f, history.benchmark, days, risk_free_rate_pct, min_history_days, notes)

    max_corr, pair, corr_symbols, matrix = _correlations(r, v, h_symbols, history_reason, notes)
    return RiskMetrics(
        positions=k,
        equity=equity,
        cash=Decimal(portfolio.cash),
        daily_pnl=equity - day_start,
        day_start_equity=day_start,
        peak_equity=peak,
        gross_exposure=gross,
        net_exposure=net,
        long_exposure=long_,
        short_exposure=short,
        gross_leverage=gross_leverage,
        net_leverage=net_leverage,
        concentration_pct=concentration,
        concentration_symbol=largest_symbol,
        largest_position_usd=largest,
        largest_position_symbol=largest_symbol,
        drawdown_from_peak_pct=drawdown_peak,
        drawdown_from_day_start_pct=drawdown_day,
        history_days=days,
        var=var_figures,
        pnl_std_usd=pnl_std,
        sharpe=sharpe,
        beta=beta,
        max_pair_correlation=max_corr,
        max_pair=pair,
        correlation_symbols=corr_symbols,
        correlation_matrix=matrix,
        nan_returns_filled=filled,
        notes=notes,
    )


def _sharpe_and_beta(
    pnl: np.ndarray,
    equity: float,
    benchmark: np.ndarray | None,
    days: int,
    risk_free_rate_pct: float,
    min_history_days: int,
    notes: dict[str, str],
) -> tuple[float | None, float | None]:
    if equity <= 0:
        notes["sharpe"] = notes["beta"] = "equity is not positive: no portfolio returns"
        return None, None
    daily = pnl / equity
    std = float(np.std(daily, ddof=1))
    sharpe: float | None = None
    if std > 0:
        excess = float(daily.mean()) - risk_free_rate_pct / 100.0 / TRADING_DAYS_PER_YEAR
        sharpe = excess / std * math.sqrt(TRADING_DAYS_PER_YEAR)
    else:
        notes["sharpe"] = "the portfolio's daily returns have no variance"
    beta: float | None = None
    if benchmark is None:
        notes["beta"] = "no benchmark returns"
        return sharpe, None
    bench = np.asarray(benchmark, dtype=np.float64)
    if bench.shape != (days,):
        raise RiskInputError(f"benchmark returns must have one value per day ({days}), got shape {bench.shape}")
    paired = np.isfinite(bench)
    n = int(paired.sum())
    if n < min_history_days:
        notes["beta"] = f"{n} days of benchmark returns, fewer than the {min_history_days} required"
        return sharpe, None
    b, p = bench[paired], daily[paired]
    b_dev = b - b.mean()
    var_b = float(b_dev @ b_dev)
    if var_b <= 0:
        notes["beta"] = "the benchmark's returns have no variance"
        return sharpe, None
    beta = float(b_dev @ (p - p.mean())) / var_b
    return sharpe, beta


def _correlations(
    r: np.ndarray, v: np.ndarray, symbols: tuple[str, ...], history_reason: str | None, notes: dict[str, str]
) -> tuple[float | None, tuple[str, str] | None, tuple[str, ...] | None, list[list[float | None]] | None]:
    """The largest pairwise correlation between held positions, signed by the positions' directions.

    A long and a short of two names that move together hedge each other, and
    a long and a short of names that move against each other are one bet made
    twice; so the pair figure is ``sign(v_i) * sign(v_j) * corr_ij``. For a
    long-only book it is the plain correlation. The matrix (kept for up to
    :data:`MATRIX_MAX_POSITIONS` positions) holds the plain correlations;
    positions whose returns have no variance have no correlation (None).
    """
    k = v.shape[0]
    if k < 2:
        notes["max_pair_correlation"] = "fewer than two positions"
        return None, None, None, None
    if history_reason is not None:
        notes["max_pair_correlation"] = history_reason
        return None, None, None, None
    centred = r - r.mean(axis=0)
    norms = np.sqrt(np.einsum("ij,ij->j", centred, centred))
    varying = norms > 0
    z = np.zeros_like(centred)
    z[:, varying] = centred[:, varying] / norms[varying]
    signs = np.sign(v)
    best, best_pair = -np.inf, None
    keep_matrix = k <= MATRIX_MAX_POSITIONS
    matrix = np.empty((k, k)) if keep_matrix else None
    for start in range(0, k, _CORRELATION_BLOCK):
        stop = min(k, start + _CORRELATION_BLOCK)
        block = np.clip(z[:, start:stop].T @ z, -1.0, 1.0)  # (stop - start) x k
        if matrix is not None:
            matrix[start:stop] = block
        directed = block * signs[start:stop, None] * signs[None, :]
        rows = np.arange(start, stop)
        directed[rows - start, rows] = -np.inf  # the diagonal
        directed[~varying[start:stop], :] = -np.inf
        directed[:, ~varying] = -np.inf
        flat = int(np.argmax(directed))
        i, j = divmod(flat, k)
        if directed[i, j] > best:
            best, best_pair = float(directed[i, j]), (symbols[start + i], symbols[j])
    if best_pair is None or not math.isfinite(best):
        notes["max_pair_correlation"] = "fewer than two positions whose returns vary"
        best_value: float | None = None
        best_pair = None
    else:
        best_value = best
        best_pair = tuple(sorted(best_pair))
    listed: list[list[float | None]] | None = None
    if matrix is not None:
        listed = [[float(matrix[i, j]) if varying[i] and varying[j] else None for j in range(k)] for i in range(k)]
    elif k > MATRIX_MAX_POSITIONS:
        notes["correlation_matrix"] = f"{k} positions: the matrix is kept for up to {MATRIX_MAX_POSITIONS}"
    return best_value, best_pair, (symbols if listed is not None else None), listed


# ---- the 0..1 risk score -------------------------------------------------------------------


def risk_score(utilisation: Mapping[str, float | None], weights: Mapping[str, float] = SCORE_WEIGHTS) -> float:
    """One number in [0, 1] from how much of each limit is used.

    ``utilisation[name]`` is the figure divided by its limit (0 = nothing
    used, 1 = at the limit; above 1 is a breach); it is clipped to [0, 1],
    and None (a figure that could not be computed) contributes 0. The score is

        score = 1 - prod_i (1 - w_i * u_i ** 2)

    the chance that at least one of several independent alarms goes off, if
    limit i "goes off" with probability ``w_i * u_i ** 2``. Squared, so risk
    grows as a limit is approached: a limit at half use counts a quarter of
    its weight, and a book with room under every limit scores low (every
    limit at 30%: 0.35) instead of piling up small uses. So: it is 0 exactly
    when nothing is used; it never decreases when any utilisation grows
    (monotone); one limit at 100% alone gives exactly its weight ``w_i`` (and
    at least that whatever the others are); several limits near their
    thresholds compound towards 1; it reaches 1 only when a limit of weight
    1 is fully used. The weights (:data:`SCORE_WEIGHTS`) rank the limits by
    how directly they lose money: daily loss and drawdown 0.9, gross
    leverage 0.8, concentration and VaR 99% (against the daily loss limit)
    0.6, position notional 0.5, correlation 0.4.
    """
    product = 1.0
    for name, value in utilisation.items():
        if name not in weights:
            raise RiskInputError(f"no risk-score weight for {name!r}: known are {', '.join(sorted(weights))}")
        if value is None:
            continue
        if math.isnan(value):
            raise RiskInputError(f"utilisation of {name!r} is NaN")
        u = min(1.0, max(0.0, float(value)))
        w = float(weights[name])
        product *= 1.0 - w * u * u
    return min(1.0, max(0.0, 1.0 - product))
