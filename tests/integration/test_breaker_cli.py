"""`omni breaker list|trip|force|reset` as an operator runs them: the real CLI as a subprocess, real Redis and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from omni_tasks.core import counters
from omni_tasks.safety.breaker import BreakerPolicy, CircuitBreaker
from omni_tasks.storage.engine import make_engine
from omni_tasks.storage.models import AuditLog
from tests.conftest import REPO_ROOT, service_env

pytestmark = [pytest.mark.services]


@pytest.fixture
def env(redis_url: str, migrated_pg_url: str, tmp_path: Path, redis_client: redis.Redis) -> dict[str, str]:
    return service_env(redis_url=redis_url, database_url=migrated_pg_url, data_dir=tmp_path / "data", OMNI_PROVIDERS_ORDER="alpaca,yahoo")


def omni(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", "breaker", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def listed(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    done = omni(env, "list", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)}


def metric_files(env: dict[str, str]) -> list[str]:
    """prometheus-client files in the metrics folder the CLI was given (it must write none)."""
    return sorted(p.name for p in Path(env["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"))


def audit_rows(url: str, subject: str) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(AuditLog).where(AuditLog.subject == subject).order_by(AuditLog.id)).all())
    finally:
        engine.dispose()


def test_list_shows_every_expected_breaker_before_any_call(env: dict[str, str]) -> None:
    rows = listed(env)
    assert set(rows) == {"broker:simulated", "database", "provider:alpaca", "provider:yahoo"}
    assert all(r["state"] == "closed" and r["mode"] == "automatic" and r["failures"] == 0 for r in rows.values())
    table = omni(env, "list")
    assert table.returncode == 0
    assert "Circuit breakers" in table.stdout


def test_trip_forces_open_audited_and_reset_closes(env: dict[str, str], redis_client: redis.Redis, migrated_pg_url: str) -> None:
    before = len(audit_rows(migrated_pg_url, "breaker:broker:simulated"))
    tripped = omni(env, "trip", "broker:simulated", "--reason", "broker maintenance window", "--operator", "alice")
    assert tripped.returncode == 0, tripped.stdout + tripped.stderr
    row = listed(env)["broker:simulated"]
    assert (row["forced"], row["mode"], row["forced_by"], row["forced_reason"]) == (
        "open",
        "forced open",
        "operator:alice",
        "broker maintenance window",
    )
    # What calls get: a forced-open breaker reads open, whatever its automatic state (closed) says.
    assert (row["state"], row["automatic"]) == ("open", "closed")
    table = " ".join(omni({**env, "COLUMNS": "200"}, "list").stdout.split())
    assert "│ broker:simulated │ open │ forced open │ closed │" in table, table
    # Every process sees it: a breaker built here refuses calls.
    decision = CircuitBreaker("broker:simulated", redis_client, fail_open=False).allow()
    assert not decision.allowed
    assert decision.forced == "open"

    reset = omni(env, "reset", "broker:simulated", "--reason", "maintenance over", "--operator", "bob")
    assert reset.returncode == 0, reset.stdout + reset.stderr
    row = listed(env)["broker:simulated"]
    assert (row["state"], row["forced"], row["mode"]) == ("closed", None, "automatic")
    assert CircuitBreaker("broker:simulated", redis_client, fail_open=False).allow().allowed

    # Both transitions counted by the CLI processes that made them, in Redis (what /metrics exports), and no metric file left.
    counted = counters.read_all(redis_client)["omni_breaker_transitions"]
    print(
        f"breaker transitions counted from the CLI: {sum(counted.values()):g} of 2; metric files left by 5 CLI calls: {len(metric_files(env))}"
    )
    assert counted == {("broker:simulated", "forced:open"): 1.0, ("broker:simulated", "closed"): 1.0}
    assert metric_files(env) == []

    audits = audit_rows(migrated_pg_url, "breaker:broker:simulated")[before:]
    print(f"\naudit rows for trip and reset: {len(audits)} of 2")
    assert [(a.actor, a.action) for a in audits] == [("operator:alice", "breaker.transition"), ("operator:bob", "breaker.transition")]
    assert "broker maintenance window" in audits[0].detail["reason"]
    assert audits[0].detail["to"] == "forced:open"
    assert "maintenance over" in audits[1].detail["reason"]
    assert audits[1].detail["to"] == "closed"


def test_force_closed_is_kept_apart_from_the_automatic_state(env: dict[str, str], redis_client: redis.Redis) -> None:
    breaker = CircuitBreaker("provider:yahoo", redis_client, BreakerPolicy(failure_threshold=2))
    for _ in range(2):
        breaker.record(False)
    row = listed(env)["provider:yahoo"]
    assert (row["state"], row["mode"], row["failures"]) == ("open", "automatic", 2)
    assert 0 < row["cooldown_left_s"] <= 30
    assert row["opened_at"] == pytest.approx(time.time(), abs=30)

    forced = omni(env, "force", "provider:yahoo", "closed", "--reason", "provider says it is fine", "--operator", "carol")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    row = listed(env)["provider:yahoo"]
    # The force wins: calls get "closed" (the state shown); the automatic state beneath is kept.
    assert (row["state"], row["automatic"], row["forced"]) == ("closed", "open", "closed")
    assert breaker.allow().allowed

    assert omni(env, "reset", "provider:yahoo", "--reason", "clear", "--operator", "carol").returncode == 0
    row = listed(env)["provider:yahoo"]
    assert (row["state"], row["forced"], row["failures"]) == ("closed", None, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("trip", "broker:nope", "--reason", "x"),
            "unknown breaker 'broker:nope': known breakers are broker:simulated, database, provider:alpaca, provider:yahoo",
        ),
        (("reset", "provider:alpha_vantage", "--reason", "x"), "unknown breaker 'provider:alpha_vantage'"),
        (("trip", "database", "--reason", "   "), "--reason must say why"),
        (("force", "database", "sideways", "--reason", "x"), "STATE 'sideways': choose one of open, closed"),
        (("trip", "database", "--reason", "x", "--operator", "bad name!"), "--operator 'bad name!'"),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(
    env: dict[str, str], redis_client: redis.Redis, args: tuple[str, ...], message: str
) -> None:
    done = omni(env, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    # One line on stderr naming the problem (DESIGN section 11).
    assert done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    assert all(row["forced"] is None for row in listed(env).values())
    assert not redis_client.exists("omni:breaker:broker:nope")
