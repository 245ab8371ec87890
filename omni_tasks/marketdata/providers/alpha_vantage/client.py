"""Alpha Vantage bars through the alpha_vantage package's ``TimeSeries`` (daily and intraday).

**Pointing alpha_vantage elsewhere.** The package has no base-URL option: it
builds every call on a class attribute (``AlphaVantage._ALPHA_VANTAGE_API_URL``,
https://www.alphavantage.co/query?) and fetches it with ``requests.get``, no
timeout, no status check. The adapter keeps the package's URL building
(function, symbol, interval, outputsize, month, apikey, datatype) and its
answer unpacking (``data, meta = ts.get_daily(...)``), and replaces only its
HTTP step, ``_handle_api_call(url)``, in one subclass (:class:`_TimeSeries`):
the URL is re-based onto ``settings.alpha_vantage.base_url`` (same path and
query), fetched with a timeout, and the status and body are checked before
the package sees them. No global is changed.

Quirks handled: an HTTP 200 whose body is ``{"Note": ...}`` or
``{"Information": ...}`` is a rate limit (RateLimited), except an Information
saying the call is premium-only (UnsupportedRequest: waiting cannot help) or
that the key is the demo key (AuthenticationFailed); ``{"Error Message":
"Invalid API call..."}`` is UnknownSymbol (an invalid key says "apikey" and is
AuthenticationFailed). ``outputsize=full`` returns the whole history, so rows
outside the request are left out here; when none is inside, the symbol is
known and the range empty (NoBarsInRange, naming where the series runs), and
an answer with no rows at all is EmptyData. The key travels in the query string:
it is removed from every error message and never logged.

The free key allows 25 calls a day; :data:`CAPABILITIES` declares the quota
(``daily_quota``, from settings) for the shared limiter to enforce.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any, Final

import pandas as pd
import requests
from alpha_vantage.timeseries import TimeSeries

from omni_tasks.contracts import bars as frames
from omni_tasks.marketdata.errors import (
    AuthenticationFailed,
    EmptyData,
    MalformedPayload,
    NoBarsInRange,
    ProviderUnavailable,
    RateLimited,
    UnsupportedRequest,
)
from omni_tasks.marketdata.providers.alpha_vantage import mappings
from omni_tasks.marketdata.providers.alpha_vantage import requests as build
from omni_tasks.marketdata.providers.base import BarRequest, BarResult, Capabilities
from omni_tasks.settings import Settings

NAME: Final = "alpha_vantage"
FREE_DAILY_QUOTA: Final = 25


FREE_CALLS_PER_MIN: Final = 5


def capabilities(daily_quota: int = FREE_DAILY_QUOTA, calls_per_window: int = FREE_CALLS_PER_MIN) -> Capabilities:
    """What Alpha Vantage serves, with the key's per-window limit and daily quota for the shared limiter."""
    return Capabilities(
        timeframes=frozenset([*build.INTERVALS, build.DAILY]),
        # one intraday call covers a calendar month; one daily call covers the whole history
        max_range_per_call={**{code: timedelta(days=31) for code in build.INTERVALS}, build.DAILY: timedelta(days=365 * 25)},
        rate_limit_per_min=calls_per_window,
        needs_key=True,
        feeds=frozenset({NAME}),
        adjustments=frozenset(build.INTRADAY_ADJUSTED),
        daily_quota=daily_quota,
        # TIME_SERIES_DAILY outputsize=full: one call answers every partition of a symbol
        whole_series=frozenset({build.DAILY}),
    )


CAPABILITIES: Final = capabilities()


class RebasedCalls:
    """alpha_vantage's HTTP step, replaced: the library's URL sent to ``base_url`` with a timeout, status and body checked.

    Mixed into a subclass of one of the library's classes (``TimeSeries``,
    ``AlphaIntelligence``), first in the bases, so the library keeps building
    the URL and unpacking the answer and only ``_handle_api_call`` is ours.
    """

    # Set by the library's AlphaVantage.__init__.
    key: str
    headers: dict[str, str]
    proxy: dict[str, str]

    def __init__(self, key: str, *, base_url: str, timeout_s: float, symbol: str) -> None:
        super().__init__(key=key, output_format="json")  # type: ignore[call-arg]  # the library class's __init__
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._symbol = symbol
        self._http = requests.Session()
        self.calls = 0

    def _handle_api_call(self, url: str) -> Any:
        target = build.rebase(url, self._base_url)
        self.calls += 1
        try:
            response = self._http.get(target, headers=self.headers, proxies=self.proxy or None, timeout=self._timeout_s)
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
            raise ProviderUnavailable(f"Alpha Vantage unreachable at {self._base_url}: {type(exc).__name__}", provider=NAME) from None
        except requests.exceptions.RequestException as exc:
            raise ProviderUnavailable(f"Alpha Vantage request failed: {build.redact(str(exc), self.key)}", provider=NAME) from None
        status = response.status_code
        if status == 429:
            raise RateLimited(
                f"Alpha Vantage HTTP 429 for {self._symbol}", provider=NAME, retry_after_s=_seconds(response.headers.get("Retry-After"))
            )
        if status in (401, 403):
            raise AuthenticationFailed(f"Alpha Vantage HTTP {status} (check OMNI_ALPHA_VANTAGE_API_KEY)", provider=NAME)
        if status >= 500:
            raise ProviderUnavailable(f"Alpha Vantage HTTP {status} for {self._symbol}", provider=NAME)
        if status >= 400:
            raise UnsupportedRequest(f"Alpha Vantage HTTP {status}: {build.redact(response.text[:200], self.key)}", provider=NAME)
        try:
            payload = response.json()
        except ValueError as exc:
            raise MalformedPayload(f"Alpha Vantage answer for {self._symbol} is not JSON: {exc}", provider=NAME) from None
        error = mappings.body_error(payload, symbol=self._symbol)
        if error is not None:
            raise error
        return payload


