"""Alpha Vantage's wire format: time series bodies and the HTTP 200 bodies that are not data.

A series answer is::

    {"Meta Data": {"1. Information": "Intraday (5min) open, high, low, close prices and volume",
                   "2. Symbol": "AAPL", "3. Last Refreshed": "2024-01-31 19:55:00",
                   "4. Interval": "5min", "5. Output Size": "Full size", "6. Time Zone": "US/Eastern"},
     "Time Series (5min)": {"2024-01-02 09:30:00": {"1. open": "187.1500", "2. high": "187.7300",
                                                    "3. low": "186.0600", "4. close": "186.3100",
                                                    "5. volume": "4273145"}, ...}}

newest first, numbers as strings, intraday times naive in the Meta Data's time
zone (bar start), daily keys plain dates (``"Time Series (Daily)"``, ``"5. Time
Zone"``). Alpha Vantage answers HTTP 200 when it has no data for you:
``{"Note": ...}`` (the old per-minute limit) and ``{"Information": ...}``
(the daily limit, a premium-only endpoint or feature, the demo key) and
``{"Error Message": "Invalid API call. ..."}`` (an unknown symbol, or an
invalid key). Those bodies are errors, never empty data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

import pandas as pd

from omni_tasks.marketdata.errors import (
    AuthenticationFailed,
    MalformedPayload,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    UnknownSymbol,
    UnsupportedRequest,
)

PROVIDER: Final = "alpha_vantage"
FIELDS: Final = ("open", "high", "low", "close", "volume")
_FIELD_KEY: Final = re.compile(r"^\s*\d+\.\s*(.+?)\s*$")


def body_error(payload: Any, *, symbol: str) -> ProviderError | None:
    """The error an HTTP 200 body stands for (Note, Information, Error Message), or None for a series."""
    if not isinstance(payload, Mapping):
        return MalformedPayload(f"Alpha Vantage answer is not a JSON object (got {type(payload).__name__})", provider=PROVIDER)
    if not payload:
        return MalformedPayload("Alpha Vantage answered an empty JSON object", provider=PROVIDER)
    if "Error Message" in payload:
        message = str(payload["Error Message"])
        lowered = message.lower()
        if "apikey" in lowered or "api key" in lowered:
            return AuthenticationFailed(f"Alpha Vantage refused the key: {message} (check OMNI_ALPHA_VANTAGE_API_KEY)", provider=PROVIDER)
        if "invalid api call" in lowered:
            return UnknownSymbol(f"Alpha Vantage: {message} (symbol {symbol})", provider=PROVIDER)
        return UnsupportedRequest(f"Alpha Vantage: {message}", provider=PROVIDER)
    if "Information" in payload:
        message = str(payload["Information"])
        lowered = message.lower()
        if "api key" in lowered and ("demo" in lowered or "invalid" in lowered):
            return AuthenticationFailed(f"Alpha Vantage refused the key: {message} (check OMNI_ALPHA_VANTAGE_API_KEY)", provider=PROVIDER)
        if "premium endpoint" in lowered or "premium feature" in lowered:
            # Not a rate limit: retrying later cannot help on this plan.
            return UnsupportedRequest(f"Alpha Vantage: the plan does not include this call: {message}", provider=PROVIDER)
        if "invalid input" in lowered:
            # NEWS_SENTIMENT's answer to a ticker it does not know: waiting cannot help either.
            return UnknownSymbol(f"Alpha Vantage: {message} (symbol {symbol})", provider=PROVIDER)
        if is_daily_limit(message):
            return QuotaExhausted(f"Alpha Vantage daily quota (Information): {message}", provider=PROVIDER)
        return RateLimited(f"Alpha Vantage rate limit (Information): {message}", provider=PROVIDER)
    if "Note" in payload:
        return RateLimited(f"Alpha Vantage rate limit (Note): {payload['Note']}", provider=PROVIDER)
    return None


#: Words of a per-second/per-minute refusal: a burst, not the day's quota, even when the text
#: also quotes the daily limit ("... to lift the free key rate limit (25 requests per day)").
_SHORT_WINDOW: Final = ("per second", "per minute", "sparingly", "burst")


def is_daily_limit(message: str) -> bool:
    """True for Alpha Vantage's daily-quota wording ("Our standard API rate limit is 25 requests per day")."""
    lowered = message.lower()
    return "per day" in lowered and not any(word in lowered for word in _SHORT_WINDOW)


