"""Engines and sessions for SQLite (embedded) and PostgreSQL (services).

Every PostgreSQL connection asks the server for TCP keepalives of its own
(``dead_client_after_s``): a worker whose host is cut off mid-transaction
cannot roll back, and without them the server keeps its session, and the
row locks it holds, until the operating system's keepalive gives up (over
two hours on Linux) - the work redelivered to another host waits on those
locks all that time. tests/integration/test_many_hosts.py cuts a host mid-write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.settings import DatabaseSettings, Settings

#: A pooled PostgreSQL connection idle at least this long is pinged before it is handed out (see :func:`ping_when_idle`).
PING_AFTER_IDLE_S: float = 1.0

#: OMNI_DATABASE_DEAD_CLIENT_AFTER_S's default, for engines made without the settings.
DEAD_CLIENT_AFTER_S: float = DatabaseSettings.model_fields["dead_client_after_s"].default


def server_keepalive_options(dead_client_after_s: float) -> str:
    """libpq ``options`` that make the server drop a vanished client after about ``dead_client_after_s`` seconds.

    An idle connection is probed after half the time, 4 probes over the other
    half; data the server sent (a query's result) that stays unacknowledged
    that long ends it too (``tcp_user_timeout``, PostgreSQL 12+: keepalives
    are not sent while data is outstanding). The server's session ends, its
    transaction is rolled back and its locks are released.
    """
    idle = max(1, round(dead_client_after_s / 2))
    interval = max(1, round(dead_client_after_s / 8))
    user_timeout_ms = int(dead_client_after_s * 1000)
    return (
        f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} -c tcp_keepalives_count=4 "
        f"-c tcp_user_timeout={user_timeout_ms}"
    )


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout_s: float = 30.0,
    echo: bool = False,
    dead_client_after_s: float = DEAD_CLIENT_AFTER_S,
) -> Engine:
    """An engine with the pool settings; SQLite gets WAL and a busy timeout for concurrent processes, PostgreSQL server-side keepalives."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout_s,
        connect_args={"connect_timeout": 5, "application_name": "omni-tasks", "options": server_keepalive_options(dead_client_after_s)},
    )
    ping_when_idle(engine)
    return engine


def ping_when_idle(engine: Engine, idle_s: float = PING_AFTER_IDLE_S) -> None:
    """Ping a pooled connection on checkout only when it sat idle ``idle_s`` or longer (SQLAlchemy's ``pool_pre_ping`` pings every checkout).

    A connection in steady use (the order path checks one out several times per order) costs no
    extra round trip; one that waited in the pool (a restart of the server meanwhile) is pinged and,
    when dead, replaced before anyone uses it. A connection that dies within ``idle_s`` of its
    last use fails its next statement instead: SQLAlchemy then invalidates the pool, and the caller
    sees a database error (the order path retries it as DatabaseUnavailable).
    """

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_connection: Any, record: Any) -> None:
        record.info["omni_idle_since"] = None  # just connected: nothing to check

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["omni_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("omni_idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection dead after {time.monotonic() - since:.1f} s idle: {exc}") from exc


def engine_from_settings(settings: Settings) -> Engine:
    db = settings.database
    return make_engine(
        settings.database_url,
        pool_size=db.pool_size,
        max_overflow=db.max_overflow,
        pool_timeout_s=db.pool_timeout_s,
        echo=db.echo,
        dead_client_after_s=db.dead_client_after_s,
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on error."""
    with factory() as session, session.begin():
        yield session
