"""Yahoo Finance bars through yfinance (no key).

**Pointing yfinance elsewhere.** yfinance has no base-URL option: its URLs
come from module constants (``yfinance.const._BASE_URL_``, copied into
``yfinance.scrapers.history`` at import) and its cookie and crumb come from
hard-coded hosts (fc.yahoo.com, query1.finance.yahoo.com/v1/test/getcrumb,
guce.yahoo.com). Rather than rewrite those globals, the adapter hands
yfinance its own HTTP session (``yf.Ticker(symbol, session=...)``, a public
argument): a curl_cffi session, as yfinance itself uses, impersonating a
browser, whose ``request()`` re-bases Yahoo URLs onto
``settings.yahoo.base_url`` (see :func:`.requests.rebase`). With the
default base nothing is rewritten; with a stand-in every Yahoo URL goes to it,
so the stand-in answers ``/v8/finance/chart/{symbol}`` (and may answer
``/v1/test/getcrumb``).

The same session reads the chart responses yfinance would misreport: a 5xx
(yfinance: a JSON decode error) is ProviderUnavailable and a 404 "Not Found"
(yfinance: a detour through other endpoints, then their 404) is
UnknownSymbol. Everything else is yfinance's to parse, with its
``hide_exceptions`` turned off so it raises instead of logging and returning
an empty frame; its exceptions are mapped in :mod:`.mappings`
(YFRateLimitError -> RateLimited, a missing time zone -> UnknownSymbol, no
prices -> EmptyData or, when Yahoo says so, UnknownSymbol).

yfinance state is per process: its ``YfData`` singleton holds the last
session given to it, its caches (ticker time zones, cookies) live in one
folder (``cache_dir``, effective when set before yfinance first uses it:
from_settings puts it in the data folder), and it memoises responses for past
ranges in memory, errors included; the adapter clears that memo before each
fetch so a retry really asks Yahoo again.

Quirks handled: an empty frame is EmptyData, never an empty success; columns
are matched whatever their case and ``Adj Close`` is not mistaken for the
close; daily rows are dated in the exchange's zone (tz-aware or naive) and
labelled by session date; intraday rows are converted to UTC; Yahoo's null
bars (no trades) are dropped by yfinance (``keepna=False``), as Alpaca sends
none. Yahoo's close is split-adjusted, so only ``split`` (auto_adjust=False)
and ``all`` (auto_adjust=True) are served. Yahoo's 1h bars start at :30 for US
stocks (Alpaca's start on the hour).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import pandas as pd
import yfinance as yf
from curl_cffi import requests as curl_requests
from yfinance.data import YfData

from omni_tasks.contracts import bars as frames
from omni_tasks.marketdata.errors import EmptyData, ProviderError, UnsupportedRequest
from omni_tasks.marketdata.providers.base import BarRequest, BarResult, Capabilities
from omni_tasks.marketdata.providers.yahoo import mappings
from omni_tasks.marketdata.providers.yahoo import requests as build
from omni_tasks.settings import Settings

NAME: Final = "yahoo"
CAPABILITIES: Final = Capabilities(
    timeframes=frozenset(build.INTERVALS),
    max_range_per_call=dict(build.MAX_RANGE),
    rate_limit_per_min=30,  # a conservative guess: Yahoo publishes no limit and answers bursts with 429
    needs_key=False,
    feeds=frozenset({NAME}),
    adjustments=frozenset(build.AUTO_ADJUST),
)
#: Everything yfinance may raise on a bad answer (its own errors, parse errors, transport errors).
_YFINANCE_FAILURES: Final = (ProviderError, yf.exceptions.YFException, ValueError, KeyError, TypeError, IndexError, AttributeError, OSError)


class _YahooSession(curl_requests.Session):
    """yfinance's HTTP session: re-bases Yahoo URLs, counts chart calls, reports chart failures yfinance misreads."""

    def __init__(self, base_url: str) -> None:
        super().__init__(impersonate="chrome")
        self.rebase_to = base_url  # not curl_cffi's own base_url, which only joins relative URLs
        self.chart_calls = 0
        self.symbol = ""

    def request(self, method: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        url = build.rebase(str(url), self.rebase_to)
        chart = build.is_chart_url(url)
        if chart:
            self.chart_calls += 1
        response = super().request(method, url, *args, **kwargs)
        if chart:
            error = mappings.chart_error(response.status_code, response.text, symbol=self.symbol)
            if error is not None:
                raise error
        return response


def _forget_memoised_responses() -> None:
    """Clear yfinance's in-memory response memo (an lru_cache on YfData.cache_get, keyed by URL)."""
    clear = getattr(YfData.cache_get, "cache_clear", None)
    if clear is not None:
        clear()


class YahooBars:
    """Historical bars from Yahoo Finance (1Min..1Day, split-adjusted or fully adjusted)."""

    name: str = NAME
    capabilities: Capabilities = CAPABILITIES

    def __init__(
        self,
        *,
        enabled: bool = True,
        base_url: str = build.DEFAULT_BASE_URL,
        cache_dir: Path | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """``base_url`` replaces https://query2.finance.yahoo.com; ``cache_dir`` holds yfinance's caches; ``timeout_s`` per call."""
        self._enabled = enabled
        self._base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._session = _YahooSession(self._base_url)
        # Raise, do not log-and-return-empty: an empty frame must not pass for a quiet success.
        yf.config.debug.hide_exceptions = False
        if cache_dir is not None:
            yf.set_tz_cache_location(str(cache_dir))

    def __repr__(self) -> str:
        return f"YahooBars(base_url={self._base_url!r}, enabled={self._enabled})"

    def available(self) -> bool:
        return self._enabled

    def fetch_bars(self, request: BarRequest) -> BarResult:
        """The request's bars from Yahoo's chart endpoint, as canonical bars (feed "yahoo")."""
        try:
            request = replace(request, symbol=frames.check_symbol(request.symbol))
            kwargs = build.history_kwargs(request, timeout_s=self._timeout_s)
        except ValueError as exc:
            raise UnsupportedRequest(str(exc), provider=NAME) from None
        symbol = request.symbol
        _forget_memoised_responses()
        self._session.symbol = symbol
        before = self._session.chart_calls
        ticker = yf.Ticker(symbol, session=self._session)
        try:
            history = ticker.history(**kwargs)
        except _YFINANCE_FAILURES as exc:
            _forget_memoised_responses()
            raise mappings.error_for(exc, symbol=symbol) from exc
        calls = max(1, self._session.chart_calls - before)
        if history is None or history.empty:
            raise EmptyData(
                f"Yahoo returned an empty frame for {symbol} {request.timeframe} {request.start.isoformat()}..{request.end.isoformat()}",
                provider=NAME,
            )
        frame = mappings.history_frame(history, timeframe=request.timeframe, source_tz=_exchange_zone(ticker))
        bars = frames.canonical_bars(
            frame, symbol=symbol, timeframe=request.timeframe, provider=NAME, feed=NAME, adjustment=request.adjustment
        )
        inside = (bars["ts"] >= pd.Timestamp(request.start)) & (bars["ts"] < pd.Timestamp(request.end))
        if not inside.any():
            raise EmptyData(
                f"Yahoo returned no bars for {symbol} inside {request.start.isoformat()}..{request.end.isoformat()}", provider=NAME
            )
        return BarResult(bars=bars[inside].reset_index(drop=True), calls=calls)


def _exchange_zone(ticker: yf.Ticker) -> str:
    """The exchange's time zone yfinance learnt from the chart's meta (the zone of a naive index)."""
    try:
        zone = ticker.history_metadata.get("exchangeTimezoneName")
    except (KeyError, TypeError, AttributeError, ValueError):
        zone = None
    return zone if isinstance(zone, str) and zone else frames.EXCHANGE_TZ


def from_settings(settings: Settings) -> YahooBars:
    """The Yahoo adapter for ``settings.yahoo`` (enabled, base_url), caching in the data folder."""
    return YahooBars(enabled=settings.yahoo.enabled, base_url=settings.yahoo.base_url, cache_dir=settings.data_dir / "yfinance")
