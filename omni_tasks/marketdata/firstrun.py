"""The first run of the embedded default: offline history for the universe, once, through the normal backfill path.

A fresh data folder holds no bars, so a scan would rank nothing and risk would
have no returns to measure. When `omni up` runs offline (no keys, the
synthetic feed), it plans a backfill of ``OMNI_BACKFILL_FIRST_RUN_DAYS`` of
daily bars for the universe symbols short of history, records the job as
requested by :data:`FIRST_RUN_REQUESTER` (so `omni backfill status` shows it,
provider ``synthetic`` on every partition and row) and the workers do it.
When the job has been validated, the validation task queues a scan and a risk
recalculation right away, whatever the hour (:mod:`omni_tasks.validation.tasks`).

Plain Python: the caller enqueues the partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.marketdata import backfill_plan, calendar
from omni_tasks.storage.models import BackfillJob, Bar, BarSeries

#: ``requested_by`` of the first run's backfill job: the validation of that job queues the first scan and risk run.
FIRST_RUN_REQUESTER: Final = "first-run"
FIRST_RUN_NOTE: Final = "first run: synthetic history so the pipeline has data to work on (NOT REAL)"
#: A symbol holding at least this share of the range's sessions has enough history already.
ENOUGH_SHARE: Final = 0.9


def symbols_short_of_history(engine: Engine, symbols: Sequence[str], *, days: int, adjustment: str, today: date) -> list[str]:
    """The symbols whose stored daily bars (any feed) cover less than :data:`ENOUGH_SHARE` of the sessions of the last ``days`` days."""
    start = today - timedelta(days=days)
    expected = len(calendar.sessions(start, today))
    lo = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    with engine.connect() as connection:
        counts = dict(
            connection.execute(
                select(BarSeries.symbol, func.count(func.distinct(Bar.ts)))
                .join_from(Bar, BarSeries, BarSeries.id == Bar.series_id)
                .where(BarSeries.symbol.in_(list(symbols)), BarSeries.timeframe == "1Day", BarSeries.adjustment == adjustment, Bar.ts >= lo)
                .group_by(BarSeries.symbol)
            ).all()
        )
    return [s for s in symbols if counts.get(s, 0) < ENOUGH_SHARE * expected]


def plan_first_run(symbols: Sequence[str], *, days: int, feed: str, adjustment: str, today: date, earliest: date) -> backfill_plan.Plan:
    """The daily partitions of the last ``days`` days (through today) for ``symbols``."""
    start = max(today - timedelta(days=days), earliest)
    return backfill_plan.plan(
        symbols, "1Day", start, today + timedelta(days=1), feed=feed, adjustment=adjustment, today=today, earliest=earliest
    )


def is_first_run_job(factory: sessionmaker[Session], job_id: int) -> bool:
    with factory() as session:
        return session.scalar(select(BackfillJob.requested_by).where(BackfillJob.id == job_id)) == FIRST_RUN_REQUESTER


def open_first_run_job(factory: sessionmaker[Session]) -> int | None:
    """The id of the first run's backfill job while it is still running (None when there is none)."""
    with factory() as session:
        return session.scalar(
            select(BackfillJob.id)
            .where(BackfillJob.requested_by == FIRST_RUN_REQUESTER, BackfillJob.status.in_(("pending", "running")))
            .order_by(BackfillJob.id.desc())
            .limit(1)
        )
