"""Watchdog tasks (solo worker, own queue: runs even when other queues are backed up)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from omni_tasks.core.runtime import get_runtime
from omni_tasks.ops import prometheus as metrics
from omni_tasks.pipeline import canvas
from omni_tasks.pipeline.broker import broker_transport_options, is_redis_url, kombu_restorer, orders_purger
from omni_tasks.pipeline.queues import ALL_QUEUES, Queue
from omni_tasks.pipeline.taskdef import omni_task
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.safety.reporting import audit_transitions
from omni_tasks.trading import expiry
from omni_tasks.trading.order_breakers import DATABASE_BREAKER
from omni_tasks.watchdog import actions, evaluation, ledgers, monitor

_log = structlog.get_logger("omni.watchdog")
#: The backfill tasks the ledger reconciler sends again (:mod:`omni_tasks.marketdata.tasks`), by their stable names.
FETCH_PARTITION = "omni.backfill.fetch_partition"
VALIDATE_BACKFILL_JOB = "omni.validation.backfill_job"


# No task events: a tick every few seconds would fill Flower's task list (the watchdog worker still shows by its heartbeats).
@omni_task(name="omni.watchdog.tick", queue=Queue.WATCHDOG, soft_time_limit_s=20, time_limit_s=30, max_retries=0, send_events=False)
def tick() -> dict[str, Any]:
    """Record heartbeats and queue depths, redeliver dead workers' tasks, persist task outcomes, expire overdue orders, run the rules."""
    runtime = get_runtime()
    settings = runtime.settings
    broker_url = settings.broker_url
    transport = broker_transport_options(settings)
    restore = kombu_restorer(broker_url, transport) if is_redis_url(broker_url) else None
    # fail_open: the watchdog's own writes are tried when the breaker cannot be read (the order path is the one that fails closed).
    database = CircuitBreaker(
        DATABASE_BREAKER,
        runtime.redis,
        fail_open=True,
        on_transition=audit_transitions(runtime.sessions, settings=settings, actor="watchdog", client=runtime.redis),
    )
    summary = monitor.tick(
        client=runtime.redis,
        factory=runtime.sessions,
        broker_url=broker_url,
        queues=[q.value for q in ALL_QUEUES],
        dead_after_s=settings.broker.dead_after_s,
        restore=restore,
        database_breaker=database,
    )
    if summary["database"] == "ok":
        # Breaker transitions queued while the database was down (or made by a process without a hook).
        summary["transitions_audited"] = _flush_transitions(runtime)
    metrics.WATCHDOG_TICKS.inc()
    metrics.REDELIVERED.inc(summary["redelivered"])
    metrics.OUTCOMES_PERSISTED.inc(summary["outcomes_persisted"])
    summary["orders_expired"] = expiry.reconcile(
        runtime.sessions, now=datetime.now(tz=UTC), ttl_s=settings.trading.order_ttl_s, grace_s=settings.trading.order_expiry_grace_s
    )
    actuator = actions.LiveActuator(runtime, purge=orders_purger(broker_url, Queue.ORDERS.value, transport))
    summary["rules"] = evaluation.run_rules(runtime, actuator=actuator, queue_depths=summary["queues"], database_ok=summary["database"] == "ok")
    summary["ledgers"] = _reconcile_ledgers(runtime, redelivered=summary["redelivered"])
    return summary


def _flush_transitions(runtime: Any) -> int:
    from omni_tasks.safety.reporting import flush_transitions

    try:
        return flush_transitions(runtime.redis, runtime.sessions)
    except Exception:  # noqa: BLE001 - they stay queued for the next tick
        return 0


def _reconcile_ledgers(runtime: Any, *, redelivered: int) -> dict[str, Any]:
    """Backfill partitions and scan runs with no live delivery: requeued or failed; finished jobs rolled up."""
    settings = runtime.settings
    try:
        return _reconcile(runtime, settings, redelivered=redelivered)
    except Exception as exc:  # noqa: BLE001 - the reconciler must never cost the watchdog its tick; the next one tries again
        _log.exception("ledger reconciliation failed")
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def _reconcile(runtime: Any, settings: Any, *, redelivered: int) -> dict[str, Any]:
    readable = is_redis_url(settings.broker_url)  # RabbitMQ queues cannot be read without consuming them
    return ledgers.reconcile(
        factory=runtime.sessions,
        client=runtime.redis,
        deliveries=(lambda: ledgers.redis_deliveries(runtime.redis)) if readable else None,
        stuck_after_s=settings.watchdog.stuck_after_s,
        max_requeues=settings.watchdog.stuck_requeues,
        requeue=lambda partition_id: canvas.send(FETCH_PARTITION, args=[partition_id]),
        job_finished=lambda job_id: canvas.send(VALIDATE_BACKFILL_JOB, args=[job_id]),
        redelivered=redelivered,
    ).as_dict()