class _TimeSeries(RebasedCalls, TimeSeries):
    """alpha_vantage's TimeSeries whose HTTP step goes to ``base_url``, with a timeout and status checks."""


def _day(ts: pd.Timestamp) -> str:
    return ts.date().isoformat() if ts.hour == 0 and ts.minute == 0 else ts.isoformat()


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class AlphaVantageBars:
    """Historical bars from Alpha Vantage: raw daily bars, raw or all-adjusted intraday bars (1Min..1Hour)."""

    name: str = NAME

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str = build.DEFAULT_BASE_URL,
        daily_quota: int = FREE_DAILY_QUOTA,
        calls_per_window: int = FREE_CALLS_PER_MIN,
        timeout_s: float = 30.0,
    ) -> None:
        """``base_url`` replaces https://www.alphavantage.co; ``daily_quota`` is calls per key per day."""
        self._api_key = api_key or None
        self._base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self.capabilities: Capabilities = capabilities(daily_quota, calls_per_window)

    def __repr__(self) -> str:
        return f"AlphaVantageBars(base_url={self._base_url!r}, key={'set' if self.available() else 'missing'})"

    def available(self) -> bool:
        return self._api_key is not None

    def fetch_bars(self, request: BarRequest) -> BarResult:
        """The request's bars (one call for daily, one per month touched for intraday) as canonical bars."""
        if self._api_key is None:
            raise AuthenticationFailed("no Alpha Vantage key configured (set OMNI_ALPHA_VANTAGE_API_KEY)", provider=NAME)
        try:
            request = replace(request, symbol=frames.check_symbol(request.symbol))
            calls = build.calls_for(request)
        except ValueError as exc:
            raise UnsupportedRequest(str(exc), provider=NAME) from None
        client = _TimeSeries(self._api_key, base_url=self._base_url, timeout_s=self._timeout_s, symbol=request.symbol)
        daily = request.timeframe == build.DAILY
        pieces = []
        for call in calls:
            try:
                series, meta = getattr(client, call.method)(**call.kwargs)
            except KeyError as exc:
                # alpha_vantage indexes the answer by the series and meta keys itself.
                raise MalformedPayload(f"Alpha Vantage answer for {request.symbol} has no {exc.args[0]!r} key", provider=NAME) from None
            pieces.append(mappings.series_frame(series, meta, daily=daily))
        frame = pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0]
        bars = frames.canonical_bars(
            frame, symbol=request.symbol, timeframe=request.timeframe, provider=NAME, feed=NAME, adjustment=request.adjustment
        )
        inside = (bars["ts"] >= pd.Timestamp(request.start)) & (bars["ts"] < pd.Timestamp(request.end))
        if not inside.any():
            what = (
                f"Alpha Vantage has no {request.timeframe} bars for {request.symbol} inside "
                f"{request.start.isoformat()}..{request.end.isoformat()} ({len(bars)} outside it"
            )
            if bars.empty:
                raise EmptyData(f"{what})", provider=NAME)
            # The answer is the symbol's series (the whole history for daily, the month for intraday): the symbol
            # is known and the range is empty (before its history starts, after its last bar, or a gap in it).
            first, last = bars["ts"].min(), bars["ts"].max()
            raise NoBarsInRange(f"{what}; its series runs {_day(first)}..{_day(last)})", provider=NAME)
        # A daily answer is the whole history (outputsize=full): its first bar is where the provider's series begins.
        begins = bars["ts"].min().to_pydatetime() if daily else None
        return BarResult(bars=bars[inside].reset_index(drop=True), calls=client.calls, series_start=begins)


def from_settings(settings: Settings) -> AlphaVantageBars:
    """The Alpha Vantage adapter for ``settings.alpha_vantage`` (key, base_url, daily_quota)."""
    av = settings.alpha_vantage
    return AlphaVantageBars(
        api_key=av.api_key.get_secret_value() if av.api_key else None,
        base_url=av.base_url,
        daily_quota=av.daily_quota,
        calls_per_window=av.calls_per_window,
    )
