"""Risk limits: each rule breaches just above its threshold, not at it or below; the drawdown base; utilisation."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from omni_tasks.risk.figures import History, Portfolio, RiskMetrics, compute_metrics, risk_score
from omni_tasks.risk.limits import RULES, breaches, utilisation
from omni_tasks.settings import RiskSettings

LIMITS = RiskSettings()  # the desk's defaults: $1,000 loss, 2% drawdown, 30%, 0.80, 2x, $10,000


def _quiet() -> RiskMetrics:
    """A portfolio inside every limit: two $5,000 positions on $100,000 equity, flat day, at its peak."""
    rng = np.random.default_rng(3)
    returns = rng.normal(0, 0.01, (60, 2))
    portfolio = Portfolio(("AAA", "BBB"), np.array([5000.0, 5000.0]), Decimal(100000), Decimal(90000), Decimal(100000), Decimal(100000))
    metrics = compute_metrics(portfolio, History(returns))
    assert metrics.max_pair_correlation is not None
    assert abs(metrics.max_pair_correlation) < 0.5
    return metrics


BASE = _quiet()


def _with(**changes: Any) -> RiskMetrics:
    return dataclasses.replace(BASE, **changes)


def _rules(metrics: RiskMetrics, settings: RiskSettings = LIMITS) -> list[str]:
    return [b.rule for b in breaches(metrics, settings)]


def test_a_portfolio_inside_every_limit_has_no_breach() -> None:
    assert breaches(BASE, LIMITS) == []


@pytest.mark.parametrize(
    ("rule", "field", "at_limit", "below", "above", "message"),
    [
        (
            "daily_loss",
            "daily_pnl",
            Decimal("-1000"),
            Decimal("-999.99"),
            Decimal("-1000.01"),
            "daily loss $1,000.01 exceeds the $1,000.00 limit",
        ),
        ("drawdown", "drawdown_from_peak_pct", 2.0, 1.999, 2.001, "drawdown from the peak 2.001% exceeds the 2% limit"),
        ("concentration", "concentration_pct", 30.0, 29.99, 30.01, "AAA is 30.01% of equity, above the 30% limit"),
        (
            "correlation",
            "max_pair_correlation",
            0.80,
            0.7999,
            0.8001,
            "AAA and BBB are correlated 0.8001 (by direction held), above the 0.8 limit",
        ),
        ("gross_leverage", "gross_leverage", 2.0, 1.99, 2.01, "gross leverage 2.01x exceeds the 2x limit"),
        (
            "position_notional",
            "largest_position_usd",
            10000.0,
            9999.99,
            10000.01,
            "AAA is $10,000.01, above the $10,000.00 per-position limit",
        ),
    ],
)
def test_each_rule_breaches_only_above_its_threshold(rule: str, field: str, at_limit: Any, below: Any, above: Any, message: str) -> None:
    assert _rules(_with(**{field: below})) == []
    assert _rules(_with(**{field: at_limit})) == [], "exactly at the limit is allowed"
    found = breaches(_with(**{field: above}), LIMITS)
    assert [b.rule for b in found] == [rule]
    breach = found[0]
    assert breach.value == pytest.approx(float(abs(above)))
    assert breach.limit == pytest.approx(float(abs(at_limit)))
    assert breach.message == message


def test_daily_loss_is_compared_exactly_in_decimal() -> None:
    # 0.1 + 0.2 style rounding must not move the threshold: a loss of exactly $1,000.00 is at the limit.
    exact = _with(equity=Decimal("98999.99"), day_start_equity=Decimal("99999.99"), daily_pnl=Decimal("98999.99") - Decimal("99999.99"))
    assert _rules(exact) == []
    one_cent = _with(daily_pnl=Decimal("-1000.00000001"))
    assert _rules(one_cent) == ["daily_loss"]
    assert breaches(one_cent, LIMITS)[0].message == "daily loss $1,000.00 exceeds the $1,000.00 limit"
    assert _rules(_with(daily_pnl=Decimal("5000"))) == [], "a gain is not a loss"


def test_drawdown_is_measured_from_the_base_the_settings_choose() -> None:
    metrics = _with(drawdown_from_peak_pct=3.0, drawdown_from_day_start_pct=1.0)
    assert _rules(metrics, RiskSettings(drawdown_from="peak")) == ["drawdown"]
    assert _rules(metrics, RiskSettings(drawdown_from="day_start")) == []
    other = _with(drawdown_from_peak_pct=1.0, drawdown_from_day_start_pct=2.5)
    assert _rules(other, RiskSettings(drawdown_from="peak")) == []
    found = breaches(other, RiskSettings(drawdown_from="day_start"))
    assert [b.rule for b in found] == ["drawdown"]
    assert found[0].message == "drawdown from the day's start 2.5% exceeds the 2% limit"


def test_limits_follow_the_settings() -> None:
    tight = RiskSettings(max_position_notional_usd=Decimal("4999"), max_concentration_pct=4.9, max_gross_leverage=0.09)
    assert _rules(BASE, tight) == ["concentration", "gross_leverage", "position_notional"]


def test_missing_figures_are_not_breaches() -> None:
    metrics = _with(drawdown_from_peak_pct=None, concentration_pct=None, max_pair_correlation=None, gross_leverage=None)
    assert _rules(metrics) == []


def test_non_positive_equity_with_positions_is_its_own_breach() -> None:
    wiped = _with(equity=Decimal("-50"), gross_leverage=None, concentration_pct=None)
    found = breaches(wiped, LIMITS)
    assert [b.rule for b in found] == ["equity"]
    assert found[0].value == -50.0
    assert "not positive" in found[0].message
    assert _rules(_with(equity=Decimal(0), positions=0, gross_leverage=0.0)) == []


def test_every_breach_names_a_known_rule_and_serialises() -> None:
    everything = _with(
        daily_pnl=Decimal("-5000"), drawdown_from_peak_pct=9.0, concentration_pct=90.0, max_pair_correlation=0.99,
        gross_leverage=5.0, largest_position_usd=90000.0,
    )  # fmt: skip
    found = breaches(everything, LIMITS)
    assert [b.rule for b in found] == list(RULES[:-1])
    assert all(set(b.to_json()) == {"rule", "value", "limit", "message"} for b in found)


def test_utilisation_feeds_the_score_and_a_breach_scores_at_least_its_weight() -> None:
    quiet = utilisation(BASE, LIMITS)
    assert quiet["position_notional"] == pytest.approx(0.5)  # $5,000 of $10,000
    assert quiet["gross_leverage"] == pytest.approx(0.05)  # 0.1x of 2x
    assert quiet["concentration"] == pytest.approx(5.0 / 30.0)
    assert quiet["daily_loss"] == 0.0
    assert quiet["drawdown"] == 0.0
    assert quiet["var_99"] == pytest.approx(BASE.var["var_99_hist"] / 1000.0)
    calm = risk_score(quiet)
    loss = _with(daily_pnl=Decimal("-1500"))
    assert utilisation(loss, LIMITS)["daily_loss"] == pytest.approx(1.5)
    assert risk_score(utilisation(loss, LIMITS)) >= 0.9 > calm
    wiped = utilisation(_with(equity=Decimal("-1"), gross_leverage=None, concentration_pct=None), LIMITS)
    assert wiped["gross_leverage"] == 1.0
    assert wiped["concentration"] == 1.0
