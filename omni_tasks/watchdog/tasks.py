"""Watchdog tasks (solo worker, own queue: runs even when other queues are backed up)."""

from __future__ import annotations

from typing import Any

from omni_tasks import heartbeats, metrics
from omni_tasks.celery_app import broker_transport_options, is_redis_url
from omni_tasks.queues import ALL_QUEUES, Queue
from omni_tasks.runtime import get_runtime
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.safety.engage import orders_purger
from omni_tasks.safety.reporting import audit_transitions
from omni_tasks.taskdef import omni_task
from omni_tasks.trading.orders import DATABASE_BREAKER
from omni_tasks.watchdog import monitor, rules


# No task events: a tick every few seconds would fill Flower's task list (the watchdog worker still shows by its heartbeats).
@omni_task(name="omni.watchdog.tick", queue=Queue.WATCHDOG, soft_time_limit_s=20, time_limit_s=30, max_retries=0, send_events=False)
def tick() -> dict[str, Any]:
    """Record heartbeats and queue depths, redeliver dead workers' tasks, persist task outcomes, then run the health rules."""
    runtime = get_runtime()
    settings = runtime.settings
    broker_url = settings.broker_url
    transport = broker_transport_options(settings)
    restore = heartbeats.kombu_restorer(broker_url, transport) if is_redis_url(broker_url) else None
    # fail_open: the watchdog's own writes are tried when the breaker cannot be read (the order path is the one that fails closed).
    database = CircuitBreaker(
        DATABASE_BREAKER, runtime.redis, fail_open=True, on_transition=audit_transitions(runtime.sessions, actor="watchdog")
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
    metrics.WATCHDOG_TICKS.inc()
    metrics.REDELIVERED.inc(summary["redelivered"])
    metrics.OUTCOMES_PERSISTED.inc(summary["outcomes_persisted"])
    actuator = rules.LiveActuator(runtime, purge=orders_purger(broker_url, Queue.ORDERS.value, transport))
    summary["rules"] = rules.run_rules(runtime, actuator=actuator, queue_depths=summary["queues"], database_ok=summary["database"] == "ok")
    return summary
