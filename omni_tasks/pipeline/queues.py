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
