"""Alpha Vantage news sentiment (``NEWS_SENTIMENT``) through the alpha_vantage package's ``AlphaIntelligence``.

The package has the function (``AlphaIntelligence.get_news_sentiment``): it
builds the URL (``function=NEWS_SENTIMENT&tickers=...&time_from=...&sort=...
&limit=...&apikey=...``) and the HTTP step is the adapter's own, shared with
the bars (:class:`.alpha_vantage.RebasedCalls`: re-based onto
``settings.alpha_vantage.base_url``, timeout, status and body checks, so a
``Note``/``Information`` body is a rate limit, never an empty feed). Its last
step is not used: it turns the ``feed`` list into a DataFrame by the position
of each article's values under the first article's keys, which scrambles
articles whose keys differ (a missing ``banner_image``) and drops the
top-level fields. The undecorated call (``get_news_sentiment.__wrapped__``)
returns the checked JSON itself; :mod:`.news_mappings` reads it.

One call per symbol: ``tickers=A,B`` asks for articles mentioning *all* of
them, not either. Each call counts against the key's rate limit and daily
quota like a bar call (the caller takes them from the shared limiter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from alpha_vantage.alphaintelligence import AlphaIntelligence

from omni_tasks.contracts import bars as frames
from omni_tasks.marketdata.errors import AuthenticationFailed, MalformedPayload, UnsupportedRequest
from omni_tasks.marketdata.providers.alpha_vantage import news_mappings as mappings
from omni_tasks.marketdata.providers.alpha_vantage.client import NAME, RebasedCalls
from omni_tasks.marketdata.providers.alpha_vantage.requests import DEFAULT_BASE_URL
from omni_tasks.settings import Settings

FUNCTION: Final = "NEWS_SENTIMENT"
LIMITS: Final = (50, 1000)
SORTS: Final = ("LATEST", "EARLIEST", "RELEVANCE")


class _Intelligence(RebasedCalls, AlphaIntelligence):
    """alpha_vantage's AlphaIntelligence whose HTTP step goes to ``base_url``, with a timeout and status checks."""


#: The library's NEWS_SENTIMENT call without its DataFrame conversion: returns (payload, "feed", None).
_news_call: Callable[..., tuple[Any, Any, Any]] = AlphaIntelligence.get_news_sentiment.__wrapped__


@dataclass(frozen=True)
class NewsPage:
    """One NEWS_SENTIMENT answer: the articles read, the ones that could not be (with the reason), the call count."""

    articles: list[mappings.NewsItem]
    rejected: list[mappings.RejectedItem]
    items: int | None
    calls: int = 1


class AlphaVantageNews:
    """News and sentiment for one symbol at a time from Alpha Vantage."""

    name: str = NAME

    def __init__(self, *, api_key: str | None, base_url: str = DEFAULT_BASE_URL, timeout_s: float = 30.0, time_zone: str = "UTC") -> None:
        """``base_url`` replaces https://www.alphavantage.co; ``time_zone`` is how ``time_published`` is read."""
        self._api_key = api_key or None
        self._base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._time_zone = time_zone

    def __repr__(self) -> str:
        return f"AlphaVantageNews(base_url={self._base_url!r}, key={'set' if self.available() else 'missing'})"

    def available(self) -> bool:
        return self._api_key is not None

    def fetch(self, symbol: str, *, time_from: datetime | None = None, limit: int = 50, sort: str = "LATEST") -> NewsPage:
        """Articles about ``symbol`` published from ``time_from`` (aware; minute precision) on, newest first.

        Raises the provider errors of :mod:`omni_tasks.marketdata.errors`
        (RateLimited for a Note/Information body, UnknownSymbol for "Invalid
        inputs", MalformedPayload for an answer without a ``feed`` list).
        """
        if self._api_key is None:
            raise AuthenticationFailed("no Alpha Vantage key configured (set OMNI_ALPHA_VANTAGE_API_KEY)", provider=NAME)
        try:
            symbol = frames.check_symbol(symbol)
        except ValueError as exc:
            raise UnsupportedRequest(str(exc), provider=NAME) from None
        if limit not in LIMITS:
            raise UnsupportedRequest(f"Alpha Vantage news limit is 50 or 1000, not {limit}", provider=NAME)
        if sort not in SORTS:
            raise UnsupportedRequest(f"Alpha Vantage news sort is one of {', '.join(SORTS)}, not {sort!r}", provider=NAME)
        if time_from is not None and time_from.tzinfo is None:
            raise ValueError("time_from must be timezone-aware")
        client = _Intelligence(self._api_key, base_url=self._base_url, timeout_s=self._timeout_s, symbol=symbol)
        since = time_from.astimezone(UTC).strftime("%Y%m%dT%H%M") if time_from is not None else None
        try:
            payload, _, _ = _news_call(client, tickers=symbol, time_from=since, sort=sort, limit=limit)
        except KeyError as exc:
            raise MalformedPayload(f"Alpha Vantage news answer for {symbol} has no {exc.args[0]!r} key", provider=NAME) from None
        articles, rejected, items = mappings.news_feed(payload, time_zone=self._time_zone)
        return NewsPage(articles, rejected, items, calls=client.calls)


def from_settings(settings: Settings, *, timeout_s: float = 30.0) -> AlphaVantageNews:
    """The news client for ``settings.alpha_vantage`` (key, base_url) reading times in ``settings.news.time_zone``."""
    av = settings.alpha_vantage
    return AlphaVantageNews(
        api_key=av.api_key.get_secret_value() if av.api_key else None,
        base_url=av.base_url,
        timeout_s=timeout_s,
        time_zone=settings.news.time_zone,
    )
