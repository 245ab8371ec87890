"""The engage's durable write on both of its paths: PostgreSQL's one statement, and the ORM (SQLite, and PostgreSQL's fallback).

Each case runs three ways: ``postgresql`` (:func:`write_engage`, the statement where it applies),
``postgresql-orm`` (the ORM path forced) and ``sqlite`` (the embedded default): the rows they leave
must be the same, so the statement keeps every rule the ORM path had.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.safety import engage_write
from omni_tasks.safety.engage_write import DurableEngage, write_engage
from omni_tasks.safety.reconcile import RECONCILE_ACTOR, make_durable_from_redis
from omni_tasks.safety.state_store import halt_in_redis, locked_row
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import AuditLog, EmergencySnapshot, KillEvent, TradingStateRow

pytestmark = [pytest.mark.services]

Write = Callable[..., DurableEngage]
KEY = "omni:test:engage-write:state"


@pytest.fixture(params=["postgresql", "postgresql-orm", "sqlite"])
def desk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[sessionmaker[Session], Write]]:
    """Sessions on an empty ledger of the safety tables, and the write to test (the ORM path forced for ``postgresql-orm``)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'omni.sqlite3'}")
        migrations.upgrade(engine)
    else:
        engine = make_engine(request.getfixturevalue("migrated_pg_url"))
        with engine.begin() as connection:
            for table in (EmergencySnapshot, KillEvent, AuditLog, TradingStateRow):
                connection.execute(delete(table))
    sessions = session_factory(engine)
    yield sessions, engage_write._orm_write if request.param == "postgresql-orm" else write_engage
    engine.dispose()


def set_row(sessions: sessionmaker[Session], state: str, version: int, actor: str = "operator:before", reason: str = "before") -> datetime:
    with locked_row(sessions) as (_session, row, now):
        row.state, row.version, row.changed_at, row.actor, row.reason = state, version, now, actor, reason
    return now


def the_row(sessions: sessionmaker[Session]) -> TradingStateRow:
    with sessions() as session:
        row = session.scalars(select(TradingStateRow)).one()
        session.expunge(row)
        return row


def records(sessions: sessionmaker[Session]) -> tuple[list[KillEvent], list[AuditLog]]:
    with sessions() as session:
        events = list(session.scalars(select(KillEvent).order_by(KillEvent.id)))
        audits = list(session.scalars(select(AuditLog).order_by(AuditLog.id)))
        session.expunge_all()
    return events, audits


def test_a_fresh_install_engages_from_active_at_version_one(desk: tuple[sessionmaker[Session], Write]) -> None:
    sessions, write = desk
    done = write(sessions, actor="watchdog:alarm:daily_loss", reason="loss", redis_changed=True, redis_version=1)
    assert (done.state_before, done.repeat, done.version) == ("ACTIVE", False, 1)
    row = the_row(sessions)
    assert (row.state, row.version, row.actor, row.reason) == ("HALTED", 1, "watchdog:alarm:daily_loss", "loss")
    assert row.changed_at == done.engaged_since
    assert done.engaged_since.utcoffset() == timedelta(0), "aware UTC"
    events, audits = records(sessions)
    assert [(e.id, e.action, e.actor, e.reason, e.state_before, e.state_after, e.timings_ms, e.detail) for e in events] == [
        (done.kill_event_id, "engage", "watchdog:alarm:daily_loss", "loss", "ACTIVE", "HALTED", {}, {"repeat": False, "version": 1})
    ]
    assert events[0].ts == row.changed_at
    assert [(a.actor, a.action, a.subject, a.detail) for a in audits] == [
        ("watchdog:alarm:daily_loss", "kill.engage", "trading_state", {"reason": "loss", "state_before": "ACTIVE", "version": 1})
    ]
    assert audits[0].ts == row.changed_at


