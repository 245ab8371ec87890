"""The backfill ledger: plan partitions, run one, roll up the job, verify against the calendar.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.bars import ADJUSTMENTS, TIMEFRAMES, check_symbol, split_valid
from omni_tasks.marketdata import calendar
from omni_tasks.marketdata.errors import ProviderError
from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.router import NO_BARS_IN_RANGE, BarRouter, NoProviderServed
from omni_tasks.settings import DEFAULT_EARLIEST_BACKFILL
from omni_tasks.storage.models import BackfillJob, BackfillPartition
from omni_tasks.storage.outage import store_outages_retryable

_log = structlog.get_logger("omni.backfill")

#: Sessions per partition, per timeframe: each partition is a few thousand bars at most.
SESSIONS_PER_PARTITION: dict[str, int] = {"1Min": 5, "5Min": 20, "15Min": 60, "30Min": 120, "1Hour": 250, "1Day": 260}
#: Bars a provider returns per page (Alpaca: up to 10,000): for the call estimate.
ROWS_PER_CALL = 10_000
TERMINAL = frozenset({"succeeded", "failed"})


class BackfillRequestError(ValueError):
    """A backfill request that must be refused before anything is enqueued."""


@dataclass(frozen=True)
class PartitionSpec:
    symbol: str
    timeframe: str
    start: datetime
    end: datetime
    feed: str
    adjustment: str
    sessions: int
    expected_bars: int

    @property
    def calls(self) -> int:
        return max(1, -(-self.expected_bars // ROWS_PER_CALL))


@dataclass
class Plan:
    partitions: list[PartitionSpec] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(p.calls for p in self.partitions)

    @property
    def expected_bars(self) -> int:
        return sum(p.expected_bars for p in self.partitions)


def check_request(
    symbols: Sequence[str], timeframe: str, start: date, end: date, feed: str, adjustment: str, *, today: date | None = None, earliest: date = DEFAULT_EARLIEST_BACKFILL
) -> list[str]:
    """Validate a request; returns the cleaned symbols or raises BackfillRequestError naming the problem.

    ``earliest``: the first date a backfill may start (OMNI_BACKFILL_EARLIEST_DATE).
    """
    today = today or datetime.now(tz=UTC).date()
    if not symbols:
        raise BackfillRequestError("no symbols given")
    cleaned: list[str] = []
    for raw in symbols:
        try:
            symbol = check_symbol(raw)
        except ValueError as exc:
            raise BackfillRequestError(str(exc)) from None
        if symbol not in cleaned:
            cleaned.append(symbol)
    if timeframe not in TIMEFRAMES:
        raise BackfillRequestError(f"unknown timeframe {timeframe!r}: choose from {', '.join(TIMEFRAMES)}")
    if adjustment not in ADJUSTMENTS:
        raise BackfillRequestError(f"unknown adjustment {adjustment!r}: choose from {', '.join(ADJUSTMENTS)}")
    if feed not in {"iex", "sip"}:
        raise BackfillRequestError(f"unknown feed {feed!r}: iex or sip")
    if end <= start:
        raise BackfillRequestError(
            f"impossible date range: end {end.isoformat()} is not after start {start.isoformat()} (end is exclusive)"
        )
    if start > today:
        raise BackfillRequestError(f"start {start.isoformat()} is in the future (today is {today.isoformat()} UTC)")
    if start < earliest:
        raise BackfillRequestError(f"start {start.isoformat()} is before {earliest.isoformat()}, the earliest backfill date (OMNI_BACKFILL_EARLIEST_DATE)")
    if start < calendar.FIRST_SESSION:
        raise BackfillRequestError(f"start {start.isoformat()} is before {calendar.FIRST_SESSION.isoformat()}, the first session of the exchange calendar")
    return cleaned


def plan(
    symbols: Sequence[str], timeframe: str, start: date, end: date, *, feed: str = "iex", adjustment: str = "raw", today: date | None = None, earliest: date = DEFAULT_EARLIEST_BACKFILL
) -> Plan:
    """Partitions of whole sessions in [start, end) (end exclusive, capped at tomorrow)."""
    today = today or datetime.now(tz=UTC).date()
    cleaned = check_request(symbols, timeframe, start, end, feed, adjustment, today=today, earliest=earliest)
    end = min(end, today + timedelta(days=1))
    session_days = calendar.sessions(start, end - timedelta(days=1))
    if not session_days:
        raise BackfillRequestError(f"no trading sessions between {start.isoformat()} and {end.isoformat()} (exclusive)")
    chunk = SESSIONS_PER_PARTITION[timeframe]
    tf = TIMEFRAMES[timeframe]
    result = Plan()
    for i in range(0, len(session_days), chunk):
        days = session_days[i : i + chunk]
        p_start = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC)
        p_end = datetime.combine(days[-1] + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        expected = len(calendar.expected_bar_starts(tf, p_start, p_end))
        for symbol in cleaned:
            result.partitions.append(PartitionSpec(symbol, timeframe, p_start, p_end, feed, adjustment, len(days), expected))
    return result


def create_job(factory: sessionmaker[Session], the_plan: Plan, *, requested_by: str, note: str | None = None) -> int:
    """Record a job and its partitions (status pending). Returns the job id."""
    if not the_plan.partitions:
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
        return bool(changed.rowcount)


def fail_partition(factory: sessionmaker[Session], partition_id: int, *, reason: str) -> tuple[bool, int | None]:
    """Fail a stuck partition with the reason and roll its job up. Returns (failed it, job finished by it)."""
    with factory() as session:
        part = session.get(BackfillPartition, partition_id)
        if part is None or part.status in TERMINAL:
            return False, None
    outcome = PartitionOutcome(partition_id, "failed", error=reason)
    _finish(factory, partition_id, outcome, notes=None)
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
            _finish(factory, partition_id, outcome, notes=provider_notes)
            log.info("partition deferred", resume_in_s=round(exc.defer_s, 2), detail=str(exc))
            return outcome
        if exc.cause == NO_BARS_IN_RANGE and (exc.permanent or final_attempt):
            # The symbol is known and the range is empty: done, no rows, and the reason on record.
            said = next((a.provider for a in exc.attempts if a.detail.startswith("no bars in range")), None)
            outcome = PartitionOutcome(partition_id, "succeeded", provider=said, cause=exc.cause)
            _finish(factory, partition_id, outcome, notes="; ".join([*exc.notes, str(exc)]))
            log.info("partition has no bars in range", provider=said, detail=str(exc))
            return outcome
        retry = not exc.permanent and not final_attempt
        outcome = PartitionOutcome(partition_id, "retrying" if retry else "failed", error=str(exc), retry=retry, cause=exc.cause)
        _finish(factory, partition_id, outcome, notes=provider_notes)
        log.warning("partition not served", status=outcome.status, error=str(exc), notes=provider_notes)
        return outcome
    except ProviderError as exc:  # pragma: no cover - the router wraps provider errors
        outcome = PartitionOutcome(partition_id, "failed", error=f"{type(exc).__name__}: {exc}")
        _finish(factory, partition_id, outcome, notes=None)
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
    outcome = PartitionOutcome(
        partition_id,
        "succeeded",
        rows=len(valid),
        rejected=len(rejected),
        inserted=getattr(result, "inserted", 0),
        updated=getattr(result, "updated", 0),
        provider=routed.provider,
    )
    notes = "; ".join(routed.notes + [f"{a.provider}: {a.detail}" for a in routed.attempts if a.outcome != "ok"]) or None
    _finish(factory, partition_id, outcome, notes=notes, checksum=store.checksum(valid) if len(valid) else None)
    log.info("partition stored", rows=outcome.rows, inserted=outcome.inserted, updated=outcome.updated, provider=routed.provider)
    return outcome


def _finish(
    factory: sessionmaker[Session], partition_id: int, outcome: PartitionOutcome, *, notes: str | None, checksum: str | None = None
) -> None:
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
        return bool(changed.rowcount)
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


def incremental_plan(
    symbols: Sequence[str],
    *,
    store: Any,
    timeframe: str,
    feed: str,
    adjustment: str,
    overlap_days: int,
    lookback_days: int,
    today: date | None = None,
    feeds: Sequence[str] | None = None,
    earliest: date = DEFAULT_EARLIEST_BACKFILL,
) -> Plan:
    """The nightly plan: from each symbol's last stored bar minus an overlap (or the lookback) to today.

    ``feeds``: the feeds stored rows may carry for this request (router.serving_feeds);
    the latest bar of any of them counts. Default: the requested feed only.
    """
    today = today or datetime.now(tz=UTC).date()
    end = today + timedelta(days=1)
    combined = Plan()
    look_in = tuple(feeds) if feeds else (feed,)
    for symbol in symbols:
        stamps = [t for t in (store.last_ts(symbol, timeframe, f, adjustment) for f in look_in) if t is not None]
        last = max(stamps) if stamps else None
        start = (last.date() - timedelta(days=overlap_days)) if last is not None else today - timedelta(days=lookback_days)
        start = max(start, earliest)
        try:
            combined.partitions.extend(plan([symbol], timeframe, start, end, feed=feed, adjustment=adjustment, today=today, earliest=earliest).partitions)
        except BackfillRequestError as exc:
            _log.info("nothing to backfill", symbol=symbol, reason=str(exc))
    return combined


@dataclass(frozen=True)
class VerifyRow:
    symbol: str
    expected: int
    stored: int
    missing: int
    outside_sessions: int
    first_missing: str | None


def verify(
    symbols: Sequence[str],
    *,
    store: Any,
    timeframe: str,
    start: date,
    end: date,
    feed: str,
    adjustment: str,
    feeds: Sequence[str] | None = None,
) -> list[VerifyRow]:
    """Stored bars against the exchange calendar: bars missing in sessions, bars outside sessions.

    ``feeds`` (most preferred first) are the feeds that count; default: the requested feed only.
    """
    tf = TIMEFRAMES[timeframe]
    lo = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    hi = datetime.combine(end, datetime.min.time(), tzinfo=UTC)
    expected = calendar.expected_bar_starts(tf, lo, hi)
    out: list[VerifyRow] = []
    # One read for every symbol (a call per symbol costs ~20 ms of query and frame building each).
    stored_all = store.read_many(list(symbols), timeframe, lo, hi, feeds=tuple(feeds) if feeds else (feed,), adjustment=adjustment)
    by_symbol = {str(s): part["ts"] for s, part in stored_all.groupby("symbol", sort=False)}
    for symbol in symbols:
        have = pd.DatetimeIndex(by_symbol.get(symbol, stored_all["ts"].iloc[:0]))
        missing = expected.difference(have)
        outside = have.difference(expected)
        out.append(
            VerifyRow(symbol, len(expected), len(have), len(missing), len(outside), missing[0].isoformat() if len(missing) else None)
        )
    return out
