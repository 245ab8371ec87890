"""Validation tasks: after every backfill job (chained), and nightly over the day's bars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from omni_tasks.core.errors import PermanentError
from omni_tasks.core.runtime import get_runtime
from omni_tasks.marketdata.universe import load_universe
from omni_tasks.ops import alerts
from omni_tasks.pipeline import canvas
from omni_tasks.pipeline.context import running_task
from omni_tasks.pipeline.queues import Queue
from omni_tasks.pipeline.taskdef import omni_task
from omni_tasks.settings import Settings
from omni_tasks.storage.models import BackfillJob
from omni_tasks.storage.outage import outages_retried

_log = structlog.get_logger("omni.validation")
#: The first run's risk follow-up (:mod:`omni_tasks.risk.tasks`), sent by its stable name.
RISK_RECALCULATE = "omni.risk.recalculate"


@omni_task(name="omni.validation.backfill_job", queue=Queue.VALIDATION, soft_time_limit_s=600, time_limit_s=720, max_retries=2)
def validate_backfill_job(job_id: int, store_retries: int = 0) -> dict[str, Any]:
    """Validate everything a finished backfill job stored (enqueued when its last partition finishes)."""
    # Validation, the router and the first-run planner carry pandas: imported where they run, so a
    # process that only registers or sends these tasks starts without them.
    from omni_tasks.marketdata.firstrun import is_first_run_job
    from omni_tasks.marketdata.router import serving_feeds
    from omni_tasks.validation.persist import validate_stored

    runtime = get_runtime()
    with outages_retried(running_task(), f"validating backfill job {job_id}", runtime.settings.database):
        with runtime.sessions() as session:
            job = session.get(BackfillJob, int(job_id))
            if job is None:
                raise LookupError(f"backfill job {job_id} does not exist")
            symbols = list(job.symbols.get("symbols", []))
            timeframe, start, end, feed, adjustment = job.timeframe, job.start.date(), job.end.date(), job.feed, job.adjustment
        _, summary = validate_stored(
            runtime.engine,
            runtime.sessions,
            symbols,
            timeframe=timeframe,
            start=start,
            end=end,
            feeds=serving_feeds(runtime.settings.providers.order, feed),
            adjustment=adjustment,
        )
    _log.info(
        "backfill job validated",
        job_id=job_id,
        **{k: v for k, v in summary.items() if k != "failed_series"},
        failed=len(summary["failed_series"]),
    )
    _alert_failures(runtime.settings, summary, f"backfill job {job_id}")
    if is_first_run_job(runtime.sessions, int(job_id)):
        # Before a failed series fails the task: the scan and risk flag what failed rather than wait for it.
        summary["first_run"] = first_run_followups(symbols)
    _fail_when_failed(summary, f"validation of backfill job {job_id}")
    return {"job_id": job_id, **summary}


def first_run_followups(symbols: list[str]) -> dict[str, Any]:
    """The first run's history is stored and validated: a scan of the universe and a risk recalculation now, whatever the hour."""
    from omni_tasks.scans import runs
    from omni_tasks.scans.scanner import ScanConfig
    from omni_tasks.scans.tasks import start_run

    runtime = get_runtime()
    settings = runtime.settings.backfill
    universe = load_universe(settings.universe_file, settings.universe)
    run_id = runs.create_run(runtime.sessions, universe, as_of=datetime.now(tz=UTC), config=ScanConfig(), chunk_size=100, requested_by="first-run")
    start_run(run_id)
    canvas.send(RISK_RECALCULATE, kwargs={"when": "now", "requested_by": "first-run"}, expires=600)
    _log.info("first run: scan and risk recalculation queued", scan_run=run_id, symbols=len(universe), backfilled=len(symbols))
    return {"scan_run": run_id}


@omni_task(name="omni.validation.nightly", queue=Queue.VALIDATION, soft_time_limit_s=900, time_limit_s=1000, max_retries=1)
def nightly(store_retries: int = 0) -> dict[str, Any]:
    """Validate the last few sessions of the universe (the nightly backfill's window)."""
    from omni_tasks.marketdata.router import serving_feeds
    from omni_tasks.validation.persist import validate_stored

    runtime = get_runtime()
    settings = runtime.settings.backfill
    symbols = load_universe(settings.universe_file, settings.universe)
    today = datetime.now(tz=UTC).date()
    with outages_retried(running_task(), "validating the nightly window", runtime.settings.database):
        _, summary = validate_stored(
            runtime.engine,
            runtime.sessions,
            symbols,
            timeframe=settings.timeframe,
            start=today - timedelta(days=max(7, settings.overlap_days)),
            end=today + timedelta(days=1),
            feeds=serving_feeds(runtime.settings.providers.order, settings.feed),
            adjustment=settings.adjustment,
        )
    _alert_failures(runtime.settings, summary, "nightly validation")
    if runtime.settings.reconcile.nightly:
        summary["reconciliation"] = _reconcile(
            runtime, symbols, settings.timeframe, today - timedelta(days=max(7, settings.overlap_days)), today + timedelta(days=1), settings.feed, settings.adjustment
        )
    _fail_when_failed(summary, "nightly validation")
    return summary


@omni_task(name="omni.validation.reconcile", queue=Queue.VALIDATION, soft_time_limit_s=600, time_limit_s=720, max_retries=1)
def reconcile(symbols: list[str], timeframe: str, start: str, end: str, feed: str | None = None, adjustment: str | None = None) -> dict[str, Any]:
    """Compare a sample of stored bars with a second provider (close and volume) and record the differences."""
    from datetime import date

    from omni_tasks.contracts.bars import check_symbol

    runtime = get_runtime()
    settings = runtime.settings.backfill
    chosen = [check_symbol(s) for s in symbols]
    return _reconcile(runtime, chosen, timeframe, date.fromisoformat(start), date.fromisoformat(end), feed or settings.feed, adjustment or settings.adjustment)


def _reconcile(runtime: Any, symbols: list[str], timeframe: str, start: Any, end: Any, feed: str, adjustment: str) -> dict[str, Any]:
    from omni_tasks.validation.reconcile import reconcile_stored

    report = reconcile_stored(runtime.settings, runtime.redis, runtime.engine, runtime.sessions, symbols, timeframe=timeframe, start=start, end=end, feed=feed, adjustment=adjustment)
    summary = report.summary()
    _log.info("reconciled with a second provider", compared=summary["compared"], differences=summary["differences"], skipped=len(summary["skipped"]))
    return summary


def _fail_when_failed(summary: dict[str, Any], what: str) -> None:
    """The verdicts are stored; a failed series also fails the task, so Flower and `omni status` show it as a failure."""
    failed = summary["failed_series"]
    if failed:
        names = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        raise PermanentError(f"{what}: {len(failed)} series failed validation ({names})")


def _alert_failures(settings: Settings, summary: dict[str, Any], what: str) -> None:
    """A webhook alert (when configured) for series that failed validation or rows quarantined."""
    failed = summary["failed_series"]
    if not failed and not summary["quarantined"]:
        return
    alerts.emit(
        {
            "kind": "validation.failed",
            "severity": "warning",
            "message": f"{what}: {len(failed)} series failed validation, {summary['quarantined']} rows quarantined",
            "failed_series": ", ".join(failed[:20]) + (f" and {len(failed) - 20} more" if len(failed) > 20 else ""),
            "bars": summary["bars"],
        },
        settings=settings,
    )
