"""Backfill tasks: thin wrappers that parse ids, call the ledger, and record the outcome."""

from __future__ import annotations

from typing import Any

import structlog

from omni_tasks import metrics
from omni_tasks.errors import PermanentError, RetryableError
from omni_tasks.marketdata import backfill
from omni_tasks.marketdata.router import serving_feeds
from omni_tasks.marketdata.universe import load_universe
from omni_tasks.marketdata.wiring import build_router, build_store
from omni_tasks.queues import Queue
from omni_tasks.runtime import get_runtime
from omni_tasks.taskdef import omni_task

_log = structlog.get_logger("omni.backfill")
MAX_RETRIES = 4


class PartitionNotServed(RetryableError):
    """Raised so Celery retries the partition with backoff and jitter."""


@omni_task(
    name="omni.backfill.fetch_partition",
    queue=Queue.BACKFILL,
    soft_time_limit_s=240,
    time_limit_s=300,
    max_retries=MAX_RETRIES,
    retry_on=(PartitionNotServed,),
    retry_backoff_max_s=120,
)
def fetch_partition(partition_id: int) -> dict[str, Any]:
    """Fetch, check and store one backfill partition."""
    from celery import current_task

    runtime = get_runtime()
    outcome = backfill.run_partition(
        int(partition_id),
        factory=runtime.sessions,
        store=build_store(runtime.engine),
        router=build_router(runtime.settings, runtime.redis, runtime.sessions),
        final_attempt=current_task.request.retries >= MAX_RETRIES,
    )
    metrics.BACKFILL_PARTITIONS.labels(outcome.status, outcome.provider or "-").inc()
    if outcome.status == "succeeded":
        metrics.BACKFILL_ROWS.labels(outcome.provider or "-").inc(outcome.rows)
        metrics.BACKFILL_REJECTED.labels(outcome.provider or "-").inc(outcome.rejected)
    if outcome.finished_job is not None:
        # Validation runs after each backfill job, chained here rather than guessed on a timer.
        from omni_tasks.validation.tasks import validate_backfill_job

        validate_backfill_job.apply_async(args=[outcome.finished_job])
    if outcome.retry:
        raise PartitionNotServed(outcome.error or "no provider served the partition")
    if outcome.status == "failed":
        # Recorded in the ledger above; the task fails too, so Flower and `omni status` show it as a failure.
        raise PermanentError(f"backfill partition {outcome.partition_id} failed: {outcome.error or 'no provider served it'}")
    return {"partition_id": outcome.partition_id, "status": outcome.status, "rows": outcome.rows, "rejected": outcome.rejected, "provider": outcome.provider, "error": outcome.error}


def enqueue_partitions(partition_ids: list[int]) -> int:
    for partition_id in partition_ids:
        fetch_partition.apply_async(args=[partition_id])
    return len(partition_ids)


@omni_task(name="omni.backfill.nightly", queue=Queue.BACKFILL, soft_time_limit_s=120, time_limit_s=180, max_retries=2)
def nightly() -> dict[str, Any]:
    """Plan and enqueue the nightly incremental backfill of the configured universe."""
    runtime = get_runtime()
    settings = runtime.settings.backfill
    symbols = load_universe(settings.universe_file, settings.universe)
    the_plan = backfill.incremental_plan(
        symbols,
        store=build_store(runtime.engine),
        timeframe=settings.timeframe,
        feed=settings.feed,
        adjustment=settings.adjustment,
        overlap_days=settings.overlap_days,
        lookback_days=settings.lookback_days,
        feeds=serving_feeds(runtime.settings.providers.order, settings.feed),
    )
    if not the_plan.partitions:
        return {"job_id": None, "partitions": 0}
    job_id = backfill.create_job(runtime.sessions, the_plan, requested_by="beat:nightly", note="nightly incremental")
    count = enqueue_partitions(backfill.partition_ids(runtime.sessions, job_id))
    _log.info("nightly backfill enqueued", job_id=job_id, partitions=count, symbols=len(symbols))
    return {"job_id": job_id, "partitions": count}
