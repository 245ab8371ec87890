"""The checks of DESIGN section 5, their names and what a failure does to the row.

Two forms of the same rules:

* the vectorised functions here (numpy over whole columns, no per-row Python
  except to word the reasons of failing rows), which :func:`validate_bars`
  runs over a million bars in well under a second;
* the pandera models :class:`BarChecks` and :class:`QuoteChecks`: the same row
  invariants as a declarative contract, for checking a frame at a boundary
  (``BarChecks.validate(frame, lazy=True)``). Tests keep the two in agreement.

A check either **quarantines** the row (it breaks an invariant: the row is kept
in quarantine with its reason and kept out of the clean frame) or **flags** it
for review (the row stays: a 10% move in a day is real, see October 2008).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from omni_tasks.contracts.bars import SYMBOL_PATTERN, TIMEFRAMES, BarFrame
from omni_tasks.validation.grid import NAT, SessionGrid, xnys_grid

Action = Literal["quarantine", "flag"]


@dataclass(frozen=True)
class Check:
    """One validation rule: its name (as stored in reports), what a failure does, and what it means."""

    name: str
    action: Action
    description: str


BAR_CHECKS: Final[dict[str, Check]] = {
    c.name: c
    for c in (
        Check("not_null", "quarantine", "symbol, ts, open, high, low, close and volume are present"),
        Check("ohlc_high", "quarantine", "high >= max(open, close)"),
        Check("ohlc_low", "quarantine", "low <= min(open, close)"),
        Check("positive_price", "quarantine", "open, high, low, close (and vwap when present) are positive and finite"),
        Check("volume_non_negative", "quarantine", "volume (and trade_count when present) is >= 0 and finite"),
        Check("duplicate_ts", "quarantine", "one bar per (symbol, ts): a later copy is quarantined, the first is kept"),
        Check("ts_order", "quarantine", "ts increases per symbol in frame order: a row earlier than a previous row of its symbol"),
        Check("outside_session", "quarantine", "the bar starts on the timeframe's grid inside an exchange session"),
        Check("outlier", "flag", "log return more than k robust deviations (1.4826 x MAD) from the symbol's median"),
        Check("flat", "flag", "the close did not change for N bars or more (a frozen or forward-filled series)"),
        Check("filled", "flag", "zero volume with open = high = low = close = previous close: looks forward-filled by the provider"),
        Check("zero_volume", "flag", "zero volume in a series that normally trades (most of its bars have volume): review it, it is kept"),
        Check("stale", "flag", "the series' last bar is more than N expected bars before the end of the window"),
        Check("outside_range", "flag", "the bar is outside the window validated: checked row by row, not counted in any day"),
    )
}

QUOTE_CHECKS: Final[dict[str, Check]] = {
    c.name: c
    for c in (
        Check("not_null", "quarantine", "symbol, ts, bid, bid_size, ask and ask_size are present"),
        Check("positive_price", "quarantine", "bid and ask are positive and finite"),
        Check("zero_size", "quarantine", "bid_size and ask_size are > 0 (a side without size is not a quote)"),
        Check("crossed", "quarantine", "bid <= ask (a crossed market is not a usable price)"),
        Check("locked", "flag", "bid != ask (locked markets happen briefly in consolidated data)"),
        Check("stale_quote", "flag", "the symbol's latest quote is older than the allowed age while the exchange is open"),
    )
}


@dataclass(frozen=True)
class Found:
    """Rows (positions in the input frame) failing one check, each with its reason and an optional score.

    ``codes`` names the symbol when it cannot come from the row (a stale series
    with no row at all has row -1).
    """

    check: str
    rows: np.ndarray
    reasons: list[str]
    score: np.ndarray | None = None
    codes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)


def fmt(x: float) -> str:
    return f"{x:.6g}"


def fmt_ts(ns: np.ndarray) -> list[str]:
    """ISO 8601 UTC text of int64 ns instants (NaT as 'NaT')."""
    stamps = pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).astype("datetime64[ns]"))
    return [("NaT" if s is pd.NaT else s.strftime("%Y-%m-%dT%H:%M:%SZ")) for s in stamps]


# ---- bars: one row at a time (vectorised) ---------------------------------------------


def bar_row_checks(
    codes: np.ndarray,
    ts: np.ndarray,
    prices: dict[str, np.ndarray],
    volume: np.ndarray,
    *,
    vwap: np.ndarray | None = None,
    trade_count: np.ndarray | None = None,
    tolerance: float = 1e-9,
) -> list[Found]:
    """not_null, ohlc_high, ohlc_low, positive_price, volume_non_negative.

    ``codes`` are symbol codes (-1 for a missing symbol), ``ts`` int64 ns (NaT
    as int64 min), ``prices`` the float64 open/high/low/close, ``vwap`` and
    ``trade_count`` float64 with NaN where absent (allowed). A missing value is
    reported once, by not_null; the other checks look only at present values.
    """
    o, h, lo, c = prices["open"], prices["high"], prices["low"], prices["close"]
    found: list[Found] = []

    nulls = {"symbol": codes < 0, "ts": ts == NAT, "open": np.isnan(o), "high": np.isnan(h), "low": np.isnan(lo), "close": np.isnan(c), "volume": np.isnan(volume)}
    any_null = np.logical_or.reduce(list(nulls.values()))
    rows = np.flatnonzero(any_null)
    if len(rows):
        reasons = [f"missing {', '.join(k for k, m in nulls.items() if m[i])}" for i in rows]
        found.append(Found("not_null", rows, reasons))

    with np.errstate(invalid="ignore"):
        usable = ~np.isnan(o) & ~np.isnan(h) & ~np.isnan(c)
        rows = np.flatnonzero(usable & (h < np.maximum(o, c) - tolerance))
        if len(rows):
            found.append(Found("ohlc_high", rows, [f"high {fmt(h[i])} < max(open {fmt(o[i])}, close {fmt(c[i])})" for i in rows]))
        usable = ~np.isnan(o) & ~np.isnan(lo) & ~np.isnan(c)
        rows = np.flatnonzero(usable & (lo > np.minimum(o, c) + tolerance))
        if len(rows):
            found.append(Found("ohlc_low", rows, [f"low {fmt(lo[i])} > min(open {fmt(o[i])}, close {fmt(c[i])})" for i in rows]))

        named = dict(prices)
        if vwap is not None:
            named["vwap"] = vwap
        bad_price = {k: ~np.isnan(x) & ~((x > 0) & (x < np.inf)) for k, x in named.items()}
        rows = np.flatnonzero(np.logical_or.reduce(list(bad_price.values())))
        if len(rows):
            reasons = ["; ".join(f"{k} {fmt(named[k][i])} is not a positive finite price" for k, m in bad_price.items() if m[i]) for i in rows]
            found.append(Found("positive_price", rows, reasons))

        amounts = {"volume": volume} if trade_count is None else {"volume": volume, "trade_count": trade_count}
        bad_amount = {k: ~np.isnan(x) & ~((x >= 0) & (x < np.inf)) for k, x in amounts.items()}
        rows = np.flatnonzero(np.logical_or.reduce(list(bad_amount.values())))
        if len(rows):
            reasons = ["; ".join(f"{k} {fmt(amounts[k][i])} is not >= 0 and finite" for k, m in bad_amount.items() if m[i]) for i in rows]
            found.append(Found("volume_non_negative", rows, reasons))
    return found


# ---- bars: across rows -----------------------------------------------------------------


def is_grouped_and_increasing(codes: np.ndarray, ts: np.ndarray) -> bool:
    """True when every row has a symbol and a ts, symbols come in contiguous blocks (codes from
    ``pd.factorize`` never decrease) and ts strictly increases within each: the usual case, checked in O(n)."""
    if len(codes) == 0:
        return True
    if (codes < 0).any() or (ts == NAT).any():
        return False
    if (codes[1:] < codes[:-1]).any():
        return False
    same = codes[1:] == codes[:-1]
    return bool((ts[1:][same] > ts[:-1][same]).all())


def order_checks(codes: np.ndarray, ts: np.ndarray) -> list[Found]:
    """duplicate_ts and ts_order per symbol, in frame order; rows without a symbol or ts are skipped (not_null has them).

    A copy of an earlier (symbol, ts) is a duplicate (the first is kept); a row
    earlier than a previous row of its symbol breaks the order. After both are
    quarantined, every symbol's remaining rows strictly increase in frame order.

    (symbol, ts) is packed into one int64 key when it fits, so duplicates come
    from one stable sort (timsort: near-linear on the nearly sorted frames seen
    in practice) and, for frames grouped by symbol, the running maximum from
    one ``np.maximum.accumulate``; otherwise pandas hashing and groupby.
    """
    if is_grouped_and_increasing(codes, ts):
        return []
    valid = np.flatnonzero((codes >= 0) & (ts != NAT))
    c, t = codes[valid], ts[valid]
    if len(valid) == 0:
        return []
    t0 = int(t.min())
    span = int(t.max()) - t0 + 1
    grouped = not (c[1:] < c[:-1]).any()
    packable = span * (int(c.max()) + 1) < 2**62
    if packable:
        key = c * span + (t - t0)
        perm = np.argsort(key, kind="stable")
        sorted_key = key[perm]
        dup = np.zeros(len(key), dtype=bool)
        dup[perm[1:][sorted_key[1:] == sorted_key[:-1]]] = True
        dup_rows = np.flatnonzero(dup)
        first = valid[perm[np.searchsorted(sorted_key, key[dup_rows], side="left")]]  # stable: the earliest row of that key
    else:
        dup = pd.DataFrame({"c": c, "t": t}).duplicated(keep="first").to_numpy()
        dup_rows = np.flatnonzero(dup)
        first = pd.Series(valid).groupby([c, t]).transform("min").to_numpy()[dup_rows] if len(dup_rows) else dup_rows
    # Grouped by symbol, the keys of a later symbol exceed every earlier key: one accumulate is a per-symbol running max.
    running_max = np.maximum.accumulate(key) - c * span + t0 if grouped and packable else pd.Series(t).groupby(c).cummax().to_numpy()
    late = (running_max > t) & ~dup
    found: list[Found] = []
    if len(dup_rows):
        found.append(Found("duplicate_ts", valid[dup_rows], [f"same symbol and ts {s} as row {f}" for s, f in zip(fmt_ts(t[dup_rows]), first, strict=True)]))
    if late.any():
        rows = valid[late]
        found.append(
            Found("ts_order", rows, [f"ts {a} is earlier than a previous row of this symbol at {b}" for a, b in zip(fmt_ts(t[late]), fmt_ts(running_max[late]), strict=True)])
        )
    return found


def session_check(grid: SessionGrid, ts: np.ndarray) -> tuple[Found | None, np.ndarray]:
    """outside_session for rows with a ts; returns it and each row's session index in the grid (-1: none)."""
    session, on_grid = grid.locate(ts)
    rows = np.flatnonzero((ts != NAT) & ~on_grid)
    if len(rows) == 0:
        return None, session
    return Found("outside_session", rows, _outside_reasons(grid, ts[rows], session[rows])), session


