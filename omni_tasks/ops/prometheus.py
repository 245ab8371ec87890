"""Prometheus metrics. celery-exporter's names, so existing dashboards and alerts work, plus ``omni_*``.

Worker children, beat and the CLI write to files in the multiprocess folder
(``PROMETHEUS_MULTIPROC_DIR`` = ``<data>/metrics/<hostname>``, set by the
launcher before this module is imported); the metrics server merges every
host's folder, and computes queue lengths,
worker liveness and the beat leader at scrape time. Labels never hold symbols.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_TASK_LABELS = ("name", "hostname", "queue_name")
_RUNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))

TASK_RECEIVED = Counter("celery_task_received", "Sent when the worker receives a task.", _TASK_LABELS)
TASK_STARTED = Counter("celery_task_started", "Sent just before the worker executes the task.", _TASK_LABELS)
TASK_SUCCEEDED = Counter("celery_task_succeeded", "Sent if the task executed successfully.", _TASK_LABELS)
TASK_FAILED = Counter("celery_task_failed", "Sent if the execution of the task failed.", _TASK_LABELS)
TASK_RETRIED = Counter("celery_task_retried", "Sent if the task failed, but will be retried.", _TASK_LABELS)
TASK_REJECTED = Counter("celery_task_rejected", "The task was rejected by the worker.", _TASK_LABELS)
TASK_REVOKED = Counter("celery_task_revoked", "Sent if the task has been revoked.", _TASK_LABELS)
TASK_RUNTIME = Histogram("celery_task_runtime", "Histogram of task runtime measurements.", _TASK_LABELS, buckets=_RUNTIME_BUCKETS)
TASK_QUEUE_WAIT = Histogram(
    "celery_task_queue_wait_time",
    "Seconds between publishing a task and a worker starting it.",
    _TASK_LABELS,
    buckets=_RUNTIME_BUCKETS,
)

DEAD_LETTERS = Counter("omni_task_dead_letters", "Tasks dead-lettered after too many deliveries.", ("name", "queue_name"))
REDELIVERED = Counter("omni_tasks_redelivered", "Unacked tasks of dead workers put back on their queues.")
OUTCOMES_PERSISTED = Counter("omni_task_outcomes_persisted", "Task outcomes moved from Redis into the task_runs table.")
BEAT_SENT = Counter("omni_beat_sent", "Scheduled tasks sent by the beat leader.", ("entry",))
BEAT_DUPLICATES = Counter("omni_beat_duplicate_sends", "Scheduled sends recognised as duplicates of their slot.", ("entry",))
WATCHDOG_TICKS = Counter("omni_watchdog_ticks", "Watchdog evaluations run.")
BACKFILL_PARTITIONS = Counter("omni_backfill_partitions", "Backfill partitions finished, by status.", ("status", "provider"))
BACKFILL_ROWS = Counter("omni_backfill_rows", "Bars stored by backfills, by provider.", ("provider",))
BACKFILL_REJECTED = Counter("omni_backfill_rejected_rows", "Rows quarantined by the boundary check, by provider.", ("provider",))
LATENCY_VIOLATIONS = Counter("omni_latency_budget_violations", "Operations over their latency budget (DESIGN section 7).", ("budget",))
ORDERS = Counter("omni_orders", "Orders through the orders path, by outcome (denied orders also by check).", ("outcome", "check"))
ORDER_SUBMIT_SECONDS = Histogram(
    "omni_order_submit_seconds",
    "Order submission: checks, records and the broker call.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, float("inf")),
)
WATCHDOG_FINDINGS = Counter("omni_watchdog_findings", "Watchdog rule findings (breaching evaluations), by rule.", ("rule",))
WATCHDOG_ACTIONS = Counter("omni_watchdog_actions", "Actions the watchdog fired, by rule and action.", ("rule", "action"))
LEDGER_ACTIONS = Counter(
    "omni_ledger_actions", "Stuck ledger items (no live delivery) the watchdog requeued or failed, by ledger and action.", ("ledger", "action")
)
