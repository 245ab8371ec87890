"""Alpaca historical bars through alpaca-py's ``StockHistoricalDataClient``.

The client is alpaca-py's, pointed at ``settings.alpaca.data_url`` with its
``url_override``; alpaca-py builds the URL (``{data_url}/v2/stocks/bars``),
sends the key headers and turns HTTP errors into ``APIError``. This module
walks the pages itself (``next_page_token``), one ``client.get`` per page, so
it can count calls, stop a server that repeats a token, and tell which page
was malformed. Request building is in :mod:`.requests`, the wire format
and error mapping in :mod:`.mappings`.

Two alpaca-py defaults are changed, in :class:`_Client` only:

* its retry loop (sleep 3 s, three times, on 429 and 504) is off: the router
  retries with backoff and the shared rate limiter, and a worker must not
  sleep inside a provider call;
* its ``requests`` session has no timeout; ours has ``timeout_s``
  (both through :func:`omni_tasks.core.http.use_timeout_session`, as paper trading does).

The free plan's recent-SIP refusal (HTTP 403 "subscription does not permit
querying recent SIP data" when ``end`` is within the last 15 minutes) is
handled loudly: the end is clamped to now - 15 min and the call repeated; if
SIP is still refused the feed is switched to IEX. Each step is a structlog
warning and a note in ``BarResult.notes``, and the ``feed`` column is always
the feed that served the rows (IEX volumes are a small share of SIP's). When
the call then fails or finds nothing, the notes travel on the error
(``ProviderError.notes``), so the ledger keeps them whatever the outcome.

Alpaca answers a symbol it does not know and a range without bars the same
way (``{"bars": {}}``). On an empty answer the adapter asks once for the
symbol's latest bar (``/v2/stocks/bars/latest``, IEX feed, so the recent-SIP
rule cannot refuse it): none means UnknownSymbol; one means the symbol is
known and the range is empty (NoBarsInRange, naming where the latest bar
lies: before the range suggests a delisting, after it a later listing).

Timestamps are UTC bar starts. Alpaca stamps a daily bar at midnight New York
time (05:00Z/04:00Z); frames.canonical_bars relabels it to its session date at
00:00 UTC. Alpaca's ``end`` is inclusive, the BarRequest's is not: a bar
starting exactly at ``end`` belongs to the next range and is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

import pandas as pd
import requests
import structlog
from alpaca.common.exceptions import APIError
from alpaca.data.historical.stock import StockHistoricalDataClient

from omni_tasks.contracts import bars as frames
from omni_tasks.core.http import use_timeout_session
from omni_tasks.marketdata.errors import (
    AuthenticationFailed,
    EmptyData,
    MalformedPayload,
    NoBarsInRange,
    ProviderError,
    ProviderUnavailable,
    UnknownSymbol,
    UnsupportedRequest,
)
from omni_tasks.marketdata.providers.alpaca import mappings
from omni_tasks.marketdata.providers.alpaca import requests as build
from omni_tasks.marketdata.providers.base import BarRequest, BarResult, Capabilities
from omni_tasks.settings import Settings

_log = structlog.get_logger("omni.marketdata.alpaca")

NAME: Final = "alpaca"
#: Pages one request may walk before it is treated as a server that never ends (10,000 bars per page).
MAX_PAGES: Final = 500
BARS_PATH: Final = "/stocks/bars"  # alpaca-py prefixes the base URL and /v2
LATEST_BARS_PATH: Final = "/stocks/bars/latest"

CAPABILITIES: Final = Capabilities(
    timeframes=frozenset(build.TIMEFRAMES),
    max_range_per_call={},  # any range: the adapter pages through it
    rate_limit_per_min=200,  # the free plan's limit per key
    needs_key=True,
    feeds=frozenset(build.FEEDS),
    adjustments=frozenset(build.ADJUSTMENTS),
)


class _Client(StockHistoricalDataClient):
    """alpaca-py's stock data client without its internal retry loop, with a request timeout."""

    def __init__(self, api_key: str, secret_key: str, *, data_url: str, timeout_s: float) -> None:
        super().__init__(api_key=api_key, secret_key=secret_key, url_override=data_url.rstrip("/"), raw_data=True)
        use_timeout_session(self, timeout_s)