def _outside_reasons(grid: SessionGrid, ts: np.ndarray, session: np.ndarray) -> list[str]:
    tf = grid.timeframe
    first, last = (grid.dates[0], grid.dates[-1]) if len(grid.dates) else (None, None)
    days = grid.session_dates_of(ts, session)
    closure_at = {d: (k, n) for d, k, n in zip(grid.closure_dates.tolist(), grid.closure_kinds, grid.closure_names, strict=True)}
    session_dates = set(grid.dates.tolist()) if len(grid.dates) < 50_000 else set()
    out: list[str] = []
    for stamp, sess, day in zip(fmt_ts(ts), session.tolist(), days.tolist(), strict=True):
        if sess >= 0:
            out.append(f"{stamp} is inside the {day} session but not a {tf.code} bar start (open + k x {tf.code})")
        elif grid.daily and not stamp.endswith("T00:00:00Z"):
            out.append(f"{stamp}: a daily bar is labelled by its session date at 00:00 UTC")
        elif first is None or day < first or day > last:
            out.append(f"{stamp} is outside the exchange calendar ({first}..{last})")
        elif day in closure_at:
            kind, name = closure_at[day]
            out.append(f"{stamp}: {day} is not a session ({'ad hoc closure' if kind == 'adhoc_closure' else 'holiday'}: {name})")
        elif day.weekday() >= 5:
            out.append(f"{stamp}: {day} is a {day.strftime('%A')}, not a session")
        elif day in session_dates:
            out.append(f"{stamp} is outside the hours of the {day} session")
        else:
            out.append(f"{stamp} is not in an exchange session")
    return out


