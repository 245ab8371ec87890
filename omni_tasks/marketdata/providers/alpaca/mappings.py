"""Alpaca's wire format: bar keys, pages and error bodies, mapped by pure functions.

A bars page of ``GET /v2/stocks/bars`` (the endpoint alpaca-py calls) is::

    {"bars": {"AAPL": [{"t": "2024-01-02T14:30:00Z", "o": 187.15, "h": 187.5,
                        "l": 186.8, "c": 187.2, "v": 123456, "n": 1523, "vw": 187.1}, ...]},
     "next_page_token": "QUFQTHxN..." | null}

A symbol with no bars in the range is absent from ``bars`` (``{"bars": {}}``),
which is also how Alpaca answers a symbol it does not know. The single-symbol
endpoint ``GET /v2/stocks/{symbol}/bars`` has ``"bars": [...]`` and
``"symbol"`` instead; both shapes are read here.

``t`` is the bar's start in UTC (RFC 3339); daily bars start at midnight New
York time (``05:00Z`` in winter, ``04:00Z`` in summer).

The latest bar (``GET /v2/stocks/bars/latest?symbols=AAPL``) is
``{"bars": {"AAPL": {"t": ..., "o": ..., ...}}}``; a symbol Alpaca does not
know is absent (``{"bars": {}}``). A delisted symbol keeps its last bar.

Errors come back as ``{"code": 40010001, "message": "invalid symbol: ..."}``
or just ``{"message": "forbidden."}``, with the HTTP status telling the kind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import pandas as pd

from omni_tasks.marketdata.errors import (
    AuthenticationFailed,
    MalformedPayload,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnknownSymbol,
    UnsupportedRequest,
)

PROVIDER: Final = "alpaca"

#: Wire key -> canonical column. ``n`` (trades) and ``vw`` (VWAP) are optional on the wire.
BAR_KEYS: Final[dict[str, str]] = {
    "t": "ts",
    "o": "open",
    "h": "high",
    "l": "low",
    "c": "close",
    "v": "volume",
    "n": "trade_count",
    "vw": "vwap",
}
REQUIRED_BAR_KEYS: Final = ("t", "o", "h", "l", "c", "v")
_NUMERIC_KEYS: Final = ("o", "h", "l", "c", "v", "n", "vw")


def page_bars(payload: Any, symbol: str) -> tuple[list[Mapping[str, Any]], str | None]:
    """The bar objects for ``symbol`` in one page, and the next page token (None on the last page).

    Raises MalformedPayload naming what is not in Alpaca's documented shape.
    """
    if not isinstance(payload, Mapping):
        raise MalformedPayload(f"Alpaca bars page is not a JSON object (got {type(payload).__name__})", provider=PROVIDER)
    if "bars" not in payload:
        keys = ", ".join(sorted(map(str, payload))) or "none"
        raise MalformedPayload(f"Alpaca bars page has no 'bars' key (keys: {keys})", provider=PROVIDER)
    token = payload.get("next_page_token")
    if token is not None and (not isinstance(token, str) or not token):
        raise MalformedPayload(f"Alpaca next_page_token is not a non-empty string: {token!r}", provider=PROVIDER)
    bars = payload["bars"]
    if bars is None:
        return [], token
    if isinstance(bars, list):  # /v2/stocks/{symbol}/bars
        answered = payload.get("symbol", symbol)
        if answered != symbol:
            raise MalformedPayload(f"Alpaca answered bars of {answered!r} when {symbol!r} was asked", provider=PROVIDER)
        rows = bars
    elif isinstance(bars, Mapping):  # /v2/stocks/bars
        others = sorted(str(key) for key in bars if key != symbol)
        if others:
            raise MalformedPayload(f"Alpaca answered bars of {', '.join(others)} when only {symbol!r} was asked", provider=PROVIDER)
        rows = bars.get(symbol, [])
        if not isinstance(rows, list):
            raise MalformedPayload(f"Alpaca bars[{symbol!r}] is not a list (got {type(rows).__name__})", provider=PROVIDER)
    else:
        raise MalformedPayload(f"Alpaca 'bars' is neither an object nor a list (got {type(bars).__name__})", provider=PROVIDER)
    return rows, token


def bars_frame(rows: list[Mapping[str, Any]]) -> pd.DataFrame:
    """Alpaca bar objects as a frame with columns ts, open, high, low, close, volume, trade_count, vwap.

    Every bar must carry t, o, h, l, c and v with numbers (and an RFC 3339
    ``t``); a bar that does not is a MalformedPayload naming the bar and key,
    never a row quietly left out.
    """
    for index, bar in enumerate(rows):
        if not isinstance(bar, Mapping):
            raise MalformedPayload(f"Alpaca bar #{index} is not a JSON object (got {type(bar).__name__})", provider=PROVIDER)
        missing = [key for key in REQUIRED_BAR_KEYS if key not in bar]
        if missing:
            raise MalformedPayload(
                f"Alpaca bar #{index} has no {', '.join(missing)} (keys: {', '.join(sorted(map(str, bar)))})", provider=PROVIDER
            )
        for key in _NUMERIC_KEYS:
            value = bar.get(key)
            optional_and_absent = value is None and key not in REQUIRED_BAR_KEYS
            if not optional_and_absent and not _is_number(value):
                raise MalformedPayload(f"Alpaca bar #{index} {key!r} is not a number: {value!r}", provider=PROVIDER)
        if not isinstance(bar["t"], str):
            raise MalformedPayload(f"Alpaca bar #{index} 't' is not an RFC 3339 string: {bar['t']!r}", provider=PROVIDER)
    frame = pd.DataFrame(
        {column: [bar.get(key) for bar in rows] for key, column in BAR_KEYS.items()},
        columns=list(BAR_KEYS.values()),
    )
    try:
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise MalformedPayload(f"Alpaca bar timestamp is not RFC 3339: {exc}", provider=PROVIDER) from None
    return frame


def latest_bar_ts(payload: Any, symbol: str) -> pd.Timestamp | None:
    """The start (UTC) of ``symbol``'s latest bar in a latest-bars answer; None when Alpaca has none (it does not know the symbol)."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("bars"), Mapping | None):
        raise MalformedPayload("Alpaca latest-bars answer has no 'bars' object", provider=PROVIDER)
    bar = (payload.get("bars") or {}).get(symbol)
    if bar is None:
        return None
    if not isinstance(bar, Mapping) or not isinstance(bar.get("t"), str):
        raise MalformedPayload(f"Alpaca latest bar of {symbol} has no time 't'", provider=PROVIDER)
    try:
        return pd.Timestamp(bar["t"]).tz_convert("UTC")
    except (ValueError, TypeError) as exc:
        raise MalformedPayload(f"Alpaca latest bar of {symbol}: bad time {bar['t']!r}: {exc}", provider=PROVIDER) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def error_message(body: str) -> str:
    """The ``message`` of an Alpaca error body, or the body itself (shortened) when it is not JSON."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping) and isinstance(parsed.get("message"), str):
        return parsed["message"]
    text = " ".join(body.split())
    return text[:200] if text else "(empty body)"


def is_recent_sip_refusal(status: int | None, message: str) -> bool:
    """True for the free plan's refusal of SIP data from the last 15 minutes (HTTP 403)."""
    return status == 403 and "recent sip" in message.lower()


