"""The combined score: winsorised cross-sectional z-scores, weights, rank 1 = best, unscored rows kept."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from omni_tasks.scans.indicators import INDICATORS
from omni_tasks.scans.scoring import ScoreWeights, score, zscores


def _frame(rows: dict[str, dict[str, float]], reasons: dict[str, str] | None = None) -> pd.DataFrame:
    reasons = reasons or {}
    symbols = list(rows)
    data: dict[str, object] = {"symbol": pd.Series(symbols, dtype="str")}
    for name in INDICATORS:
        data[name] = [rows[s].get(name, 0.0) for s in symbols]
    data["reason"] = pd.Series([reasons.get(s) for s in symbols], dtype="str")
    return pd.DataFrame(data)


ONLY_MOMENTUM = ScoreWeights(momentum_pct=1.0, volume_surge_x=0.0, atr_pct=0.0, gap_pct=0.0, rsi=0.0, from_high_pct=0.0)


def test_winsorised_zscores_match_the_hand_computed_values() -> None:
    # quantiles 0.25 / 0.75 of 1 2 3 4 100 are 2 and 4: clipped 2 2 3 4 4, mean 3, population std sqrt(0.8)
    z = zscores(np.array([[1.0], [2.0], [3.0], [4.0], [100.0]]), 0.25)[:, 0]
    s = math.sqrt(0.8)
    assert z == pytest.approx([-1 / s, -1 / s, 0.0, 1 / s, 1 / s], rel=1e-12)


def test_without_winsorising_the_outlier_dominates() -> None:
    z = zscores(np.array([[1.0], [2.0], [3.0], [4.0], [100.0]]), 0.0)[:, 0]
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert z == pytest.approx((x - x.mean()) / x.std(), rel=1e-12)
    assert z[-1] > 1.9


def test_no_spread_gives_zero_zscores() -> None:
    assert zscores(np.array([[0.1], [0.1], [0.1]]), 0.05)[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert zscores(np.array([[7.0]]), 0.05)[:, 0].tolist() == [0.0]


def test_score_is_the_weighted_sum_of_zscores_and_rank_1_is_best() -> None:
    frame = _frame({
        "AAA": {"momentum_pct": 1.0, "atr_pct": 3.0},
        "BBB": {"momentum_pct": 5.0, "atr_pct": 1.0},
        "CCC": {"momentum_pct": 3.0, "atr_pct": 2.0},
    })
    weights = ScoreWeights(momentum_pct=0.5, volume_surge_x=0.0, atr_pct=-0.5, gap_pct=0.0, rsi=0.0, from_high_pct=0.0)
    out = score(frame, weights=weights, winsor_quantile=0.0).set_index("symbol")
    z_m = (np.array([1.0, 5.0, 3.0]) - 3.0) / np.std([1.0, 5.0, 3.0])
    z_a = (np.array([3.0, 1.0, 2.0]) - 2.0) / np.std([3.0, 1.0, 2.0])
    expected = 0.5 * z_m - 0.5 * z_a
    assert out.loc[["AAA", "BBB", "CCC"], "score"].tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    assert out.loc[["BBB", "CCC", "AAA"], "rank"].tolist() == [1, 2, 3]  # low volatility is preferred by the negative weight


def test_equal_scores_are_ranked_by_symbol() -> None:
    frame = _frame({"ZZZ": {"momentum_pct": 2.0}, "AAA": {"momentum_pct": 2.0}, "MMM": {"momentum_pct": 1.0}})
    out = score(frame, weights=ONLY_MOMENTUM, winsor_quantile=0.0)
    assert out["symbol"].tolist() == ["AAA", "ZZZ", "MMM"]
    assert out["rank"].tolist() == [1, 2, 3]


def test_unscored_rows_are_kept_last_with_their_reason_and_no_score() -> None:
    frame = _frame(
        {"AAA": {"momentum_pct": 1.0}, "BBB": {"momentum_pct": 2.0}, "NEW": {"momentum_pct": np.nan}, "ODD": {"rsi": np.nan}},
        reasons={"NEW": "insufficient history (3 bars, need 21)"},
    )
    out = score(frame, weights=ONLY_MOMENTUM, winsor_quantile=0.0)
    assert out["symbol"].tolist() == ["BBB", "AAA", "NEW", "ODD"]
    assert out["rank"].tolist()[:2] == [1, 2]
    assert out["rank"].isna().tolist()[2:] == [True, True]
    assert out["score"].isna().tolist() == [False, False, True, True]
    assert out["reason"].tolist()[2:] == ["insufficient history (3 bars, need 21)", "rsi undefined"]
    # The unscored rows do not move the z-scores of the scored ones.
    assert out["z_momentum_pct"].tolist()[:2] == pytest.approx([1.0, -1.0])


def test_row_order_does_not_change_anything() -> None:
    rng = np.random.default_rng(5)
    rows = {f"S{i:03d}": {name: float(rng.normal()) for name in INDICATORS} for i in range(60)}
    frame = _frame(rows)
    shuffled = frame.sample(frac=1.0, random_state=2).reset_index(drop=True)
    pd.testing.assert_frame_equal(score(frame, weights=ScoreWeights()), score(shuffled, weights=ScoreWeights()), check_exact=True)


def test_repeated_symbols_are_refused() -> None:
    frame = pd.concat([_frame({"AAA": {}}), _frame({"AAA": {}})], ignore_index=True)
    with pytest.raises(ValueError, match="more than once: AAA"):
        score(frame, weights=ScoreWeights())


def test_default_weights_sum_to_one_in_absolute_value() -> None:
    assert np.abs(ScoreWeights().vector()).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, "0.3", True])
def test_weights_must_be_finite_numbers(bad: object) -> None:
    with pytest.raises(ValueError, match="momentum_pct"):
        ScoreWeights(momentum_pct=bad)  # type: ignore[arg-type]


def test_all_zero_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="every weight is 0"):
        ScoreWeights(momentum_pct=0, volume_surge_x=0, atr_pct=0, gap_pct=0, rsi=0, from_high_pct=0)


@pytest.mark.parametrize("bad", [-0.1, 0.5, 1.0])
def test_winsor_quantile_must_be_below_one_half(bad: float) -> None:
    with pytest.raises(ValueError, match="winsor_quantile"):
        score(_frame({"AAA": {}}), weights=ScoreWeights(), winsor_quantile=bad)