# ---- pandera: the same invariants as a contract ------------------------------------------


class BarChecks(BarFrame):
    """:class:`BarFrame` plus the invariants across rows: finite values, one bar per (symbol, ts),
    ts increasing per symbol, bars only at bar starts inside XNYS sessions.

    Outliers, flat and stale series are not row invariants (they are flagged,
    never quarantined) and are not here: :func:`validate_bars` finds them.
    """

    open: Series[float] = pa.Field(gt=0, lt=math.inf)
    high: Series[float] = pa.Field(gt=0, lt=math.inf)
    low: Series[float] = pa.Field(gt=0, lt=math.inf)
    close: Series[float] = pa.Field(gt=0, lt=math.inf)
    volume: Series[float] = pa.Field(ge=0, lt=math.inf)
    vwap: Series[float] = pa.Field(nullable=True, gt=0, lt=math.inf)

    @pa.dataframe_check(element_wise=False)
    def one_bar_per_symbol_and_ts(cls, df: pd.DataFrame) -> Series[bool]:  # pandera's classmethod-style checks
        return ~df.duplicated(["symbol", "ts"], keep="first")

    @pa.dataframe_check(element_wise=False)
    def ts_increasing_per_symbol(cls, df: pd.DataFrame) -> Series[bool]:
        unknown = df["symbol"].isna() | df["ts"].isna()
        running_max = df["ts"].where(~unknown).groupby(df["symbol"].where(~unknown, ""), sort=False).cummax()
        return unknown | (df["ts"] >= running_max) | df.duplicated(["symbol", "ts"], keep="first")

    @pa.dataframe_check(element_wise=False)
    def inside_session(cls, df: pd.DataFrame) -> Series[bool]:
        ok = pd.Series(True, index=df.index)
        ts = pd.Series(df["ts"])
        if not isinstance(ts.dtype, pd.DatetimeTZDtype):
            return ok  # the column's own dtype check reports this
        ns = ts.dt.tz_convert("UTC").dt.as_unit("ns").array.asi8
        for code in pd.unique(df["timeframe"].dropna()):
            if code in TIMEFRAMES:
                rows = (df["timeframe"] == code).to_numpy() & (ns != NAT)
                ok[rows] = xnys_grid(str(code)).locate(ns[rows])[1]
        return ok


class QuoteChecks(pa.DataFrameModel):
    """The canonical quote (DESIGN section 5): present, positive prices and sizes, not crossed; locked warns.

    Sizes may arrive as integers (coerced to float). Stale quotes depend on the
    time of checking, not on the frame: :func:`validate_quotes` finds them.
    """

    symbol: Series[str] = pa.Field(str_matches=SYMBOL_PATTERN.pattern)
    ts: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "ns", "tz": "UTC"})
    bid: Series[float] = pa.Field(gt=0, lt=math.inf)
    bid_size: Series[float] = pa.Field(gt=0, lt=math.inf)
    ask: Series[float] = pa.Field(gt=0, lt=math.inf)
    ask_size: Series[float] = pa.Field(gt=0, lt=math.inf)
    source: Series[str]

    @pa.dataframe_check(element_wise=False)
    def not_crossed(cls, df: pd.DataFrame) -> Series[bool]:
        return ~(df["bid"] > df["ask"])

    @pa.dataframe_check(element_wise=False, raise_warning=True)
    def not_locked(cls, df: pd.DataFrame) -> Series[bool]:
        return ~(df["bid"] == df["ask"])

    class Config:
        strict = True
        ordered = True
        coerce = True

