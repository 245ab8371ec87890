"""The Celery broker itself: its transport options, queue depths and waits, ping, purge a queue, give unacknowledged messages back.

Domain code asks for these callables and never imports kombu; the kill switch purges the orders queue
with :func:`orders_purger`, the watchdog's dead-worker sweep restores with :func:`kombu_restorer`,
``omni status``, ``/health`` and the metrics read :func:`queue_depths` (Redis lists, or a passive
``queue_declare`` on RabbitMQ, whose own topology lives in :mod:`omni_tasks.pipeline.rabbit`). kombu is imported inside
the functions that talk to a broker, so importing this module stays light.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis

from omni_tasks.core.keys import KOMBU_UNACKED_KEY
from omni_tasks.pipeline.headers import SENT_AT_HEADER

if TYPE_CHECKING:
    from omni_tasks.settings import Settings

# kombu's Redis transport keeps priorities in sibling lists: name, name\x06\x163, ...
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://", "unix://"))


def is_amqp_url(url: str) -> bool:
    return url.startswith(("amqp", "pyamqp"))


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Redis: visibility timeout and a fast unacked-restore sweep. AMQP: publisher confirms (a publish returns once the broker has it)."""
    if is_amqp_url(settings.broker_url):
        return {"confirm_publish": True, "connect_timeout": 5}
    if not is_redis_url(settings.broker_url):
        return {}
    return {
        "visibility_timeout": settings.broker.visibility_timeout_s,
        # kombu sweeps for expired unacked messages every interval*throttle
        # seconds (10*10 = 100 s by default); sweep every few seconds instead.
        "unacked_restore_interval": settings.broker.restore_sweep_s,
        "unacked_restore_throttle": 1,
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
    }


def queue_depths(client: redis.Redis, broker_url: str, queues: Iterable[str]) -> tuple[dict[str, int], dict[str, float]]:
    """(messages waiting per queue, age in seconds of the oldest waiting message per queue).

    A RabbitMQ broker is asked through kombu (a passive ``queue_declare`` per
    queue: the messages ready, as the Redis lists hold; the oldest wait is not
    readable there: empty); a Redis broker is read from its lists with ``client``.
    """
    names = list(queues)
    if is_amqp_url(broker_url):
        return amqp_queue_depths(broker_url, names), {}
    return redis_queue_depths(client, names), redis_oldest_wait(client, names)


def redis_queue_depths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for name in names:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(name + suffix)
    lengths = pipe.execute()
    step = len(PRIORITY_SUFFIXES)
    return {name: int(sum(lengths[i * step : (i + 1) * step])) for i, name in enumerate(names)}


def redis_oldest_wait(client: redis.Redis, queues: Iterable[str], now: float | None = None) -> dict[str, float]:
    """Age in seconds of the oldest waiting message per queue (kombu pops from the right)."""
    now = time.time() if now is None else now
    out: dict[str, float] = {}
    for name in queues:
        raw = client.lindex(name, -1)
        if raw is None:
            continue
        try:
            headers = json.loads(raw).get("headers") or {}
            sent_at = headers.get(SENT_AT_HEADER)
        except (ValueError, AttributeError):
            sent_at = None
        if sent_at is not None:
            out[name] = max(0.0, now - float(sent_at))
    return out


def amqp_queue_depths(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
    from kombu import Connection

    out: dict[str, int] = {}
    with Connection(broker_url, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            for name in queues:
                try:
                    _, count, _ = channel.queue_declare(queue=name, passive=True)
                    out[name] = int(count)
                except Exception:  # noqa: BLE001 - a queue not yet declared has no messages
                    channel = connection.channel()
                    out[name] = 0
        finally:
            channel.close()
    return out


def ping(broker_url: str, timeout_s: float = 3.0) -> None:
    """Connect to the broker once; raises when it does not answer within ``timeout_s``."""
    from kombu import Connection

    with Connection(broker_url, connect_timeout=timeout_s) as connection:
        connection.ensure_connection(max_retries=1)


def orders_purger(broker_url: str, queue_name: str, transport_options: dict[str, Any] | None = None) -> Callable[[], int]:
    """A callable that purges ``queue_name`` on the Celery broker (kombu) and returns how many messages it dropped."""

    def purge() -> int:
        from kombu import Connection

        with Connection(broker_url, transport_options=transport_options or {}, connect_timeout=5) as connection:
            channel = connection.default_channel
            try:
                return int(channel.queue_purge(queue_name) or 0)
            except Exception as exc:  # a queue never declared has nothing to purge
                if "NOT_FOUND" in str(exc) or "no queue" in str(exc).lower():
                    return 0
                raise

    return purge


def kombu_restorer(broker_url: str, transport_options: dict[str, Any]) -> Callable[[Iterable[str]], int]:
    """A ``restore`` callable for :func:`sweep_dead` that uses kombu's own restore path (Redis brokers)."""
    from kombu import Connection

    def restore(tags: Iterable[str]) -> int:
        count = 0
        with Connection(broker_url, transport_options=transport_options) as connection:
            channel = connection.default_channel
            client = channel.client
            for tag in tags:
                if client.hexists(KOMBU_UNACKED_KEY, tag):
                    channel.qos.restore_by_tag(tag, leftmost=True)
                    count += 1
        return count

    return restore
