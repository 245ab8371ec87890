"""The backfill ledger on real databases (SQLite in tmp_path, and PostgreSQL) with the real BarStore.

run_partition records rows, checksum, provider and errors; re-runs do not fetch
or duplicate; transient failures retry, permanent ones fail at once; rows that
fail the boundary check are quarantined, never dropped; the job rolls up; and
reset_failed re-opens only what failed; the nightly plan and verify see the
bars of every feed the configured providers store rows under. The router is
real (breakers on the test's Redis); providers are fakes serving synthetic bars.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.marketdata import backfill_plan, calendar
from omni_tasks.marketdata.backfill import create_job, job_progress, partition_ids, reset_failed
from omni_tasks.marketdata.backfill_plan import BackfillRequestError, Plan
from omni_tasks.marketdata.backfill_run import run_partition
from omni_tasks.marketdata.errors import ProviderUnavailable, UnknownSymbol
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest, BarResult, Capabilities
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.marketdata.router import BarRouter, serving_feeds
from omni_tasks.safety.breaker import BreakerPolicy, CircuitBreaker
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import BackfillJob, BackfillPartition, RejectedRow

pytestmark = pytest.mark.services  # the router's breakers live in Redis

TODAY = date(2025, 6, 16)
START, END = date(2024, 3, 4), date(2024, 3, 9)  # one week: 5 sessions, one 5Min partition per symbol
BARS_PER_PARTITION = 5 * 78
QUIET = BreakerPolicy(failure_threshold=1_000, rate_min_calls=1_000_000)


class FakeAlpaca:
    """Serves synthetic bars as if it were a real feed (provider and feed as requested); failures scripted per symbol."""

    def __init__(self, name: str = "alpaca", script: dict[str, list[object]] | None = None, *, corrupt: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> None:
        self.name = name
        self.capabilities = Capabilities(timeframes=frozenset({"1Min", "5Min", "1Day"}), rate_limit_per_min=1_000_000)
        self.script = {symbol: list(steps) for symbol, steps in (script or {}).items()}
        self.corrupt = corrupt
        self.calls: list[BarRequest] = []

    def available(self) -> bool:
        return True

    def fetch_bars(self, request: BarRequest) -> BarResult:
        self.calls.append(request)
        steps = self.script.get(request.symbol, [])
        step = steps.pop(0) if len(steps) > 1 else (steps[0] if steps else "ok")
        if isinstance(step, BaseException):
            raise step
        bars = SyntheticBars().fetch_bars(request).bars.assign(provider=self.name, feed=request.feed)
        if self.corrupt is not None:
            bars = self.corrupt(bars)
        return BarResult(bars, notes=[f"{self.name}: served"])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'omni.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")()
    engine = make_engine(url)
    migrations.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def store(engine: Engine) -> BarStore:
    return BarStore(engine)


@pytest.fixture
def make_router(redis_client: redis.Redis) -> Callable[..., BarRouter]:
    def make(*providers: BarProvider, max_attempts: int = 1) -> BarRouter:
        return BarRouter(
            list(providers),
            breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, QUIET),
            limiter=None,
            max_attempts=max_attempts,
            sleep=lambda _s: None,
        )

    return make


def _job(factory: sessionmaker[Session], symbols: list[str], timeframe: str = "5Min", start: date = START, end: date = END) -> tuple[int, list[int]]:
    the_plan = backfill_plan.plan(symbols, timeframe, start, end, today=TODAY)
    job_id = create_job(factory, the_plan, requested_by="test")
    return job_id, partition_ids(factory, job_id)


def _part(factory: sessionmaker[Session], partition_id: int) -> BackfillPartition:
    with factory() as session:
        part = session.get(BackfillPartition, partition_id)
        assert part is not None
        return part


def _job_row(factory: sessionmaker[Session], job_id: int) -> BackfillJob:
    with factory() as session:
        job = session.get(BackfillJob, job_id)
        assert job is not None
        return job


# ---- success and re-runs -------------------------------------------------------------------------


def test_backfill_run_partition_success_records_rows_checksum_and_provider(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    job_id, (pid,) = _job(factory, ["AAPL"])
    assert _part(factory, pid).status == "pending"
    outcome = run_partition(pid, factory=factory, store=store, router=make_router(FakeAlpaca()), final_attempt=False)
    assert (outcome.status, outcome.rows, outcome.rejected, outcome.inserted, outcome.updated) == ("succeeded", BARS_PER_PARTITION, 0, BARS_PER_PARTITION, 0)
    assert (outcome.provider, outcome.retry, outcome.error) == ("alpaca", False, None)
    part = _part(factory, pid)
    assert (part.status, part.rows, part.rejected, part.provider, part.attempts, part.last_error) == ("succeeded", BARS_PER_PARTITION, 0, "alpaca", 1, None)
    assert part.started_at is not None
    assert part.finished_at is not None
    stored = store.read("AAPL", "5Min", part.start, part.end, feeds=("iex",))
    assert len(stored) == BARS_PER_PARTITION
    assert part.checksum == BarStore.checksum(stored), "the ledger's checksum is the checksum of the rows stored"
    assert set(stored["provider"]) == {"alpaca"}
    progress = job_progress(factory, job_id)
    assert (progress["status"], progress["rows"], progress["rejected"], progress["partitions"], progress["by_status"]) == ("succeeded", BARS_PER_PARTITION, 0, 1, {"succeeded": 1})
    assert (progress["start"], progress["end"], progress["symbols"]) == ("2024-03-04", "2024-03-09", 1)
    assert progress["finished_at"] is not None


def test_backfill_rerun_of_a_succeeded_partition_does_not_fetch_again(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    _, (pid,) = _job(factory, ["AAPL"])
    provider = FakeAlpaca()
    router = make_router(provider)
    first = run_partition(pid, factory=factory, store=store, router=router, final_attempt=False)
    before = (store.count("AAPL"), _part(factory, pid).checksum)
    second = run_partition(pid, factory=factory, store=store, router=router, final_attempt=True)
    delta = store.count("AAPL") - before[0]
    print(f"backfill re-run row delta: {delta}; provider calls on re-run: {len(provider.calls) - 1}")
    assert len(provider.calls) == 1
    assert delta == 0
    assert (second.status, second.rows, second.provider) == ("succeeded", first.rows, "alpaca")
    part = _part(factory, pid)
    assert (part.attempts, part.checksum) == (1, before[1])


def test_backfill_same_range_in_a_new_job_leaves_the_same_rows(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    router = make_router(FakeAlpaca())
    _, (first_pid,) = _job(factory, ["AAPL"])
    run_partition(first_pid, factory=factory, store=store, router=router, final_attempt=False)
    count = store.count("AAPL")
    _, (second_pid,) = _job(factory, ["AAPL"])
    outcome = run_partition(second_pid, factory=factory, store=store, router=router, final_attempt=False)
    print(f"backfill re-run row delta: {store.count('AAPL') - count}; rows inserted on re-run: {outcome.inserted}")
    assert store.count("AAPL") == count == BARS_PER_PARTITION
    assert (outcome.inserted, outcome.updated, outcome.rows) == (0, 0, BARS_PER_PARTITION)
    assert _part(factory, second_pid).checksum == _part(factory, first_pid).checksum


def test_backfill_served_by_fallback_provider_records_it_and_the_earlier_failure(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    _, (pid,) = _job(factory, ["AAPL"])
    down = FakeAlpaca("alpaca", {"AAPL": [ProviderUnavailable("503 Service Unavailable", provider="alpaca")]})
    outcome = run_partition(pid, factory=factory, store=store, router=make_router(down, FakeAlpaca("yahoo")), final_attempt=False)
    assert (outcome.status, outcome.provider) == ("succeeded", "yahoo")
    part = _part(factory, pid)
    assert part.provider == "yahoo"
    assert part.notes is not None
    assert "alpaca: ProviderUnavailable: 503 Service Unavailable" in part.notes
    assert "yahoo: served" in part.notes
    assert set(store.read("AAPL", "5Min", part.start, part.end, feeds=("iex",))["provider"]) == {"yahoo"}


# ---- failures ------------------------------------------------------------------------------------------


def test_backfill_transient_failure_is_retrying_then_failed_on_final_attempt(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    job_id, (pid,) = _job(factory, ["AAPL"])
    provider = FakeAlpaca(script={"AAPL": [ProviderUnavailable("read timeout", provider="alpaca")]})
    router = make_router(provider)
    first = run_partition(pid, factory=factory, store=store, router=router, final_attempt=False)
    assert (first.status, first.retry) == ("retrying", True)
    part = _part(factory, pid)
    assert (part.status, part.attempts, part.finished_at) == ("retrying", 1, None)
    assert "read timeout" in (part.last_error or "")
    assert _job_row(factory, job_id).status == "running"
    last = run_partition(pid, factory=factory, store=store, router=router, final_attempt=True)
    assert (last.status, last.retry) == ("failed", False)
    part = _part(factory, pid)
    assert (part.status, part.attempts, part.rows) == ("failed", 2, 0)
    assert "read timeout" in (part.last_error or "")
    assert part.finished_at is not None
    assert _job_row(factory, job_id).status == "failed"
    assert store.count("AAPL") == 0


def test_backfill_transient_failure_then_success_clears_the_error(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    job_id, (pid,) = _job(factory, ["AAPL"])
    provider = FakeAlpaca(script={"AAPL": [ProviderUnavailable("read timeout", provider="alpaca"), "ok"]})
    router = make_router(provider)
    assert run_partition(pid, factory=factory, store=store, router=router, final_attempt=False).status == "retrying"
    assert run_partition(pid, factory=factory, store=store, router=router, final_attempt=False).status == "succeeded"
    part = _part(factory, pid)
    assert (part.status, part.attempts, part.last_error, part.rows) == ("succeeded", 2, None, BARS_PER_PARTITION)
    assert _job_row(factory, job_id).status == "succeeded"


def test_backfill_permanent_failure_fails_at_once_with_the_reason(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    job_id, (pid,) = _job(factory, ["ZZZZ"])
    provider = FakeAlpaca(script={"ZZZZ": [UnknownSymbol("asset ZZZZ not found", provider="alpaca")]})
    outcome = run_partition(pid, factory=factory, store=store, router=make_router(provider, max_attempts=3), final_attempt=False)
    assert (outcome.status, outcome.retry) == ("failed", False), "retrying cannot help: not 'retrying' even before the final attempt"
    assert len(provider.calls) == 1
    part = _part(factory, pid)
    assert part.status == "failed"
    assert part.attempts == 1
    assert "unknown symbol ZZZZ" in (part.last_error or "")
    assert "asset ZZZZ not found" in (part.last_error or "")
    assert _job_row(factory, job_id).status == "failed"


# ---- quarantine ------------------------------------------------------------------------------------------


def _corrupt(bars: pd.DataFrame) -> pd.DataFrame:
    bad = bars.copy()
    bad.loc[3, "high"] = bad.loc[3, "low"] / 2  # high below low
    bad.loc[7, "close"] = -1.0  # a negative price
    stray = bad.iloc[[-1]].assign(ts=bad["ts"].iloc[-1] + pd.Timedelta(days=3))  # outside the partition
    return pd.concat([bad, stray], ignore_index=True)


def test_backfill_rows_failing_the_boundary_check_are_quarantined_not_dropped(factory, store, make_router, engine) -> None:  # type: ignore[no-untyped-def]
    job_id, (pid,) = _job(factory, ["AAPL"])
    outcome = run_partition(pid, factory=factory, store=store, router=make_router(FakeAlpaca(corrupt=_corrupt)), final_attempt=False)
    served = BARS_PER_PARTITION + 1
    assert outcome.status == "succeeded"
    assert (outcome.rows, outcome.rejected) == (BARS_PER_PARTITION - 2, 3)
    assert outcome.rows + outcome.rejected == served, "every row served is either stored or quarantined"
    part = _part(factory, pid)
    assert (part.rows, part.rejected) == (BARS_PER_PARTITION - 2, 3)
    assert store.count("AAPL") == BARS_PER_PARTITION - 2
    with session_factory(engine)() as session:
        rejected = session.scalars(select(RejectedRow).where(RejectedRow.partition_id == pid).order_by(RejectedRow.ts)).all()
    assert len(rejected) == 3
    reasons = " | ".join(r.reason for r in rejected)
    assert "high_is_the_high" in reasons
    assert "close" in reasons
    assert "outside the partition's range" in reasons
    assert all(r.symbol == "AAPL" and r.provider == "alpaca" and r.payload for r in rejected)
    assert job_progress(factory, job_id)["rejected"] == 3


# ---- the job -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failing", "status", "by_status"),
    [
        ((), "succeeded", {"succeeded": 2}),
        (("MSFT",), "partial", {"succeeded": 1, "failed": 1}),
        (("AAPL", "MSFT"), "failed", {"failed": 2}),
    ],
)
def test_backfill_job_status_rolls_up_from_its_partitions(factory, store, make_router, failing, status, by_status) -> None:  # type: ignore[no-untyped-def]
    job_id, pids = _job(factory, ["AAPL", "MSFT"])
    provider = FakeAlpaca(script={s: [UnknownSymbol(f"{s} delisted", provider="alpaca")] for s in failing})
    router = make_router(provider)
    run_partition(pids[0], factory=factory, store=store, router=router, final_attempt=False)
    assert _job_row(factory, job_id).status == "running", "not rolled up while a partition is still pending"
    assert _job_row(factory, job_id).finished_at is None
    run_partition(pids[1], factory=factory, store=store, router=router, final_attempt=False)
    job = _job_row(factory, job_id)
    assert job.status == status
    assert job.finished_at is not None
    progress = job_progress(factory, job_id)
    assert progress["by_status"] == by_status
    assert progress["rows"] == BARS_PER_PARTITION * by_status.get("succeeded", 0)


def test_backfill_reset_failed_reopens_only_failed_partitions(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    job_id, pids = _job(factory, ["AAPL", "MSFT", "NVDA"])
    outage = ProviderUnavailable("connection refused", provider="alpaca")
    router = make_router(FakeAlpaca(script={"MSFT": [outage], "NVDA": [outage]}))
    for pid in pids:
        run_partition(pid, factory=factory, store=store, router=router, final_attempt=True)
    assert _job_row(factory, job_id).status == "partial"
    statuses = {_part(factory, pid).symbol: _part(factory, pid).status for pid in pids}
    assert statuses == {"AAPL": "succeeded", "MSFT": "failed", "NVDA": "failed"}
    aapl_before = _part(factory, pids[0])

    reopened = reset_failed(factory, job_id)
    assert sorted(reopened) == sorted(pid for pid in pids if _part(factory, pid).symbol != "AAPL")
    for pid in reopened:
        part = _part(factory, pid)
        assert (part.status, part.last_error) == ("pending", None)
    aapl = _part(factory, pids[0])
    assert (aapl.status, aapl.rows, aapl.checksum, aapl.attempts) == ("succeeded", aapl_before.rows, aapl_before.checksum, aapl_before.attempts)
    job = _job_row(factory, job_id)
    assert (job.status, job.finished_at) == ("running", None)
    assert partition_ids(factory, job_id, statuses=["pending"]) == sorted(reopened)

    healthy = make_router(FakeAlpaca())
    for pid in reopened:
        assert run_partition(pid, factory=factory, store=store, router=healthy, final_attempt=True).status == "succeeded"
    assert _job_row(factory, job_id).status == "succeeded"
    assert reset_failed(factory, job_id) == []


def test_backfill_job_with_many_partitions_records_each(factory, store, make_router, engine) -> None:  # type: ignore[no-untyped-def]
    job_id, pids = _job(factory, ["AAPL"], timeframe="1Min", start=date(2024, 11, 25), end=date(2024, 12, 7))
    assert len(pids) == 2  # 9 sessions incl. the Thanksgiving half day: 5 + 4
    router = make_router(FakeAlpaca())
    rows = [run_partition(pid, factory=factory, store=store, router=router, final_attempt=False).rows for pid in pids]
    assert rows == [4 * 390 + 210, 4 * 390]  # Nov 25, 26, 27, 29 (half day), Dec 2 | Dec 3-6
    with session_factory(engine)() as session:
        total = session.scalar(select(func.sum(BackfillPartition.rows)).where(BackfillPartition.job_id == job_id))
    assert total == store.count("AAPL") == 8 * 390 + 210


# ---- refused input -------------------------------------------------------------------------------------------


def test_backfill_ledger_refuses_empty_plans_and_unknown_ids(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackfillRequestError, match="no partitions"):
        create_job(factory, Plan(), requested_by="test")
    with pytest.raises(LookupError, match="partition 999999 does not exist"):
        run_partition(999_999, factory=factory, store=store, router=make_router(FakeAlpaca()), final_attempt=False)
    with pytest.raises(LookupError, match="job 999999 does not exist"):
        job_progress(factory, 999_999)


# ---- the nightly plan against stored bars ---------------------------------------------------------------------


def test_backfill_incremental_plan_starts_from_the_last_stored_bar(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    _, (pid,) = _job(factory, ["AAPL"])
    run_partition(pid, factory=factory, store=store, router=make_router(FakeAlpaca()), final_attempt=False)
    assert store.last_ts("AAPL", "5Min", "iex", "raw") == datetime(2024, 3, 8, 20, 55, tzinfo=UTC)
    the_plan = backfill_plan.incremental_plan(["AAPL"], store=store, timeframe="5Min", feed="iex", adjustment="raw", overlap_days=1, lookback_days=400, today=date(2024, 3, 12))
    assert the_plan.partitions[0].start == datetime(2024, 3, 7, tzinfo=UTC)
    assert the_plan.partitions[-1].end == datetime(2024, 3, 13, tzinfo=UTC)


def test_backfill_incremental_plan_sees_bars_stored_by_the_synthetic_feed(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    _, (pid,) = _job(factory, ["AAPL"])
    assert run_partition(pid, factory=factory, store=store, router=make_router(SyntheticBars()), final_attempt=False).rows == BARS_PER_PARTITION
    assert store.last_ts("AAPL", "5Min", "iex", "raw") is None, "the synthetic feed stores its rows under its own name"
    feeds = serving_feeds(["synthetic"], "iex")
    assert feeds == ("synthetic",)
    the_plan = backfill_plan.incremental_plan(["AAPL"], store=store, timeframe="5Min", feed="iex", adjustment="raw", overlap_days=1, lookback_days=400, today=date(2024, 3, 12), feeds=feeds)
    assert the_plan.partitions[0].start == datetime(2024, 3, 7, tzinfo=UTC)
    assert the_plan.partitions[-1].end == datetime(2024, 3, 13, tzinfo=UTC)
    assert {p.feed for p in the_plan.partitions} == {"iex"}, "the plan still requests the configured feed"


def test_backfill_incremental_plan_by_default_counts_only_the_requested_feed(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    _, (pid,) = _job(factory, ["AAPL"])
    run_partition(pid, factory=factory, store=store, router=make_router(SyntheticBars()), final_attempt=False)
    the_plan = backfill_plan.incremental_plan(["AAPL"], store=store, timeframe="5Min", feed="iex", adjustment="raw", overlap_days=1, lookback_days=400, today=date(2024, 3, 12))
    lookback_start = datetime.combine(calendar.sessions(date(2024, 3, 12) - timedelta(days=400), date(2024, 3, 12))[0], datetime.min.time(), tzinfo=UTC)
    assert the_plan.partitions[0].start == lookback_start, "synthetic rows do not count for iex unless their feed is passed"


def test_backfill_incremental_plan_takes_the_latest_bar_of_any_serving_feed(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    _, (early,) = _job(factory, ["AAPL"], start=date(2024, 2, 26), end=date(2024, 3, 2))
    _, (late,) = _job(factory, ["AAPL"])
    run_partition(early, factory=factory, store=store, router=make_router(FakeAlpaca()), final_attempt=False)  # iex, to Mar 1
    run_partition(late, factory=factory, store=store, router=make_router(SyntheticBars()), final_attempt=False)  # synthetic, to Mar 8
    kwargs = {"store": store, "timeframe": "5Min", "feed": "iex", "adjustment": "raw", "overlap_days": 1, "lookback_days": 400, "today": date(2024, 3, 12)}
    assert backfill_plan.incremental_plan(["AAPL"], **kwargs).partitions[0].start == datetime(2024, 2, 29, tzinfo=UTC)
    both = backfill_plan.incremental_plan(["AAPL"], **kwargs, feeds=serving_feeds(["alpaca", "synthetic"], "iex"))
    assert both.partitions[0].start == datetime(2024, 3, 7, tzinfo=UTC)


def test_backfill_verify_counts_bars_stored_by_the_serving_feeds(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    _, (pid,) = _job(factory, ["AAPL"])
    run_partition(pid, factory=factory, store=store, router=make_router(SyntheticBars()), final_attempt=False)
    kwargs = {"store": store, "timeframe": "5Min", "start": START, "end": END, "feed": "iex", "adjustment": "raw"}
    (default,) = backfill_plan.verify(["AAPL"], **kwargs)
    assert (default.expected, default.stored, default.missing) == (BARS_PER_PARTITION, 0, BARS_PER_PARTITION), "by default only iex rows count"
    assert default.first_missing == "2024-03-04T14:30:00+00:00"
    (served,) = backfill_plan.verify(["AAPL"], **kwargs, feeds=serving_feeds(["alpaca", "synthetic"], "iex"))
    assert (served.expected, served.stored, served.missing, served.outside_sessions, served.first_missing) == (BARS_PER_PARTITION, BARS_PER_PARTITION, 0, 0, None)


def test_backfill_partition_range_round_trips_as_aware_utc_days(factory) -> None:  # type: ignore[no-untyped-def]
    _, (pid,) = _job(factory, ["AAPL"])
    part = _part(factory, pid)
    assert (part.start, part.end) == (datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 9, tzinfo=UTC))
    assert part.end - part.start == timedelta(days=5)


def test_backfill_verify_reads_whatever_feeds_were_stored_for_the_symbols(factory, store, make_router) -> None:  # type: ignore[no-untyped-def]
    from omni_tasks.contracts.feeds import feeds_to_read

    _, (synthetic,) = _job(factory, ["AAPL"])
    _, (iex,) = _job(factory, ["MSFT"])
    run_partition(synthetic, factory=factory, store=store, router=make_router(SyntheticBars()), final_attempt=False)
    run_partition(iex, factory=factory, store=store, router=make_router(FakeAlpaca()), final_attempt=False)
    lo, hi = datetime.combine(START, datetime.min.time(), tzinfo=UTC), datetime.combine(END, datetime.min.time(), tzinfo=UTC)
    assert store.stored_feeds(["AAPL"], "5Min", "raw", lo, hi) == ("synthetic",)
    assert store.stored_feeds(["AAPL", "MSFT"], "5Min", "raw", lo, hi) == ("iex", "synthetic"), "most preferred first"
    assert store.stored_feeds(["AAPL"], "1Day", "raw", lo, hi) == ()
    # The default (no --feed) reads what is stored, whatever the provider order says; nothing stored: the order's feeds.
    feeds = feeds_to_read(None, store.stored_feeds(["AAPL", "MSFT", "IBM"], "5Min", "raw", lo, hi), ("iex", "yahoo"))
    rows = backfill_plan.verify(["AAPL", "MSFT", "IBM"], store=store, timeframe="5Min", start=START, end=END, feed="iex", adjustment="raw", feeds=feeds)
    assert [(r.symbol, r.stored, r.missing) for r in rows] == [("AAPL", BARS_PER_PARTITION, 0), ("MSFT", BARS_PER_PARTITION, 0), ("IBM", 0, BARS_PER_PARTITION)]
    assert feeds_to_read(None, (), ("iex", "yahoo")) == ("iex", "yahoo")
    (only,) = backfill_plan.verify(["AAPL"], store=store, timeframe="5Min", start=START, end=END, feed="iex", adjustment="raw", feeds=feeds_to_read("iex", ("synthetic",), ()))
    assert only.stored == 0, "--feed iex counts only iex bars"
