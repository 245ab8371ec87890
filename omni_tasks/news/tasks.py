"""News tasks: the daily fan-out over the configured symbols, and one fetch per symbol."""

from __future__ import annotations

from typing import Any

import structlog

from omni_tasks.core.runtime import get_runtime
from omni_tasks.marketdata.errors import RateLimited
from omni_tasks.pipeline.context import current_retries
from omni_tasks.pipeline.queues import Queue
from omni_tasks.pipeline.taskdef import omni_task

_log = structlog.get_logger("omni.news")
MAX_RETRIES = 3


@omni_task(
    name="omni.news.fetch", queue=Queue.BACKFILL, soft_time_limit_s=120, time_limit_s=180, max_retries=MAX_RETRIES, retry_backoff_max_s=300
)
def fetch(symbol: str) -> dict[str, Any]:
    """Fetch and store one symbol's news sentiment (Alpha Vantage), within the shared limits."""
    from omni_tasks.contracts.bars import check_symbol
    from omni_tasks.marketdata.providers.alpha_vantage import client as alpha_vantage
    from omni_tasks.marketdata.providers.alpha_vantage import news as alpha_vantage_news
    from omni_tasks.marketdata.ratelimit import RateLimiter
    from omni_tasks.news.fetch import Budget, FetchOutcome, fetch_symbol

    runtime = get_runtime()
    settings = runtime.settings
    caps = alpha_vantage.capabilities(settings.alpha_vantage.daily_quota, settings.alpha_vantage.calls_per_window)
    symbol = check_symbol(symbol)
    try:
        outcome = fetch_symbol(
            symbol,
            client=alpha_vantage_news.from_settings(settings),
            factory=runtime.sessions,
            limiter=RateLimiter(runtime.redis, window_s=settings.providers.rate_window_s),
            budget=Budget(per_min=caps.rate_limit_per_min, daily_quota=caps.daily_quota),
            limit=settings.news.limit,
            lookback_days=settings.news.lookback_days,
        )
    except RateLimited as exc:
        if current_retries() >= MAX_RETRIES:
            # Waiting is not failing: the next daily run picks the symbol up.
            return FetchOutcome(symbol, "deferred", None, detail=str(exc)).as_dict()
        raise
    return outcome.as_dict()


@omni_task(name="omni.news.daily", queue=Queue.BACKFILL, soft_time_limit_s=60, time_limit_s=120, max_retries=1)
def daily() -> dict[str, Any]:
    """Enqueue one news fetch per configured symbol (OMNI_NEWS_SYMBOLS, else the backfill universe), capped per run."""
    from omni_tasks.marketdata.universe import load_universe

    runtime = get_runtime()
    settings = runtime.settings
    if settings.alpha_vantage.api_key is None:
        _log.info("news skipped: no Alpha Vantage key (OMNI_ALPHA_VANTAGE_API_KEY)")
        return {"enqueued": 0, "skipped": "no Alpha Vantage key"}
    symbols = list(settings.news.symbols) or load_universe(settings.backfill.universe_file, settings.backfill.universe)
    chosen = symbols[: settings.news.max_symbols_per_run]
    for symbol in chosen:
        fetch.apply_async(args=[symbol])
    _log.info("news fetches enqueued", symbols=len(chosen), left_out=len(symbols) - len(chosen))
    return {"enqueued": len(chosen), "left_out": len(symbols) - len(chosen)}
