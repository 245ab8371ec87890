"""Scan indicators, computed for many symbols at once from one long frame of bars.

Input: a long frame of canonical bars (at least ``symbol, timeframe, ts, open,
high, low, close, volume``; ``feed`` is used when present), any number of
symbols, one timeframe, in any row order. Output: one row per symbol, sorted by
symbol, with the columns of :data:`OUTPUT_COLUMNS`.

Which bars count. A bar is used once it has *ended* by ``as_of``: an intraday
bar at ``ts + bar size``; a daily bar (labelled by its session date at 00:00
UTC) at its session's close on the exchange calendar (half days close early;
a label that is no session ends at the next 00:00 UTC). So a scan during a
session never reads that session's unfinished daily bar. Of those, only each
symbol's last ``W`` bars (``W`` = :attr:`Lookbacks.window_bars`, 252 by
default) are read: loading more history than that changes nothing.

Notation: ``t`` is a symbol's last used bar, ``c``/``o``/``h``/``l``/``v``
its closes, opens, highs, lows and volumes (prices in the bar's currency,
volume in shares), ``P`` the scan price: the mid ``(bid + ask) / 2`` of the
symbol's latest quote when that quote is newer than bar ``t`` (stamped after
the bar ended and not after ``as_of``; a crossed or non-positive quote is
never used and is named in ``notes``), else ``c[t]``. ``price_source`` says
which. The lookbacks ``N, V, n, m, H`` are :class:`Lookbacks` fields, counted
in bars (sessions, for daily bars).

``momentum_pct``   ``(P / c[t-N] - 1) * 100``: percent, N = 20.
``volume_surge_x`` ``v[t] / mean(v[t-V] .. v[t-1])``: a ratio (1.0 = an
                   ordinary bar), V = 20. The mean is summed in time order.
``atr_pct``        Wilder's average true range over n = 14 bars, as percent
                   of the last close: ``ATR[t] / c[t] * 100``. True range
                   ``TR[i] = max(h[i] - l[i], |h[i] - c[i-1]|, |l[i] - c[i-1]|)``
                   (price units) for every bar of the window but its first;
                   ``ATR`` starts as the mean of the first n true ranges, then
                   ``ATR[i] = (ATR[i-1] * (n - 1) + TR[i]) / n``.
``gap_pct``        ``(o[t] / c[t-1] - 1) * 100``: percent, today's open
                   against yesterday's close.
``rsi``            Wilder's relative strength index over m = 14 bars, 0..100.
                   ``d[i] = c[i] - c[i-1]``, gains ``max(d, 0)``, losses
                   ``max(-d, 0)``; the averages start as the means of the first
                   m gains and losses of the window, then
                   ``avg[i] = (avg[i-1] * (m - 1) + x[i]) / m``;
                   ``rsi = 100 - 100 / (1 + avg_gain / avg_loss)``, 100 when
                   the average loss is 0, 50 when both averages are 0 (a flat
                   series).
``from_high_pct``  ``(P / max(h[t-H+1] .. h[t]) - 1) * 100``: percent below
                   the 52-week high (<= 0, above 0 only when a quote is above
                   the high), H = 252, over the last ``min(H, bars)`` bars
                   (``high_bars`` says how many).

Wilder's averages are seeded at the start of the window: with the default
252-bar window the seed's weight in the last value is (13/14)**237, about 2e-8.

Every computation is on (window position x symbol) arrays; the only Python
loops run over window positions (the Wilder recursions, the volume mean), never
over symbols, and every symbol's numbers come from its own bars in the same
order of operations, so a symbol gets bit-for-bit the same indicators whatever
other symbols share the frame (the chunked scan relies on it).

A symbol that cannot be scored keeps its row, with ``reason`` saying why:
``insufficient history (N bars, need M)`` (M = :attr:`Lookbacks.required_bars`),
invalid bars in its window, a volume-surge window mixing feeds (IEX and SIP
volumes differ by an order of magnitude), or an indicator that is undefined.

Plain Python: no Celery here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
import pandas as pd

from omni_tasks.contracts.bars import parse_timeframe
from omni_tasks.marketdata import calendar

#: The indicator columns, in the order they are scored.
INDICATORS: Final = ("momentum_pct", "volume_surge_x", "atr_pct", "gap_pct", "rsi", "from_high_pct")
#: The columns of :func:`compute_indicators`'s frame.
OUTPUT_COLUMNS: Final = (
    "symbol", "bars", "last_ts", "last_close", "price", "price_source",
    *INDICATORS, "high_bars", "reason", "notes",
)
REQUIRED_BAR_COLUMNS: Final = ("symbol", "timeframe", "ts", "open", "high", "low", "close", "volume")
REQUIRED_QUOTE_COLUMNS: Final = ("symbol", "ts", "bid", "ask")
_DAY_NS: Final = 86_400 * 10**9
_NAT: Final = np.iinfo(np.int64).min
#: A window reader: matrix, per-symbol window position -> per-symbol value.
_At = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Lookbacks:
    """The indicators' lookbacks, in bars (sessions, for daily bars).

    ``momentum_bars`` N of the momentum return, ``volume_bars`` V bars averaged
    for the volume surge, ``atr_bars`` and ``rsi_bars`` the Wilder periods,
    ``high_bars`` H bars of the 52-week high.
    """

    momentum_bars: int = 20
    volume_bars: int = 20
    atr_bars: int = 14
    rsi_bars: int = 14
    high_bars: int = 252

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Lookbacks.{name} must be a positive whole number of bars, not {value!r}")

    @property
    def required_bars(self) -> int:
        """Bars a symbol needs to be scored: every indicator but the 52-week high needs its full lookback."""
        return max(self.momentum_bars + 1, self.volume_bars + 1, self.atr_bars + 1, self.rsi_bars + 1, 2)

    @property
    def window_bars(self) -> int:
        """Bars read per symbol (the most recent ones): the longest lookback."""
        return max(self.high_bars, self.required_bars)


def utc_instant(value: datetime | str | pd.Timestamp, name: str) -> pd.Timestamp:
    """A timezone-aware instant (datetime, Timestamp or ISO 8601 text with an offset) as a UTC Timestamp."""
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} {value!r} is not a timestamp: {exc}") from None
    if stamp is pd.NaT or pd.isna(stamp):
        raise ValueError(f"{name} is missing (NaT)")
    if stamp.tzinfo is None:
        raise ValueError(f"{name} {value!r} is naive: give a timezone-aware (UTC) instant")
    return stamp.tz_convert("UTC").as_unit("ns")


def compute_indicators(
    bars: pd.DataFrame,
    *,
    as_of: datetime | str | pd.Timestamp,
    lookbacks: Lookbacks = Lookbacks(),  # frozen, immutable default
    timeframe: str | None = None,
    quotes: pd.DataFrame | None = None,
    symbols: Iterable[str] | None = None,
) -> pd.DataFrame:
    """One row per symbol (sorted by symbol) with the indicators of the module docstring.

    ``as_of`` (timezone-aware) is the scan's instant: bars that had not ended
    and quotes stamped after it are not used. ``timeframe``, when given, is the
    one the bars must have (one timeframe per scan in any case). ``quotes``: a
    frame of latest quotes (``symbol, ts, bid, ask``; more rows per symbol are
    fine, the latest at or before ``as_of`` counts). ``symbols``: the universe;
    a named symbol without bars gets a row saying so, and bars of a symbol not
    named are a ValueError. Without ``symbols`` the universe is the bars'
    symbols, and an empty frame is a ValueError.
    """
    as_of_ns = utc_instant(as_of, "as_of").value
    universe = _universe(bars, symbols)
    sizes = len(universe)
    window = lookbacks.window_bars

    rows = _used_rows(bars, as_of_ns, timeframe)
    code = pd.Index(universe).get_indexer(rows["symbol"])
    ts = rows["ts_ns"]
    order = np.lexsort((ts, code))
    code, ts, end = code[order], ts[order], rows["end_ns"][order]
    values = {name: rows[name][order] for name in ("open", "high", "low", "close", "volume")}
    values["feed"] = rows["feed"][order] if rows["feed"] is not None else None

    n = len(code)
    first = np.searchsorted(code, np.arange(sizes), side="left")
    stop = np.searchsorted(code, np.arange(sizes), side="right")
    count = stop - first
    start = np.maximum(first, stop - window)
    used = stop - start  # bars in each symbol's window
    last = used - 1  # window position of bar t (-1: no bars)
    has = used > 0
    cols = np.arange(sizes)

    # Time-major windows: row k is window position k, column g symbol g; NaN past a symbol's bars.
    position = np.arange(window)[:, None]
    index = np.where(position < used[None, :], start[None, :] + position, n)

    def matrix(column: np.ndarray) -> np.ndarray:
        return np.append(column.astype(np.float64), np.nan)[index]

    o, h, lo, c, v = (matrix(values[name]) for name in ("open", "high", "low", "close", "volume"))

    def at(m: np.ndarray, k: np.ndarray) -> np.ndarray:
        """m at window position k of each symbol (NaN where k < 0; positions past a symbol's bars are NaN already)."""
        return np.where(k >= 0, m[np.clip(k, 0, window - 1), cols], np.nan)

    last_close = at(c, last)
    last_end = np.where(has, np.append(end, 0)[np.where(has, stop - 1, n)], _NAT)
    last_ts = np.where(has, np.append(ts, 0)[np.where(has, stop - 1, n)], _NAT)

    price, price_source, notes = _scan_price(quotes, universe, as_of_ns, last_close, last_end)

    with np.errstate(divide="ignore", invalid="ignore"):
        momentum = (price / at(c, last - lookbacks.momentum_bars) - 1.0) * 100.0
        previous_volume = _sum_positions(v, last, -lookbacks.volume_bars, lookbacks.volume_bars, at)
        volume_mean = previous_volume / lookbacks.volume_bars
        surge = at(v, last) / volume_mean
        atr = _wilder(_true_range(h, lo, c), lookbacks.atr_bars, used)
        atr_pct = atr / last_close * 100.0
        gap = (at(o, last) / at(c, last - 1) - 1.0) * 100.0
        rsi = _rsi(c, lookbacks.rsi_bars, used)
        in_high = (position <= last[None, :]) & (position > (last - lookbacks.high_bars)[None, :])
        high = np.where(in_high, h, -np.inf).max(axis=0)
        high = np.where(has, high, np.nan)
        from_high = (price / high - 1.0) * 100.0

    invalid = _invalid_counts(values, code, ts, index, n)
    mixed = _mixed_feeds(values["feed"], index, last, lookbacks.volume_bars, at) if values["feed"] is not None else None
    indicators = {
        "momentum_pct": momentum, "volume_surge_x": surge, "atr_pct": atr_pct,
        "gap_pct": gap, "rsi": rsi, "from_high_pct": from_high,
    }
    reasons = _reasons(universe, count, lookbacks, invalid, mixed, volume_mean, indicators)

    return pd.DataFrame(
        {
            "symbol": pd.Series(universe, dtype="str"),
            "bars": count.astype(np.int64),
            "last_ts": pd.DatetimeIndex(last_ts.view("datetime64[ns]")).tz_localize("UTC"),
            "last_close": last_close,
            "price": price,
            "price_source": pd.Series(price_source, dtype="str"),
            **indicators,
            "high_bars": np.minimum(used, lookbacks.high_bars).astype(np.int64),
            "reason": pd.Series(reasons, dtype="str"),
            "notes": pd.Series(notes, dtype="str"),
        }
    )


# ---- input -----------------------------------------------------------------------------


def _universe(bars: pd.DataFrame, symbols: Iterable[str] | None) -> list[str]:
    missing = [name for name in REQUIRED_BAR_COLUMNS if name not in bars.columns]
    if missing:
        raise ValueError(f"not a bar frame: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_BAR_COLUMNS)})")
    present = pd.unique(bars["symbol"].astype("str")) if len(bars) else np.array([], dtype=object)
    if symbols is None:
        if len(bars) == 0:
            raise ValueError("no bars to scan: the bar frame is empty and no symbols were named")
        return sorted(str(s) for s in present)
    named = sorted({str(s) for s in symbols})
    if not named:
        raise ValueError("no symbols to scan: the symbol list is empty")
    stray = sorted(set(map(str, present)) - set(named))
    if stray:
        shown = ", ".join(stray[:5]) + (" ..." if len(stray) > 5 else "")
        raise ValueError(f"the bars hold {len(stray)} symbol(s) not in the scan's symbols: {shown}")
    return named


def _used_rows(bars: pd.DataFrame, as_of_ns: int, timeframe: str | None) -> dict[str, Any]:
    """The rows of bars that had ended by as_of, as numpy arrays (plus ts_ns and end_ns, int64 UTC ns)."""
    if len(bars) == 0:
        empty = np.array([], dtype=np.float64)
        return {"symbol": np.array([], dtype=object), "ts_ns": np.array([], dtype=np.int64), "end_ns": np.array([], dtype=np.int64),
                "open": empty, "high": empty, "low": empty, "close": empty, "volume": empty, "feed": None}
    if not isinstance(bars["ts"].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"bars' ts must be timezone-aware (UTC), not {bars['ts'].dtype}")
    found = pd.unique(bars["timeframe"].astype("str"))
    if len(found) != 1:
        raise ValueError(f"one timeframe per scan: the bars hold {', '.join(sorted(map(str, found)))}")
    code = str(found[0])
    if timeframe is not None and code != timeframe:
        raise ValueError(f"the scan is configured for {timeframe} bars but the bars are {code}")
    ts_ns = pd.DatetimeIndex(bars["ts"]).tz_convert("UTC").as_unit("ns").asi8
    end_ns = bar_ends(ts_ns, code)
    keep = end_ns <= as_of_ns
    out: dict[str, Any] = {"symbol": bars["symbol"].to_numpy(dtype=object)[keep], "ts_ns": ts_ns[keep], "end_ns": end_ns[keep]}
    for name in ("open", "high", "low", "close", "volume"):
        out[name] = pd.to_numeric(bars[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)[keep]
    if "feed" in bars.columns:
        feed_codes, _ = pd.factorize(bars["feed"].astype("str"), use_na_sentinel=True)
        out["feed"] = np.asarray(feed_codes, dtype=np.float64)[keep]
    else:
        out["feed"] = None
    return out


def bar_ends(ts_ns: np.ndarray, timeframe: str) -> np.ndarray:
    """When each bar ended (int64 ns since the epoch, UTC), from its start ``ts_ns``.

    Intraday: start + bar size. Daily (labelled by session date at 00:00 UTC):
    the session's close on the exchange calendar; a label that is no session
    ends at the next 00:00 UTC.
    """
    frame = parse_timeframe(timeframe)
    if frame.intraday:
        return ts_ns + int(pd.Timedelta(frame.delta).value)
    if len(ts_ns) == 0:
        return ts_ns.copy()
    labels, inverse = np.unique(ts_ns, return_inverse=True)
    dates = pd.DatetimeIndex(labels.view("datetime64[ns]"))
    schedule = calendar.schedule(dates[0].date(), dates[-1].date())
    closes = labels + _DAY_NS
    if len(schedule):
        sessions = pd.DatetimeIndex(schedule.index).as_unit("ns")
        found = sessions.get_indexer(dates)
        session_close = pd.DatetimeIndex(schedule["close"]).tz_convert("UTC").as_unit("ns").asi8
        closes = np.where(found >= 0, session_close[np.clip(found, 0, None)], closes)
    return closes[inverse.ravel()]


def _scan_price(
    quotes: pd.DataFrame | None, universe: list[str], as_of_ns: int, last_close: np.ndarray, last_end: np.ndarray
) -> tuple[np.ndarray, list[str], list[str | None]]:
    """P per symbol (the quote mid where the latest quote is newer than the last bar), its source, notes."""
    sizes = len(universe)
    source = np.array([None if np.isnan(close) else "close" for close in last_close], dtype=object)
    notes: list[str | None] = [None] * sizes
    price = last_close.copy()
    if quotes is None or len(quotes) == 0:
        return price, list(source), notes
    missing = [name for name in REQUIRED_QUOTE_COLUMNS if name not in quotes.columns]
    if missing:
        raise ValueError(f"not a quote frame: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_QUOTE_COLUMNS)})")
    if not isinstance(quotes["ts"].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"quotes' ts must be timezone-aware (UTC), not {quotes['ts'].dtype}")
    code = pd.Index(universe).get_indexer(quotes["symbol"].astype("str"))
    ts = pd.DatetimeIndex(quotes["ts"]).tz_convert("UTC").as_unit("ns").asi8
    bid = pd.to_numeric(quotes["bid"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    ask = pd.to_numeric(quotes["ask"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    keep = (code >= 0) & (ts <= as_of_ns)
    code, ts, bid, ask = code[keep], ts[keep], bid[keep], ask[keep]
    if len(code) == 0:
        return price, list(source), notes
    order = np.lexsort((ts, code))
    code, ts, bid, ask = code[order], ts[order], bid[order], ask[order]
    latest = np.flatnonzero(np.append(code[1:] != code[:-1], True))  # the last row of each symbol
    g, q_ts, q_bid, q_ask = code[latest], ts[latest], bid[latest], ask[latest]
    sane = np.isfinite(q_bid) & np.isfinite(q_ask) & (q_bid > 0) & (q_ask > 0) & (q_bid <= q_ask)
    newer = (last_end[g] != _NAT) & (q_ts > last_end[g])
    use = sane & newer
    price[g[use]] = (q_bid[use] + q_ask[use]) / 2.0
    source[g[use]] = "quote"
    for position in np.flatnonzero(~sane & newer):
        stamp = pd.Timestamp(int(q_ts[position]), tz="UTC").isoformat()
        notes[int(g[position])] = f"latest quote ignored (bid {q_bid[position]:g}, ask {q_ask[position]:g} at {stamp}): crossed, missing or non-positive"
    return price, list(source), notes


# ---- indicator pieces ----------------------------------------------------------------------


def _sum_positions(m: np.ndarray, last: np.ndarray, offset: int, length: int, at: _At) -> np.ndarray:
    """Sum of m over window positions last+offset .. last+offset+length-1, added in time order."""
    total = at(m, last + offset)
    for step in range(1, length):
        total = total + at(m, last + offset + step)
    return np.asarray(total)


def _true_range(h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> np.ndarray:
    """TR at every window position but the first (which is NaN: it has no previous close)."""
    previous = np.vstack([np.full((1, c.shape[1]), np.nan), c[:-1]])
    return np.maximum(np.maximum(h - lo, np.abs(h - previous)), np.abs(lo - previous))


def _wilder(x: np.ndarray, period: int, used: np.ndarray) -> np.ndarray:
    """Wilder's average of x (positions 1.. of the window) at each symbol's last bar; NaN without `period` values.

    Seeded with the mean of x[1..period] (summed in time order), then
    ``avg = (avg * (period - 1) + x[k]) / period`` for k up to the symbol's last bar.
    """
    rows = x.shape[0]
    if rows <= period:
        return np.full(x.shape[1], np.nan)
    total = x[1].copy()
    for k in range(2, period + 1):
        total = total + x[k]
    average = total / period
    stop = int(used.max(initial=0))
    for k in range(period + 1, min(rows, stop)):
        average = np.where(k < used, (average * (period - 1) + x[k]) / period, average)
    return np.asarray(average)


def _rsi(c: np.ndarray, period: int, used: np.ndarray) -> np.ndarray:
    change = np.vstack([np.full((1, c.shape[1]), np.nan), c[1:] - c[:-1]])
    gain = _wilder(np.maximum(change, 0.0), period, used)
    loss = _wilder(np.maximum(-change, 0.0), period, used)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = 100.0 - 100.0 / (1.0 + gain / loss)
    return np.where(loss == 0.0, np.where(gain == 0.0, 50.0, 100.0), rsi)


def _invalid_counts(values: dict[str, Any], code: np.ndarray, ts: np.ndarray, index: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per symbol, window rows with missing/non-positive prices or missing/negative volume, and repeated timestamps."""
    prices = np.vstack([values[name] for name in ("open", "high", "low", "close")])
    bad_price = ~(np.isfinite(prices) & (prices > 0)).all(axis=0)
    bad_volume = ~(np.isfinite(values["volume"]) & (values["volume"] >= 0))
    repeated = np.zeros(n, dtype=bool)
    if n > 1:
        repeated[1:] = (code[1:] == code[:-1]) & (ts[1:] == ts[:-1])

    def per_symbol(flags: np.ndarray) -> np.ndarray:
        return np.append(flags, False)[index].sum(axis=0)

    return {"values": per_symbol(bad_price | bad_volume), "repeated": per_symbol(repeated)}


def _mixed_feeds(feed: np.ndarray, index: np.ndarray, last: np.ndarray, volume_bars: int, at: _At) -> np.ndarray:
    """Symbols whose volume-surge bars (t-V .. t) come from more than one feed."""
    codes = np.append(feed, np.nan)[index]
    mine = at(codes, last)
    mixed = np.zeros(len(last), dtype=bool)
    for step in range(1, volume_bars + 1):
        other = at(codes, last - step)
        mixed |= ~np.isnan(other) & (other != mine)
    return mixed


def _reasons(
    universe: list[str],
    count: np.ndarray,
    lookbacks: Lookbacks,
    invalid: dict[str, np.ndarray],
    mixed: np.ndarray | None,
    volume_mean: np.ndarray,
    indicators: dict[str, np.ndarray],
) -> list[str | None]:
    """Why each symbol cannot be scored (None: it can). Messages are built only for the symbols that need one."""
    need = lookbacks.required_bars
    reasons: list[str | None] = [None] * len(universe)

    def say(flags: np.ndarray, message: Any) -> None:
        for g in np.flatnonzero(flags):
            if reasons[g] is None:
                reasons[g] = message(int(g))

    say(count < need, lambda g: f"insufficient history ({int(count[g])} bars, need {need})")
    say(invalid["values"] > 0, lambda g: f"invalid bars: {int(invalid['values'][g])} in the scan window with missing or non-positive prices or volume")
    say(invalid["repeated"] > 0, lambda g: f"invalid bars: {int(invalid['repeated'][g])} repeated timestamps in the scan window")
    if mixed is not None:
        say(mixed, lambda g: f"volume surge undefined: the last {lookbacks.volume_bars + 1} bars come from more than one feed (volumes not comparable)")
    say(volume_mean == 0, lambda g: f"volume surge undefined: no volume in the previous {lookbacks.volume_bars} bars")
    for name, values in indicators.items():
        say(~np.isfinite(values), lambda g, name=name: f"{name} is undefined")
    return reasons