def series_frame(series: Any, meta: Any, *, daily: bool) -> pd.DataFrame:
    """A time series object as columns ts, open, high, low, close, volume, oldest first.

    Daily keys become naive session dates (frames.canonical_bars labels them
    00:00 UTC); intraday keys are read in the Meta Data's time zone and
    converted to UTC. A row that is not five numbers is a MalformedPayload
    naming the row and field.
    """
    if not isinstance(series, Mapping):
        raise MalformedPayload(f"Alpha Vantage time series is not an object (got {type(series).__name__})", provider=PROVIDER)
    if not isinstance(meta, Mapping):
        raise MalformedPayload(f"Alpha Vantage 'Meta Data' is not an object (got {type(meta).__name__})", provider=PROVIDER)
    columns: dict[str, list[Any]] = {"ts": [], **{name: [] for name in FIELDS}}
    for stamp, row in series.items():
        if not isinstance(row, Mapping):
            raise MalformedPayload(f"Alpha Vantage row {stamp!r} is not an object", provider=PROVIDER)
        values = {_field_name(key): value for key, value in row.items()}
        missing = [name for name in FIELDS if name not in values]
        if missing:
            raise MalformedPayload(
                f"Alpha Vantage row {stamp!r} has no {', '.join(missing)} (keys: {', '.join(map(str, row))})", provider=PROVIDER
            )
        columns["ts"].append(stamp)
        for name in FIELDS:
            columns[name].append(_number(values[name], stamp=stamp, name=name))
    frame = pd.DataFrame(columns)
    try:
        stamps = pd.to_datetime(frame["ts"], format="%Y-%m-%d" if daily else "%Y-%m-%d %H:%M:%S")
    except (ValueError, TypeError) as exc:
        raise MalformedPayload(
            f"Alpha Vantage timestamps are not {'YYYY-MM-DD' if daily else 'YYYY-MM-DD HH:MM:SS'}: {exc}", provider=PROVIDER
        ) from None
    if not daily and len(frame):
        zone = time_zone(meta)
        try:
            stamps = stamps.dt.tz_localize(zone).dt.tz_convert("UTC")
        except (ValueError, TypeError, KeyError) as exc:  # an unknown zone, or a time that does not exist there
            raise MalformedPayload(f"Alpha Vantage times cannot be read in {zone!r}: {exc}", provider=PROVIDER) from None
    frame["ts"] = stamps
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)


def time_zone(meta: Mapping[str, Any]) -> str:
    """The Meta Data's time zone (``"6. Time Zone"`` intraday, ``"5. Time Zone"`` daily)."""
    for key, value in meta.items():
        if _field_name(key) == "time zone" and isinstance(value, str) and value:
            return value
    raise MalformedPayload(f"Alpha Vantage 'Meta Data' has no time zone (keys: {', '.join(map(str, meta))})", provider=PROVIDER)


def _field_name(key: object) -> str:
    match = _FIELD_KEY.match(str(key))
    return (match.group(1) if match else str(key)).strip().lower()


def _number(value: Any, *, stamp: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MalformedPayload(f"Alpha Vantage row {stamp!r} {name} is not a number: {value!r}", provider=PROVIDER) from None
    if not math.isfinite(number):
        raise MalformedPayload(f"Alpha Vantage row {stamp!r} {name} is not finite: {value!r}", provider=PROVIDER)
    return number