@pytest.mark.parametrize(("redis_version", "expected"), [(0, 4), (2, 4), (4, 4), (9, 9)])
def test_engaging_from_active_takes_the_next_version_or_redis_s_if_newer(
    desk: tuple[sessionmaker[Session], Write], redis_version: int, expected: int
) -> None:
    sessions, write = desk
    before = set_row(sessions, "ACTIVE", 3)
    done = write(sessions, actor="operator:a", reason="halt", redis_changed=True, redis_version=redis_version)
    assert (done.state_before, done.repeat, done.version) == ("ACTIVE", False, expected)
    row = the_row(sessions)
    assert (row.state, row.version, row.actor, row.reason) == ("HALTED", expected, "operator:a", "halt")
    assert row.changed_at == done.engaged_since >= before


def test_engaging_from_reducing_records_reducing_as_the_state_before(desk: tuple[sessionmaker[Session], Write]) -> None:
    sessions, write = desk
    set_row(sessions, "REDUCING", 2)
    done = write(sessions, actor="operator:a", reason="halt", redis_changed=True, redis_version=3)
    assert (done.state_before, done.repeat, done.version) == ("REDUCING", False, 3)
    events, audits = records(sessions)
    assert events[-1].detail == {"repeat": False, "version": 3}
    assert audits[-1].detail == {"reason": "halt", "state_before": "REDUCING", "version": 3}


def test_a_repeat_keeps_the_engaged_period_and_adopts_only_a_newer_redis_version(desk: tuple[sessionmaker[Session], Write]) -> None:
    sessions, write = desk
    since = set_row(sessions, "HALTED", 5, actor="operator:first", reason="first")
    older = write(sessions, actor="operator:second", reason="again", redis_changed=False, redis_version=4)
    assert (older.state_before, older.repeat, older.version, older.engaged_since) == ("HALTED", True, 5, since)
    newer = write(sessions, actor="watchdog:alarm:x", reason="again", redis_changed=False, redis_version=7)
    assert (newer.repeat, newer.version, newer.engaged_since) == (True, 7, since)
    row = the_row(sessions)
    assert (row.state, row.version, row.actor, row.reason, row.changed_at) == ("HALTED", 7, "operator:first", "first", since)
    events, audits = records(sessions)
    assert [(e.actor, e.state_before, e.detail) for e in events] == [
        ("operator:second", "HALTED", {"repeat": True, "version": 5}),
        ("watchdog:alarm:x", "HALTED", {"repeat": True, "version": 7}),
    ]
    assert [a.action for a in audits] == ["kill.engage.repeat", "kill.engage.repeat"]
    assert audits[0].detail == {"reason": "again", "state_before": "HALTED", "version": 5}


def test_an_engage_the_reconciler_wrote_down_between_its_two_steps_is_the_engage_s_own(
    desk: tuple[sessionmaker[Session], Write], redis_client: redis.Redis
) -> None:
    sessions, write = desk
    set_row(sessions, "REDUCING", 2)
    redis_client.set(KEY, "REDUCING 2")
    # Step 1 of the engage: Redis says HALTED 3. Before its step 2, the watchdog's reconciler sees Redis ahead
    # of the database and writes HALTED 3 down as itself.
    changed, version = halt_in_redis(redis_client, key=KEY)
    assert (changed, version) == (True, 3)
    assert make_durable_from_redis(SimpleNamespace(redis=redis_client, sessions=sessions), key=KEY) is True
    assert the_row(sessions).actor == RECONCILE_ACTOR
    done = write(sessions, actor="operator:a", reason="halt", redis_changed=changed, redis_version=version)
    assert (done.state_before, done.repeat, done.version) == ("REDUCING", False, 3), "the state the repair replaced, not a repeat"
    row = the_row(sessions)
    assert (row.state, row.version, row.actor, row.reason) == ("HALTED", 3, "operator:a", "halt")
    assert row.changed_at == done.engaged_since
    events, audits = records(sessions)
    assert [(e.actor, e.state_before, e.detail.get("repeat"), e.detail["version"]) for e in events] == [
        (RECONCILE_ACTOR, "REDUCING", None, 3),
        ("operator:a", "REDUCING", False, 3),
    ]
    assert [a.action for a in audits] == ["kill.repair.database", "kill.engage"]


