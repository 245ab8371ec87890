"""The canonical bar frame's pandera contract and the frame helpers (pandas): see :mod:`omni_tasks.contracts.bars`."""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from omni_tasks.contracts.bars import (
    ADJUSTMENTS,
    EXCHANGE_TZ,
    SYMBOL_PATTERN,
    TIMEFRAMES,
)


class BarFrame(pa.DataFrameModel):
    """The boundary contract for canonical bars: types and row invariants."""

    symbol: Series[str] = pa.Field(str_matches=SYMBOL_PATTERN.pattern)
    timeframe: Series[str] = pa.Field(isin=list(TIMEFRAMES))
    ts: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "ns", "tz": "UTC"})
    open: Series[float] = pa.Field(gt=0)
    high: Series[float] = pa.Field(gt=0)
    low: Series[float] = pa.Field(gt=0)
    close: Series[float] = pa.Field(gt=0)
    volume: Series[float] = pa.Field(ge=0)
    vwap: Series[float] = pa.Field(nullable=True, gt=0)
    trade_count: Series[pd.Int64Dtype] = pa.Field(nullable=True, ge=0)
    provider: Series[str]
    feed: Series[str]
    adjustment: Series[str] = pa.Field(isin=list(ADJUSTMENTS))

    @pa.dataframe_check(element_wise=False)
    def high_is_the_high(cls, df: pd.DataFrame) -> Series[bool]:  # pandera's classmethod-style checks
        return df["high"] >= np.maximum(df["open"], df["close"]) - 1e-9

    @pa.dataframe_check(element_wise=False)
    def low_is_the_low(cls, df: pd.DataFrame) -> Series[bool]:
        return df["low"] <= np.minimum(df["open"], df["close"]) + 1e-9

    class Config:
        strict = True
        ordered = True
        coerce = False


_FRAME_CHECKS: Final = frozenset({"high_is_the_high", "low_is_the_low"})


def empty_bars() -> pd.DataFrame:
    """A canonical bar frame with no rows and the right dtypes."""
    return pd.DataFrame(
        {
            "symbol": pd.Series([], dtype=object),
            "timeframe": pd.Series([], dtype=object),
            "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
            "open": pd.Series([], dtype="float64"),
            "high": pd.Series([], dtype="float64"),
            "low": pd.Series([], dtype="float64"),
            "close": pd.Series([], dtype="float64"),
            "volume": pd.Series([], dtype="float64"),
            "vwap": pd.Series([], dtype="float64"),
            "trade_count": pd.Series([], dtype="Int64"),
            "provider": pd.Series([], dtype=object),
            "feed": pd.Series([], dtype=object),
            "adjustment": pd.Series([], dtype=object),
        }
    )


def canonical_bars(
    df: pd.DataFrame,
    *,
    symbol: str,
    timeframe: str,
    provider: str,
    feed: str,
    adjustment: str,
) -> pd.DataFrame:
    """Shape an adapter's frame (columns ts, open, high, low, close, volume and optionally
    vwap, trade_count) into the canonical column order and dtypes, tagging provenance.

    ``ts`` is the bar's start. Intraday: naive is taken as UTC, aware is
    converted to UTC. Daily bars are labelled by their session date at 00:00
    UTC whatever the provider sends (Alpaca: 05:00Z, i.e. midnight in New York;
    yfinance: midnight in the exchange's zone, or a naive date; a label that is
    already 00:00 UTC keeps its date).
    Sorted by ts. No row is dropped here: the boundary check decides.
    """
    if df.empty:
        return empty_bars()
    ts = pd.to_datetime(pd.Series(df["ts"]).reset_index(drop=True))
    if timeframe == "1Day":
        if ts.dt.tz is None:
            dates = ts.dt.normalize()
        else:
            utc = ts.dt.tz_convert("UTC")
            local = ts.dt.tz_convert(EXCHANGE_TZ).dt.tz_localize(None).dt.normalize()
            # Already canonical (00:00 UTC) stays on its date; any other instant is dated in New York.
            at_utc_midnight = utc == utc.dt.normalize()
            dates = local.where(~at_utc_midnight, utc.dt.tz_localize(None).dt.normalize())
        ts = dates.dt.tz_localize("UTC")
    else:
        ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    out = pd.DataFrame(
        {
            "symbol": symbol,
            "timeframe": timeframe,
            "ts": ts.astype("datetime64[ns, UTC]").to_numpy(),
            "open": pd.to_numeric(df["open"], errors="coerce").astype("float64").to_numpy(),
            "high": pd.to_numeric(df["high"], errors="coerce").astype("float64").to_numpy(),
            "low": pd.to_numeric(df["low"], errors="coerce").astype("float64").to_numpy(),
            "close": pd.to_numeric(df["close"], errors="coerce").astype("float64").to_numpy(),
            "volume": pd.to_numeric(df["volume"], errors="coerce").astype("float64").to_numpy(),
            "vwap": (pd.to_numeric(df["vwap"], errors="coerce").astype("float64").to_numpy() if "vwap" in df else np.nan),
            "trade_count": (
                pd.array(pd.to_numeric(df["trade_count"], errors="coerce"), dtype="Int64")
                if "trade_count" in df
                else pd.array([pd.NA] * len(df), dtype="Int64")
            ),
            "provider": provider,
            "feed": feed,
            "adjustment": adjustment,
        }
    )
    out["ts"] = out["ts"].astype("datetime64[ns, UTC]")
    return out.sort_values("ts", kind="stable").reset_index(drop=True)


def split_valid(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid rows, rejected rows with a ``reason`` column). Nothing is dropped silently.

    The whole frame is checked against :class:`BarFrame` lazily; every row that
    fails any check goes to the rejected frame with all its failure reasons.
    """
    if df.empty:
        return df, df.assign(reason=pd.Series([], dtype=object))
    try:
        BarFrame.validate(df, lazy=True)
        return df, df.iloc[0:0].assign(reason=pd.Series([], dtype=object))
    except pa.errors.SchemaErrors as exc:
        failures = exc.failure_cases
        reasons: dict[int, list[str]] = {}
        frame_wide: list[str] = []
        for _, case in failures.iterrows():
            index = case.get("index")
            column = case.get("column")
            check = str(case.get("check"))
            # Frame-wide checks report every column of a failing row; name the check once.
            label = check if check in _FRAME_CHECKS or not (isinstance(column, str) and column) else f"{column}: {check}"
            if index is None or (isinstance(index, float) and np.isnan(index)):
                frame_wide.append(label)
            else:
                reasons.setdefault(int(index), []).append(label)
        if frame_wide and not reasons:
            # A schema-level failure (wrong dtype or columns): the whole frame is rejected.
            rejected = df.assign(reason="; ".join(sorted(set(frame_wide))))
            return df.iloc[0:0], rejected
        bad = sorted(reasons)
        rejected = df.loc[bad].assign(reason=["; ".join(sorted(set(reasons[i]))) for i in bad])
        return df.drop(index=bad), rejected
