"""One watchdog evaluation: heartbeats, queue depths, dead workers, the outcome ledger.

Plain Python: the task in ``tasks.py`` passes the clients in. The health rules
that trip breakers and engage the kill switch (:mod:`omni_tasks.watchdog.rules`)
run right after, on the same snapshot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core.keys import WATCHDOG_LAST_TICK_KEY
from omni_tasks.pipeline import heartbeats, observe
from omni_tasks.pipeline import outcomes as runs
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.storage.models import WorkerHeartbeat

_log = structlog.get_logger("omni.watchdog")


def record_heartbeats(factory: sessionmaker[Session], workers: list[heartbeats.WorkerInfo]) -> int:
    """Upsert the latest heartbeat of every worker instance into ``worker_heartbeats``."""
    if not workers:
        return 0
    rows = [
        {
            "instance_id": w.instance[:200],
            "hostname": w.hostname[:200],
            "kind": w.kind[:50],
            "queues": ",".join(w.queues)[:200],
            "pid": w.pid,
            "started_at": datetime.fromtimestamp(w.started_at, tz=UTC),
            "last_seen": datetime.fromtimestamp(w.last_seen, tz=UTC),
            "active": w.active,
            "processed": w.processed,
            "version": w.version[:50],
        }
        for w in workers
    ]
    with factory() as session, session.begin():
        dialect = session.get_bind().dialect.name
        module = postgresql if dialect == "postgresql" else sqlite
        stmt = module.insert(WorkerHeartbeat)
        update = {c: getattr(stmt.excluded, c) for c in ("last_seen", "active", "processed", "pid", "queues", "version")}
        session.execute(stmt.on_conflict_do_update(index_elements=["instance_id"], set_=update), rows)
    return len(rows)


def _database_writes(
    factory: sessionmaker[Session], client: redis.Redis, workers: list[heartbeats.WorkerInfo], breaker: CircuitBreaker | None
) -> tuple[int, int, str]:
    """Heartbeats and the outcome drain, inside the database breaker. Returns (recorded, drained, "ok" | why not)."""
    decision = breaker.allow() if breaker is not None else None
    if decision is not None and not decision.allowed:
        _log.warning("database writes skipped: breaker open", reason=decision.reason)
        return 0, 0, f"skipped: {decision.reason}"
    try:
        recorded = record_heartbeats(factory, workers)
        drained = runs.drain_outcomes(client, factory)
    except (OperationalError, DBAPIError) as exc:
        if breaker is not None and decision is not None:
            breaker.record(False, trial=decision.trial)
        _log.error("database writes failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return 0, 0, f"failed: {type(exc).__name__}"
    if breaker is not None and decision is not None:
        breaker.record(True, trial=decision.trial)
    return recorded, drained, "ok"


def tick(
    *,
    client: redis.Redis,
    factory: sessionmaker[Session],
    broker_url: str,
    queues: Iterable[str],
    dead_after_s: float,
    restore: Callable[[Iterable[str]], int] | None,
    database_breaker: CircuitBreaker | None = None,
) -> dict[str, Any]:
    """Run one evaluation and return what it saw and did.

    The database writes (heartbeats, the outcome drain) go through ``database_breaker``:
    while it is open they are skipped (outcomes wait in Redis, nothing is lost) and
    ``summary["database"]`` says so; a failing write is recorded against it.
    """
    started = time.perf_counter()
    swept = heartbeats.sweep_dead(client, dead_after_s=dead_after_s, restore=restore)
    for instance, count in swept.items():
        if restore is None:  # AMQP: the broker itself redelivers a dead consumer's unacked messages
            _log.warning("worker died; the broker redelivers its unacked tasks", instance=instance)
        else:
            _log.warning("worker died; its unacked tasks were put back on their queues", instance=instance, restored=count)
    orphans = heartbeats.sweep_orphans(client, dead_after_s=dead_after_s, restore=restore)
    if orphans:
        _log.warning("unacked tasks no live worker holds were put back on their queues", restored=orphans)
    snapshot = observe.live_snapshot(client, broker_url, queues, dead_after_s)
    all_workers = heartbeats.workers(client)
    recorded, drained, database = _database_writes(factory, client, all_workers, database_breaker)
    summary = {
        "ts": time.time(),
        "queues": snapshot["queues"],
        "oldest_wait_s": snapshot["oldest_wait_s"],
        "workers_alive": sum(1 for w in snapshot["workers"] if w["alive"]),
        "heartbeats_recorded": recorded,
        "dead_workers": len(swept),
        "redelivered": sum(swept.values()) + orphans,
        "outcomes_persisted": drained,
        "database": database,
        "seconds": round(time.perf_counter() - started, 4),
    }
    client.set(WATCHDOG_LAST_TICK_KEY, json.dumps(summary, separators=(",", ":")), ex=3600)
    return summary