def error_for(status: int | None, message: str, *, symbol: str, retry_after_s: float | None = None) -> ProviderError:
    """The omni error for an Alpaca HTTP error (status and the body's message)."""
    lowered = message.lower()
    where = f"Alpaca HTTP {status}: {message}"
    if status == 429:
        return RateLimited(where, provider=PROVIDER, retry_after_s=retry_after_s)
    if status == 401:
        return AuthenticationFailed(f"{where} (check OMNI_ALPACA_API_KEY and OMNI_ALPACA_SECRET_KEY)", provider=PROVIDER)
    if status == 403:
        if "subscription" in lowered:
            return UnsupportedRequest(f"{where} (the account's data plan does not cover this)", provider=PROVIDER)
        return AuthenticationFailed(f"{where} (check OMNI_ALPACA_API_KEY and OMNI_ALPACA_SECRET_KEY)", provider=PROVIDER)
    if status in (400, 404, 422) and "symbol" in lowered:
        return UnknownSymbol(f"{where} ({symbol})", provider=PROVIDER)
    if status is None or status >= 500 or status == 408:
        return ProviderUnavailable(where, provider=PROVIDER)
    return UnsupportedRequest(where, provider=PROVIDER)


def retry_after_s(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds to wait before the next call, from ``Retry-After`` (seconds or HTTP date) or else
    ``X-RateLimit-Reset`` (Unix seconds, Alpaca's own header); None when neither is usable."""
    lowered = {key.lower(): value for key, value in headers.items()}
    value = lowered.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, (when - now).total_seconds())
    reset = lowered.get("x-ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - now.timestamp())
        except ValueError:
            return None
    return None
