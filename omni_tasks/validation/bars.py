"""validate_bars: every check of DESIGN section 5 over a canonical bar frame, in one vectorised pass.

Order of work (each stage is whole-column numpy; per-row Python only words
the reasons of failing rows):

1. row invariants (:mod:`checks`): nulls, OHLC, positive prices, volume;
2. per-symbol order: duplicates and decreasing ts (an O(n) test first: a frame
   as the bar store or an adapter returns it skips the rest);
3. sessions: each bar must start on the timeframe's grid inside an XNYS session;
4. rows breaking 1-3 go to quarantine with their reasons; the rest are clean;
5. gaps (:mod:`gaps`): expected bar starts of the window against the clean
   bars, every missing stretch classified;
6. flags on the clean bars, never quarantine: outliers (:mod:`outliers`),
   flat runs, provider-filled bars, zero-volume bars of a series that
   normally trades, stale series (:mod:`stale`);
7. the quality report per (symbol, day) (:mod:`report`).

One series per symbol: the frame holds one bar per (symbol, ts), as
:meth:`BarStore.read` returns it (feeds already chosen per ts) or as one
provider returns it. Plain Python: no Celery, no database.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np
import pandas as pd

from omni_tasks.contracts.bars import parse_timeframe
from omni_tasks.validation import checks, outliers, stale
from omni_tasks.validation.checks import BAR_CHECKS, Found, fmt, fmt_ts
from omni_tasks.validation.gaps import NO_DATA_CODES, Gaps, detect_gaps
from omni_tasks.validation.grid import NAT, SessionGrid, Window, utc_index, xnys_grid
from omni_tasks.validation.report import SERIES_COLUMNS, VIOLATION_COLUMNS, ValidationResult, build_reports

REQUIRED_COLUMNS: Final = ("symbol", "ts", "open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the checks that are judgement calls (the invariants have none).

    ``outlier_k``: robust deviations beyond which a return is an outlier.
    ``outlier_min_returns``: fewer returns per symbol and it is not scored.
    ``stale_bars``: a series whose last bar is more than this many expected bars old is stale.
    ``flat_bars``: this many equal closes in a row is a flat run.
    ``market_wide_min_symbols``: a minute missing for every symbol is a halt only with at least this many symbols.
    ``ohlc_tolerance``: absolute slack (price units) in high >= max(open, close) and low <= min(open, close).
    ``liquid_share``: a series whose bars have volume this often (0..1) normally trades: its zero-volume bars are flagged.
    ``liquid_min_bars``: fewer clean bars and a series is not judged for zero volume.
    """

    outlier_k: float = 8.0
    outlier_min_returns: int = 20
    stale_bars: int = 5
    flat_bars: int = 30
    market_wide_min_symbols: int = 2
    ohlc_tolerance: float = 1e-9
    liquid_share: float = 0.9
    liquid_min_bars: int = 5


#: One stretch the backfill ledger says has no data: (start, end (exclusive), cause), cause a key of gaps.NO_DATA_CODES.
NoDataRange = tuple[datetime, datetime, str]

DEFAULT_CONFIG: Final = ValidationConfig()


def _ns(value: datetime, name: str) -> int:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got {value.isoformat()}")
    return int(pd.Timestamp(value).tz_convert("UTC").as_unit("ns").value)


def _floats(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)