def test_the_reconciler_s_engage_is_a_repeat_for_an_engage_that_found_redis_halted_already(
    desk: tuple[sessionmaker[Session], Write],
) -> None:
    sessions, write = desk
    since = set_row(sessions, "HALTED", 3, actor=RECONCILE_ACTOR, reason="repair")
    done = write(sessions, actor="operator:a", reason="halt", redis_changed=False, redis_version=3)
    assert (done.state_before, done.repeat, done.version, done.engaged_since) == ("HALTED", True, 3, since)
    assert the_row(sessions).actor == RECONCILE_ACTOR


def test_postgresql_writes_the_common_cases_in_one_statement_and_hands_the_rest_to_the_orm(migrated_pg_url: str) -> None:
    engine = make_engine(migrated_pg_url)
    with engine.begin() as connection:
        for table in (EmergencySnapshot, KillEvent, AuditLog, TradingStateRow):
            connection.execute(delete(table))
    sessions = session_factory(engine)
    statement: Callable[..., Any] = engage_write._one_statement
    try:
        assert statement(engine, actor="operator:a", reason="fresh", redis_changed=True, redis_version=1) is not None, "a fresh install"
        set_row(sessions, "ACTIVE", 2)
        assert statement(engine, actor="operator:a", reason="halt", redis_changed=True, redis_version=3) is not None
        assert statement(engine, actor="operator:a", reason="again", redis_changed=False, redis_version=3) is not None, "a repeat"
        set_row(sessions, "HALTED", 4, actor=RECONCILE_ACTOR, reason="repair")
        assert statement(engine, actor="operator:a", reason="race", redis_changed=True, redis_version=4) is None
        assert the_row(sessions).actor == RECONCILE_ACTOR, "handed over: nothing written"
        events, audits = records(sessions)
        assert len(events) == len(audits) == 3
    finally:
        engine.dispose()


def test_postgresql_an_engage_that_waited_for_the_lock_works_from_the_row_committed_meanwhile(migrated_pg_url: str) -> None:
    """A release holds the row's lock; the engage's statement waits, then engages from ACTIVE (not a repeat), after it."""
    engine = make_engine(migrated_pg_url)
    with engine.begin() as connection:
        for table in (EmergencySnapshot, KillEvent, AuditLog, TradingStateRow):
            connection.execute(delete(table))
    sessions = session_factory(engine)
    set_row(sessions, "HALTED", 5)
    locked = threading.Event()
    released: dict[str, Any] = {}

    def release() -> None:
        with locked_row(sessions) as (_session, row, now):
            locked.set()
            time.sleep(0.3)
            row.state, row.version, row.changed_at, row.actor, row.reason = "ACTIVE", 6, now + timedelta(milliseconds=50), "operator:r", "go"
            released["at"] = row.changed_at

    thread = threading.Thread(target=release)
    thread.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        done = write_engage(sessions, actor="operator:a", reason="halt", redis_changed=False, redis_version=5)
        waited = time.monotonic() - started
    finally:
        thread.join(10)
        engine.dispose()
    assert waited > 0.1, "the engage waited for the release's lock"
    assert (done.state_before, done.repeat, done.version) == ("ACTIVE", False, 7)
    assert done.engaged_since >= released["at"], "never dated before the change it waited for"
    assert done.engaged_since.utcoffset() == timedelta(0), "aware UTC"


def test_warming_up_writes_nothing_and_locks_nothing(desk: tuple[sessionmaker[Session], Write]) -> None:
    sessions, _write = desk
    set_row(sessions, "ACTIVE", 2)
    engage_write.warm_up(sessions)
    row = the_row(sessions)
    assert (row.state, row.version) == ("ACTIVE", 2)
    assert records(sessions) == ([], [])
    set_row(sessions, "REDUCING", 3)  # the row is not left locked
    assert the_row(sessions).state == "REDUCING"
