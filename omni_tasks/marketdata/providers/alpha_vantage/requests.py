"""Building Alpha Vantage calls: pure functions from a BarRequest to alpha_vantage ``TimeSeries`` calls.

Daily bars: one ``get_daily`` (TIME_SERIES_DAILY, outputsize=full, raw
as-traded prices; the adjusted daily series is a premium endpoint that only
adjusts the close, so ``raw`` is the only daily adjustment). Intraday bars:
one ``get_intraday`` (TIME_SERIES_INTRADAY, outputsize=full) per calendar
month the range touches, in New York time (``month=YYYY-MM``: without it the
API returns only the trailing 30 days), with ``adjusted=false`` for ``raw``
and ``true`` for ``all`` (splits and dividends), and extended hours included
as Alpaca's bars are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import pandas as pd
from alpha_vantage.alphavantage import AlphaVantage

from omni_tasks.marketdata.providers.base import BarRequest

DEFAULT_BASE_URL: Final = "https://www.alphavantage.co"
#: The query URL alpha_vantage builds every call on (a class attribute it reads as AlphaVantage._ALPHA_VANTAGE_API_URL).
LIBRARY_QUERY_URL: Final[str] = AlphaVantage._ALPHA_VANTAGE_API_URL
#: frames.TIMEFRAMES intraday codes -> Alpha Vantage intervals.
INTERVALS: Final[dict[str, str]] = {"1Min": "1min", "5Min": "5min", "15Min": "15min", "30Min": "30min", "1Hour": "60min"}
DAILY: Final = "1Day"
#: The zone Alpha Vantage's US intraday series and its ``month`` parameter are in.
SERIES_TZ: Final = "America/New_York"
INTRADAY_ADJUSTED: Final[dict[str, str]] = {"raw": "false", "all": "true"}


@dataclass(frozen=True)
class AvCall:
    """One TimeSeries call: the method name, its keyword arguments and the key of the series in the answer."""

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    series_key: str = ""


def calls_for(request: BarRequest) -> list[AvCall]:
    """The calls that cover the request. Raises ValueError for what Alpha Vantage cannot serve."""
    if request.timeframe == DAILY:
        if request.adjustment != "raw":
            raise ValueError(
                f"Alpha Vantage daily bars are raw only (its adjusted daily series is premium and adjusts the close alone), not {request.adjustment!r}"
            )
        return [AvCall("get_daily", {"symbol": request.symbol, "outputsize": "full"}, "Time Series (Daily)")]
    try:
        interval = INTERVALS[request.timeframe]
    except KeyError:
        raise ValueError(f"Alpha Vantage has no {request.timeframe!r} bars: choose from {', '.join([*INTERVALS, DAILY])}") from None
    try:
        adjusted = INTRADAY_ADJUSTED[request.adjustment]
    except KeyError:
        raise ValueError(f"Alpha Vantage intraday bars are raw or all-adjusted, not {request.adjustment!r}") from None
    return [
        AvCall(
            "get_intraday",
            {
                "symbol": request.symbol,
                "interval": interval,
                "outputsize": "full",
                "month": month,
                "extended_hours": "true",
                "adjusted": adjusted,
            },
            f"Time Series ({interval})",
        )
        for month in months_touched(request)
    ]


def months_touched(request: BarRequest) -> list[str]:
    """``YYYY-MM`` of every New York calendar month that [start, end) touches, oldest first."""
    first = pd.Timestamp(request.start).tz_convert(SERIES_TZ)
    last = pd.Timestamp(request.end - timedelta(microseconds=1)).tz_convert(SERIES_TZ)
    periods = pd.period_range(first.tz_localize(None).to_period("M"), last.tz_localize(None).to_period("M"), freq="M")
    return [period.strftime("%Y-%m") for period in periods]


def rebase(url: str, base_url: str) -> str:
    """The library's query URL moved onto ``base_url`` (the same path and query under it)."""
    if not url.startswith(LIBRARY_QUERY_URL):
        raise ValueError("alpha_vantage built a URL outside its query endpoint; the adapter does not know where to send it")
    return f"{base_url.rstrip('/')}/query?{url[len(LIBRARY_QUERY_URL) :]}"


def redact(text: str, key: str) -> str:
    """``text`` without the API key (alpha_vantage puts it in the query string, so errors quote it)."""
    return text.replace(key, "[redacted]") if key else text
