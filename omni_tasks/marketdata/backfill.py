"""The backfill job ledger: jobs and their partitions in the database, each partition's status, the job's roll-up.

A job is symbols x timeframe x date range x feed x adjustment. It splits into
partitions of whole sessions, small enough to finish well inside the broker's
visibility timeout (a year of daily bars, a week of minute bars). Each
partition keeps its status, rows, rejected rows, checksum, provider,
attempts, last error, the providers' notes (kept whatever the outcome: a
clamped end or a switched feed is on record on a failed partition too) and
the cause when there was no data: ``unknown_symbol`` (failed) or
``no_bars_in_range`` (succeeded with no rows: the symbol is known, the range
is before its listing, after its delisting or without trades). Validation
reads the cause and reports "no data", not holes. Running a partition twice stores the same rows: the
store upserts, and a partition already succeeded is not fetched again.

    pending -> running -> succeeded
                       -> deferred -> running ...   (waiting: a rate limit's next slot, a refusal, a quota's reset;
                                                     re-scheduled for ``resume_at``, never failed for waiting)
                       -> retrying -> running ...   (transient: outage, malformed answer)
                       -> failed                    (permanent, or retries exhausted)

A database outage mid-partition leaves it ``running`` (nothing can be written)
and the task retries it; a partition whose delivery was lost altogether (a
broker crash) is found by the watchdog's ledger reconciler
(:mod:`omni_tasks.watchdog.ledgers`), which puts it back to ``pending`` and
enqueues it again, or fails it with the reason after a few requeues. Either
way the job reaches a final state.

Planning (partitions of whole sessions, the nightly plan, verifying stored
bars against the calendar) is :mod:`omni_tasks.marketdata.backfill_plan`;
running one partition is :mod:`omni_tasks.marketdata.backfill_run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, Result, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.storage.models import BackfillJob, BackfillPartition

if TYPE_CHECKING:
    from omni_tasks.marketdata.backfill_plan import Plan

TERMINAL = frozenset({"succeeded", "failed"})


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE changed (its result is a CursorResult; Session.execute is typed as returning a plain Result)."""
    return int(cast(CursorResult[Any], result).rowcount)


def create_job(factory: sessionmaker[Session], the_plan: Plan, *, requested_by: str, note: str | None = None) -> int:
    """Record a job and its partitions (status pending). Returns the job id."""
    if not the_plan.partitions:
        from omni_tasks.marketdata.backfill_plan import BackfillRequestError  # the plan module carries pandas: only here

        raise BackfillRequestError("the plan has no partitions")
    first = the_plan.partitions[0]
    now = datetime.now(tz=UTC)
    with factory() as session, session.begin():
        job = BackfillJob(
            created_at=now,
            requested_by=requested_by[:100],
            timeframe=first.timeframe,
            start=min(p.start for p in the_plan.partitions),
            end=max(p.end for p in the_plan.partitions),
            feed=first.feed,
            adjustment=first.adjustment,
            symbols={"symbols": sorted({p.symbol for p in the_plan.partitions})},
            status="pending",
            note=note,
        )
        session.add(job)
        session.flush()
        session.add_all(
            BackfillPartition(
                job_id=job.id,
                symbol=p.symbol,
                timeframe=p.timeframe,
                start=p.start,
                end=p.end,
                feed=p.feed,
                adjustment=p.adjustment,
                status="pending",
                rows=0,
                rejected=0,
                attempts=0,
            )
            for p in the_plan.partitions
        )
        return int(job.id)


def partition_ids(factory: sessionmaker[Session], job_id: int, *, statuses: Sequence[str] | None = None) -> list[int]:
    with factory() as session:
        query = select(BackfillPartition.id).where(BackfillPartition.job_id == job_id).order_by(BackfillPartition.id)
        if statuses is not None:
            query = query.where(BackfillPartition.status.in_(list(statuses)))
        return [int(i) for i in session.scalars(query)]


