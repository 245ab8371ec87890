"""The desk's risk limits (DESIGN section 7) against one set of risk figures: breaches and utilisation.

A limit is the largest value allowed: a figure exactly at its limit is not a
breach, anything above it is. Rules (``Breach.rule``):

``daily_loss``         loss since the day's start (USD, exact Decimal) > ``max_daily_loss_usd``
``drawdown``           drawdown (percent) from the peak or from the day's start (``drawdown_from``) > ``max_drawdown_pct``
``concentration``      largest |position| / equity (percent) > ``max_concentration_pct``
``correlation``        largest pairwise correlation of held positions (signed by direction) > ``max_correlation``
``gross_leverage``     gross exposure / equity > ``max_gross_leverage``
``position_notional``  largest |position| (USD) > ``max_position_notional_usd``
``equity``             equity is not positive while positions are held (leverage and
                       concentration have no meaning then; that is a breach of its own)

A figure that could not be computed (None) is not a breach here; the snapshot
says why it is missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Final

from omni_tasks.risk.figures import RiskMetrics
from omni_tasks.settings import RiskSettings

RULES: Final = ("daily_loss", "drawdown", "concentration", "correlation", "gross_leverage", "position_notional", "equity")


@dataclass(frozen=True)
class Breach:
    """One limit exceeded: the rule, the figure, the limit, and a sentence for an operator."""

    rule: str
    value: float
    limit: float
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _drawdown(metrics: RiskMetrics, settings: RiskSettings) -> float | None:
    if settings.drawdown_from == "peak":
        return metrics.drawdown_from_peak_pct
    return metrics.drawdown_from_day_start_pct


def breaches(metrics: RiskMetrics, settings: RiskSettings) -> list[Breach]:
    """Every limit ``metrics`` exceeds, in the order of :data:`RULES`."""
    out: list[Breach] = []
    loss = max(Decimal(0), -metrics.daily_pnl)
    if loss > settings.max_daily_loss_usd:
        out.append(
            Breach(
                "daily_loss", float(loss), float(settings.max_daily_loss_usd),
                f"daily loss ${loss:,.2f} exceeds the ${settings.max_daily_loss_usd:,.2f} limit",
            )
        )  # fmt: skip
    drawdown = _drawdown(metrics, settings)
    if drawdown is not None and drawdown > settings.max_drawdown_pct:
        since = "the peak" if settings.drawdown_from == "peak" else "the day's start"
        out.append(
            Breach(
                "drawdown", drawdown, settings.max_drawdown_pct,
                f"drawdown from {since} {drawdown:.4g}% exceeds the {settings.max_drawdown_pct:g}% limit",
            )
        )  # fmt: skip
    if metrics.concentration_pct is not None and metrics.concentration_pct > settings.max_concentration_pct:
        out.append(
            Breach(
                "concentration", metrics.concentration_pct, settings.max_concentration_pct,
                f"{metrics.concentration_symbol} is {metrics.concentration_pct:.4g}% of equity, above the {settings.max_concentration_pct:g}% limit",
            )
        )  # fmt: skip
    if metrics.max_pair_correlation is not None and metrics.max_pair_correlation > settings.max_correlation:
        pair = " and ".join(metrics.max_pair or ())
        out.append(
            Breach(
                "correlation", metrics.max_pair_correlation, settings.max_correlation,
                f"{pair} are correlated {metrics.max_pair_correlation:.4g} (by direction held), above the {settings.max_correlation:g} limit",
            )
        )  # fmt: skip
    if metrics.gross_leverage is not None and metrics.gross_leverage > settings.max_gross_leverage:
        out.append(
            Breach(
                "gross_leverage", metrics.gross_leverage, settings.max_gross_leverage,
                f"gross leverage {metrics.gross_leverage:.4g}x exceeds the {settings.max_gross_leverage:g}x limit",
            )
        )  # fmt: skip
    notional_limit = float(settings.max_position_notional_usd)
    if metrics.largest_position_usd > notional_limit:
        out.append(
            Breach(
                "position_notional", metrics.largest_position_usd, notional_limit,
                f"{metrics.largest_position_symbol} is ${metrics.largest_position_usd:,.2f}, above the ${notional_limit:,.2f} per-position limit",
            )
        )  # fmt: skip
    if metrics.positions and metrics.equity <= 0:
        out.append(
            Breach(
                "equity",
                float(metrics.equity),
                0.0,
                f"equity is {metrics.equity} (not positive) while {metrics.positions} positions are held",
            )
        )
    return out


def utilisation(metrics: RiskMetrics, settings: RiskSettings) -> dict[str, float | None]:
    """How much of each limit is used (figure / limit; 1.0 = at the limit), the risk score's input.

    ``var_99`` is the historical 99% VaR against the daily loss limit (a
    one-in-a-hundred day would use this much of it). Equity that is not
    positive while positions are held uses all of the leverage and
    concentration limits.
    """
    loss = max(Decimal(0), -metrics.daily_pnl)
    wiped_out = bool(metrics.positions) and metrics.equity <= 0
    drawdown = _drawdown(metrics, settings)
    var_99 = metrics.var.get("var_99_hist")
    correlation = metrics.max_pair_correlation
    return {
        "daily_loss": float(loss / settings.max_daily_loss_usd),
        "drawdown": None if drawdown is None else drawdown / settings.max_drawdown_pct,
        "gross_leverage": 1.0
        if wiped_out
        else (None if metrics.gross_leverage is None else metrics.gross_leverage / settings.max_gross_leverage),
        "concentration": 1.0
        if wiped_out
        else (None if metrics.concentration_pct is None else metrics.concentration_pct / settings.max_concentration_pct),
        "var_99": None if var_99 is None else max(0.0, var_99) / float(settings.max_daily_loss_usd),
        "position_notional": metrics.largest_position_usd / float(settings.max_position_notional_usd),
        "correlation": None if correlation is None else max(0.0, correlation) / settings.max_correlation,
    }
