"""Bar validation: 1,000,000 one-minute bars through validate_bars, against a plain-Python row loop, in one run.

Ours is :func:`omni_tasks.validation.validate_bars`: the invariants (nulls,
OHLC, positive prices, volume, duplicate and decreasing ts, bars outside
sessions), calendar-aware gaps classified against XNYS, outliers (robust z),
flat, filled and stale series, and the quality report per (symbol, day): all in
one call over the whole frame. The baseline is what a plain-Python validator
would do: one loop over the rows (``zip`` of the columns as Python lists) with
the same checks, dict/set bookkeeping per symbol, a loop over the expected
minutes for gaps, ``statistics.median`` for the robust z. Both must find the
same things: the counts are compared and the run fails if they differ.

The bars are synthetic, shaped like canonical ones (dtypes as
:func:`omni_tasks.contracts.bars.canonical_bars` makes them): ``--symbols``
tickers (default 205) of one-minute bars over the 13 XNYS sessions from
2024-11-20 to 2024-12-09 (Thanksgiving closed, 2024-11-29 a half day),
1,002,450 bars before defects. Defects are put in, a few of each, so every
path does its work: provider holes (0.05% of bars dropped), a five-minute
market-wide hole (a probable halt), NaN closes, OHLC breaks, zero prices,
negative volumes, duplicate rows, off-grid bars, bars after the close, 10%
jumps, a flat run and provider-filled bars. Duplicates make the frame take the
slower ordering path (hash-based duplicates instead of the O(n) sorted test).

The XNYS calendar is built once per process (about 1-2 s, exchange_calendars)
before timing: workers keep it; its cold cost is printed on its own. The
machine's load average is printed at the start and the end.

    python bench/validate.py [--symbols 205] [--rounds 3] [--baseline-symbols 0]

``--baseline-symbols N`` runs the baseline on the first N symbols only and
extrapolates its time by rows (said so in the output); default 0 = all.

The last line is one JSON object:
``{"seconds": ..., "baseline_seconds": ..., "ratio": ...}`` (ratio = baseline_seconds / seconds).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from omni_tasks.validation import ValidationResult, validate_bars, xnys_grid
from omni_tasks.validation.bars import DEFAULT_CONFIG
from omni_tasks.validation.outliers import MAD_TO_SD, MEAN_AD_TO_SD

START = datetime(2024, 11, 20, tzinfo=UTC)
END = datetime(2024, 12, 10, tzinfo=UTC)
TARGET_SECONDS = 2.0
MINUTE = 60 * 10**9


class BenchError(RuntimeError):
    """The benchmark could not measure, or ours and the baseline disagree."""


# ---- data ---------------------------------------------------------------------------------


def synthetic_frame(symbols: int, *, seed: int = 11) -> pd.DataFrame:
    """Canonical one-minute bars of ``symbols`` tickers over the window's sessions, with a few defects of every kind."""
    window = xnys_grid("1Min").window(int(pd.Timestamp(START).value), int(pd.Timestamp(END).value), int(pd.Timestamp(END).value))
    starts = window.starts
    m = len(starts)
    rng = np.random.default_rng(seed)
    shape = (symbols, m)
    first = np.exp(rng.uniform(np.log(5.0), np.log(500.0), symbols))
    close = first[:, None] * np.exp(np.cumsum(rng.normal(0.0, 0.0008, shape), axis=1))
    open_ = np.concatenate([first[:, None], close[:, :-1]], axis=1)
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, 0.0005, shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, 0.0005, shape)))
    volume = np.round(rng.lognormal(8.0, 1.0, shape))

    # 10% jumps (level shifts inside a session): outliers to flag, not quarantine.
    for _ in range(10):
        s, j = int(rng.integers(symbols)), int(rng.integers(m // 4, m - 400))
        for a in (open_, high, low, close):
            a[s, j:] *= 1.10
    # A flat run of 40 equal closes, and 5 provider-filled bars (zero volume, flat at the previous close).
    s, j = 3 % symbols, 1000
    level = close[s, j]
    later = level / close[s, j + 39]
    for a in (open_, high, low, close):
        a[s, j + 40 :] *= later
        a[s, j : j + 40] = level
    for k in range(5):
        s, j = (7 + k) % symbols, 2000 + 37 * k
        open_[s, j] = high[s, j] = low[s, j] = close[s, j] = close[s, j - 1]
        volume[s, j] = 0.0

    names = np.array([f"T{i:03d}" for i in range(symbols)], dtype=object)
    n = symbols * m
    frame = pd.DataFrame(
        {
            "symbol": pd.array(np.repeat(names, m), dtype="str"),
            "timeframe": pd.array(np.full(n, "1Min", dtype=object), dtype="str"),
            "ts": pd.DatetimeIndex(np.tile(starts, symbols).astype("datetime64[ns]")).tz_localize("UTC"),
            "open": open_.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
            "volume": volume.ravel(),
            "vwap": ((high + low + close) / 3).ravel(),
            "trade_count": pd.array(np.maximum(1, volume.ravel() // 50).astype(np.int64), dtype="Int64"),
            "provider": pd.array(np.full(n, "alpaca", dtype=object), dtype="str"),
            "feed": pd.array(np.full(n, "sip", dtype=object), dtype="str"),
            "adjustment": pd.array(np.full(n, "raw", dtype=object), dtype="str"),
        }
    )
    # Row invariants broken in place.
    picks = rng.choice(n, 90, replace=False)
    for i in picks[:20]:
        frame.loc[i, "close"] = np.nan
    for i in picks[20:40]:
        frame.loc[i, "high"] = max(frame.at[i, "open"], frame.at[i, "close"]) * 0.999
    for i in picks[40:50]:
        frame.loc[i, "low"] = min(frame.at[i, "open"], frame.at[i, "close"]) * 1.001
    for i in picks[50:60]:
        frame.loc[i, "open"] = 0.0
    for i in picks[60:70]:
        frame.loc[i, "volume"] = -100.0
    # Rows added: duplicates right after their original, off-grid bars (+30 s), bars at 21:05 after a session's last bar.
    extra = []
    for i in picks[70:80]:
        extra.append(frame.iloc[[i]].assign(_at=i + 0.5))
    for i in picks[80:90]:
        extra.append(frame.iloc[[i]].assign(ts=frame.at[i, "ts"] + pd.Timedelta(seconds=30), _at=i + 0.6))
    last_of_day = np.flatnonzero(np.diff(window.start_session, append=-1) != 0)
    for k in range(5):
        s = int(rng.integers(symbols))
        i = s * m + int(last_of_day[k])
        extra.append(frame.iloc[[i]].assign(ts=frame.at[i, "ts"] + pd.Timedelta(minutes=6), _at=i + 0.7))
    frame = pd.concat([frame.assign(_at=np.arange(n, dtype=np.float64)), *extra]).sort_values("_at", kind="stable").drop(columns="_at")
    # Provider holes (0.05% of bars) and a five-minute hole in every symbol at once (a probable halt).
    halt = frame["ts"].between(pd.Timestamp("2024-12-04T15:00:00Z"), pd.Timestamp("2024-12-04T15:04:00Z"))
    hole = rng.random(len(frame)) < 0.0005
    return frame[~halt.to_numpy() & ~hole].reset_index(drop=True)


# ---- the baseline: a plain-Python row loop ----------------------------------------------------


def baseline(frame: pd.DataFrame, *, start: datetime, end: datetime) -> dict[str, Any]:
    """The same checks as validate_bars, one row at a time in plain Python; returns the counts to compare."""
    grid = xnys_grid("1Min")
    opens, closes = grid.opens.tolist(), grid.closes.tolist()
    step = grid.step_ns
    start_ns, end_ns = int(pd.Timestamp(start).value), int(pd.Timestamp(end).value)
    window = grid.window(start_ns, end_ns, end_ns + 1)
    expected = window.starts.tolist()
    expected_session = window.start_session.tolist()
    tol, cfg = DEFAULT_CONFIG.ohlc_tolerance, DEFAULT_CONFIG

    columns = [frame[c].tolist() for c in ("symbol", "open", "high", "low", "close", "volume", "vwap", "trade_count")]
    ts_list = frame["ts"].array.asi8.tolist()
    counts: dict[str, int] = defaultdict(int)
    seen: dict[str, set[int]] = defaultdict(set)
    running_max: dict[str, int] = {}
    received: dict[str, set[int]] = defaultdict(set)
    clean_bars: dict[str, list[tuple[int, float, float, float, float, float, int]]] = defaultdict(list)
    nat = np.iinfo(np.int64).min

    def missing(x: object) -> bool:
        return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))

    for symbol, o, h, lo, c, v, vwap, tc, ts in zip(*columns, ts_list, strict=True):
        bad = False
        sym_ok = not missing(symbol)
        ts_ok = ts != nat
        if not sym_ok or not ts_ok or missing(o) or missing(h) or missing(lo) or missing(c) or missing(v):
            counts["not_null"] += 1
            bad = True
        if not (missing(o) or missing(h) or missing(c)) and h < max(o, c) - tol:
            counts["ohlc_high"] += 1
            bad = True
        if not (missing(o) or missing(lo) or missing(c)) and lo > min(o, c) + tol:
            counts["ohlc_low"] += 1
            bad = True
        if any(not missing(x) and not (0 < x < math.inf) for x in (o, h, lo, c, vwap)):
            counts["positive_price"] += 1
            bad = True
        if any(not missing(x) and not (0 <= x < math.inf) for x in (v, tc)):
            counts["volume_non_negative"] += 1
            bad = True
        if sym_ok and ts_ok:
            if ts in seen[symbol]:
                counts["duplicate_ts"] += 1
                bad = True
            elif ts < running_max.get(symbol, nat):
                counts["ts_order"] += 1
                bad = True
            seen[symbol].add(ts)
            running_max[symbol] = max(running_max.get(symbol, nat), ts)
        session = -1
        if ts_ok:
            k = bisect.bisect_right(opens, ts) - 1
            inside = k >= 0 and ts < closes[k]
            if not inside or (ts - opens[k]) % step:
                counts["outside_session"] += 1
                bad = True
            else:
                session = k
        if sym_ok and ts_ok:
            received[symbol].add(ts)
        if not bad and sym_ok and ts_ok:
            if start_ns <= ts < end_ns:
                clean_bars[symbol].append((ts, o, h, lo, c, v, session))
            else:
                counts["outside_range"] += 1

    symbols = list(dict.fromkeys(s for s in columns[0] if not missing(s)))
    present = {s: {b[0] for b in clean_bars[s]} for s in symbols}
    gap_bars: dict[str, int] = defaultdict(int)
    by_session_nobody: dict[int, bool] = {}
    nobody_at: list[bool] = []
    for t, j in zip(expected, expected_session, strict=True):
        nobody = all(t not in received[s] and t not in present[s] for s in symbols)
        nobody_at.append(nobody)
        by_session_nobody[j] = by_session_nobody.get(j, True) and nobody
    for s in symbols:
        for t, j, nobody in zip(expected, expected_session, nobody_at, strict=True):
            if t in present[s]:
                continue
            if t in received[s]:
                gap_bars["quarantined"] += 1
            elif nobody and len(symbols) >= cfg.market_wide_min_symbols and not by_session_nobody[j]:
                gap_bars["halt"] += 1
            else:
                gap_bars["provider_hole"] += 1

    for s in symbols:
        bars = clean_bars[s]
        returns = []
        for prev, cur in zip(bars, bars[1:], strict=False):
            if prev[6] == cur[6]:  # inside one session; a return across missing bars is scaled by 1/sqrt(bars apart)
                returns.append((math.log(cur[4]) - math.log(prev[4])) / math.sqrt((cur[0] - prev[0]) / step))
        if len(returns) >= cfg.outlier_min_returns:
            med = statistics.median(returns)
            dev = [abs(r - med) for r in returns]
            scale = MAD_TO_SD * statistics.median(dev) or MEAN_AD_TO_SD * statistics.fmean(dev)
            if scale > 0:
                counts["outlier"] += sum(1 for d in dev if d / scale > cfg.outlier_k)
        run = 1
        for prev, cur in zip(bars, bars[1:], strict=False):
            run = run + 1 if cur[4] == prev[4] else 1
            if run == cfg.flat_bars:
                counts["flat"] += 1
            if cur[5] == 0 and cur[1] == cur[4] and cur[2] == cur[4] and cur[3] == cur[4] and cur[4] == prev[4]:
                counts["filled"] += 1
        last = bars[-1][0] if bars else None
        behind = len(expected) - (bisect.bisect_right(expected, last) if last is not None else 0)
        if expected and behind > cfg.stale_bars:
            counts["stale"] += 1
    return {"violations": dict(counts), "gap_bars": dict(gap_bars)}


# ---- measuring ----------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    result: ValidationResult


def ours(frame: pd.DataFrame) -> Run:
    t0 = time.perf_counter()
    result = validate_bars(frame, timeframe="1Min", start=START, end=END, as_of=END)
    return Run(time.perf_counter() - t0, result)


def compare(result: ValidationResult, base: dict[str, Any]) -> None:
    summary = result.summary()
    want = {k: v for k, v in summary["violations"].items()}
    got = {k: v for k, v in base["violations"].items() if v}
    ours_gaps = {k: v for k, v in summary["gap_bars"].items() if k in ("provider_hole", "halt", "quarantined")}
    if want != got or ours_gaps != base["gap_bars"]:
        raise BenchError(f"ours and the baseline disagree:\n ours     {want} {ours_gaps}\n baseline {got} {base['gap_bars']}")


def run(args: argparse.Namespace) -> dict[str, float]:
    load_at_start = os.getloadavg()
    t0 = time.perf_counter()
    xnys_grid("1Min")
    calendar_s = time.perf_counter() - t0
    frame = synthetic_frame(args.symbols)
    print(
        f"{len(frame):,} one-minute bars, {args.symbols} symbols, {START.date()}..{END.date()} (13 XNYS sessions, Thanksgiving closed, a half day); "
        f"XNYS calendar built in {calendar_s:.2f} s (once per process, not timed)",
        flush=True,
    )
    if len(frame) < 1_000_000:
        print(f"note: {len(frame):,} bars, fewer than 1,000,000 (raise --symbols)")
    runs = []
    for k in range(args.rounds):
        r = ours(frame)
        runs.append(r)
        parts = ", ".join(f"{name} {s:.3f}" for name, s in r.result.timings_s.items())
        print(f"round {k + 1}: validate_bars {r.seconds:.3f} s ({parts})", flush=True)
    seconds = statistics.median(r.seconds for r in runs)
    result = runs[0].result
    summary = result.summary()
    print(f"found: {summary['violations']}")
    print(f"gap bars by kind: {summary['gap_bars']}; quarantined rows {summary['quarantined_rows']}, flagged rows {summary['flagged_rows']}, "
          f"reports {len(result.reports):,} (symbol x day), completeness {summary['completeness']:.5f}")

    subset = frame
    if args.baseline_symbols:
        keep = result.symbols[: args.baseline_symbols]
        subset = frame[frame["symbol"].isin(keep)].reset_index(drop=True)
    print(f"baseline: plain-Python row loop over {len(subset):,} bars ...", flush=True)
    t0 = time.perf_counter()
    base = baseline(subset, start=START, end=END)
    measured = time.perf_counter() - t0
    if subset is frame:
        baseline_s = measured
        compare(result, base)
        print(f"baseline {baseline_s:.2f} s; it finds exactly what validate_bars finds")
    else:
        baseline_s = measured * len(frame) / len(subset)
        print(f"baseline {measured:.2f} s on {len(subset):,} bars ({args.baseline_symbols} symbols), extrapolated by rows to {baseline_s:.2f} s for {len(frame):,} bars")
    ratio = baseline_s / seconds
    verdict = "met" if seconds <= TARGET_SECONDS else "NOT met"
    print()
    print(f"{'':34s} {'bars':>11s} {'seconds':>9s} {'bars/s':>12s}")
    print(f"{'validate_bars (median of rounds)':34s} {len(frame):>11,} {seconds:>9.3f} {len(frame) / seconds:>12,.0f}")
    print(f"{'plain-Python row loop':34s} {len(frame):>11,} {baseline_s:>9.3f} {len(frame) / baseline_s:>12,.0f}")
    print(f"ratio baseline / ours: {ratio:.1f}x; target <= {TARGET_SECONDS:g} s: {verdict}")
    end_load = os.getloadavg()
    print(f"load average (1, 5, 15 min) at start {load_at_start[0]:.2f} {load_at_start[1]:.2f} {load_at_start[2]:.2f}, "
          f"at end {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f} on {os.cpu_count()} CPUs")
    return {"seconds": round(seconds, 4), "baseline_seconds": round(baseline_s, 4), "ratio": round(ratio, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=205, help="tickers (default 205: 1,002,450 bars before defects)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of validate_bars; the median is reported (default 3)")
    parser.add_argument("--baseline-symbols", type=int, default=0, help="run the baseline on this many symbols and extrapolate (default 0: all)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.symbols < 1:
        parser.error("--rounds and --symbols must be at least 1")
    try:
        summary = run(args)
    except BenchError as exc:
        print(f"bench/validate failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
