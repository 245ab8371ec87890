"""Stored news: articles (one per provider and URL) and their per-ticker sentiment (one per article and ticker).

Writing the same article twice updates it (the provider rescored it, or two
symbols' fetches both saw it): ``INSERT ... ON CONFLICT DO UPDATE`` on
PostgreSQL and SQLite alike, so concurrent fetches never collide. Articles
that could not be read go to ``rejected_rows`` (timeframe and feed ``news``)
with their reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.marketdata.providers.alpha_vantage.news_mappings import NewsItem, RejectedItem
from omni_tasks.storage.models import NewsArticle, NewsTickerSentiment, RejectedRow

#: rejected_rows.timeframe / feed of a news article that could not be read.
REJECTED_KIND: Final = "news"
_ARTICLE_UPDATES: Final = (
    "title",
    "summary",
    "source",
    "source_domain",
    "category",
    "authors",
    "topics",
    "banner_image",
    "published_at",
    "overall_sentiment_score",
    "overall_sentiment_label",
    "fetched_at",
)


@dataclass(frozen=True)
class Stored:
    """What one write did: articles new and already known, ticker rows written, rejected articles kept."""

    inserted: int
    updated: int
    ticker_rows: int
    rejected: int


def store_articles(
    factory: sessionmaker[Session],
    provider: str,
    articles: Sequence[NewsItem],
    *,
    fetched_at: datetime,
    symbol: str,
    rejected: Sequence[RejectedItem] = (),
) -> Stored:
    """Upsert ``articles`` of ``provider`` and their ticker sentiment in one transaction; keep ``rejected`` with reasons."""
    unique = {a.url: a for a in articles}  # the same URL twice in one answer: the last one wins
    with factory() as session, session.begin():
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        known = (
            set(session.scalars(select(NewsArticle.url).where(NewsArticle.provider == provider, NewsArticle.url.in_(list(unique)))))
            if unique
            else set()
        )
        ids: dict[str, int] = {}
        for article in unique.values():
            values = _article_row(provider, article, fetched_at)
            stmt = dialect.insert(NewsArticle).values(**values)
            stmt = stmt.on_conflict_do_update(
                index_elements=["provider", "url"], set_={c: getattr(stmt.excluded, c) for c in _ARTICLE_UPDATES}
            ).returning(NewsArticle.id)
            ids[article.url] = int(session.execute(stmt).scalar_one())
        rows = [
            {
                "article_id": ids[a.url],
                "ticker": t.ticker,
                "relevance_score": t.relevance_score,
                "sentiment_score": t.sentiment_score,
                "sentiment_label": t.sentiment_label,
            }
            for a in unique.values()
            for t in {t.ticker: t for t in a.tickers}.values()
        ]
        if rows:
            stmt = dialect.insert(NewsTickerSentiment)
            session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["article_id", "ticker"],
                    set_={c: getattr(stmt.excluded, c) for c in ("relevance_score", "sentiment_score", "sentiment_label")},
                ),
                rows,
            )
        if rejected:
            session.execute(
                insert(RejectedRow),
                [
                    {
                        "created_at": fetched_at,
                        "symbol": symbol,
                        "timeframe": REJECTED_KIND,
                        "ts": None,
                        "provider": provider,
                        "feed": REJECTED_KIND,
                        "reason": r.reason[:4000],
                        "payload": {"index": r.index, "article": _jsonable(r.raw)},
                        "partition_id": None,
                        "stage": "ingest",
                    }
                    for r in rejected
                ],
            )
    return Stored(
        inserted=len(unique) - len(known & set(unique)), updated=len(known & set(unique)), ticker_rows=len(rows), rejected=len(rejected)
    )


def latest_published(factory: sessionmaker[Session], provider: str, ticker: str) -> datetime | None:
    """The newest stored article of ``provider`` about ``ticker`` (UTC), or None."""
    with factory() as session:
        return session.scalar(
            select(func.max(NewsArticle.published_at))
            .join(NewsTickerSentiment, NewsTickerSentiment.article_id == NewsArticle.id)
            .where(NewsArticle.provider == provider, NewsTickerSentiment.ticker == ticker)
        )


def read_news(factory: sessionmaker[Session], ticker: str, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` stored articles about ``ticker``, with the article's overall and this ticker's sentiment."""
    with factory() as session:
        rows = session.execute(
            select(NewsArticle, NewsTickerSentiment)
            .join(NewsTickerSentiment, NewsTickerSentiment.article_id == NewsArticle.id)
            .where(NewsTickerSentiment.ticker == ticker)
            .order_by(NewsArticle.published_at.desc(), NewsArticle.id.desc())
            .limit(limit)
        ).all()
        return [
            {
                "published_at": a.published_at.isoformat(),
                "provider": a.provider,
                "source": a.source,
                "title": a.title,
                "url": a.url,
                "overall_sentiment_score": a.overall_sentiment_score,
                "overall_sentiment_label": a.overall_sentiment_label,
                "ticker": t.ticker,
                "ticker_sentiment_score": t.sentiment_score,
                "ticker_sentiment_label": t.sentiment_label,
                "relevance_score": t.relevance_score,
                "topics": [x.get("topic") for x in a.topics or []],
            }
            for a, t in rows
        ]


def _article_row(provider: str, a: NewsItem, fetched_at: datetime) -> dict[str, Any]:
    return {
        "provider": provider,
        "url": a.url[:2048],
        "title": a.title,
        "summary": a.summary,
        "source": a.source[:200],
        "source_domain": (a.source_domain or "")[:200] or None,
        "category": (a.category or "")[:200] or None,
        "authors": list(a.authors),
        "topics": list(a.topics),
        "banner_image": a.banner_image,
        "published_at": a.published_at,
        "overall_sentiment_score": a.overall_sentiment_score,
        "overall_sentiment_label": a.overall_sentiment_label,
        "fetched_at": fetched_at,
    }


def _jsonable(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if depth > 6:
        return repr(value)[:200]
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    return repr(value)[:200]
