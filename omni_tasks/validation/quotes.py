"""validate_quotes: canonical quotes (DESIGN section 5) checked in one vectorised pass.

Checks (:data:`checks.QUOTE_CHECKS`): missing values, non-positive prices and
zero sizes and crossed markets (bid > ask) are quarantined; a locked market
(bid == ask) is flagged, because it happens briefly in consolidated data; a
symbol whose latest quote is older than ``stale_after_s`` while the exchange
is open is flagged stale (outside the session no quote is expected to move).

Result shapes: ``clean`` and ``quarantine`` (input rows and index, quarantine
with ``reason``) as for bars; ``violations`` with columns ``row`` (Int64),
``symbol``, ``ts``, ``check``, ``action``, ``reason``, ``score`` (the quote's
age in seconds for stale_quote, NaN otherwise); ``latest`` one row per
symbol: ``symbol``, ``last_ts``, ``age_s``, ``stale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np
import pandas as pd

from omni_tasks.marketdata import calendar
from omni_tasks.validation.checks import QUOTE_CHECKS, Found, fmt, fmt_ts
from omni_tasks.validation.grid import NAT, utc_index

QUOTE_REQUIRED: Final = ("symbol", "ts", "bid", "bid_size", "ask", "ask_size")


@dataclass(frozen=True)
class QuoteValidation:
    """What :func:`validate_quotes` found (shapes: the module docstring)."""

    clean: pd.DataFrame
    quarantine: pd.DataFrame
    violations: pd.DataFrame
    latest: pd.DataFrame

    @property
    def ok(self) -> bool:
        return self.quarantine.empty and not bool(self.latest["stale"].any())


def validate_quotes(frame: pd.DataFrame, *, as_of: datetime | None = None, stale_after_s: float = 10.0, market_open: bool | None = None) -> QuoteValidation:
    """Check canonical quotes; ``as_of`` (aware, default now) is when staleness is judged.

    ``market_open``: is the exchange in a session at ``as_of`` (default: asks
    the XNYS calendar); when it is not, no quote is stale.
    """
    missing = [c for c in QUOTE_REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"not a quote frame: missing column(s) {', '.join(missing)}")
    if not isinstance(frame["ts"].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"ts must be timezone-aware datetimes (UTC), got dtype {frame['ts'].dtype}")
    as_of = as_of or datetime.now(tz=UTC)
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    as_of_ns = int(pd.Timestamp(as_of).tz_convert("UTC").as_unit("ns").value)
    if market_open is None:
        market_open = calendar.is_open(as_of)

    codes, uniques = pd.factorize(frame["symbol"], use_na_sentinel=True)
    codes = codes.astype(np.int64, copy=False)
    ts = frame["ts"].dt.tz_convert("UTC").dt.as_unit("ns").array.asi8
    col = {k: frame[k].to_numpy(dtype=np.float64, na_value=np.nan) for k in ("bid", "bid_size", "ask", "ask_size")}
    bid, ask = col["bid"], col["ask"]
    found: list[Found] = []

    nulls = {"symbol": codes < 0, "ts": ts == NAT, **{k: np.isnan(v) for k, v in col.items()}}
    rows = np.flatnonzero(np.logical_or.reduce(list(nulls.values())))
    if len(rows):
        found.append(Found("not_null", rows, [f"missing {', '.join(k for k, m in nulls.items() if m[i])}" for i in rows]))
    with np.errstate(invalid="ignore"):
        bad = {k: ~np.isnan(col[k]) & ~((col[k] > 0) & (col[k] < np.inf)) for k in ("bid", "ask")}
        rows = np.flatnonzero(bad["bid"] | bad["ask"])
        if len(rows):
            found.append(Found("positive_price", rows, ["; ".join(f"{k} {fmt(col[k][i])} is not a positive finite price" for k in bad if bad[k][i]) for i in rows]))
        zero = {k: ~np.isnan(col[k]) & ~((col[k] > 0) & (col[k] < np.inf)) for k in ("bid_size", "ask_size")}
        rows = np.flatnonzero(zero["bid_size"] | zero["ask_size"])
        if len(rows):
            found.append(Found("zero_size", rows, ["; ".join(f"{k} is {fmt(col[k][i])}" for k in zero if zero[k][i]) for i in rows]))
        priced = ~np.isnan(bid) & ~np.isnan(ask) & ~bad["bid"] & ~bad["ask"]
        rows = np.flatnonzero(priced & (bid > ask))
        if len(rows):
            found.append(Found("crossed", rows, [f"bid {fmt(bid[i])} > ask {fmt(ask[i])}" for i in rows]))
        rows = np.flatnonzero(priced & (bid == ask))
        if len(rows):
            found.append(Found("locked", rows, [f"bid = ask = {fmt(bid[i])}" for i in rows]))

    quarantined = np.zeros(len(frame), dtype=bool)
    for f in found:
        if QUOTE_CHECKS[f.check].action == "quarantine":
            quarantined[f.rows] = True
    usable = ~quarantined & (codes >= 0) & (ts != NAT)
    n_sym = len(uniques)
    last = np.full(n_sym, NAT)
    np.maximum.at(last, codes[usable], ts[usable])
    last_row = np.full(n_sym, -1, dtype=np.int64)
    usable_rows = np.flatnonzero(usable)
    at_last = usable_rows[ts[usable_rows] == last[codes[usable_rows]]]
    last_row[codes[at_last]] = at_last  # the last of equal timestamps wins
    age_s = np.where(last != NAT, (as_of_ns - last) / 1e9, np.inf)
    is_stale = (age_s > stale_after_s) & bool(market_open)
    stale_codes = np.flatnonzero(is_stale & (last_row >= 0))
    if len(stale_codes):
        found.append(
            Found(
                "stale_quote",
                last_row[stale_codes],
                [f"latest quote {a:.1f} s old at {fmt_ts(np.array([as_of_ns]))[0]} (allowed {stale_after_s:g} s, exchange open)" for a in age_s[stale_codes]],
                score=age_s[stale_codes],
            )
        )

    violations = _violations(found, codes, uniques, ts)
    if quarantined.any():
        q = violations[violations["action"] == "quarantine"]
        joined = (q["check"] + ": " + q["reason"]).groupby(q["row"].to_numpy(dtype=np.int64), sort=True).agg("; ".join)
        quarantine = frame.iloc[joined.index.to_numpy()].assign(reason=joined.to_numpy(dtype=object))
        clean = frame.iloc[np.flatnonzero(~quarantined)]
    else:
        quarantine = frame.iloc[0:0].assign(reason=pd.Series([], dtype=object))
        clean = frame
    latest = pd.DataFrame({"symbol": [str(u) for u in uniques], "last_ts": utc_index(last), "age_s": age_s, "stale": is_stale})
    return QuoteValidation(clean, quarantine, violations, latest)


def _violations(found: list[Found], codes: np.ndarray, uniques: pd.Index, ts: np.ndarray) -> pd.DataFrame:
    rows = np.concatenate([f.rows for f in found]).astype(np.int64) if found else np.zeros(0, dtype=np.int64)
    names = np.array([*(str(u) for u in uniques), None], dtype=object)
    sym = codes[rows]
    checks = np.concatenate([np.full(len(f), f.check, dtype=object) for f in found]) if found else np.zeros(0, dtype=object)
    out = pd.DataFrame(
        {
            "row": pd.array(rows, dtype="Int64"),
            "symbol": names[np.where(sym >= 0, sym, len(names) - 1)],
            "ts": utc_index(ts[rows]),
            "check": checks,
            "action": np.array([QUOTE_CHECKS[c].action for c in checks], dtype=object),
            "reason": np.concatenate([np.asarray(f.reasons, dtype=object) for f in found]) if found else np.zeros(0, dtype=object),
            "score": np.concatenate([f.score if f.score is not None else np.full(len(f), np.nan) for f in found]) if found else np.zeros(0),
        }
    )
    return out.sort_values("row", kind="stable").reset_index(drop=True)