class _RecentSipRefused(Exception):
    """The free plan refused SIP data this recent (handled inside fetch_bars, never raised out)."""

    def __init__(self, calls: int = 1) -> None:
        super().__init__(f"recent SIP data refused after {calls} call(s)")
        self.calls = calls


class AlpacaBars:
    """Historical bars from Alpaca (IEX or SIP feed, any adjustment, 1Min..1Day)."""

    name: str = NAME
    capabilities: Capabilities = CAPABILITIES

    def __init__(
        self,
        *,
        api_key: str | None,
        secret_key: str | None,
        data_url: str = "https://data.alpaca.markets",
        timeout_s: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``data_url`` without the ``/v2`` suffix; ``timeout_s`` per HTTP call; ``clock`` returns aware UTC now."""
        self._api_key = api_key or None
        self._secret_key = secret_key or None
        self._data_url = data_url
        self._timeout_s = timeout_s
        self._clock = clock
        self._client: _Client | None = None

    def __repr__(self) -> str:
        return f"AlpacaBars(data_url={self._data_url!r}, key={'set' if self.available() else 'missing'})"

    def available(self) -> bool:
        return self._api_key is not None and self._secret_key is not None

    def _get_client(self) -> _Client:
        if self._client is None:
            if self._api_key is None or self._secret_key is None:
                raise AuthenticationFailed("no Alpaca key configured (set OMNI_ALPACA_API_KEY and OMNI_ALPACA_SECRET_KEY)", provider=NAME)
            self._client = _Client(self._api_key, self._secret_key, data_url=self._data_url, timeout_s=self._timeout_s)
        return self._client

    def fetch_bars(self, request: BarRequest) -> BarResult:
        """Every bar of the request, all pages, as canonical bars with the feed that served them."""
        try:
            request = replace(request, symbol=frames.check_symbol(request.symbol))
            build.stock_bars_request(request, feed=request.feed, end=request.end)
        except ValueError as exc:
            raise UnsupportedRequest(str(exc), provider=NAME) from None
        symbol = request.symbol
        client = self._get_client()
        notes: list[str] = []
        calls = 0
        feed, end = request.feed, request.end
        try:
            while True:
                try:
                    rows, made = self._all_pages(client, request, feed=feed, end=end)
                    calls += made
                    break
                except _RecentSipRefused as refused:
                    calls += refused.calls
                    feed, end = self._after_sip_refusal(request, feed=feed, end=end, notes=notes)
        except ProviderError as exc:
            exc.notes[:0] = notes  # a clamp or a feed switch said before the failure stays on record
            raise
        if not rows:
            # Alpaca answers an unknown symbol with an empty "bars" object; a range without trades looks the same.
            raise self._no_rows(client, request, feed=feed, end=end, notes=notes)
        bars = frames.canonical_bars(
            mappings.bars_frame(rows), symbol=symbol, timeframe=request.timeframe, provider=NAME, feed=feed, adjustment=request.adjustment
        )
        inside = (bars["ts"] >= pd.Timestamp(request.start)) & (bars["ts"] < pd.Timestamp(end))
        return BarResult(bars=bars[inside].reset_index(drop=True), notes=notes, calls=calls)

    def _no_rows(self, client: _Client, request: BarRequest, *, feed: str, end: datetime, notes: list[str]) -> ProviderError:
        """The error for an empty answer: UnknownSymbol, or NoBarsInRange when Alpaca has a latest bar for the symbol."""
        symbol, span = request.symbol, f"between {request.start.isoformat()} and {end.isoformat()}"
        what = f"Alpaca has no {request.timeframe} bars for {symbol} on the {feed} feed {span}"
        try:
            last = mappings.latest_bar_ts(self._get(client, build.latest_bar_query(symbol), symbol=symbol, path=LATEST_BARS_PATH), symbol)
        except (ProviderError, _RecentSipRefused) as exc:
            # Which of the two it is stays open: a transient answer, tried again later.
            return EmptyData(
                f"{what}, and asking for its latest bar failed ({exc}): unknown symbol or empty range, not known yet",
                provider=NAME,
                notes=notes,
            )
        if last is None:
            return UnknownSymbol(f"{what}, and no latest bar: Alpaca does not know {symbol}", provider=NAME, notes=notes)
        if last < pd.Timestamp(request.start):
            where = "before the range (delisted, or no longer traded?)"
        elif last >= pd.Timestamp(end):
            where = "after the range (listed later, or no trades in the range)"
        else:
            where = "inside the range"
        return NoBarsInRange(f"{what}; its latest bar is {last.isoformat()}, {where}", provider=NAME, notes=notes)

    def _after_sip_refusal(self, request: BarRequest, *, feed: str, end: datetime, notes: list[str]) -> tuple[str, datetime]:
        """The (feed, end) to try after a recent-SIP refusal, said out loud in the log and the notes."""
        if feed != "sip":
            raise UnsupportedRequest(f"Alpaca refused recent SIP data on the {feed} feed", provider=NAME)
        limit = build.sip_recent_limit(self._clock())
        if end > limit and limit > request.start:
            note = (
                f"alpaca refused recent SIP data for {request.symbol}: end clamped from {end.isoformat()} to {limit.isoformat()} "
                f"(the plan serves SIP up to 15 minutes ago); bars after {limit.isoformat()} are not in this result"
            )
            _log.warning(
                "alpaca refused recent SIP data; end clamped",
                symbol=request.symbol,
                timeframe=request.timeframe,
                requested_end=end.isoformat(),
                served_end=limit.isoformat(),
            )
            notes.append(note)
            return "sip", limit
        note = (
            f"alpaca refused recent SIP data for {request.symbol}: feed switched from sip to iex for "
            f"{request.start.isoformat()}..{request.end.isoformat()}; volumes are IEX-only, not consolidated"
        )
        _log.warning(
            "alpaca refused recent SIP data; feed switched to iex",
            symbol=request.symbol,
            timeframe=request.timeframe,
            start=request.start.isoformat(),
            end=request.end.isoformat(),
        )
        notes.append(note)
        return "iex", request.end

    def _all_pages(self, client: _Client, request: BarRequest, *, feed: str, end: datetime) -> tuple[list[Mapping[str, Any]], int]:
        rows: list[Mapping[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        calls = 0
        while True:
            query = build.bars_query(request, feed=feed, end=end, page_token=token)
            calls += 1
            try:
                payload = self._get(client, query, symbol=request.symbol)
            except _RecentSipRefused:
                raise _RecentSipRefused(calls) from None
            try:
                page, token = mappings.page_bars(payload, request.symbol)
            except MalformedPayload as exc:
                raise MalformedPayload(f"{exc} (page {calls})", provider=NAME) from None
            rows.extend(page)
            if token is None:
                return rows, calls
            if token in seen or calls >= MAX_PAGES:
                raise MalformedPayload(
                    f"Alpaca paging does not end: page {calls} repeats or exceeds the page limit (token {token[:16]!r}...)", provider=NAME
                )
            seen.add(token)

    def _get(self, client: _Client, query: dict[str, str], *, symbol: str, path: str = BARS_PATH) -> Any:
        try:
            return client.get(path, query)
        except APIError as exc:
            status = exc.status_code
            message = mappings.error_message(str(exc))
            if mappings.is_recent_sip_refusal(status, message):
                raise _RecentSipRefused from None
            headers = exc.response.headers if exc.response is not None else {}
            raise mappings.error_for(status, message, symbol=symbol, retry_after_s=mappings.retry_after_s(headers, self._clock())) from None
        except requests.exceptions.JSONDecodeError as exc:
            raise MalformedPayload(f"Alpaca bars page is not JSON: {exc}", provider=NAME) from None
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
            raise ProviderUnavailable(f"Alpaca unreachable at {self._data_url}: {type(exc).__name__}", provider=NAME) from exc
        except requests.exceptions.RequestException as exc:
            raise ProviderUnavailable(f"Alpaca request failed: {type(exc).__name__}: {exc}", provider=NAME) from exc


def from_settings(settings: Settings, *, clock: Callable[[], datetime] | None = None, timeout_s: float = 30.0) -> AlpacaBars:
    """The Alpaca adapter for ``settings.alpaca`` (keys, data_url); unavailable when a key is missing."""
    alpaca = settings.alpaca
    return AlpacaBars(
        api_key=alpaca.api_key.get_secret_value() if alpaca.api_key else None,
        secret_key=alpaca.secret_key.get_secret_value() if alpaca.secret_key else None,
        data_url=alpaca.data_url,
        timeout_s=timeout_s,
        clock=clock or (lambda: datetime.now(UTC)),
    )


__all__ = ["CAPABILITIES", "AlpacaBars", "from_settings"]
