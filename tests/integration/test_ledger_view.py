"""Stuck and redelivered work as operators see it: `/health`'s ``ledgers`` check and `omni status` (text and ``--json``).

The ledger reconciler's passes run here with the broker's view injected (as in
test_ledger_reconcile.py) on real Redis and PostgreSQL; what it leaves behind is
read back the way an operator reads it: the health check in process, `omni status`
as a subprocess of the real CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.marketdata import backfill, backfill_plan
from omni_tasks.ops import health
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.watchdog import ledgers
from tests.conftest import REPO_ROOT, service_env

pytestmark = pytest.mark.services

STUCK_AFTER_S = 10.0


@pytest.fixture
def database_url(pg_database: Callable[[], str]) -> str:
    """A database of this test's own: no other test's jobs in it."""
    url = pg_database()
    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _job(factory: sessionmaker[Session]) -> list[int]:
    plan = backfill_plan.plan(["AAA", "BBB"], "1Day", date(2024, 1, 2), date(2024, 6, 1), today=date(2025, 6, 16))
    return backfill.partition_ids(factory, backfill.create_job(factory, plan, requested_by="test"))


def _pass(
    factory: sessionmaker[Session], client: redis.Redis, live: set[int], now: float, redelivered: int = 0
) -> ledgers.ReconcileSummary:
    return ledgers.reconcile(
        factory=factory, client=client, deliveries=lambda: ledgers.Deliveries(partitions=set(live)), stuck_after_s=STUCK_AFTER_S,
        max_requeues=2, requeue=lambda _pid: None, job_finished=lambda _jid: None, redelivered=redelivered, now=now,
    )  # fmt: skip


def _ledgers_check(engine: Engine, client: redis.Redis) -> dict[str, Any]:
    _code, payload = health.check_health(
        engine=engine, client=client, broker_url="redis://unused", worker_kinds=[], dead_after_s=3, watchdog_interval_s=1
    )
    return payload["checks"]["ledgers"]  # type: ignore[no-any-return]


def _status(redis_url: str, database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(redis_url=redis_url, database_url=database_url, data_dir=tmp_path / "data", OMNI_LOG_LEVEL="ERROR")
    return subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", "status", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_health_and_omni_status_show_stuck_and_redelivered_work(
    engine: Engine, redis_client: redis.Redis, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    factory = session_factory(engine)
    a, b = _job(factory)
    now = time.time()
    first = _pass(factory, redis_client, {b}, now, redelivered=2)  # a's message lost; the sweeps put 2 deliveries back
    assert first.stuck == 1

    check = _ledgers_check(engine, redis_client)
    assert check["status"] == "ok", check
    assert "stuck 1 (partitions 1, scan runs 0" in check["detail"]
    assert "redelivered 2" in check["detail"]

    shown = _status(redis_url, database_url, tmp_path, "--json")
    view = json.loads(shown.stdout)["ledgers"]
    assert (view["stuck"], view["stuck_partitions"], view["last_hour"]["redelivered"]) == (1, 1, 2), shown.stdout[-2000:] + shown.stderr
    table = _status(redis_url, database_url, tmp_path)
    flat = " ".join(table.stdout.split())  # rich wraps the line at the terminal's width
    line = flat[flat.index("Stuck work") :].split(" jobs rolled up ")[0]
    assert "acted on after 10 s): 1 (backfill partitions 1" in line, table.stdout
    assert "redelivered 2" in line

    second = _pass(factory, redis_client, {b}, now + STUCK_AFTER_S)  # past the threshold: a is requeued
    assert second.requeued == 1
    check = _ledgers_check(engine, redis_client)
    assert "requeued 1" in check["detail"], check
    print(f"/health ledgers: {check['status']}: {check['detail']}\nomni status: {line}")


def test_health_says_when_stuck_work_is_not_being_resolved(engine: Engine, redis_client: redis.Redis) -> None:
    factory = session_factory(engine)
    _job(factory)
    # First seen 100 s ago with nothing live, and no pass acted on it since (a watchdog whose passes are skipped).
    _pass(factory, redis_client, set(), time.time() - 100)
    check = _ledgers_check(engine, redis_client)
    assert check["status"] != "ok", check
    assert "not being resolved" in check["detail"], check
    assert "stuck 2 (partitions 2" in check["detail"], check
