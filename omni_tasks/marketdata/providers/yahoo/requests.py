"""Building Yahoo requests: pure functions from a BarRequest to yfinance's ``history()`` arguments,
and the URL rule that points yfinance at ``settings.yahoo.base_url``.

Adjustments: Yahoo's chart ``close`` is already split-adjusted (its
"adjclose" adds dividends), so ``auto_adjust=False`` serves ``split`` bars
and ``auto_adjust=True`` serves ``all``. Yahoo has no unadjusted (``raw``)
or dividend-only prices; those requests are refused rather than mislabelled.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from omni_tasks.marketdata.providers.base import BarRequest

DEFAULT_BASE_URL: Final = "https://query2.finance.yahoo.com"
#: frames.TIMEFRAMES codes -> yfinance intervals (yfinance fetches 30m as 15m and resamples).
INTERVALS: Final[dict[str, str]] = {"1Min": "1m", "5Min": "5m", "15Min": "15m", "30Min": "30m", "1Hour": "1h", "1Day": "1d"}
#: adjustment -> yfinance auto_adjust.
AUTO_ADJUST: Final[dict[str, bool]] = {"split": False, "all": True}
#: Longest range Yahoo serves in one call per interval (1m: 7 days; 2m..30m: 60 days; 1h: 730 days).
MAX_RANGE: Final[dict[str, timedelta]] = {
    "1Min": timedelta(days=7),
    "5Min": timedelta(days=60),
    "15Min": timedelta(days=60),
    "30Min": timedelta(days=60),
    "1Hour": timedelta(days=730),
    "1Day": timedelta(days=365 * 100),
}


def history_kwargs(request: BarRequest, *, timeout_s: float) -> dict[str, Any]:
    """Keyword arguments of ``yfinance.Ticker.history`` for the request.

    Extended hours are included (``prepost``) so a range Yahoo serves covers
    the same hours as Alpaca's bars; ``repair`` is off (no guessed prices);
    ``keepna`` is off, so Yahoo's null bars for intervals without trades are
    dropped, as Alpaca sends no bar at all for them. Raises ValueError for a
    timeframe or adjustment Yahoo cannot serve.
    """
    try:
        interval = INTERVALS[request.timeframe]
    except KeyError:
        raise ValueError(f"Yahoo has no {request.timeframe!r} bars: choose from {', '.join(INTERVALS)}") from None
    try:
        auto_adjust = AUTO_ADJUST[request.adjustment]
    except KeyError:
        raise ValueError(
            f"Yahoo cannot serve {request.adjustment!r} bars: its prices are split-adjusted at least (choose from {', '.join(AUTO_ADJUST)})"
        ) from None
    return {
        "start": request.start,
        "end": request.end,
        "interval": interval,
        "auto_adjust": auto_adjust,
        "back_adjust": False,
        "actions": False,
        "prepost": True,
        "repair": False,
        "keepna": False,
        "rounding": False,
        "timeout": timeout_s,
    }


def _is_yahoo_host(host: str) -> bool:
    return host == "yahoo.com" or host.endswith(".yahoo.com")


def rebase(url: str, base_url: str) -> str:
    """``url`` as yfinance should fetch it when the configured base is ``base_url``.

    yfinance hard-codes its hosts (query1/query2.finance.yahoo.com for the
    API, fc.yahoo.com and guce.yahoo.com for the cookie and crumb). With a
    Yahoo base URL only the chart host (query2) is moved to it; with any other
    base (a stand-in or a mirror) every Yahoo URL is, so nothing leaves for
    Yahoo behind its back. The path and query are kept.
    """
    parts = urlsplit(url)
    target = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if not _is_yahoo_host(host):
        return url
    if _is_yahoo_host((target.hostname or "").lower()) and host != urlsplit(DEFAULT_BASE_URL).hostname:
        return url
    return urlunsplit((target.scheme, target.netloc, target.path.rstrip("/") + parts.path, parts.query, parts.fragment))


def is_chart_url(url: str) -> bool:
    """True for the v8 chart endpoint, the one that serves bars (and the exchange's time zone)."""
    return "/v8/finance/chart/" in urlsplit(url).path
