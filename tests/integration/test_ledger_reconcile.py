"""The ledger reconciler on a real database (SQLite and PostgreSQL) and real Redis, with the broker's view and the clock injected.

A partition with no live delivery becomes a suspect; only once it stayed so
for the threshold is it requeued (a bounded number of times), then failed with
the reason, and its job rolled up; a live delivery clears the suspicion; a
scan run is failed with the reason; --only-failed takes stuck partitions.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
import redis
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core import keys
from omni_tasks.marketdata import backfill, backfill_plan
from omni_tasks.scans import runs as scan_runs
from omni_tasks.scans.scanner import ScanConfig
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import BackfillPartition
from omni_tasks.watchdog import ledgers

pytestmark = pytest.mark.services  # suspects and counts live in Redis

TODAY = date(2025, 6, 16)
T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def factory(request: pytest.FixtureRequest, tmp_path) -> Iterator[sessionmaker[Session]]:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'omni.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")()
    engine: Engine = make_engine(url)
    migrations.upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


def _job(factory: sessionmaker[Session], symbols: list[str]) -> tuple[int, list[int]]:
    plan = backfill_plan.plan(symbols, "1Day", date(2024, 1, 2), date(2024, 6, 1), today=TODAY)
    job_id = backfill.create_job(factory, plan, requested_by="test")
    return job_id, backfill.partition_ids(factory, job_id)


class Broker:
    """The broker's view, as the test wants it to be."""

    def __init__(self) -> None:
        self.live = ledgers.Deliveries()
        self.requeued: list[int] = []
        self.finished: list[int] = []

    def __call__(self) -> ledgers.Deliveries:
        return self.live


def _pass(
    factory: sessionmaker[Session], client: redis.Redis, broker: Broker, now: float, *, max_requeues: int = 2
) -> ledgers.ReconcileSummary:
    return ledgers.reconcile(
        factory=factory, client=client, deliveries=broker, stuck_after_s=10, max_requeues=max_requeues,
        requeue=broker.requeued.append, job_finished=broker.finished.append, now=now,
    )  # fmt: skip


