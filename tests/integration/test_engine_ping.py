"""Pooled PostgreSQL connections are pinged only after sitting idle (omni_tasks.storage.engine.ping_when_idle).

A connection the server dropped while it waited in the pool is replaced before anyone uses it;
one in steady use costs no ping round trip.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, text

from omni_tasks.storage.engine import make_engine, ping_when_idle
from tests.conftest import terminate_backend

pytestmark = [pytest.mark.services]


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    ping_when_idle(engine, idle_s=0.2)  # a second listener with a short idle time: the test need not wait a second
    try:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        terminate_backend(pid, pg_url)
        time.sleep(0.5)
        with engine.connect() as connection:  # pinged (idle 0.5 s), found dead, replaced: no error here
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()


def test_a_connection_in_steady_use_is_not_pinged(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    statements: list[str] = []
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        pings = 0
        original = engine.dialect.do_ping

        def counting(dbapi_connection: object) -> bool:
            nonlocal pings
            pings += 1
            return bool(original(dbapi_connection))

        engine.dialect.do_ping = counting  # type: ignore[method-assign]
        event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        for _ in range(20):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        assert pings == 0
        assert len(statements) == 20
        time.sleep(1.1)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert pings == 1
    finally:
        engine.dispose()
