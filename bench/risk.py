"""Risk: VaR and ES (95% and 99%, historical and parametric) for 5,000 positions x 1,000 days, against pandas, in one run.

Ours is :func:`omni_tasks.risk.figures.var_es`: one matrix-vector product for
the portfolio's daily P&L (``returns @ values``), one ``np.partition`` for the
interpolated quantiles of the losses, ES as the mean of the losses at or
beyond each VaR, and the parametric figures from the P&L's own standard
deviation (``w' S w`` is the sample variance of ``returns @ w``, so the
5,000 x 5,000 covariance matrix is never formed).

The baseline is what a user would write with pandas over a DataFrame of the
same returns: ``pnl = (df * values).sum(axis=1)``, ``losses.quantile(level)``,
ES as ``losses[losses >= var].mean()``, and the parametric figures from
``df.cov()``: ``sqrt(values @ cov @ values) * z``. Both get the data already in
memory (the DataFrame is built before timing). Both must agree on all eight
figures: the largest absolute difference is printed, and the run fails above
1e-6 of the figures' size.

Returns are synthetic: a common market factor plus Student-t (3 dof) noise
per position, long and short positions of a few thousand dollars each,
seeded. Timing is best of ``--rounds`` for ours and best of
``--baseline-rounds`` for pandas (its covariance takes seconds, so fewer).
The machine's load average is printed at the start and the end.

    python bench/risk.py [--positions 5000] [--days 1000] [--rounds 50] [--baseline-rounds 3]

The last line is one JSON object: ``{"ms": ..., "baseline_ms": ..., "ratio": ...}``
(ratio = baseline_ms / ms). Targets: ms <= 5 and ratio >= 10.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from omni_tasks.risk.var_es import LEVELS, var_es

TARGET_MS = 5.0
TARGET_RATIO = 10.0
NAMES = [f"{kind}_{level * 100:g}_{how}" for level in LEVELS for kind in ("var", "es") for how in ("hist", "param")]


class BenchError(RuntimeError):
    """The benchmark could not measure, or ours and the baseline disagree."""


def synthetic(positions: int, days: int, *, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(days x positions) daily returns and signed market values (USD)."""
    rng = np.random.default_rng(seed)
    market = rng.standard_t(3, size=(days, 1)) * 0.008
    betas = rng.uniform(0.3, 1.7, positions)
    returns = market * betas + rng.standard_t(3, size=(days, positions)) * 0.012
    values = rng.uniform(1_000, 9_000, positions) * np.where(rng.random(positions) < 0.3, -1.0, 1.0)
    return np.ascontiguousarray(returns), values


def ours(returns: np.ndarray, values: np.ndarray) -> dict[str, float]:
    result = var_es(returns, values)
    figures = result.as_dict()
    return {name: figures[name] for name in NAMES}


def baseline(frame: pd.DataFrame, values: np.ndarray) -> dict[str, float]:
    """The pandas way, as a user would write it."""
    pnl = (frame * values).sum(axis=1)
    losses = -pnl
    sd = math.sqrt(float(values @ frame.cov().to_numpy() @ values))
    normal = NormalDist()
    out: dict[str, float] = {}
    for level in LEVELS:
        key = f"{level * 100:g}"
        var = float(losses.quantile(level))
        z = normal.inv_cdf(level)
        out[f"var_{key}_hist"] = var
        out[f"es_{key}_hist"] = float(losses[losses >= var].mean())
        out[f"var_{key}_param"] = z * sd
        out[f"es_{key}_param"] = sd * normal.pdf(z) / (1 - level)
    return {name: out[name] for name in NAMES}


def best_of(rounds: int, call: Callable[[], dict[str, float]]) -> tuple[float, dict[str, float], list[float]]:
    """(best seconds, the figures of the last call, every round's seconds)."""
    times: list[float] = []
    figures: dict[str, float] = {}
    for _ in range(rounds):
        t0 = time.perf_counter()
        figures = call()
        times.append(time.perf_counter() - t0)
    return min(times), figures, times


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    returns, values = synthetic(args.positions, args.days)
    frame = pd.DataFrame(returns, columns=[f"S{i:04d}" for i in range(args.positions)])
    print(
        f"{args.days:,} days x {args.positions:,} positions of daily returns ({returns.nbytes / 1e6:.0f} MB float64), "
        f"gross ${np.abs(values).sum():,.0f}, {int((values < 0).sum()):,} short; levels {', '.join(f'{lv:g}' for lv in LEVELS)}",
        flush=True,
    )
    ours(returns, values)  # warm-up: first-touch page faults and BLAS thread start are not the computation
    seconds, mine, my_times = best_of(args.rounds, lambda: ours(returns, values))
    print(
        f"ours (var_es): best of {args.rounds} {seconds * 1e3:.3f} ms, median {sorted(my_times)[len(my_times) // 2] * 1e3:.3f} ms",
        flush=True,
    )
    print(f"baseline (pandas, df.cov()): {args.baseline_rounds} round(s) ...", flush=True)
    base_seconds, theirs, base_times = best_of(args.baseline_rounds, lambda: baseline(frame, values))
    print(
        f"baseline: best of {args.baseline_rounds} {base_seconds * 1e3:,.1f} ms (rounds: {', '.join(f'{t * 1e3:,.0f}' for t in base_times)} ms)"
    )

    diffs = {name: abs(mine[name] - theirs[name]) for name in NAMES}
    worst = max(diffs.values())
    scale = max(abs(v) for v in theirs.values())
    print()
    print(f"{'figure':16s} {'ours $':>16s} {'pandas $':>16s} {'abs diff $':>12s}")
    for name in NAMES:
        print(f"{name:16s} {mine[name]:>16,.4f} {theirs[name]:>16,.4f} {diffs[name]:>12.3e}")
    print(f"both ways agree: max abs difference {worst:.3e} $ over {len(NAMES)} figures (largest figure {scale:,.2f} $)")
    if not worst <= 1e-6 * scale:
        raise BenchError(f"ours and pandas disagree by {worst:.3e} $ (more than 1e-6 of {scale:,.2f} $)")

    ms, baseline_ms = seconds * 1e3, base_seconds * 1e3
    ratio = baseline_ms / ms
    verdict = "met" if ms <= TARGET_MS and ratio >= TARGET_RATIO else "NOT met"
    print(
        f"ours {ms:.3f} ms, pandas {baseline_ms:,.1f} ms, ratio {ratio:,.0f}x; targets <= {TARGET_MS:g} ms and >= {TARGET_RATIO:g}x: {verdict}"
    )
    end_load = os.getloadavg()
    print(
        f"load average (1, 5, 15 min) at start {load_at_start[0]:.2f} {load_at_start[1]:.2f} {load_at_start[2]:.2f}, "
        f"at end {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f} on {os.cpu_count()} CPUs"
    )
    return {"ms": round(ms, 3), "baseline_ms": round(baseline_ms, 1), "ratio": round(ratio, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=5000)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50, help="timed runs of ours; the best is reported (default 50)")
    parser.add_argument("--baseline-rounds", type=int, default=3, help="timed runs of the pandas baseline (default 3)")
    args = parser.parse_args(argv)
    if min(args.positions, args.rounds, args.baseline_rounds) < 1 or args.days < 2:
        parser.error("--positions, --rounds and --baseline-rounds must be at least 1, --days at least 2")
    try:
        summary = run(args)
    except BenchError as exc:
        print(f"bench/risk failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
