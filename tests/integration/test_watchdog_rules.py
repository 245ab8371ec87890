"""The watchdog's rules on a real watchdog worker: a risk breach engages the kill switch after exactly N evaluations.

One PostgreSQL database per test, migrated; one real ``omni worker watchdog``
(no beat: the test sends each ``omni.watchdog.tick`` itself, so it counts the
evaluations); risk snapshots are written as the risk task writes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select

from omni_tasks.core import keys
from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.core.runtime import Runtime
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.safety.state_rule import parse_value
from omni_tasks.settings import load_settings
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine
from omni_tasks.storage.models import KillEvent, RiskSnapshot, TradingStateRow
from omni_tasks.watchdog import rules
from omni_tasks.watchdog.actions import LiveActuator
from omni_tasks.watchdog.evaluation import run_rules
from tests.conftest import REPO_ROOT, OmniProcess, service_env, wait_for, wait_for_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]
N = 3
BREACH = {"rule": "daily_loss", "value": 1500.0, "limit": 1000.0, "message": "daily loss $1,500.00 exceeds the $1,000.00 limit"}


@dataclass
class Watchdog:
    env: dict[str, str]
    engine: Engine
    client: redis.Redis
    sender: Any
    logs: Path
    procs: list[OmniProcess]

    def start(self) -> OmniProcess:
        proc = OmniProcess(["worker", "watchdog"], self.env, self.logs / f"watchdog-{len(self.procs)}.log").start()
        self.procs.append(proc)
        wait_for_worker(self.client, "watchdog", proc)
        return proc

    def evaluate(self) -> dict[str, Any]:
        """One omni.watchdog.tick through the worker; returns the rules' summary of that evaluation."""
        before = self._last_ts()
        self.sender.send_task("omni.watchdog.tick", queue="watchdog")
        wait_for(lambda: self._last_ts() > before, 60, interval_s=0.05, message="a watchdog evaluation")
        return json.loads(self.client.get(keys.WATCHDOG_LAST_FINDINGS_KEY))  # type: ignore[no-any-return]

    def _last_ts(self) -> float:
        raw = self.client.get(keys.WATCHDOG_LAST_FINDINGS_KEY)
        return float(json.loads(raw)["ts"]) if raw else 0.0

    def state(self) -> str:
        parsed = parse_value(self.client.get(TRADING_STATE_KEY))
        return parsed.state.value if parsed else "ACTIVE"  # no key yet: a fresh install is ACTIVE

    def durable_state(self) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(select(TradingStateRow.state).where(TradingStateRow.id == 1)).scalar_one_or_none()

    def kill_events(self, action: str) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(KillEvent).where(KillEvent.action == action).order_by(KillEvent.id)).all())

    def write_snapshot(self, breaches: list[dict[str, Any]]) -> int:
        with self.engine.begin() as connection:
            row = connection.execute(
                RiskSnapshot.__table__.insert().returning(RiskSnapshot.id),
                {
                    "ts": datetime.now(tz=UTC), "broker": "simulated", "equity": Decimal("98500"), "daily_pnl": Decimal("-1500"),
                    "gross_exposure": 0.0, "net_exposure": 0.0, "gross_leverage": 0.0, "var_95": None, "es_95": None,
                    "drawdown_pct": 1.5, "risk_score": 0.9, "breaches": breaches, "metrics": {},
                },
            ).scalar_one()  # fmt: skip
        return int(row)


