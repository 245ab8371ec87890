"""Alpha Vantage's NEWS_SENTIMENT wire format, read by pure functions.

An answer is::

    {"items": "50",
     "sentiment_score_definition": "x <= -0.35: Bearish; -0.35 < x <= -0.15: Somewhat-Bearish; ...",
     "relevance_score_definition": "0 < x <= 1, with a higher score indicating higher relevance.",
     "feed": [{"title": "...", "url": "https://...", "time_published": "20240102T153000",
               "authors": ["..."], "summary": "...", "banner_image": "https://..." | null,
               "source": "Benzinga", "category_within_source": "News", "source_domain": "www.benzinga.com",
               "topics": [{"topic": "Technology", "relevance_score": "0.5"}],
               "overall_sentiment_score": 0.168117, "overall_sentiment_label": "Somewhat-Bullish",
               "ticker_sentiment": [{"ticker": "AAPL", "relevance_score": "0.214937",
                                     "ticker_sentiment_score": "0.008373", "ticker_sentiment_label": "Neutral"}]}, ...]}

``items`` and the per-ticker and topic scores are strings; the overall score
is a number. ``time_published`` is ``YYYYMMDDTHHMMSS`` without a zone (read in
the configured zone, UTC by default; a trailing ``Z`` means UTC). An article
that cannot be read (no URL, no time, a score that is not a number) is
rejected with its reason, never silently dropped; the others are kept. The
HTTP 200 bodies that are not data (``Note``, ``Information``, ``Error
Message``) are mapped before this module sees the answer
(:func:`.mappings.body_error`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from omni_tasks.marketdata.errors import MalformedPayload

PROVIDER: Final = "alpha_vantage"
#: time_published layouts by length (strptime alone would read "T1659" as 16:05:09).
_TIME_FORMATS: Final = {15: "%Y%m%dT%H%M%S", 13: "%Y%m%dT%H%M"}


@dataclass(frozen=True)
class TickerSentiment:
    """How one article relates to one ticker: relevance 0..1, sentiment -1..+1 (the provider's scores)."""

    ticker: str
    relevance_score: float | None
    sentiment_score: float | None
    sentiment_label: str | None


@dataclass(frozen=True)
class NewsItem:
    """One article as stored: provenance (source, URL, time), overall and per-ticker sentiment."""

    url: str
    title: str
    published_at: datetime
    source: str
    summary: str | None = None
    source_domain: str | None = None
    category: str | None = None
    authors: list[str] = field(default_factory=list)
    topics: list[dict[str, Any]] = field(default_factory=list)
    banner_image: str | None = None
    overall_sentiment_score: float | None = None
    overall_sentiment_label: str | None = None
    tickers: list[TickerSentiment] = field(default_factory=list)


@dataclass(frozen=True)
class RejectedItem:
    """An article that could not be read: its position in the feed, the reason and the raw object."""

    index: int
    reason: str
    raw: Any


def news_feed(payload: Any, *, time_zone: str = "UTC") -> tuple[list[NewsItem], list[RejectedItem], int | None]:
    """(articles, rejected, items) of one NEWS_SENTIMENT answer. MalformedPayload when there is no ``feed`` list."""
    if not isinstance(payload, Mapping):
        raise MalformedPayload(f"Alpha Vantage news answer is not a JSON object (got {type(payload).__name__})", provider=PROVIDER)
    feed = payload.get("feed")
    if not isinstance(feed, list):
        keys = ", ".join(map(str, payload)) or "none"
        raise MalformedPayload(f"Alpha Vantage news answer has no 'feed' list (keys: {keys})", provider=PROVIDER)
    zone = ZoneInfo(time_zone)
    articles: list[NewsItem] = []
    rejected: list[RejectedItem] = []
    for index, raw in enumerate(feed):
        try:
            articles.append(news_item(raw, zone=zone))
        except MalformedPayload as exc:
            rejected.append(RejectedItem(index, str(exc), raw))
    return articles, rejected, _items(payload.get("items"))


def news_item(raw: Any, *, zone: ZoneInfo) -> NewsItem:
    """One ``feed`` object as a NewsItem; MalformedPayload naming the field that cannot be read."""
    if not isinstance(raw, Mapping):
        raise MalformedPayload(f"news article is not an object (got {type(raw).__name__})", provider=PROVIDER)
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise MalformedPayload(f"news article has no http(s) url (got {url!r})", provider=PROVIDER)
    title = raw.get("title")
    if not isinstance(title, str) or not title.strip():
        raise MalformedPayload(f"news article {url} has no title", provider=PROVIDER)
    published = published_at(raw.get("time_published"), zone=zone, url=url)
    tickers = []
    for entry in raw.get("ticker_sentiment") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("ticker"), str) or not entry["ticker"]:
            raise MalformedPayload(f"news article {url}: a ticker_sentiment entry has no ticker", provider=PROVIDER)
        tickers.append(
            TickerSentiment(
                ticker=entry["ticker"].strip().upper()[:40],
                relevance_score=score(entry.get("relevance_score"), what=f"{url} {entry['ticker']} relevance_score"),
                sentiment_score=score(entry.get("ticker_sentiment_score"), what=f"{url} {entry['ticker']} ticker_sentiment_score"),
                sentiment_label=_text(entry.get("ticker_sentiment_label")),
            )
        )
    topics = [
        {"topic": str(t.get("topic")), "relevance_score": score(t.get("relevance_score"), what=f"{url} topic relevance_score")}
        for t in raw.get("topics") or []
        if isinstance(t, Mapping) and t.get("topic")
    ]
    authors = [str(a) for a in raw.get("authors") or [] if a]
    return NewsItem(
        url=url,
        title=title.strip(),
        published_at=published,
        source=_text(raw.get("source")) or _text(raw.get("source_domain")) or "unknown",
        summary=_text(raw.get("summary")),
        source_domain=_text(raw.get("source_domain")),
        category=_text(raw.get("category_within_source")),
        authors=authors,
        topics=topics,
        banner_image=_text(raw.get("banner_image")),
        overall_sentiment_score=score(raw.get("overall_sentiment_score"), what=f"{url} overall_sentiment_score"),
        overall_sentiment_label=_text(raw.get("overall_sentiment_label")),
        tickers=tickers,
    )


def published_at(value: Any, *, zone: ZoneInfo, url: str = "") -> datetime:
    """``time_published`` (``YYYYMMDDTHHMMSS``, read in ``zone``; a trailing ``Z`` is UTC) as an aware UTC datetime."""
    if not isinstance(value, str) or not value.strip():
        raise MalformedPayload(f"news article {url} has no time_published", provider=PROVIDER)
    text = value.strip()
    at = UTC if text.endswith("Z") else zone
    text = text.rstrip("Z")
    fmt = _TIME_FORMATS.get(len(text))
    if fmt is not None:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=at).astimezone(UTC)  # the zone is set right here
        except ValueError:
            pass
    raise MalformedPayload(f"news article {url}: time_published {value!r} is not YYYYMMDDTHHMMSS", provider=PROVIDER)


def score(value: Any, *, what: str) -> float | None:
    """A score sent as a string or a number; None when absent; MalformedPayload when it is not a finite number."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise MalformedPayload(f"news {what} is not a number: {value!r}", provider=PROVIDER)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MalformedPayload(f"news {what} is not a number: {value!r}", provider=PROVIDER) from None
    if not math.isfinite(number):
        raise MalformedPayload(f"news {what} is not finite: {value!r}", provider=PROVIDER)
    return number


def _items(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