def validate_bars(
    frame: pd.DataFrame,
    *,
    timeframe: str,
    start: datetime,
    end: datetime,
    symbols: Sequence[str] | None = None,
    as_of: datetime | None = None,
    config: ValidationConfig = DEFAULT_CONFIG,
    grid: SessionGrid | None = None,
    no_data: Mapping[str, Sequence[NoDataRange]] | None = None,
) -> ValidationResult:
    """Validate canonical bars of ``timeframe`` for the window ``start <= ts < end`` (aware datetimes).

    ``symbols``: the batch that was asked for (a symbol with no row at all is
    then reported missing, not forgotten); default: the symbols in the frame.
    ``as_of``: when the check runs (default now): bars not complete by then are
    not expected, and staleness is measured to it. ``grid``: the exchange
    sessions (default XNYS from :mod:`omni_tasks.marketdata.calendar`).
    ``no_data``: per symbol, ranges where the backfill ledger says there is no
    data (unknown symbol, no bars in range), applied in order (a later range
    wins): bars missing there are reported as "no data", not as holes, and do
    not make the series stale.

    No row is dropped: each input row ends in ``clean`` or ``quarantine``.
    Raises ValueError for a frame that is not a bar frame of this timeframe
    (a missing column, naive timestamps, rows of another timeframe).
    """
    clock = _Clock()
    tf = parse_timeframe(timeframe)
    start_ns, end_ns = _ns(start, "start"), _ns(end, "end")
    if end_ns <= start_ns:
        raise ValueError(f"empty window: end {end.isoformat()} is not after start {start.isoformat()}")
    as_of = as_of or datetime.now(tz=UTC)
    as_of_ns = _ns(as_of, "as_of")
    missing_columns = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing_columns:
        raise ValueError(f"not a bar frame: missing column(s) {', '.join(missing_columns)}")
    if not isinstance(frame["ts"].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"ts must be timezone-aware datetimes (UTC), got dtype {frame['ts'].dtype}")
    if "timeframe" in frame.columns:
        other = frame["timeframe"].notna() & (frame["timeframe"] != timeframe)
        if other.any():
            raise ValueError(f"rows of timeframe {frame.loc[other, 'timeframe'].iloc[0]!r} in a {timeframe} validation: validate one timeframe at a time")
    grid = grid or xnys_grid(tf.code, covering=pd.Timestamp(start).tz_convert("UTC").date())
    if grid.timeframe != tf:
        raise ValueError(f"the session grid is for {grid.timeframe.code}, not {tf.code}")

    # ---- columns as arrays ----------------------------------------------------------
    raw_codes, uniques = pd.factorize(frame["symbol"], use_na_sentinel=True)
    raw_codes = raw_codes.astype(np.int64, copy=False)
    asked = [str(s) for s in (symbols or ())]
    names = list(dict.fromkeys([*asked, *(str(u) for u in uniques)]))
    index_of = {s: i for i, s in enumerate(names)}
    to_name = np.array([index_of[str(u)] for u in uniques] + [-1], dtype=np.int64)  # -1 maps a missing symbol to -1
    codes = to_name[raw_codes]
    ts = frame["ts"].dt.tz_convert("UTC").dt.as_unit("ns").array.asi8
    prices = {k: _floats(frame, k) for k in ("open", "high", "low", "close")}
    volume = _floats(frame, "volume")
    vwap = _floats(frame, "vwap") if "vwap" in frame.columns else None
    trade_count = _floats(frame, "trade_count") if "trade_count" in frame.columns else None
    clock.lap("columns")

    # ---- invariants: quarantine ------------------------------------------------------
    found: list[Found] = checks.bar_row_checks(raw_codes, ts, prices, volume, vwap=vwap, trade_count=trade_count, tolerance=config.ohlc_tolerance)
    clock.lap("row_checks")
    found += checks.order_checks(raw_codes, ts)
    clock.lap("order_checks")
    outside, session = checks.session_check(grid, ts)
    if outside is not None:
        found.append(outside)
    clock.lap("session_checks")
    n = len(frame)
    quarantined = np.zeros(n, dtype=bool)
    for f in found:
        quarantined[f.rows] = True
    clean = ~quarantined
    valid = (raw_codes >= 0) & (ts != NAT)
    in_range = (ts >= start_ns) & (ts < end_ns)
    rows = np.flatnonzero(clean & valid & ~in_range)
    if len(rows):
        found.append(Found("outside_range", rows, [f"{s} is outside the window [{start.isoformat()}, {end.isoformat()})" for s in fmt_ts(ts[rows])]))

    # ---- gaps --------------------------------------------------------------------------
    window = grid.window(start_ns, end_ns, as_of_ns)
    use = clean & valid & in_range
    explained = _no_data_matrix(no_data, names, window.starts)
    gaps = detect_gaps(
        window,
        names,
        codes[use],
        ts[use],
        received_codes=codes[valid],
        received_ts=ts[valid],
        market_wide_min_symbols=config.market_wide_min_symbols,
        no_data=explained,
    )
    clock.lap("gaps")

    # ---- flags on clean bars, per symbol in time order -----------------------------------
    order = np.flatnonzero(use)
    if len(order) and (raw_codes[order][1:] < raw_codes[order][:-1]).any():
        order = order[np.argsort(raw_codes[order], kind="stable")]  # within a symbol, clean rows already increase in ts
    s_codes, s_close = raw_codes[order], prices["close"][order]
    first_of_symbol = np.ones(len(order), dtype=bool)
    first_of_symbol[1:] = s_codes[1:] != s_codes[:-1]
    no_return = first_of_symbol.copy()
    s_session = session[order]
    bars_apart = np.ones(len(order))
    if tf.intraday:
        no_return[1:] |= s_session[1:] != s_session[:-1]
        s_ts = ts[order]
        bars_apart[1:] = (s_ts[1:] - s_ts[:-1]) / grid.step_ns
    else:
        bars_apart[1:] = s_session[1:] - s_session[:-1]  # sessions apart: a missing session day is a gap of one more
    out = outliers.robust_outliers(
        s_codes, s_close, no_return, len(uniques), bars_apart=bars_apart, k=config.outlier_k, min_returns=config.outlier_min_returns
    )
    if len(out.positions):
        found.append(Found("outlier", order[out.positions], outliers.outlier_reasons(out, config.outlier_k), score=out.z))
    clock.lap("outliers")
    run_first, run_len = stale.flat_runs(s_codes, s_close, config.flat_bars)
    if len(run_first):
        last = run_first + run_len - 1
        reasons = [f"close {fmt(c)} unchanged for {k} bars, {a} to {b}" for c, k, a, b in zip(s_close[run_first], run_len, fmt_ts(ts[order[run_first]]), fmt_ts(ts[order[last]]), strict=True)]
        found.append(Found("flat", order[run_first], reasons, score=run_len.astype(np.float64)))
    filled = stale.filled_bars(s_codes, prices["open"][order], prices["high"][order], prices["low"][order], s_close, volume[order])
    if len(filled):
        found.append(Found("filled", order[filled], [f"zero volume, open = high = low = close = previous close {fmt(c)}" for c in s_close[filled]]))
    quiet = stale.zero_volume_bars(s_codes, volume[order], len(uniques), liquid_share=config.liquid_share, min_bars=config.liquid_min_bars)
    if len(filled):
        quiet = np.setdiff1d(quiet, filled)
    if len(quiet):
        share = stale.volume_share(s_codes, volume[order], len(uniques))
        found.append(Found("zero_volume", order[quiet], [f"zero volume in a series that trades on {share[c]:.0%} of its bars" for c in s_codes[quiet]]))
    n_expected = len(window.starts)
    behind = stale.bars_behind(gaps.last_present, n_expected, explained=explained)
    last_row = np.full(len(names), -1, dtype=np.int64)
    if len(order):
        last_of_symbol = np.ones(len(order), dtype=bool)
        last_of_symbol[:-1] = s_codes[:-1] != s_codes[1:]
        last_row[codes[order[last_of_symbol]]] = order[last_of_symbol]
    is_stale = (behind > config.stale_bars) if n_expected else np.zeros(len(names), dtype=bool)
    stale_codes = np.flatnonzero(is_stale)
    if len(stale_codes):
        until = fmt_ts(np.array([min(end_ns, as_of_ns)]))[0]
        reasons = [
            (f"last bar {fmt_ts(ts[[r]])[0]}, {b} expected bars before {until}" if r >= 0 else f"no bar in the window: {b} expected bars")
            for r, b in zip(last_row[stale_codes], behind[stale_codes], strict=True)
        ]
        found.append(Found("stale", last_row[stale_codes], reasons, score=behind[stale_codes].astype(np.float64), codes=stale_codes))
    clock.lap("flags")

    # ---- results ---------------------------------------------------------------------------
    violations = _violations(found, names, codes, ts, session, grid, window)
    quarantine = _quarantine(frame, violations)
    clean_frame = frame if not quarantined.any() else frame.iloc[np.flatnonzero(clean)]
    series = _series(names, codes, clean, use, ts, gaps, behind, is_stale, out, to_name, violations)
    closure_idx = grid.closures_between(window.start_ns, window.end_ns)
    closures = pd.DataFrame(
        {"date": grid.closure_dates[closure_idx].astype(object), "kind": grid.closure_kinds[closure_idx], "name": grid.closure_names[closure_idx]}
    )
    clock.lap("assemble")
    reports = build_reports(timeframe=tf.code, gaps=gaps, violations=violations, grid=grid)
    clock.lap("reports")
    return ValidationResult(
        timeframe=tf.code,
        start=start,
        end=end,
        as_of=as_of,
        symbols=tuple(names),
        clean=clean_frame,
        quarantine=quarantine,
        violations=violations,
        gaps=gaps.stretches,
        closures=closures,
        series=series,
        reports=reports,
        timings_s=clock.laps,
    )


