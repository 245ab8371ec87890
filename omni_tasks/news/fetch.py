"""Fetch one symbol's news within the provider's shared rate limit and daily quota, and store it.

Incremental: from the newest stored article about the symbol (to the minute,
so the article at that minute is read again and updated, never lost), or
``lookback_days`` back for a symbol without stored news. A call waits for a
slot of the shared per-minute window (up to ``rate_wait_max_s``) and takes
one unit of the daily quota first: the same counters the bar router uses for
Alpha Vantage, so news and bars share one key's budget. A used-up quota
defers the symbol (status ``deferred``), it does not fail it; a provider's
rate-limit body (``Note``/``Information``) raises RateLimited for the task to
retry later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.marketdata.errors import RateLimited
from omni_tasks.marketdata.providers.alpha_vantage.news import NewsPage
from omni_tasks.marketdata.ratelimit import RateLimiter
from omni_tasks.news import store

_log = structlog.get_logger("omni.news")


class NewsClient(Protocol):
    """What :func:`fetch_symbol` needs from a news provider (:class:`AlphaVantageNews`)."""

    name: str

    def available(self) -> bool: ...

    def fetch(self, symbol: str, *, time_from: datetime | None = None, limit: int = 50, sort: str = "LATEST") -> NewsPage: ...


@dataclass(frozen=True)
class Budget:
    """The provider's limits as the shared limiter enforces them: calls per minute, calls per day."""

    per_min: int
    daily_quota: int | None
    wait_max_s: float = 60.0


@dataclass(frozen=True)
class FetchOutcome:
    symbol: str
    status: str  # stored, deferred, skipped
    time_from: str | None
    articles: int = 0
    inserted: int = 0
    updated: int = 0
    ticker_rows: int = 0
    rejected: int = 0
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fetch_symbol(
    symbol: str,
    *,
    client: NewsClient,
    factory: sessionmaker[Session],
    limiter: RateLimiter | None,
    budget: Budget,
    limit: int = 50,
    lookback_days: int = 7,
    now: datetime | None = None,
) -> FetchOutcome:
    """Fetch and store ``symbol``'s news since the last stored article. Raises RateLimited when the window is full."""
    now = now or datetime.now(tz=UTC)
    if not client.available():
        return FetchOutcome(symbol, "skipped", None, detail=f"{client.name}: no key configured")
    latest = store.latest_published(factory, client.name, symbol)
    time_from = latest.replace(second=0, microsecond=0) if latest is not None else now - timedelta(days=lookback_days)
    if limiter is not None:
        limiter.acquire(client.name, budget.per_min, max_wait_s=budget.wait_max_s)
        if budget.daily_quota is not None:
            try:
                limiter.take_quota(client.name, budget.daily_quota)
            except RateLimited as exc:
                _log.warning("news deferred: daily quota used up", symbol=symbol, provider=client.name, detail=str(exc))
                return FetchOutcome(symbol, "deferred", time_from.isoformat(), detail=str(exc))
    page = client.fetch(symbol, time_from=time_from, limit=limit)
    if page.calls > 1 and limiter is not None:
        limiter.charge(client.name, page.calls - 1)
    stored = store.store_articles(factory, client.name, page.articles, fetched_at=now, symbol=symbol, rejected=page.rejected)
    if page.rejected:
        _log.warning("news articles rejected", symbol=symbol, rejected=len(page.rejected), first=page.rejected[0].reason)
    _log.info("news stored", symbol=symbol, articles=len(page.articles), inserted=stored.inserted, updated=stored.updated)
    return FetchOutcome(
        symbol,
        "stored",
        time_from.isoformat(),
        articles=len(page.articles),
        inserted=stored.inserted,
        updated=stored.updated,
        ticker_rows=stored.ticker_rows,
        rejected=stored.rejected,
    )