def omni(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def watchdog(
    redis_url: str, redis_client: redis.Redis, pg_database: Callable[[], str], tmp_path: Path, omni_processes: list[OmniProcess]
) -> Iterator[Watchdog]:
    database_url = pg_database()
    engine = make_engine(database_url)
    migrations.upgrade(engine)
    env = service_env(redis_url=redis_url, database_url=database_url, data_dir=tmp_path / "data", OMNI_WATCHDOG_BREACH_EVALUATIONS=str(N))
    from omni_tasks.pipeline.app import create_app

    sender = create_app(load_settings(env))
    try:
        yield Watchdog(env, engine, redis_client, sender, tmp_path / "logs", omni_processes)
    finally:
        sender.close()
        engine.dispose()


def test_a_risk_breach_engages_the_kill_switch_after_exactly_n_evaluations(watchdog: Watchdog) -> None:
    watchdog.start()
    states = []
    for evaluation in range(1, N + 1):
        snapshot_id = watchdog.write_snapshot([BREACH])
        summary = watchdog.evaluate()
        assert summary["findings"]["risk_breach"]["streak"] == evaluation
        assert f"risk snapshot {snapshot_id}" in summary["findings"]["risk_breach"]["message"]
        assert set(summary["findings"]) == {"risk_breach"}  # nothing else breaches on a quiet desk
        states.append(watchdog.state())
        if evaluation < N:
            assert summary["fired"] == {}
            assert watchdog.state() != "HALTED"
    print(f"\nN={N}: trading state after each breaching evaluation: {states}; engaged at evaluation {states.index('HALTED') + 1} of {N}")
    assert states == ["ACTIVE"] * (N - 1) + ["HALTED"]
    assert summary["fired"] == {"risk_breach": "done"}
    assert watchdog.durable_state() == "HALTED"
    engaged = watchdog.kill_events("engage")
    assert [(e.actor, e.state_after) for e in engaged] == [("watchdog:risk_breach", "HALTED")]
    assert "daily loss $1,500.00" in engaged[0].reason


def test_the_count_survives_a_watchdog_restart(watchdog: Watchdog) -> None:
    first = watchdog.start()
    for _ in range(N - 1):
        watchdog.write_snapshot([BREACH])
        watchdog.evaluate()
    first.kill_group()  # SIGKILL: no clean shutdown
    first.process.wait(timeout=10)  # type: ignore[union-attr]
    assert watchdog.client.hget(keys.WATCHDOG_STREAK_KEY, "risk_breach") == str(N - 1).encode()
    watchdog.start()
    watchdog.write_snapshot([BREACH])
    summary = watchdog.evaluate()
    print(
        f"\nstreak across a SIGKILLed watchdog: {N - 1} before, {summary['findings']['risk_breach']['streak']} after one more; state {watchdog.state()}"
    )
    assert summary["findings"]["risk_breach"]["streak"] == N
    assert watchdog.state() == "HALTED"


def test_the_watchdog_never_releases_and_a_clean_evaluation_resets_the_count(watchdog: Watchdog) -> None:
    watchdog.start()
    for _ in range(N):
        watchdog.write_snapshot([BREACH])
        watchdog.evaluate()
    assert watchdog.state() == "HALTED"
    # Clean snapshots: the streak resets, but the watchdog does not release.
    watchdog.write_snapshot([])
    for _ in range(N + 1):
        summary = watchdog.evaluate()
        assert summary["findings"] == {}
    assert watchdog.state() == "HALTED"
    assert watchdog.client.hget(keys.WATCHDOG_STREAK_KEY, "risk_breach") is None
    automatic = [e for e in watchdog.kill_events("release") + watchdog.kill_events("activate") if e.actor.startswith("watchdog")]
    print(f"\nautomatic releases after {N + 1} clean evaluations: {len(automatic)}")
    assert automatic == []

    # An operator releases; the breach comes back and must persist N evaluations again (N-1 is not enough).
    release = omni(watchdog.env, "kill", "release", "--reason", "test: limits reviewed", "--operator", "tester", "--yes")
    assert release.returncode == 0, release.stdout + release.stderr
    assert watchdog.state() == "ACTIVE"
    for _ in range(N - 1):
        watchdog.write_snapshot([BREACH])
        watchdog.evaluate()
    assert watchdog.state() == "ACTIVE"
    watchdog.evaluate()
    assert watchdog.state() == "HALTED"
    assert [e.actor for e in watchdog.kill_events("engage")] == ["watchdog:risk_breach", "watchdog:risk_breach"]


def test_a_persisting_breach_does_not_re_engage_after_an_operator_release(watchdog: Watchdog) -> None:
    watchdog.start()
    watchdog.write_snapshot([BREACH])
    for _ in range(N):
        watchdog.evaluate()
    assert watchdog.state() == "HALTED"
    release = omni(watchdog.env, "kill", "release", "--reason", "test: flattening by hand", "--operator", "tester", "--yes")
    assert release.returncode == 0, release.stdout + release.stderr
    for _ in range(N):
        summary = watchdog.evaluate()
    print(
        f"\nstreak {summary['findings']['risk_breach']['streak']} after the operator's release: engages {len(watchdog.kill_events('engage'))} of 1, state {watchdog.state()}"
    )
    assert summary["findings"]["risk_breach"]["streak"] == 2 * N
    assert watchdog.state() == "ACTIVE"
    assert len(watchdog.kill_events("engage")) == 1


def test_orders_backlog_trips_the_broker_breaker_automatically_and_latency_violations_alert(
    redis_url: str, redis_client: redis.Redis, migrated_pg_url: str, tmp_path: Path
) -> None:
    """In process on real Redis and PostgreSQL: the live actuator's breaker trip is automatic (not forced)."""
    settings = load_settings(
        {"OMNI_BROKER_URL": redis_url, "OMNI_DATABASE_URL": migrated_pg_url, "OMNI_DATA_DIR": str(tmp_path), "OMNI_WATCHDOG_BREACH_EVALUATIONS": "2",
         "OMNI_WATCHDOG_QUEUE_BACKLOG_MAX": "5", "OMNI_WATCHDOG_LATENCY_VIOLATIONS_MAX": "10"}
    )  # fmt: skip
    runtime = Runtime(settings)
    alerted: list[str] = []

    class Recording(LiveActuator):
        def alert(self, finding: rules.Finding) -> None:
            alerted.append(finding.rule)

    actuator = Recording(runtime, purge=None)
    depths = {"orders": 6, "scans": 0}
    redis_client.incrby("omni:latency:violations:order_submission", 3)
    first = run_rules(runtime, actuator=actuator, queue_depths=depths, market_open=lambda _t: False)
    assert first["findings"]["queue_backlog"]["streak"] == 1
    assert "latency_budget" not in first["findings"]  # the first evaluation only records where the counters stand
    redis_client.incrby("omni:latency:violations:order_submission", 11)
    second = run_rules(runtime, actuator=actuator, queue_depths=depths, market_open=lambda _t: False)
    assert second["fired"] == {"queue_backlog": "done"}
    state = CircuitBreaker("broker:simulated", redis_client).state()
    assert (state["state"], state["forced"]) == ("open", None)
    assert second["findings"]["latency_budget"]["value"] == 11
    third = run_rules(runtime, actuator=actuator, queue_depths=depths, market_open=lambda _t: False)
    assert third["fired"] == {}  # fired once per streak
    redis_client.incrby("omni:latency:violations:order_submission", 11)
    run_rules(runtime, actuator=actuator, queue_depths=depths, market_open=lambda _t: False)
    print(f"\nbacklog trip: breaker {state['state']} (forced: {state['forced']}); latency alerts fired {alerted}")
    assert alerted == []  # one breaching evaluation, not two in a row: the 3rd saw no new violations
    redis_client.incrby("omni:latency:violations:order_submission", 11)
    fifth = run_rules(runtime, actuator=actuator, queue_depths={"orders": 0}, market_open=lambda _t: False)
    assert fifth["fired"] == {"latency_budget": "done"}
    assert alerted == ["latency_budget"]
    assert redis_client.hget(keys.WATCHDOG_STREAK_KEY, "queue_backlog") is None  # clean: reset
    runtime.engine.dispose()
