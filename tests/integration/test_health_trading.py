"""/health's ``trading`` check on real Redis and PostgreSQL, with the operator's own CLI making the changes.

Orders blocked (a breaker on the order path forced open, the kill switch
engaged) make the check ``degraded`` with its reasons while the answer stays
200; a dead dependency still answers 503.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from omni_tasks.ops import health
from omni_tasks.settings import Settings, load_settings
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine
from tests.conftest import REPO_ROOT, service_env

pytestmark = [pytest.mark.services]


@pytest.fixture
def desk(
    redis_url: str, redis_client: redis.Redis, pg_database: Callable[[], str], tmp_path: Path
) -> Iterator[tuple[dict[str, str], Engine, Settings]]:
    """A fresh database and Redis database; no stream deployed (so only what the test does can block orders)."""
    url = pg_database()
    engine = make_engine(url)
    migrations.upgrade(engine)
    env = service_env(redis_url=redis_url, database_url=url, data_dir=tmp_path / "data", OMNI_WATCHDOG_EXPECTED_WORKERS="watchdog,orders")
    yield env, engine, load_settings(env)
    engine.dispose()


def omni(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, f"omni {' '.join(args)}: {done.stdout}{done.stderr}"


def check(engine: Engine, client: redis.Redis, settings: Settings) -> tuple[int, dict[str, Any]]:
    return health.check_health(
        engine=engine,
        client=client,
        broker_url=settings.broker_url,
        worker_kinds=[],
        dead_after_s=settings.broker.dead_after_s,
        watchdog_interval_s=settings.watchdog.interval_s,
        settings=settings,
    )


def test_health_trading_check_is_degraded_with_reasons_while_a_breaker_is_forced_open_or_the_kill_switch_engaged(
    desk: tuple[dict[str, str], Engine, Settings], redis_client: redis.Redis
) -> None:
    env, engine, settings = desk
    code, payload = check(engine, redis_client, settings)
    assert (code, payload["checks"]["trading"]["status"], payload["checks"]["trading"]["reasons"]) == (200, "ok", [])
    assert payload["ts_utc"].endswith("+00:00")

    omni(env, "breaker", "trip", "broker:simulated", "--reason", "broker incident", "--operator", "alice")
    code, payload = check(engine, redis_client, settings)
    trading = payload["checks"]["trading"]
    print(f"\nbreaker forced open: HTTP {code}, trading {trading['status']}: {trading['detail']}")
    assert (code, trading["status"]) == (200, "degraded"), "orders are blocked, no dependency is dead: degraded, not down"
    assert trading["reasons"] == ["breaker broker:simulated forced open: orders are denied until it is reset"]
    assert payload["checks"]["database"]["status"] == "ok"
    assert payload["status"] != "ok"

    omni(env, "breaker", "reset", "broker:simulated", "--reason", "incident over", "--operator", "alice")
    assert check(engine, redis_client, settings)[1]["checks"]["trading"]["reasons"] == []

    omni(env, "kill", "engage", "--reason", "health check test", "--operator", "bob")
    code, payload = check(engine, redis_client, settings)
    trading = payload["checks"]["trading"]
    print(f"kill switch engaged: HTTP {code}, trading {trading['status']}: {trading['detail']}")
    assert (code, trading["status"], len(trading["reasons"])) == (200, "degraded", 1)
    assert trading["reasons"][0].startswith("kill switch engaged (HALTED) by operator:bob: health check test")

    omni(env, "kill", "release", "--reason", "test over", "--operator", "bob", "--yes")
    code, payload = check(engine, redis_client, settings)
    assert payload["checks"]["trading"]["status"] == "ok"


def test_health_stays_503_for_a_dead_database_while_reporting_the_trading_check(
    desk: tuple[dict[str, str], Engine, Settings], redis_client: redis.Redis
) -> None:
    env, _engine, settings = desk
    omni(env, "breaker", "trip", "database", "--reason", "database maintenance", "--operator", "alice")
    dead = make_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    try:
        code, payload = check(dead, redis_client, settings)
    finally:
        dead.dispose()
    print(f"\ndatabase unreachable: HTTP {code}, status {payload['status']}, trading: {payload['checks']['trading']['detail']}")
    assert (code, payload["status"], payload["checks"]["database"]["status"]) == (503, "down", "down")
    assert "breaker database forced open: orders are denied until it is reset" in payload["checks"]["trading"]["reasons"]
