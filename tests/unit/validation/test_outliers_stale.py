"""Robust z outliers, flat and filled runs, bars behind: the pure functions."""

from __future__ import annotations

import numpy as np

from omni_tasks.validation import outliers, stale


def _walk(n: int, seed: int = 1, sd: float = 0.001) -> np.ndarray:
    return 100 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, sd, n)))


def test_outliers_a_jump_of_many_deviations_is_flagged_at_the_bar_it_goes_into() -> None:
    close = _walk(500)
    close[300:] *= 1.05
    codes = np.zeros(500, dtype=np.int64)
    no_return = np.zeros(500, dtype=bool)
    no_return[0] = True
    out = outliers.robust_outliers(codes, close, no_return, 1)
    print(f"5% jump on 0.1% noise: z = {out.z[0]:.0f}, scale {out.scale[0]:.5f}")
    assert out.positions.tolist() == [300]
    assert out.z[0] > 8
    assert out.scored.tolist() == [499]


def test_outliers_a_return_across_missing_bars_is_scaled_by_the_square_root_of_the_bars() -> None:
    close = _walk(500)
    close[300:] *= np.exp(10 * 0.001)  # a normal 100-bar move: 10 one-bar deviations
    codes = np.zeros(500, dtype=np.int64)
    no_return = np.zeros(500, dtype=bool)
    no_return[0] = True
    apart = np.ones(500)
    apart[300] = 100
    assert outliers.robust_outliers(codes, close, no_return, 1, bars_apart=apart).positions.tolist() == []
    assert outliers.robust_outliers(codes, close, no_return, 1).positions.tolist() == [300]


def test_outliers_mostly_unchanged_prices_fall_back_to_mean_deviation_and_all_equal_is_not_scored() -> None:
    close = np.full(200, 10.0)
    close[50::10] = 10.01  # an illiquid symbol: most one-bar returns are exactly 0, so MAD is 0
    codes = np.zeros(200, dtype=np.int64)
    no_return = np.zeros(200, dtype=bool)
    no_return[0] = True
    out = outliers.robust_outliers(codes, close, no_return, 1)
    assert out.scale[0] > 0
    assert out.positions.tolist() == []
    flat = outliers.robust_outliers(codes, np.full(200, 10.0), no_return, 1)
    assert flat.scored.tolist() == [0]
    assert flat.positions.tolist() == []


def test_outliers_too_few_returns_are_not_scored_per_symbol() -> None:
    close = np.concatenate([_walk(10), _walk(300, seed=2)])
    close[5] *= 2
    close[200] *= 2
    codes = np.repeat([0, 1], [10, 300])
    no_return = np.zeros(310, dtype=bool)
    no_return[[0, 10]] = True
    out = outliers.robust_outliers(codes, close, no_return, 2, min_returns=20)
    assert out.scored.tolist() == [0, 299]
    assert out.positions.tolist() == [200, 201]  # the spike up and back down, both in the scored symbol


def test_stale_flat_runs_and_filled_bars_per_symbol() -> None:
    codes = np.repeat([0, 1], [8, 6])
    close = np.array([1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4], dtype=float)
    first, length = stale.flat_runs(codes, close, 3)
    assert list(zip(first.tolist(), length.tolist(), strict=True)) == [(1, 4), (5, 3), (10, 4)]  # runs stop at a symbol's end
    volume = np.ones(14)
    volume[[3, 8]] = 0
    filled = stale.filled_bars(codes, close, close, close, close, volume)
    assert filled.tolist() == [3]  # row 8 is a new symbol's first bar: no previous close of its own
    assert stale.bars_behind(np.array([9, -1, 4]), 10).tolist() == [0, 10, 5]
