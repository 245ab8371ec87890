"""Risk figures: hand-computed values on a 3-position portfolio, VaR/ES against a direct computation, edge cases."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_tasks.risk.figures import (
    MATRIX_MAX_POSITIONS,
    SCORE_WEIGHTS,
    History,
    Portfolio,
    compute_metrics,
    risk_score,
)
from omni_tasks.risk.var_es import RiskInputError, var_es, var_es_from_pnl

# ---- the hand-worked portfolio ---------------------------------------------------------------
#
# Three positions: long A $6,000, long B $3,000, short C $2,000 (value -2,000); cash $13,000,
# so equity = 6,000 + 3,000 - 2,000 + 13,000 = $20,000. Day start $20,500, peak $21,000.
# Five days of returns (rows), in percent:
#        A     B     C     benchmark
#   1  +1.0  +2.0  -1.0   +0.5
#   2  -2.0  -1.0   0.0   -1.0
#   3  +3.0  +1.0  +2.0   +1.5
#   4   0.0  -2.0  +1.0   -0.5
#   5  -1.0   0.0  -2.0    0.0
SYMBOLS = ("A", "B", "C")
VALUES = np.array([6000.0, 3000.0, -2000.0])
RETURNS = np.array(
    [
        [0.01, 0.02, -0.01],
        [-0.02, -0.01, 0.00],
        [0.03, 0.01, 0.02],
        [0.00, -0.02, 0.01],
        [-0.01, 0.00, -0.02],
    ]
)
BENCHMARK = np.array([0.005, -0.01, 0.015, -0.005, 0.0])


def _portfolio(values: np.ndarray = VALUES, symbols: tuple[str, ...] = SYMBOLS, *, equity: str = "20000", cash: str = "13000") -> Portfolio:
    return Portfolio(symbols, values, Decimal(equity), Decimal(cash), Decimal("20500"), Decimal("21000"))


def _hand_metrics(**kwargs: object):  # type: ignore[no-untyped-def]
    return compute_metrics(_portfolio(), History(RETURNS, BENCHMARK), min_history_days=5, **kwargs)  # type: ignore[arg-type]


def test_exposure_leverage_concentration_drawdown_and_daily_pnl_match_hand_values() -> None:
    m = _hand_metrics()
    assert m.positions == 3
    assert m.gross_exposure == 11000.0  # 6,000 + 3,000 + 2,000
    assert m.net_exposure == 7000.0  # 6,000 + 3,000 - 2,000
    assert m.long_exposure == 9000.0
    assert m.short_exposure == 2000.0
    assert m.gross_leverage == pytest.approx(0.55, abs=1e-15)  # 11,000 / 20,000
    assert m.net_leverage == pytest.approx(0.35, abs=1e-15)  # 7,000 / 20,000
    assert m.concentration_pct == pytest.approx(30.0, abs=1e-12)  # 6,000 / 20,000
    assert m.concentration_symbol == "A"
    assert (m.largest_position_usd, m.largest_position_symbol) == (6000.0, "A")
    assert m.daily_pnl == Decimal("-500")  # exact: 20,000 - 20,500
    assert m.drawdown_from_day_start_pct == pytest.approx(2.4390243902439024, rel=1e-12)  # 500 / 20,500
    assert m.drawdown_from_peak_pct == pytest.approx(4.761904761904762, rel=1e-12)  # 1,000 / 21,000
    assert m.history_days == 5
    assert m.nan_returns_filled == 0
    assert m.notes == {}


def test_var_and_es_match_hand_values() -> None:
    # P&L per day = 6000 rA + 3000 rB - 2000 rC:
    #   d1 60 + 60 + 20 = 140;  d2 -120 - 30 - 0 = -150;  d3 180 + 30 - 40 = 170;
    #   d4 0 - 60 - 20 = -80;   d5 -60 + 0 + 40 = -20
    # losses sorted: -170, -140, 20, 80, 150
    # 95%: h = 4 x 0.95 = 3.8 -> 80 + 0.8 x (150 - 80) = 136; ES = mean(losses >= 136) = 150
    # 99%: h = 3.96 -> 80 + 0.96 x 70 = 147.2; ES = 150
    # mean P&L 12; deviations 128, -162, 158, -92, -32; squares sum to 77,080; variance 77,080 / 4 = 19,270
    # s = sqrt(19,270) = 138.81642554107205
    # z95 = 1.6448536269514715, phi(z95) = 0.10313564037537153: VaR 228.33270103167126, ES s phi / 0.05 = 286.3384188559707
    # z99 = 2.3263478740408408, phi(z99) = 0.02665214220345808: VaR 322.9352964394216, ES s phi / 0.01 = 369.97551136963995
    m = _hand_metrics()
    assert m.var["var_95_hist"] == pytest.approx(136.0, abs=1e-9)
    assert m.var["es_95_hist"] == pytest.approx(150.0, abs=1e-9)
    assert m.var["var_99_hist"] == pytest.approx(147.2, abs=1e-9)
    assert m.var["es_99_hist"] == pytest.approx(150.0, abs=1e-9)
    assert m.pnl_std_usd == pytest.approx(138.81642554107205, rel=1e-12)
    assert m.var["var_95_param"] == pytest.approx(228.33270103167126, rel=1e-12)
    assert m.var["es_95_param"] == pytest.approx(286.3384188559707, rel=1e-12)
    assert m.var["var_99_param"] == pytest.approx(322.9352964394216, rel=1e-12)
    assert m.var["es_99_param"] == pytest.approx(369.97551136963995, rel=1e-12)


def test_sharpe_and_beta_match_hand_values() -> None:
    # Portfolio daily returns = P&L / 20,000: mean 12 / 20,000 = 0.0006, sd 138.8164 / 20,000 = 0.00694082
    # Sharpe = 0.0006 / 0.00694082 x sqrt(252) = 1.3722734442566988
    # With a 2.52% annual risk-free rate (0.0001 a day): 0.0005 / 0.00694082 x sqrt(252) = 1.143561203547249
    # Benchmark mean 0.001, deviations (x 0.001) 4, -11, 14, -6, -1, squares 370 (x 1e-6)
    # sum of P&L deviation x benchmark deviation: 128x4 + 162x11 + 158x14 + 92x6 + 32x1 = 5,090 (x 0.001 $)
    # beta = (5.090 / 20,000) / 370e-6 = 0.6878378378378379
    m = _hand_metrics()
    assert m.sharpe == pytest.approx(1.3722734442566988, rel=1e-12)
    assert m.beta == pytest.approx(0.6878378378378379, rel=1e-12)
    with_rate = _hand_metrics(risk_free_rate_pct=2.52)
    assert with_rate.sharpe == pytest.approx(1.143561203547249, rel=1e-12)
    assert with_rate.beta == m.beta


def test_correlation_matrix_and_pair_signed_by_direction_match_hand_values() -> None:
    # Deviations from the column means (x 0.001): A 8, -22, 28, -2, -12 (mean 0.002); B 20, -10, 10, -20, 0; C -10, 0, 20, 10, -20
    # Sums of squares: A 1,480, B 1,000, C 1,000; cross sums: AB 700, AC 700, BC -200
    # corr AB = corr AC = 700 / sqrt(1,480 x 1,000) = 0.5753964555687505; corr BC = -200 / 1,000 = -0.2
    # By direction held (C is short): AB +0.5754, AC -0.5754 (a hedge), BC +0.2 -> the pair is A and B
    m = _hand_metrics()
    assert m.correlation_symbols == SYMBOLS
    matrix = np.array(m.correlation_matrix, dtype=float)
    expected = np.array([[1.0, 0.5753964555687505, 0.5753964555687505], [0.5753964555687505, 1.0, -0.2], [0.5753964555687505, -0.2, 1.0]])
    np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-12)
    assert m.max_pair == ("A", "B")
    assert m.max_pair_correlation == pytest.approx(0.5753964555687505, abs=1e-12)


def test_a_short_leg_turns_an_anticorrelated_pair_into_the_worst_pair() -> None:
    # A short, B and C long: by direction A-B = A-C = -1 x 0.575 = -0.575 (hedges), B-C = -0.2: the worst pair is B-C
    # even though its raw correlation is the lowest.
    values = np.array([-6000.0, 3000.0, 2000.0])
    m = compute_metrics(_portfolio(values), History(RETURNS), min_history_days=5)
    assert m.max_pair == ("B", "C")
    assert m.max_pair_correlation == pytest.approx(-0.2, abs=1e-12)


def test_to_json_holds_every_figure_as_finite_primitives() -> None:
    payload = _hand_metrics().to_json()
    assert payload["equity"] == "20000"
    assert payload["daily_pnl"] == "-500"
    assert payload["var_95_hist"] == pytest.approx(136.0)
    assert payload["max_pair"] == ["A", "B"]
    assert len(payload["correlation_matrix"]) == 3
    for key in ("var_99_param", "es_99_hist", "sharpe", "beta", "gross_leverage", "drawdown_from_peak_pct"):
        assert isinstance(payload[key], float), key
        assert math.isfinite(payload[key]), key


# ---- VaR and ES against a direct computation -------------------------------------------------


def _direct(returns: np.ndarray, values: np.ndarray, level: float) -> dict[str, float]:
    """The straightforward way: a DataFrame, sorted losses, pandas quantile, the covariance matrix."""
    frame = pd.DataFrame(returns)
    losses = -(frame * values).sum(axis=1)
    var = float(losses.quantile(level))
    ordered = np.sort(losses.to_numpy())
    # The same quantile read off the sorted losses by hand (linear interpolation between order statistics).
    h = (len(ordered) - 1) * level
    lo = math.floor(h)
    by_hand = ordered[lo] + (h - lo) * (ordered[min(lo + 1, len(ordered) - 1)] - ordered[lo])
    assert var == pytest.approx(by_hand, rel=1e-12, abs=1e-9)
    sd = math.sqrt(float(values @ frame.cov().to_numpy() @ values))
    from statistics import NormalDist

    z = NormalDist().inv_cdf(level)
    return {
        "var_hist": var,
        "es_hist": float(losses[losses >= var].mean()),
        "var_param": z * sd,
        "es_param": sd * NormalDist().pdf(z) / (1 - level),
    }


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize(("days", "positions"), [(250, 8), (1000, 40), (61, 3)])
def test_var_and_es_equal_a_direct_computation_on_generated_returns(seed: int, days: int, positions: int) -> None:
    rng = np.random.default_rng(seed)
    # Fat tails (Student t, 3 dof) and correlation through a common factor, long and short positions.
    factor = rng.standard_t(3, size=(days, 1)) * 0.01
    returns = factor * rng.uniform(0.5, 1.5, positions) + rng.standard_t(3, size=(days, positions)) * 0.01
    values = rng.normal(0, 10_000, positions)
    ours = var_es(returns, values)
    for level in (0.95, 0.99):
        direct = _direct(returns, values, level)
        assert ours.historical_var[level] == pytest.approx(direct["var_hist"], rel=1e-12, abs=1e-9)
        assert ours.historical_es[level] == pytest.approx(direct["es_hist"], rel=1e-12, abs=1e-9)
        assert ours.parametric_var[level] == pytest.approx(direct["var_param"], rel=1e-9)
        assert ours.parametric_es[level] == pytest.approx(direct["es_param"], rel=1e-9)
        assert ours.historical_es[level] >= ours.historical_var[level]


@settings(max_examples=150, deadline=None)
@given(
    pnl=st.lists(st.integers(min_value=-10_000, max_value=10_000).map(float), min_size=2, max_size=300),
    level=st.sampled_from([0.5, 0.9, 0.95, 0.975, 0.99, 0.999]),
)
def test_historical_var_and_es_equal_numpy_quantile_on_any_series_ties_included(pnl: list[float], level: float) -> None:
    series = np.array(pnl)
    ours = var_es_from_pnl(series, levels=(level,))
    losses = -series
    expected = float(np.quantile(losses, level))
    assert ours.historical_var[level] == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert ours.historical_es[level] == pytest.approx(float(losses[losses >= expected].mean()), rel=1e-12, abs=1e-9)
    assert losses.min() <= ours.historical_var[level] <= losses.max()


# ---- edge cases --------------------------------------------------------------------------------


def test_no_positions_gives_zero_exposure_and_zero_var() -> None:
    m = compute_metrics(_portfolio(np.zeros(0), ()), History(np.zeros((30, 0))), min_history_days=5)
    assert m.positions == 0
    assert (m.gross_exposure, m.net_exposure, m.gross_leverage, m.concentration_pct, m.largest_position_usd) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert all(value == 0.0 for value in m.var.values())
    assert len(m.var) == 8
    assert m.pnl_std_usd == 0.0
    assert m.sharpe is None
    assert "no positions" in m.notes["sharpe"]
    assert m.max_pair_correlation is None
    assert m.notes["max_pair_correlation"] == "fewer than two positions"
    assert m.daily_pnl == Decimal("-500")  # the account still moved


def test_flat_positions_count_as_no_positions() -> None:
    m = compute_metrics(_portfolio(np.zeros(3)), History(RETURNS), min_history_days=5)
    assert m.positions == 0
    assert m.var["var_99_hist"] == 0.0
    assert m.largest_position_symbol is None


def test_one_position_has_var_but_no_correlation() -> None:
    m = compute_metrics(_portfolio(np.array([6000.0]), ("A",)), History(RETURNS[:, :1]), min_history_days=5)
    # losses -60, 120, -180, 0, 60 -> sorted -180, -60, 0, 60, 120: 95% = 60 + 0.8 x 60 = 108
    assert m.var["var_95_hist"] == pytest.approx(108.0, abs=1e-9)
    assert m.max_pair_correlation is None
    assert m.max_pair is None
    assert m.correlation_matrix is None
    assert m.notes["max_pair_correlation"] == "fewer than two positions"


def test_too_little_history_gives_no_var_with_the_reason() -> None:
    m = compute_metrics(_portfolio(), History(RETURNS, BENCHMARK), min_history_days=6)
    for name in ("var_95_hist", "es_99_param", "sharpe", "beta", "pnl_std_usd", "max_pair_correlation"):
        assert m.notes[name] == "5 days of returns, fewer than the 6 required"
    assert all(value is None for value in m.var.values())
    assert len(m.var) == 8
    assert (m.sharpe, m.beta, m.pnl_std_usd, m.max_pair_correlation) == (None, None, None, None)
    assert m.gross_exposure == 11000.0  # what needs no history is still there


def test_nan_returns_count_as_zero_and_a_short_history_position_blocks_var() -> None:
    returns = np.vstack([RETURNS, RETURNS])  # 10 days
    returns[:6, 2] = np.nan  # C listed on day 7: 4 real returns
    m = compute_metrics(_portfolio(), History(returns), min_history_days=5)
    assert m.nan_returns_filled == 6
    assert m.var["var_95_hist"] is None
    assert m.notes["var_95_hist"] == "fewer than 5 daily returns for C"
    # Asking for 4 real returns, C qualifies, and the NaNs are zero returns: equal to the same matrix with zeros put in.
    ok = compute_metrics(_portfolio(), History(returns), min_history_days=4)
    zeros = compute_metrics(_portfolio(), History(np.nan_to_num(returns, nan=0.0)), min_history_days=4)
    assert ok.var == zeros.var
    assert ok.var["var_99_hist"] is not None
    assert ok.nan_returns_filled == 6
    assert zeros.nan_returns_filled == 0


def test_nan_in_a_position_not_held_is_ignored() -> None:
    returns = RETURNS.copy()
    returns[:, 1] = np.nan
    m = compute_metrics(_portfolio(np.array([6000.0, 0.0, -2000.0])), History(returns), min_history_days=5)
    assert m.positions == 2
    assert m.nan_returns_filled == 0
    assert m.var["var_95_hist"] is not None


def test_infinite_returns_are_refused_naming_the_symbol() -> None:
    returns = RETURNS.copy()
    returns[2, 1] = np.inf
    with pytest.raises(RiskInputError, match="infinite daily returns for B"):
        compute_metrics(_portfolio(), History(returns), min_history_days=5)


@pytest.mark.parametrize(
    ("returns", "values", "message"),
    [
        (np.zeros((5, 2)), VALUES, "3 columns"),
        (np.zeros(5), VALUES, "days x positions"),
        (RETURNS, np.array([1.0, np.nan, 2.0]), "NaN or infinite"),
        (RETURNS, VALUES.reshape(3, 1), "must be a vector"),
    ],
)
def test_bad_shapes_and_values_are_refused_clearly(returns: np.ndarray, values: np.ndarray, message: str) -> None:
    with pytest.raises(RiskInputError, match=message):
        var_es(returns, values)


def test_var_needs_two_days_and_valid_levels() -> None:
    with pytest.raises(RiskInputError, match="at least 2 days"):
        var_es(RETURNS[:1], VALUES)
    with pytest.raises(RiskInputError, match="confidence levels"):
        var_es(RETURNS, VALUES, levels=(1.0,))
    with pytest.raises(RiskInputError, match="3 symbols for 2"):
        compute_metrics(_portfolio(VALUES[:2]), History(RETURNS[:, :2]), min_history_days=5)


def test_non_positive_equity_leaves_leverage_undefined_with_a_reason() -> None:
    m = compute_metrics(_portfolio(equity="-100"), History(RETURNS, BENCHMARK), min_history_days=5)
    assert m.gross_leverage is None
    assert m.concentration_pct is None
    assert "equity is not positive (-100)" in m.notes["gross_leverage"]
    assert m.sharpe is None
    assert m.beta is None
    assert m.var["var_95_hist"] == pytest.approx(136.0)  # dollars at risk do not need equity
    assert m.drawdown_from_peak_pct == pytest.approx(21100 / 21000 * 100)


def test_a_position_whose_price_never_moves_has_no_correlation() -> None:
    returns = RETURNS.copy()
    returns[:, 2] = 0.0
    m = compute_metrics(_portfolio(), History(returns), min_history_days=5)
    assert m.correlation_matrix is not None
    assert m.correlation_matrix[2] == [None, None, None]
    assert m.correlation_matrix[0][2] is None
    assert m.max_pair == ("A", "B")
    two_flat = returns.copy()
    two_flat[:, 1] = 0.0
    m2 = compute_metrics(_portfolio(), History(two_flat), min_history_days=5)
    assert m2.max_pair_correlation is None
    assert m2.notes["max_pair_correlation"] == "fewer than two positions whose returns vary"


def test_beta_pairs_days_and_needs_benchmark_variance() -> None:
    m = compute_metrics(_portfolio(), History(RETURNS, None), min_history_days=5)
    assert m.beta is None
    assert m.notes["beta"] == "no benchmark returns"
    flat = compute_metrics(_portfolio(), History(RETURNS, np.full(5, 0.01)), min_history_days=5)
    assert flat.beta is None
    assert flat.notes["beta"] == "the benchmark's returns have no variance"
    gap = BENCHMARK.copy()
    gap[0] = np.nan
    short = compute_metrics(_portfolio(), History(RETURNS, gap), min_history_days=5)
    assert short.beta is None
    assert short.notes["beta"] == "4 days of benchmark returns, fewer than the 5 required"
    paired = compute_metrics(_portfolio(), History(RETURNS, gap), min_history_days=4)
    pnl = RETURNS @ VALUES / 20000
    expected = np.cov(pnl[1:], BENCHMARK[1:])[0, 1] / np.var(BENCHMARK[1:], ddof=1)
    assert paired.beta == pytest.approx(expected, rel=1e-12)
    with pytest.raises(RiskInputError, match="one value per day"):
        compute_metrics(_portfolio(), History(RETURNS, BENCHMARK[:4]), min_history_days=5)


def test_the_matrix_is_left_out_above_its_size_but_the_pair_is_still_found() -> None:
    rng = np.random.default_rng(7)
    k = MATRIX_MAX_POSITIONS + 570  # more than one correlation block (512 columns)
    returns = rng.normal(0, 0.01, (60, k))
    returns[:, k - 1] = returns[:, 3] + rng.normal(0, 0.001, 60)  # a near-copy in another block
    symbols = tuple(f"S{i:04d}" for i in range(k))
    values = np.full(k, 100.0)
    m = compute_metrics(Portfolio(symbols, values, Decimal(10**6), Decimal(0), Decimal(10**6), Decimal(10**6)), History(returns))
    assert m.correlation_matrix is None
    assert "kept for up to" in m.notes["correlation_matrix"]
    assert m.max_pair == ("S0003", f"S{k - 1:04d}")
    assert m.max_pair_correlation == pytest.approx(np.corrcoef(returns[:, 3], returns[:, k - 1])[0, 1], abs=1e-12)


# ---- the risk score ----------------------------------------------------------------------------


def test_risk_score_is_zero_when_nothing_is_used_and_a_full_limit_gives_its_weight() -> None:
    assert risk_score(dict.fromkeys(SCORE_WEIGHTS, 0.0)) == 0.0
    assert risk_score({}) == 0.0
    for name, weight in SCORE_WEIGHTS.items():
        assert risk_score({name: 1.0}) == pytest.approx(weight)
        assert risk_score({name: 3.0}) == pytest.approx(weight)  # clipped at the limit
    # daily loss at 50% and leverage at 50%: 1 - (1 - 0.9 x 0.25)(1 - 0.8 x 0.25) = 1 - 0.775 x 0.8 = 0.38
    assert risk_score({"daily_loss": 0.5, "gross_leverage": 0.5}) == pytest.approx(0.38)
    # every limit at 30%: 1 - prod(1 - w x 0.09) over 0.9, 0.9, 0.8, 0.6, 0.6, 0.5, 0.4
    every = 1 - (1 - 0.081) ** 2 * (1 - 0.072) * (1 - 0.054) ** 2 * (1 - 0.045) * (1 - 0.036)
    assert risk_score(dict.fromkeys(SCORE_WEIGHTS, 0.3)) == pytest.approx(every)
    assert 0.34 < every < 0.36
    assert risk_score({"daily_loss": None, "drawdown": -2.0}) == 0.0
    with pytest.raises(RiskInputError, match="no risk-score weight for 'vega'"):
        risk_score({"vega": 0.5})


@settings(max_examples=200, deadline=None)
@given(
    base=st.fixed_dictionaries({name: st.floats(min_value=0.0, max_value=2.0) for name in SCORE_WEIGHTS}),
    name=st.sampled_from(sorted(SCORE_WEIGHTS)),
    bump=st.floats(min_value=0.0, max_value=1.0),
)
def test_risk_score_is_monotone_bounded_and_at_least_the_weight_of_a_full_limit(base: dict[str, float], name: str, bump: float) -> None:
    before = risk_score(base)
    after = risk_score({**base, name: base[name] + bump})
    assert 0.0 <= before <= after <= 1.0
    if base[name] >= 1.0:
        assert before >= SCORE_WEIGHTS[name] - 1e-12
