"""Worker topology as code: one module per worker kind."""

from __future__ import annotations

from workers import backfill, orders, risk, scans, validation, watchdog
from workers.base import WorkerKind

KINDS: dict[str, WorkerKind] = {
    kind.name: kind
    for kind in (scans.KIND, backfill.KIND, validation.KIND, risk.KIND, watchdog.KIND, orders.KIND)
}

__all__ = ["KINDS", "WorkerKind"]
