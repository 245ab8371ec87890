"""Operations on the Celery broker itself (kombu): ping it, purge a queue, give unacknowledged messages back.

Domain code asks for these callables and never imports kombu; the kill switch purges the orders queue
with :func:`orders_purger`, the watchdog's dead-worker sweep restores with :func:`kombu_restorer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from omni_tasks.core.keys import KOMBU_UNACKED_KEY


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
