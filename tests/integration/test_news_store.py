"""News sentiment end to end on real databases (SQLite and PostgreSQL) and the real shared limiter (Redis):
the real alpha_vantage client against a local stand-in in the real format, stored idempotently, incremental,
quota-aware (a used-up daily quota defers, it never calls), and a rate-limit body stores nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core.keys import QUOTA_KEY
from omni_tasks.marketdata.errors import RateLimited
from omni_tasks.marketdata.providers.alpha_vantage.news import AlphaVantageNews
from omni_tasks.marketdata.ratelimit import RateLimiter
from omni_tasks.news.fetch import Budget, fetch_symbol
from omni_tasks.news.store import read_news
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import NewsArticle, NewsTickerSentiment, RejectedRow
from tests.unit.marketdata.providers.conftest import Reply, StandIn, fixture_bytes, running_standin

pytestmark = pytest.mark.services  # the limiter lives in Redis

NOW = datetime(2024, 1, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """The provider stand-in of the unit tests: a local HTTP server answering in the providers' wire formats."""
    with running_standin() as stand:
        yield stand


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'news.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")()
    eng = make_engine(url)
    migrations.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def _reply(name: str) -> Reply:
    return Reply(200, fixture_bytes("alpha_vantage", name))


def _fetch(url: str, factory: sessionmaker[Session], client: redis.Redis, *, quota: int = 25) -> object:
    return fetch_symbol(
        "AAPL",
        client=AlphaVantageNews(api_key="AVNEWSKEY0000042", base_url=url, timeout_s=5.0),
        factory=factory,
        limiter=RateLimiter(client),
        budget=Budget(per_min=5, daily_quota=quota, wait_max_s=0.0),
        lookback_days=7,
        now=NOW,
    )


def _counts(factory: sessionmaker[Session]) -> tuple[int, int]:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(NewsArticle)) or 0, session.scalar(
            select(func.count()).select_from(NewsTickerSentiment)
        ) or 0


def test_news_fetched_twice_stores_each_article_and_ticker_once_and_reads_back_newest_first(
    standin: StandIn, factory: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    standin.route("/query", _reply("news_sentiment_AAPL.json"))

    first = _fetch(standin.url, factory, redis_client)
    after_first = _counts(factory)
    second = _fetch(standin.url, factory, redis_client)
    after_second = _counts(factory)

    print(
        f"articles after one fetch: {after_first[0]}, after two: {after_second[0]} (N=3 in the answer); ticker rows {after_first[1]} -> {after_second[1]} (N=6)"
    )
    assert (first.status, first.inserted, first.updated) == ("stored", 3, 0)  # type: ignore[attr-defined]
    assert (second.inserted, second.updated) == (0, 3)  # type: ignore[attr-defined]
    assert after_first == after_second == (3, 6)
    # The first call had no stored news: 7 days back; the second starts at the newest stored AAPL article's minute.
    assert standin.seen[0].query["time_from"] == "20231228T1200"
    assert standin.seen[1].query["time_from"] == "20240103T1205"
    rows = read_news(factory, "AAPL", limit=10)
    assert [r["source"] for r in rows] == ["Zacks Commentary", "Motley Fool", "Benzinga"]
    assert rows[2]["ticker_sentiment_score"] == pytest.approx(-0.392415)
    assert rows[2]["relevance_score"] == pytest.approx(0.857612)
    assert rows[2]["overall_sentiment_label"] == "Somewhat-Bearish"
    assert rows[0]["published_at"] == "2024-01-03T12:05:00+00:00"
    assert [r["ticker"] for r in read_news(factory, "CRYPTO:BTC")] == ["CRYPTO:BTC"]
    assert int(redis_client.get(QUOTA_KEY.format(provider="alpha_vantage", day=datetime.now(tz=UTC).strftime("%Y-%m-%d"))) or 0) == 2


def test_news_used_up_daily_quota_defers_without_calling_the_provider(
    standin: StandIn, factory: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    standin.route("/query", _reply("news_sentiment_AAPL.json"))

    calls_made = [_fetch(standin.url, factory, redis_client, quota=1).status for _ in range(3)]  # type: ignore[attr-defined]

    print(f"provider calls with a quota of 1: {len(standin.seen)} of 3 fetches; outcomes {calls_made}")
    assert calls_made == ["stored", "deferred", "deferred"]
    assert len(standin.seen) == 1


def test_news_rate_limit_body_raises_and_stores_nothing(
    standin: StandIn, factory: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    standin.route("/query", _reply("information_rate_limit.json"))

    with pytest.raises(RateLimited):
        _fetch(standin.url, factory, redis_client)

    assert _counts(factory) == (0, 0)


def test_news_unreadable_article_is_kept_in_rejected_rows_with_its_reason(
    standin: StandIn, factory: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    standin.route("/query", _reply("news_sentiment_one_bad_score.json"))

    outcome = _fetch(standin.url, factory, redis_client)

    assert (outcome.inserted, outcome.rejected) == (1, 1)  # type: ignore[attr-defined]
    with factory() as session:
        (row,) = session.scalars(select(RejectedRow)).all()
    assert (row.timeframe, row.feed, row.provider, row.symbol) == ("news", "news", "alpha_vantage", "AAPL")
    assert "relevance_score is not a number" in row.reason
    assert row.payload["article"]["url"] == "https://www.example-news.com/garbled"