def test_partition_without_live_delivery_is_requeued_after_the_threshold_then_failed_and_the_job_rolls_up(
    factory: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    job_id, (a, b) = _job(factory, ["AAA", "BBB"])
    broker = Broker()
    broker.live.partitions = {b}  # b is queued; a's message was lost

    first = _pass(factory, redis_client, broker, T0)
    assert (first.stuck, first.requeued) == (1, 0), "a suspect is not acted on before the threshold"
    assert _pass(factory, redis_client, broker, T0 + 7).requeued == 0
    assert ledgers.read_view(redis_client, now=T0 + 7)["stuck_partitions"] == 1
    second = _pass(factory, redis_client, broker, T0 + 10)
    assert second.requeued == 1
    assert broker.requeued == [a]
    with factory() as session:
        part = session.get(BackfillPartition, a)
        assert part is not None
        assert part.status == "pending"
        assert "requeued by the watchdog (1 of 2)" in (part.last_error or "")

    # b finishes; a's requeued message is lost again, twice: the budget is spent, a fails with the reason.
    with factory() as session, session.begin():
        session.execute(update(BackfillPartition).where(BackfillPartition.id == b).values(status="succeeded"))
    broker.live.partitions = set()
    _pass(factory, redis_client, broker, T0 + 20)
    assert _pass(factory, redis_client, broker, T0 + 30).requeued == 1
    _pass(factory, redis_client, broker, T0 + 40)
    last = _pass(factory, redis_client, broker, T0 + 50)
    assert (last.requeued, last.failed) == (0, 1)
    assert broker.requeued == [a, a]
    progress = backfill.job_progress(factory, job_id)
    assert progress["status"] == "partial", progress
    assert broker.finished == [job_id], "what follows a finished job (validation) runs once"
    with factory() as session:
        part = session.get(BackfillPartition, a)
        assert part is not None
        assert part.status == "failed"
        assert "after 2 requeues" in (part.last_error or "")
    view = ledgers.read_view(redis_client, now=T0 + 50)
    assert view["stuck"] == 0
    assert (view["last_hour"]["requeued"], view["last_hour"]["failed"]) == (2, 1)

    # The operator re-runs it: --only-failed resets it and the watchdog's budget.
    assert backfill.reset_failed(factory, job_id) == [a]
    ledgers.forget_requeues(redis_client, [a])
    assert redis_client.hget(keys.LEDGER_REQUEUES_KEY, f"partition:{a}") is None


def test_the_broker_is_read_a_few_times_per_threshold_not_every_tick(factory: sessionmaker[Session], redis_client: redis.Redis) -> None:
    _job(factory, ["AAA"])
    reads: list[float] = []
    broker = Broker()

    def counting() -> ledgers.Deliveries:
        reads.append(1.0)
        return broker()

    for second in range(0, 20):
        ledgers.reconcile(
            factory=factory, client=redis_client, deliveries=counting, stuck_after_s=10, max_requeues=2,
            requeue=broker.requeued.append, job_finished=broker.finished.append, now=T0 + second,
        )  # fmt: skip
    assert len(reads) == 7, "every 2.5 s of 20 s (ticks each second)"
    assert len(broker.requeued) == 1


def test_a_live_delivery_clears_the_suspicion(factory: sessionmaker[Session], redis_client: redis.Redis) -> None:
    _, (a,) = _job(factory, ["AAA"])
    broker = Broker()
    _pass(factory, redis_client, broker, T0)
    broker.live.partitions = {a}  # it was only in flight between the queue and `unacked`
    _pass(factory, redis_client, broker, T0 + 5)
    broker.live.partitions = set()
    assert _pass(factory, redis_client, broker, T0 + 12).requeued == 0, "the silence is counted from the last time it was missed anew"
    assert _pass(factory, redis_client, broker, T0 + 22).requeued == 1


def test_stuck_scan_run_fails_with_the_reason_and_a_finished_one_is_left_alone(
    factory: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    as_of = datetime(2025, 6, 13, 21, tzinfo=UTC)
    lost = scan_runs.create_run(factory, ["AAA"], as_of=as_of, config=ScanConfig(), chunk_size=1, requested_by="test")
    alive = scan_runs.create_run(factory, ["BBB"], as_of=as_of, config=ScanConfig(), chunk_size=1, requested_by="test")
    broker = Broker()
    broker.live.scan_runs = {alive}
    _pass(factory, redis_client, broker, T0)
    assert _pass(factory, redis_client, broker, T0 + 10).failed == 1
    assert scan_runs.load_run(factory, lost)["status"] == "failed"
    assert "no chunk or merge" in (scan_runs.load_run(factory, lost)["error"] or "")
    assert scan_runs.load_run(factory, alive)["status"] == "running"
    assert not scan_runs.fail_run(factory, lost, "late", only_running=True), "a finished run is not failed again"


def test_only_failed_takes_stuck_partitions_but_not_live_or_recent_ones(factory: sessionmaker[Session]) -> None:
    job_id, (a, b, c) = _job(factory, ["AAA", "BBB", "CCC"])
    with factory() as session, session.begin():
        session.execute(update(BackfillPartition).where(BackfillPartition.id == c).values(status="failed", last_error="boom"))
    live = ledgers.Deliveries(partitions={b})
    later = datetime.now(tz=UTC).replace(year=datetime.now(tz=UTC).year + 1)
    assert ledgers.stuck_partitions(factory, live, job_id, quiet_for_s=10) == [], "just created: not stuck yet"
    stuck = ledgers.stuck_partitions(factory, live, job_id, quiet_for_s=10, now=later)
    assert stuck == [a]
    assert backfill.reset_failed(factory, job_id, stuck=stuck) == [a, c]
