"""Every breaker transition reaches audit_log, the database breaker's own CLOSED -> OPEN included.

The database breaker opens because the database is down, so the audit row of
that transition cannot be written when it happens. The transition's record is
queued in Redis by the same script that makes it; once the database is back the
watchdog's flush writes it, exactly once. A breaker built without any audit hook
(any process's) is audited the same way.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from omni_tasks.safety.breaker import BreakerPolicy, CircuitBreaker, pending_records
from omni_tasks.safety.reporting import audit_transitions, flush_transitions
from omni_tasks.settings import load_settings
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import AuditLog
from tests.conftest import wait_for

pytestmark = pytest.mark.services


def _audited(factory, breaker: str) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    with factory() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.subject == f"breaker:{breaker}").order_by(AuditLog.ts, AuditLog.id)).all()
        return [(r.detail["from"], r.detail["to"], r.actor) for r in rows]


def test_database_breaker_opened_by_a_database_outage_is_audited_once_it_is_back(
    private_postgres: object, private_pg_url: str, redis_client: redis.Redis
) -> None:
    engine = make_engine(private_pg_url, pool_size=1, max_overflow=0, pool_timeout_s=2)
    factory = session_factory(engine)
    name = f"database-{uuid.uuid4().hex[:6]}"  # the database breaker's policy, a name of this test's own
    policy = BreakerPolicy(failure_threshold=3, cooldown_s=0.5)
    skipped_s = [0.0]  # the breakers' clock: the wall clock, moved ahead by the test instead of sleeping

    def clock() -> float:
        return time.time() + skipped_s[0]

    breaker = CircuitBreaker(
        name,
        redis_client,
        policy,
        fail_open=False,
        on_transition=audit_transitions(factory, settings=load_settings(), actor="orders", client=redis_client),
        clock=clock,
    )
    silent = CircuitBreaker(f"provider:silent-{uuid.uuid4().hex[:6]}", redis_client, policy, clock=clock)  # no hook at all

    def write() -> None:
        with factory() as session, session.begin():
            session.execute(text("SELECT 1"))

    write()
    private_postgres.stop()  # type: ignore[attr-defined]
    try:
        failures = 0
        while breaker.state()["state"] != "open":
            with pytest.raises((OperationalError, DBAPIError)):
                breaker.call(write, failure=lambda e: isinstance(e, OperationalError | DBAPIError))
            failures += 1
            assert failures <= policy.failure_threshold
        for _ in range(policy.failure_threshold):
            silent.record(False)
        assert silent.state()["state"] == "open"
        queued_while_down = pending_records(redis_client)
        assert queued_while_down >= 2, "both transitions are queued in Redis while the database is down"
        with pytest.raises((OperationalError, DBAPIError)):
            flush_transitions(redis_client, factory)  # the watchdog's flush fails too: the records stay queued
        assert pending_records(redis_client) == queued_while_down
    finally:
        private_postgres.start()  # type: ignore[attr-defined]
    engine.dispose()
    wait_for(lambda: _reachable(factory), 30, message="the database back")
    # The watchdog's tick flushes the queue; a second flush finds nothing left.
    flushed = flush_transitions(redis_client, factory)
    assert flushed == queued_while_down
    assert flush_transitions(redis_client, factory) == 0
    # Under the actor of the process that made it (its hook put the record back with it), and "system" without a hook.
    assert _audited(factory, name) == [("closed", "open", "orders")]
    assert _audited(factory, silent.name) == [("closed", "open", "system")]

    # Recovery: the cooldown, a trial that succeeds; both transitions written at once by the hook, under its actor.
    skipped_s[0] += policy.cooldown_s
    breaker.call(write)
    expected = [("closed", "open", "orders"), ("open", "half_open", "orders"), ("half_open", "closed", "orders")]
    audited = _audited(factory, name)
    assert audited == expected
    assert pending_records(redis_client) == 0
    transitions = len(expected) + 1
    print(f"transitions audited {len(audited) + len(_audited(factory, silent.name))} of {transitions} "
          f"(queued while the database was down: {queued_while_down}; duplicates: 0)")  # fmt: skip
    engine.dispose()


def _reachable(factory) -> bool:  # type: ignore[no-untyped-def]
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except (OperationalError, DBAPIError):
        return False
    return True