def _no_data_matrix(no_data: Mapping[str, Sequence[NoDataRange]] | None, names: list[str], starts: np.ndarray) -> np.ndarray | None:
    """(symbols, expected bars) int8: the no-data code where the ledger explains missing bars, 0 elsewhere."""
    if not no_data:
        return None
    out = np.zeros((len(names), len(starts)), dtype=np.int8)
    for i, name in enumerate(names):
        for lo, hi, cause in no_data.get(name, ()):
            code = NO_DATA_CODES.get(cause, 0)  # an unknown cause (None: data came later) clears the range
            first, last = np.searchsorted(starts, [_ns(lo, "no_data start"), _ns(hi, "no_data end")])
            out[i, first:last] = code
    return out


def _violations(found: list[Found], names: list[str], codes: np.ndarray, ts: np.ndarray, session: np.ndarray, grid: SessionGrid, window: Window) -> pd.DataFrame:
    if not found:
        return pd.DataFrame(
            {
                "row": pd.array([], dtype="Int64"),
                "symbol": pd.Series([], dtype=object),
                "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
                "session": pd.Series([], dtype=object),
                "check": pd.Series([], dtype=object),
                "action": pd.Series([], dtype=object),
                "reason": pd.Series([], dtype=object),
                "score": pd.Series([], dtype="float64"),
            }
        )
    rows = np.concatenate([f.rows for f in found]).astype(np.int64)
    has_row = rows >= 0
    sym_codes = np.concatenate([f.codes if f.codes is not None else codes[f.rows] for f in found])
    row_ts = np.full(len(rows), NAT, dtype=np.int64)
    row_ts[has_row] = ts[rows[has_row]]
    row_session = np.full(len(rows), -1, dtype=np.int64)
    row_session[has_row] = session[rows[has_row]]
    days = grid.session_dates_of(row_ts, row_session)
    dates = window.dates
    if len(dates):
        days[~has_row] = dates[-1]  # a stale series without bars: reported on the window's last session
    name_arr = np.array([*names, None], dtype=object)
    check_names = np.concatenate([np.full(len(f), f.check, dtype=object) for f in found])
    frame = pd.DataFrame(
        {
            "row": pd.array(np.where(has_row, rows, 0), dtype="Int64"),
            "symbol": name_arr[np.where(sym_codes >= 0, sym_codes, len(names))],
            "ts": utc_index(row_ts),
            "session": [None if pd.isna(d) else d for d in days.astype(object)],
            "check": check_names,
            "action": np.array([BAR_CHECKS[c].action for c in check_names], dtype=object),
            "reason": np.concatenate([np.asarray(f.reasons, dtype=object) for f in found]),
            "score": np.concatenate([f.score if f.score is not None else np.full(len(f), np.nan) for f in found]),
        }
    )
    frame.loc[~has_row, "row"] = pd.NA
    rank = {name: i for i, name in enumerate(BAR_CHECKS)}
    frame["_rank"] = frame["check"].map(rank)
    return frame.sort_values(["row", "_rank"], kind="stable", na_position="last").drop(columns="_rank").reset_index(drop=True)[list(VIOLATION_COLUMNS)]


