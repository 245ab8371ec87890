"""Running one backfill partition: fetch through the router, check, quarantine, store, record the outcome.

The outcome goes to the ledger (:mod:`omni_tasks.marketdata.backfill`); the
Celery task that calls this is ``omni.backfill.fetch_partition``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import structlog
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.bars import split_valid
from omni_tasks.marketdata.backfill import PartitionOutcome, record_outcome
from omni_tasks.marketdata.errors import ProviderError
from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.router import NO_BARS_IN_RANGE, BarRouter, NoProviderServed
from omni_tasks.storage.models import BackfillJob, BackfillPartition
from omni_tasks.storage.outage import store_outages_retryable

_log = structlog.get_logger("omni.backfill")


def run_partition(
    partition_id: int, *, factory: sessionmaker[Session], store: Any, router: BarRouter, final_attempt: bool
) -> PartitionOutcome:
    """Fetch, check, quarantine and store one partition; record the outcome in the ledger.

    ``store`` is a :class:`omni_tasks.storage.bars.BarStore`. A transient failure
    returns ``retry=True`` (status ``retrying``) unless ``final_attempt``, when
    the partition fails with the last error. A database outage raises
    :class:`~omni_tasks.core.errors.StoreUnavailable`: the partition stays claimable
    and running it again stores the same rows.
    """
    with store_outages_retryable(f"running backfill partition {partition_id}"):
        return _run_partition(partition_id, factory=factory, store=store, router=router, final_attempt=final_attempt)


def _run_partition(
    partition_id: int, *, factory: sessionmaker[Session], store: Any, router: BarRouter, final_attempt: bool
) -> PartitionOutcome:
    now = datetime.now(tz=UTC)
    with factory() as session, session.begin():
        part = session.get(BackfillPartition, partition_id, with_for_update=True)
        if part is None:
            raise LookupError(f"backfill partition {partition_id} does not exist")
        if part.status == "succeeded":
            return PartitionOutcome(partition_id, "succeeded", rows=part.rows, rejected=part.rejected, provider=part.provider)
        part.status = "running"
        part.attempts += 1
        part.started_at = now
        part.resume_at = None
        request = BarRequest(part.symbol, part.timeframe, part.start, part.end, feed=part.feed, adjustment=part.adjustment)
        job_id = part.job_id
        job = session.get(BackfillJob, job_id)
        span = (job.start, job.end) if job is not None else (part.start, part.end)
        session.execute(update(BackfillJob).where(BackfillJob.id == job_id, BackfillJob.status == "pending").values(status="running"))
    log = _log.bind(partition_id=partition_id, job_id=job_id, symbol=request.symbol, timeframe=request.timeframe)
    try:
        routed = router.fetch(request, job=job_id, span=span)
    except NoProviderServed as exc:
        provider_notes = "; ".join(exc.notes) or None
        if exc.defer_s is not None:
            # Waiting is not failing: the partition runs again when a provider may be asked (no retry is used up).
            outcome = PartitionOutcome(partition_id, "deferred", error=str(exc), defer_s=exc.defer_s)
            record_outcome(factory, partition_id, outcome, notes=provider_notes)
            log.info("partition deferred", resume_in_s=round(exc.defer_s, 2), detail=str(exc))
            return outcome
        if exc.cause == NO_BARS_IN_RANGE and (exc.permanent or final_attempt):
            # The symbol is known and the range is empty: done, no rows, and the reason on record.
            said = next((a.provider for a in exc.attempts if a.detail.startswith("no bars in range")), None)
            outcome = PartitionOutcome(partition_id, "succeeded", provider=said, cause=exc.cause)
            record_outcome(factory, partition_id, outcome, notes="; ".join([*exc.notes, str(exc)]))
            log.info("partition has no bars in range", provider=said, detail=str(exc))
            return outcome
        retry = not exc.permanent and not final_attempt
        outcome = PartitionOutcome(partition_id, "retrying" if retry else "failed", error=str(exc), retry=retry, cause=exc.cause)
        record_outcome(factory, partition_id, outcome, notes=provider_notes)
        log.warning("partition not served", status=outcome.status, error=str(exc), notes=provider_notes)
        return outcome
    except ProviderError as exc:  # pragma: no cover - the router wraps provider errors
        outcome = PartitionOutcome(partition_id, "failed", error=f"{type(exc).__name__}: {exc}")
        record_outcome(factory, partition_id, outcome, notes=None)
        return outcome

    bars = routed.bars
    start, end = pd.Timestamp(request.start), pd.Timestamp(request.end)
    outside = (bars["ts"] < start) | (bars["ts"] >= end)
    valid, rejected = split_valid(bars[~outside].reset_index(drop=True))
    if outside.any():
        rejected = pd.concat([rejected, bars[outside].assign(reason="outside the partition's range")], ignore_index=True)
    if len(rejected):
        store.quarantine(rejected, partition_id=partition_id)
        log.warning("rows failed the boundary check and were quarantined", rejected=len(rejected))
    result = store.upsert(valid) if len(valid) else None
    # The provider's whole series begins inside this partition: the sessions before it have no bars to miss.
    data_from = routed.series_start if routed.series_start is not None and start < pd.Timestamp(routed.series_start) < end else None
    outcome = PartitionOutcome(
        partition_id,
        "succeeded",
        rows=len(valid),
        rejected=len(rejected),
        inserted=getattr(result, "inserted", 0),
        updated=getattr(result, "updated", 0),
        provider=routed.provider,
        data_from=data_from,
    )
    begins = [f"{routed.provider}'s series of {request.symbol} starts {data_from.date().isoformat()}: no bars before it"] if data_from else []
    notes = "; ".join(routed.notes + begins + [f"{a.provider}: {a.detail}" for a in routed.attempts if a.outcome != "ok"]) or None
    record_outcome(factory, partition_id, outcome, notes=notes, checksum=store.checksum(valid) if len(valid) else None)
    log.info("partition stored", rows=outcome.rows, inserted=outcome.inserted, updated=outcome.updated, provider=routed.provider)
    return outcome
