"""Build the market-data objects from settings: the router (providers, breakers, limiter) and the store."""

from __future__ import annotations

from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.marketdata.ratelimit import RateLimiter
from omni_tasks.marketdata.router import BarRouter, build_providers
from omni_tasks.marketdata.series import SeriesCache
from omni_tasks.safety.breaker import BreakerPolicy, CircuitBreaker
from omni_tasks.safety.reporting import audit_transitions
from omni_tasks.settings import Settings


def build_router(settings: Settings, client: redis.Redis, factory: sessionmaker[Session] | None) -> BarRouter:
    hook = audit_transitions(factory, settings=settings, client=client)
    policy = BreakerPolicy()

    def breaker_for(name: str) -> CircuitBreaker:
        return CircuitBreaker(f"provider:{name}", client, policy, fail_open=True, on_transition=hook)

    return BarRouter(
        build_providers(settings.providers.order, settings),
        breaker_for=breaker_for,
        limiter=RateLimiter(client, window_s=settings.providers.rate_window_s),
        series=SeriesCache(client, ttl_s=settings.providers.series_cache_s),
        max_refusals=settings.providers.max_refusals,
        rate_wait_max_s=settings.providers.rate_wait_max_s,
    )


def build_store(engine: Engine) -> Any:
    from omni_tasks.storage.bars import BarStore

    return BarStore(engine)
