"""Scan tasks: a run fans out in chunks of symbols (a chord), and one merge ranks the whole universe."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from omni_tasks.core.errors import PermanentError
from omni_tasks.core.runtime import get_runtime
from omni_tasks.marketdata.universe import load_universe
from omni_tasks.pipeline import canvas
from omni_tasks.pipeline.context import running_task
from omni_tasks.pipeline.queues import Queue
from omni_tasks.pipeline.taskdef import omni_task
from omni_tasks.scans import runs
from omni_tasks.storage.outage import outages_retried

# The scanner, the bar store and the calendar carry pandas: imported in the tasks that compute, so a
# process that only registers or sends these tasks (every worker, beat, `omni up`) starts without them.

_log = structlog.get_logger("omni.scans")


@omni_task(name="omni.scans.chunk", queue=Queue.SCANS, soft_time_limit_s=120, time_limit_s=150, ignore_result=False, max_retries=2)
def scan_symbols(run_id: int, symbols: list[str], store_retries: int = 0) -> dict[str, Any]:
    """Indicators for one chunk of a run's universe (no score: scores are cross-sectional)."""
    from omni_tasks.scans.loading import load_bars
    from omni_tasks.scans.scanner import scan_chunk
    from omni_tasks.storage.bars import BarStore

    runtime = get_runtime()
    with outages_retried(running_task(), f"scanning a chunk of run {run_id}", runtime.settings.database):
        run = runs.load_run(runtime.sessions, int(run_id))
        bars = load_bars(BarStore(runtime.engine), symbols, as_of=run["as_of"], config=run["config"])
    return scan_chunk(bars, as_of=run["as_of"], config=run["config"], symbols=symbols).to_json()


@omni_task(name="omni.scans.merge", queue=Queue.SCANS, soft_time_limit_s=60, time_limit_s=90, max_retries=2)
def merge_chunks(partials: list[dict[str, Any]], run_id: int, store_retries: int = 0) -> dict[str, Any]:
    """Score and rank the whole universe from every chunk's indicators; store the run's results."""
    from omni_tasks.scans.scanner import ScanPartial, merge

    runtime = get_runtime()
    with outages_retried(running_task(), f"merging scan run {run_id}", runtime.settings.database):
        run = runs.load_run(runtime.sessions, int(run_id))
        result = merge([ScanPartial.from_json(p) for p in partials])
        stale = runs.failed_validation(runtime.sessions, run["symbols"], run["config"].timeframe)
        outcome = runs.store_result(runtime.sessions, int(run_id), result, stale=stale)
    _log.info("scan finished", **outcome)
    if outcome["status"] == "failed":
        # Stored as failed above; the task fails too, so Flower and `omni status` show the failed run.
        raise PermanentError(f"scan run {run_id} failed: no symbol of {outcome['symbols']} could be scored")
    return outcome


@omni_task(name="omni.scans.run_failed", queue=Queue.SCANS, soft_time_limit_s=20, time_limit_s=30, max_retries=0)
def run_failed(request: Any, exc: Any, traceback: Any, run_id: int) -> None:
    """Error callback of a run's chord: a chunk or the merge failed for good, so the run ends ``failed`` with the reason.

    Celery calls it in the worker that saw the failure, with the failed task's
    request and exception (never through the broker). Should this write fail
    too (the database down), the ledger reconciler fails the run later.
    """
    reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    if runs.fail_run(get_runtime().sessions, int(run_id), f"a scan task failed: {reason}", only_running=True):
        _log.error("scan run failed", run_id=run_id, error=reason[:500])


def start_run(run_id: int) -> int:
    """Enqueue a run's chunks and its merge (one chord, whose failure ends the run). Returns the number of chunks."""
    from omni_tasks.scans.scanner import chunk

    runtime = get_runtime()
    run = runs.load_run(runtime.sessions, run_id)
    pieces = chunk(run["symbols"], run["chunk_size"])
    canvas.fan_out((scan_symbols.s(run_id, piece) for piece in pieces), merge_chunks.s(run_id), on_error=run_failed.s(run_id))
    return len(pieces)


@omni_task(name="omni.scans.scheduled", queue=Queue.SCANS, soft_time_limit_s=30, time_limit_s=60, max_retries=0)
def scheduled() -> dict[str, Any]:
    """The beat's scan: the configured universe, only while the exchange is in session."""
    from omni_tasks.marketdata import calendar
    from omni_tasks.scans.scanner import ScanConfig

    runtime = get_runtime()
    now = datetime.now(tz=UTC)
    if not calendar.is_open(now):
        return {"skipped": "the exchange is closed"}
    settings = runtime.settings.backfill
    symbols = load_universe(settings.universe_file, settings.universe)
    run_id = runs.create_run(runtime.sessions, symbols, as_of=now, config=ScanConfig(), chunk_size=100, requested_by="beat")
    if not symbols:
        raise PermanentError(f"scan run {run_id} failed: the configured universe is empty")
    return {"run_id": run_id, "chunks": start_run(run_id)}
