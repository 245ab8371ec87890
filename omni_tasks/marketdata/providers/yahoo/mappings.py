"""Yahoo's wire format and yfinance's frame, mapped by pure functions.

The v8 chart endpoint (``GET /v8/finance/chart/{symbol}``) answers::

    {"chart": {"result": [{"meta": {"exchangeTimezoneName": "America/New_York", ...},
                           "timestamp": [1704205800, ...],
                           "indicators": {"quote": [{"open": [...], "high": [...], "low": [...],
                                                     "close": [...], "volume": [...]}],
                                          "adjclose": [{"adjclose": [...]}]}}],
               "error": null}}

with ``null`` in the arrays for an interval without trades, ``"quote": [{}]``
and no ``timestamp`` for a range without bars, and HTTP 404 with
``{"chart": {"result": null, "error": {"code": "Not Found", "description":
"No data found, symbol may be delisted"}}}`` for a symbol Yahoo does not know.

yfinance turns it into a frame with capitalised columns (``Open``, ``High``,
``Low``, ``Close``, ``Adj Close``, ``Volume``), indexed by ``Date`` (daily,
midnight in the exchange's zone, or tz-naive in some versions and helpers)
or ``Datetime`` (intraday, in the exchange's zone); ``yf.download`` adds a
second column level with the ticker. :func:`history_frame` undoes all that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

import pandas as pd
from yfinance.exceptions import (
    YFException,
    YFInvalidPeriodError,
    YFPricesMissingError,
    YFRateLimitError,
    YFTzMissingError,
)

from omni_tasks.marketdata.errors import (
    EmptyData,
    MalformedPayload,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnknownSymbol,
    UnsupportedRequest,
)

PROVIDER: Final = "yahoo"
REQUIRED: Final = ("open", "high", "low", "close", "volume")
_UNKNOWN_WORDS: Final = ("delisted", "not found", "no data found", "symbol may", "invalid symbol")
_UNSERVABLE_WORDS: Final = ("must be within", "not available", "invalid input", "unsupported", "interval")


def _column_key(name: object) -> str:
    return re.sub(r"[\s_]+", "", str(name)).lower()


def history_frame(df: pd.DataFrame, *, timeframe: str, source_tz: str) -> pd.DataFrame:
    """yfinance's history frame as columns ts, open, high, low, close, volume.

    Columns are matched whatever their case (``Close``, ``close``,
    ``Adj Close`` is ignored: with auto_adjust=False ``Close`` is the
    split-adjusted price and with auto_adjust=True it is the fully adjusted
    one). Intraday timestamps become UTC (a naive index is read in
    ``source_tz``, the exchange's zone); daily rows become their session date
    (naive), which frames.canonical_bars labels 00:00 UTC. Raises
    MalformedPayload when a column or the datetime index is missing.
    """
    if isinstance(df.columns, pd.MultiIndex):
        df = _single_ticker(df)
    by_key = {_column_key(column): column for column in df.columns}
    missing = [name for name in REQUIRED if name not in by_key]
    if missing:
        raise MalformedPayload(
            f"yfinance frame has no {', '.join(missing)} column (columns: {', '.join(map(str, df.columns))})", provider=PROVIDER
        )
    index = df.index
    if not isinstance(index, pd.DatetimeIndex):
        raise MalformedPayload(f"yfinance frame is not indexed by time (index {index.name!r} of {index.dtype})", provider=PROVIDER)
    if timeframe == "1Day":
        local = index.tz_convert(source_tz).tz_localize(None) if index.tz is not None else index
        ts = local.normalize()
    else:
        aware = index.tz_localize(source_tz) if index.tz is None else index
        ts = aware.tz_convert("UTC")
    return pd.DataFrame(
        {
            "ts": ts,
            "open": df[by_key["open"]].to_numpy(dtype="float64"),
            "high": df[by_key["high"]].to_numpy(dtype="float64"),
            "low": df[by_key["low"]].to_numpy(dtype="float64"),
            "close": df[by_key["close"]].to_numpy(dtype="float64"),
            "volume": df[by_key["volume"]].to_numpy(dtype="float64"),
        }
    ).reset_index(drop=True)


def _single_ticker(df: pd.DataFrame) -> pd.DataFrame:
    """``yf.download``'s (Price, Ticker) columns reduced to the price level, for one ticker."""
    for level in range(df.columns.nlevels):
        values = {_column_key(value) for value in df.columns.get_level_values(level)}
        if {"open", "close"} <= values:
            others = [other for other in range(df.columns.nlevels) if other != level]
            tickers = {tuple(column[i] for i in others) for column in df.columns}
            if len(tickers) > 1:
                raise MalformedPayload(f"yfinance frame holds several tickers: {sorted(tickers)}", provider=PROVIDER)
            return df.droplevel(others, axis=1)
    raise MalformedPayload(f"yfinance frame has no price column level (columns: {list(df.columns)[:6]})", provider=PROVIDER)


def chart_error(status: int, body: str, *, symbol: str) -> ProviderError | None:
    """The error a chart response stands for, when yfinance would misreport it; None otherwise.

    A 5xx is an outage (yfinance would report a JSON decode error), and a 404
    "Not Found" is an unknown symbol (yfinance would go on to other endpoints
    and report their 404). Everything else, including 429, is left to yfinance.
    """
    if status >= 500:
        return ProviderUnavailable(f"Yahoo chart HTTP {status} for {symbol}", provider=PROVIDER)
    if status == 404:
        error = _chart_error_object(body)
        if error is not None and str(error.get("code", "")).lower() == "not found":
            return UnknownSymbol(f"Yahoo does not know {symbol}: {error.get('description', 'Not Found')}", provider=PROVIDER)
    return None


def _chart_error_object(body: str) -> Mapping[str, Any] | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    chart = parsed.get("chart") if isinstance(parsed, Mapping) else None
    error = chart.get("error") if isinstance(chart, Mapping) else None
    return error if isinstance(error, Mapping) else None


def error_for(exc: BaseException, *, symbol: str) -> ProviderError:
    """The omni error for what yfinance raised (with ``hide_exceptions`` off, it raises instead of logging)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, YFRateLimitError):
        return RateLimited(f"Yahoo rate limit: {exc}", provider=PROVIDER)
    if isinstance(exc, YFTzMissingError):
        return UnknownSymbol(f"Yahoo has no exchange time zone for {symbol}, so it does not know the symbol: {exc}", provider=PROVIDER)
    if isinstance(exc, YFPricesMissingError):
        reason = (exc.yahoo_reason or "").lower()
        if reason and any(word in reason for word in _UNKNOWN_WORDS):
            return UnknownSymbol(f"Yahoo: {exc.yahoo_reason} ({symbol})", provider=PROVIDER)
        if reason and any(word in reason for word in _UNSERVABLE_WORDS):
            return UnsupportedRequest(f"Yahoo cannot serve this range or interval: {exc.yahoo_reason}", provider=PROVIDER)
        return EmptyData(f"Yahoo returned no bars for {symbol}: {exc}", provider=PROVIDER)
    if isinstance(exc, YFInvalidPeriodError):
        return UnsupportedRequest(f"Yahoo: {exc}", provider=PROVIDER)
    if isinstance(exc, YFException):
        return ProviderUnavailable(f"Yahoo failed: {type(exc).__name__}: {exc}", provider=PROVIDER)
    if isinstance(exc, json.JSONDecodeError):  # before OSError: requests' decode error is both
        return MalformedPayload(f"Yahoo chart for {symbol} is not JSON: {exc}", provider=PROVIDER)
    if isinstance(exc, OSError):  # requests' and curl_cffi's errors are OSErrors: connection, timeout, HTTP
        return ProviderUnavailable(f"Yahoo unreachable: {type(exc).__name__}: {exc}", provider=PROVIDER)
    if isinstance(exc, ValueError | KeyError | TypeError | IndexError | AttributeError):
        return MalformedPayload(f"Yahoo chart for {symbol} is not in the documented format: {type(exc).__name__}: {exc}", provider=PROVIDER)
    return ProviderUnavailable(f"Yahoo failed: {type(exc).__name__}: {exc}", provider=PROVIDER)