def reset_failed(factory: sessionmaker[Session], job_id: int, *, stuck: Sequence[int] = ()) -> list[int]:
    """Mark a job's failed partitions, and those of ``stuck`` still not final, pending again (for --only-failed).

    ``stuck``: partition ids with no live delivery (see :func:`omni_tasks.watchdog.ledgers.stuck_partitions`).
    Returns the ids reset, in id order.
    """
    with factory() as session, session.begin():
        failed = select(BackfillPartition.id).where(BackfillPartition.job_id == job_id, BackfillPartition.status == "failed")
        ids = {int(i) for i in session.scalars(failed)}
        if stuck:
            ids.update(
                int(i)
                for i in session.scalars(
                    select(BackfillPartition.id).where(
                        BackfillPartition.job_id == job_id, BackfillPartition.id.in_(list(stuck)), BackfillPartition.status.not_in(TERMINAL)
                    )
                )
            )
        if ids:
            session.execute(
                update(BackfillPartition)
                .where(BackfillPartition.id.in_(sorted(ids)))
                .values(status="pending", last_error=None, finished_at=None)
            )
            session.execute(update(BackfillJob).where(BackfillJob.id == job_id).values(status="running", finished_at=None))
    return sorted(ids)


@dataclass(frozen=True)
class OpenPartition:
    """A partition not yet final, as the ledger reconciler sees it."""

    id: int
    job_id: int
    status: str
    #: the last time the ledger saw work on it (its last start, else the job's creation), UTC
    touched_at: datetime


def open_partitions(factory: sessionmaker[Session]) -> list[OpenPartition]:
    """Every partition not succeeded or failed, oldest job first."""
    with factory() as session:
        rows = session.execute(
            select(
                BackfillPartition.id,
                BackfillPartition.job_id,
                BackfillPartition.status,
                BackfillPartition.started_at,
                BackfillJob.created_at,
            )
            .join(BackfillJob, BackfillJob.id == BackfillPartition.job_id)
            .where(BackfillPartition.status.not_in(TERMINAL))
            .order_by(BackfillPartition.job_id, BackfillPartition.id)
        ).all()
    return [OpenPartition(int(r[0]), int(r[1]), str(r[2]), max(t for t in (r[3], r[4]) if t is not None)) for r in rows]


def requeue_partition(factory: sessionmaker[Session], partition_id: int, *, reason: str) -> bool:
    """Put a stuck partition back to ``pending`` with the reason (the caller enqueues it). False if it became final meanwhile."""
    with factory() as session, session.begin():
        changed = session.execute(
            update(BackfillPartition)
            .where(BackfillPartition.id == partition_id, BackfillPartition.status.not_in(TERMINAL))
            .values(status="pending", last_error=reason[:4000])
        )
        return bool(_rowcount(changed))


def fail_partition(factory: sessionmaker[Session], partition_id: int, *, reason: str) -> tuple[bool, int | None]:
    """Fail a stuck partition with the reason and roll its job up. Returns (failed it, job finished by it)."""
    with factory() as session:
        part = session.get(BackfillPartition, partition_id)
        if part is None or part.status in TERMINAL:
            return False, None
    outcome = PartitionOutcome(partition_id, "failed", error=reason)
    record_outcome(factory, partition_id, outcome, notes=None)
    return True, outcome.finished_job


def rollup_open_jobs(factory: sessionmaker[Session]) -> list[int]:
    """Finish every job still open whose partitions are all final. Returns the jobs finished here."""
    finished: list[int] = []
    with factory() as session:
        open_jobs = [int(i) for i in session.scalars(select(BackfillJob.id).where(BackfillJob.status.in_(("pending", "running"))))]
    for job_id in open_jobs:
        with factory() as session, session.begin():
            session.execute(select(BackfillJob.id).where(BackfillJob.id == job_id).with_for_update())
            if _rollup(session, job_id, datetime.now(tz=UTC)):
                finished.append(job_id)
    return finished


