"""Backfill tasks: thin wrappers that parse ids, call the ledger, and record the outcome."""

from __future__ import annotations

import random
from typing import Any

import structlog

from omni_tasks.core.errors import PermanentError, RetryableError, StoreUnavailable
from omni_tasks.core.runtime import get_runtime
from omni_tasks.marketdata import backfill
from omni_tasks.marketdata.universe import load_universe
from omni_tasks.ops import prometheus as metrics
from omni_tasks.pipeline import canvas
from omni_tasks.pipeline.context import current_request, exponential_backoff_s, retry_running, running_task
from omni_tasks.pipeline.queues import Queue
from omni_tasks.pipeline.taskdef import omni_task
from omni_tasks.storage.outage import retry_after_outage

_log = structlog.get_logger("omni.backfill")
MAX_RETRIES = 4
#: The follow-up of a finished job (:mod:`omni_tasks.validation.tasks`), sent by its stable name.
VALIDATE_BACKFILL_JOB = "omni.validation.backfill_job"


class PartitionNotServed(RetryableError):
    """Raised so Celery retries the partition with backoff and jitter."""


@omni_task(
    name="omni.backfill.fetch_partition",
    queue=Queue.BACKFILL,
    soft_time_limit_s=240,
    time_limit_s=300,
    max_retries=MAX_RETRIES,
    retry_on=(),  # retried explicitly below: provider failures and database outages keep separate budgets
    retry_backoff_max_s=120,
)
def fetch_partition(partition_id: int, store_retries: int = 0) -> dict[str, Any]:
    """Fetch, check and store one backfill partition."""
    # The run, the router and the store carry pandas: imported where a partition runs, so a process that
    # only registers or sends this task (every worker, beat, `omni up`) starts without them.
    from omni_tasks.marketdata import backfill_run
    from omni_tasks.marketdata.wiring import build_router, build_store

    runtime = get_runtime()
    request = current_request()
    # Celery counts every retry; the provider's share is what the outage retries did not use.
    provider_retries = max(0, int(request.retries or 0) - int(store_retries or 0))
    try:
        outcome = backfill_run.run_partition(
            int(partition_id),
            factory=runtime.sessions,
            store=build_store(runtime.engine),
            router=build_router(runtime.settings, runtime.redis, runtime.sessions),
            final_attempt=provider_retries >= MAX_RETRIES,
        )
    except StoreUnavailable as exc:
        database = runtime.settings.database
        _log.warning("database unavailable: partition retried", partition_id=partition_id, store_retries=store_retries, error=str(exc))
        raise retry_after_outage(running_task(), exc, max_retries=database.outage_retries, cap_s=database.outage_backoff_max_s) from exc
    metrics.BACKFILL_PARTITIONS.labels(outcome.status, outcome.provider or "-").inc()
    if outcome.status == "succeeded":
        metrics.BACKFILL_ROWS.labels(outcome.provider or "-").inc(outcome.rows)
        metrics.BACKFILL_REJECTED.labels(outcome.provider or "-").inc(outcome.rejected)
    if outcome.finished_job is not None:
        job_finished(outcome.finished_job)
    if outcome.defer_s is not None:
        defer(int(partition_id), outcome.defer_s, visibility_timeout_s=runtime.settings.broker.visibility_timeout_s)
    elif outcome.retry:
        error = PartitionNotServed(outcome.error or "no provider served the partition")
        countdown = exponential_backoff_s(provider_retries, factor=1, cap_s=120, full_jitter=True)
        raise retry_running(exc=error, countdown=countdown, max_retries=int(request.retries or 0) + 1)
    if outcome.status == "failed":
        # Recorded in the ledger above; the task fails too, so Flower and `omni status` show it as a failure.
        raise PermanentError(f"backfill partition {outcome.partition_id} failed: {outcome.error or 'no provider served it'}")
    return {
        "partition_id": outcome.partition_id,
        "status": outcome.status,
        "rows": outcome.rows,
        "rejected": outcome.rejected,
        "provider": outcome.provider,
        "error": outcome.error,
    }


def defer(partition_id: int, wait_s: float, *, visibility_timeout_s: float) -> float:
    """Run the partition again in ``wait_s`` (a new message: Celery's retry count is not used up).

    An ETA must stay below the broker's visibility timeout (a reserved message
    older than that is delivered again), so a long wait (a daily quota's reset)
    is taken in steps: the partition wakes, finds the wait not over, and
    defers again. Returns the countdown scheduled.
    """
    step = max(1.0, visibility_timeout_s / 2)
    countdown = min(max(0.0, wait_s), step) + random.uniform(0.0, 0.25)  # noqa: S311 - spreads siblings waking for one slot
    fetch_partition.apply_async(args=[partition_id], countdown=round(countdown, 3))
    return countdown


def job_finished(job_id: int) -> None:
    """A backfill job reached its final state: validation runs after each one, chained here rather than guessed on a timer."""
    canvas.send(VALIDATE_BACKFILL_JOB, args=[job_id])


def enqueue_partitions(partition_ids: list[int]) -> int:
    for partition_id in partition_ids:
        fetch_partition.apply_async(args=[partition_id])
    return len(partition_ids)


@omni_task(name="omni.backfill.nightly", queue=Queue.BACKFILL, soft_time_limit_s=120, time_limit_s=180, max_retries=2)
def nightly() -> dict[str, Any]:
    """Plan and enqueue the nightly incremental backfill of the configured universe."""
    from omni_tasks.marketdata import backfill_plan
    from omni_tasks.marketdata.router import serving_feeds
    from omni_tasks.marketdata.wiring import build_store

    runtime = get_runtime()
    settings = runtime.settings.backfill
    symbols = load_universe(settings.universe_file, settings.universe)
    the_plan = backfill_plan.incremental_plan(
        symbols,
        store=build_store(runtime.engine),
        timeframe=settings.timeframe,
        feed=settings.feed,
        adjustment=settings.adjustment,
        overlap_days=settings.overlap_days,
        lookback_days=settings.lookback_days,
        feeds=serving_feeds(runtime.settings.providers.order, settings.feed),
        earliest=settings.earliest_date,
    )
    if not the_plan.partitions:
        return {"job_id": None, "partitions": 0}
    job_id = backfill.create_job(runtime.sessions, the_plan, requested_by="beat:nightly", note="nightly incremental")
    count = enqueue_partitions(backfill.partition_ids(runtime.sessions, job_id))
    _log.info("nightly backfill enqueued", job_id=job_id, partitions=count, symbols=len(symbols))
    return {"job_id": job_id, "partitions": count}