def _quarantine(frame: pd.DataFrame, violations: pd.DataFrame) -> pd.DataFrame:
    q = violations[violations["action"] == "quarantine"]
    if q.empty:
        return frame.iloc[0:0].assign(reason=pd.Series([], dtype=object))
    text = (q["check"] + ": " + q["reason"]).to_numpy(dtype=object)
    rows = q["row"].to_numpy(dtype=np.int64)
    if len(np.unique(rows)) == len(rows):
        unique_rows, reasons = rows, list(text)
    else:
        joined = pd.Series(text).groupby(rows, sort=True).agg("; ".join)
        unique_rows, reasons = joined.index.to_numpy(), joined.tolist()
    order = np.argsort(unique_rows, kind="stable")
    return frame.iloc[unique_rows[order]].assign(reason=np.asarray(reasons, dtype=object)[order])


def _series(
    names: list[str],
    codes: np.ndarray,
    clean: np.ndarray,
    use: np.ndarray,
    ts: np.ndarray,
    gaps: Gaps,
    behind: np.ndarray,
    is_stale: np.ndarray,
    out: outliers.Outliers,
    to_name: np.ndarray,
    violations: pd.DataFrame,
) -> pd.DataFrame:
    n = len(names)
    has_symbol = codes >= 0
    rows = np.bincount(codes[has_symbol], minlength=n)
    clean_rows = np.bincount(codes[has_symbol & clean], minlength=n)
    used_codes, used_ts = codes[use], ts[use]
    first = np.full(n, np.iinfo(np.int64).max)
    last = np.full(n, NAT)
    np.minimum.at(first, used_codes, used_ts)
    np.maximum.at(last, used_codes, used_ts)
    first[first == np.iinfo(np.int64).max] = NAT
    expected = int(gaps.expected.sum())
    present = gaps.present.sum(axis=1)
    scored = np.zeros(n, dtype=np.int64)
    scored[to_name[: len(out.scored)]] = out.scored
    flagged = violations[violations["check"] == "outlier"]["symbol"].value_counts()
    return pd.DataFrame(
        {
            "symbol": names,
            "rows": rows,
            "clean_rows": clean_rows,
            "first_ts": utc_index(first),
            "last_ts": utc_index(last),
            "expected_bars": expected,
            "present_bars": present.astype(np.int64),
            "no_data_bars": gaps.missing["no_data"].sum(axis=1).astype(np.int64),
            "completeness": present / expected if expected else np.nan,
            "bars_behind": behind.astype(np.int64),
            "stale": is_stale.astype(bool),
            "returns_scored": scored,
            "outliers": np.array([int(flagged.get(s, 0)) for s in names], dtype=np.int64),
        }
    )[list(SERIES_COLUMNS)]


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
