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


def _largest(time_limits: Iterable[tuple[str, float]]) -> tuple[str, float] | None:
    limits = list(time_limits)
    return max(limits, key=lambda item: item[1]) if limits else None


def check_consumer_timeout(
    consumer_timeout_s: float, time_limits: Iterable[tuple[str, float]], *, source: str = "OMNI_BROKER_CONSUMER_TIMEOUT_S"
) -> None:
    """RabbitMQ closes the channel of a delivery unacknowledged past its consumer timeout: a task still running would run twice."""
    largest = _largest(time_limits)
    if largest is None:
        return
    name, limit = largest
    if consumer_timeout_s <= limit:
        raise BootRefused(
            f"RabbitMQ consumer timeout {consumer_timeout_s:g} s ({source}) is not above the largest task time limit "
            f"({name}: {limit:g} s): such a task would run twice. Raise consumer_timeout in rabbitmq.conf and OMNI_BROKER_CONSUMER_TIMEOUT_S."
        )


def check_delivery_limit(max_deliveries: int, delivery_limit: int) -> None:
    """The task's own dead-lettering (recorded in the ledger) must come before the broker's silent one."""
    if max_deliveries > delivery_limit:
        raise BootRefused(
            f"OMNI_BROKER_MAX_DELIVERIES={max_deliveries} is above the quorum queues' delivery limit ({delivery_limit}): "
            "the broker would dead-letter a task before the ledger records it. Lower OMNI_BROKER_MAX_DELIVERIES."
        )


def check_rabbitmq(
    broker_url: str, consumer_timeout_s: int, max_deliveries: int, management_url: str | None, time_limits: Iterable[tuple[str, float]]
) -> str:
    """RabbitMQ as the broker: safe timeouts and limits, reachable, the queues declared as quorum queues. Returns the broker's version."""
    from omni_tasks.pipeline import rabbit

    limits = list(time_limits)
    where = broker_url.split("@")[-1]
    check_consumer_timeout(consumer_timeout_s, limits)
    check_delivery_limit(max_deliveries, rabbit.DELIVERY_LIMIT)
    try:
        version = rabbit.declare_topology(broker_url, consumer_timeout_s)
    except Exception as exc:  # noqa: BLE001 - kombu/amqp errors and OSError alike: one line
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "PRECONDITION_FAILED" in text:
            raise BootRefused(
                f"RabbitMQ at {where}: a pipeline queue exists with other arguments ({text}); "
                "they must be quorum queues with the pipeline's arguments: use a new vhost or move the old queues' messages and delete them"
            ) from None
        raise BootRefused(f"RabbitMQ at {where} is unreachable or refused the pipeline's queues: {text}") from None
    if management_url:
        try:
            rows = rabbit.management_get(management_url, broker_url, f"queues/{rabbit.quote_vhost(broker_url)}")
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, bad JSON: one line
            raise BootRefused(
                f"RabbitMQ management API at {management_url} does not answer ({exc}); unset OMNI_BROKER_MANAGEMENT_URL where it is not enabled"
            ) from None
        ours = {q: t for q, t in rabbit.effective_consumer_timeouts_s(rows).items() if q in rabbit.pipeline_queue_names()}
        if rabbit.consumer_timeout_is_per_queue(version):
            for queue, timeout_s in sorted(ours.items()):
                check_consumer_timeout(timeout_s, limits, source=f"queue {queue} on the broker")
    return version
