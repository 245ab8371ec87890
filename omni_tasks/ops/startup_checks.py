"""Start-up safety checks: refuse to boot rather than lose or duplicate work (DESIGN section 4)."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from omni_tasks.core.errors import BootRefused


def check_visibility_timeout(visibility_timeout_s: float, time_limits: Iterable[tuple[str, float]]) -> None:
    """A task that outlives the broker's visibility timeout is delivered a second time while it runs."""
    limits = list(time_limits)
    if not limits:
        return
    name, largest = max(limits, key=lambda item: item[1])
    if visibility_timeout_s <= largest:
        raise BootRefused(
            f"OMNI_BROKER_VISIBILITY_TIMEOUT_S={visibility_timeout_s:g} is not above the largest task time limit "
            f"({name}: {largest:g} s): such a task would run twice. Raise the visibility timeout."
        )


def check_noeviction(client: redis.Redis) -> None:
    """Redis that evicts keys can drop queued tasks and locks silently."""
    try:
        info = client.info("memory")
    except redis.ResponseError as exc:
        raise BootRefused(
            f"cannot read Redis INFO to verify maxmemory-policy ({exc}); "
            "set OMNI_BROKER_REQUIRE_NOEVICTION=false only if you verified it yourself"
        ) from None
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        raise BootRefused(
            f"Redis maxmemory-policy is {policy!r}: it may evict queued tasks and locks. "
            "Set `maxmemory-policy noeviction` on the Redis server."
        )


def check_redis_reachable(client: redis.Redis, what: str) -> None:
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BootRefused(f"{what} is unreachable: {exc}") from None