@dataclass
class PartitionOutcome:
    partition_id: int
    status: str
    rows: int = 0
    rejected: int = 0
    inserted: int = 0
    updated: int = 0
    provider: str | None = None
    error: str | None = None
    retry: bool = False
    #: why there was no data: router.UNKNOWN_SYMBOL or router.NO_BARS_IN_RANGE (None otherwise)
    cause: str | None = None
    #: set when this outcome finished the job (exactly one partition's outcome does): validate it now
    finished_job: int | None = None
    #: ``deferred``: run again in this many seconds (the limiter's next slot, a refusal's end, the quota's reset)
    defer_s: float | None = None
    #: succeeded with rows, and the provider's series begins inside the partition, here (no bars can exist before it)
    data_from: datetime | None = None


def record_outcome(
    factory: sessionmaker[Session], partition_id: int, outcome: PartitionOutcome, *, notes: str | None, checksum: str | None = None
) -> None:
    """Write a partition's outcome (status, error, cause, notes; rows and checksum when it succeeded) and roll its job up."""
    now = datetime.now(tz=UTC)
    with factory() as session, session.begin():
        part = session.get(BackfillPartition, partition_id, with_for_update=True)
        assert part is not None
        # Finishers of one job take turns (the job row's lock, always after the partition's):
        # otherwise two last partitions committing together each see the other still running,
        # and the job is never rolled up.
        session.execute(select(BackfillJob.id).where(BackfillJob.id == part.job_id).with_for_update())
        part.status = outcome.status
        part.last_error = outcome.error[:4000] if outcome.error else None
        part.cause = outcome.cause
        if notes:
            part.notes = notes[:4000]  # whatever the outcome: a clamp or a refusal stays on record
        if outcome.status == "succeeded":
            part.rows = outcome.rows
            part.rejected = outcome.rejected
            part.provider = outcome.provider
            part.checksum = checksum
            part.data_from = outcome.data_from
        if outcome.status in TERMINAL:
            part.finished_at = now
        part.resume_at = now + timedelta(seconds=outcome.defer_s) if outcome.defer_s is not None else None
        session.flush()
        if _rollup(session, part.job_id, now):
            outcome.finished_job = int(part.job_id)


def _rollup(session: Session, job_id: int, now: datetime) -> bool:
    """Finish the job when every partition is terminal. True for the one call that finished it."""
    counts = dict(
        session.execute(
            select(BackfillPartition.status, func.count()).where(BackfillPartition.job_id == job_id).group_by(BackfillPartition.status)
        ).all()
    )
    total = sum(counts.values())
    done = counts.get("succeeded", 0) + counts.get("failed", 0)
    if total and done == total:
        status = "succeeded" if counts.get("failed", 0) == 0 else ("failed" if counts.get("succeeded", 0) == 0 else "partial")
        changed = session.execute(
            update(BackfillJob)
            .where(BackfillJob.id == job_id, BackfillJob.status.not_in(("succeeded", "failed", "partial")))
            .values(status=status, finished_at=now)
        )
        return bool(_rowcount(changed))
    return False


def job_progress(factory: sessionmaker[Session], job_id: int) -> dict[str, Any]:
    with factory() as session:
        job = session.get(BackfillJob, job_id)
        if job is None:
            raise LookupError(f"backfill job {job_id} does not exist")
        counts = dict(
            session.execute(
                select(BackfillPartition.status, func.count()).where(BackfillPartition.job_id == job_id).group_by(BackfillPartition.status)
            ).all()
        )
        rows = session.scalar(select(func.coalesce(func.sum(BackfillPartition.rows), 0)).where(BackfillPartition.job_id == job_id))
        rejected = session.scalar(select(func.coalesce(func.sum(BackfillPartition.rejected), 0)).where(BackfillPartition.job_id == job_id))
        return {
            "job_id": job_id,
            "status": job.status,
            "timeframe": job.timeframe,
            "feed": job.feed,
            "start": job.start.date().isoformat(),
            "end": job.end.date().isoformat(),
            "symbols": len(job.symbols.get("symbols", [])),
            "partitions": sum(counts.values()),
            "by_status": counts,
            "rows": int(rows or 0),
            "rejected": int(rejected or 0),
            "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        }
