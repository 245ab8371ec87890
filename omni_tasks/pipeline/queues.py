"""The queues of the pipeline. A typo in a queue name fails loudly: missing queues are off."""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    SCANS = "scans"
    BACKFILL = "backfill"
    VALIDATION = "validation"
    RISK = "risk"
    WATCHDOG = "watchdog"
    ORDERS = "orders"


ALL_QUEUES: tuple[Queue, ...] = tuple(Queue)


def queue_of(routing_key: str | None) -> str | None:
    """The queue a routing key names. On RabbitMQ a countdown travels Celery's delay exchanges with
    ``<delay bits>.<queue>`` as its routing key (queue names have no dots): the queue is its last part."""
    return routing_key.rsplit(".", 1)[-1] if routing_key else routing_key
