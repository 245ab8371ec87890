"""Engines and sessions for SQLite (embedded) and PostgreSQL (services)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.settings import Settings


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10, pool_timeout_s: float = 30.0, echo: bool = False) -> Engine:
    """An engine with the pool settings; SQLite gets WAL and a busy timeout for concurrent processes."""
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
    return create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout_s,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5, "application_name": "omni-tasks"},
    )


def engine_from_settings(settings: Settings) -> Engine:
    db = settings.database
    return make_engine(
        settings.database_url,
        pool_size=db.pool_size,
        max_overflow=db.max_overflow,
        pool_timeout_s=db.pool_timeout_s,
        echo=db.echo,
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on error."""
    with factory() as session, session.begin():
        yield session
