"""Fixed statements sent straight over a pooled PostgreSQL DB-API connection: the money path without the ORM.

Why: on the order path SQLAlchemy's session, statement cache and result machinery cost
0.3-1 ms of CPU per statement, several times the round trip itself (about 0.1 ms to the
local PostgreSQL); the order path and the simulated venue's transaction run a handful of
fixed statements per order. Here they go to psycopg2 as written (``%(name)s`` parameters).

What stays SQLAlchemy's: the pool (the idle ping at checkout, :func:`omni_tasks.storage.engine.ping_when_idle`,
and invalidation of a dead connection) and the exceptions: a DB-API error is raised as
SQLAlchemy's own (``IntegrityError``, ``OperationalError`` with ``connection_invalidated``
when the connection died), so every caller that tells an outage from a bad statement
(:func:`omni_tasks.trading.expiry.is_database_failure`) keeps doing so unchanged.

Transactions: the connection runs in autocommit while it is lent out; :meth:`Direct.begin_with`
sends ``BEGIN`` in the same query string as the transaction's first statements, and
:meth:`Direct.commit_with` sends ``COMMIT`` with its last, so a read-then-write transaction
is two round trips. Several statements in one string run one after another, each with a
snapshot of its own (READ COMMITTED), so a lock taken by the first is held before the next
one reads. Leaving the block with the transaction open (an error, an early return) rolls it
back; a connection that cannot roll back is invalidated, never handed out again mid-transaction.
PostgreSQL only: SQLite keeps the ORM paths.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

Params = Mapping[str, Any]


def is_postgresql(engine: Engine) -> bool:
    """Does this engine talk to PostgreSQL (where the direct statements run)?"""
    return bool(engine.dialect.name == "postgresql")


class Direct:
    """One lent connection's cursor; see the module docstring. Not thread-safe (one per ``with direct(...)`` block)."""

    def __init__(self, engine: Engine, fairy: Any) -> None:
        self._engine = engine
        self._fairy = fairy
        self._dbapi = fairy.driver_connection
        self._cursor = self._dbapi.cursor()
        self.in_transaction = False
        self.invalidated = False

    def fetch(self, sql: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        """Run ``sql`` (one statement or several; the rows are the last one's) and return its rows."""
        self._execute(sql, params)
        return list(self._cursor.fetchall()) if self._cursor.description is not None else []

    def fetch_one(self, sql: str, params: Params | None = None) -> tuple[Any, ...]:
        """Like :meth:`fetch` for a statement that returns exactly one row."""
        rows = self.fetch(sql, params)
        if len(rows) != 1:
            raise RuntimeError(f"expected one row, the statement returned {len(rows)}: {sql.strip().splitlines()[0][:80]}")
        return rows[0]

    def begin_with(self, sql: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        """Open a transaction and run ``sql`` in it, one round trip; the last statement's rows."""
        self.in_transaction = True
        return self.fetch("BEGIN;\n" + sql, params)

    def commit_with(self, sql: str, params: Params | None = None) -> None:
        """Run ``sql`` in the open transaction and commit, one round trip (an error leaves it open: rolled back on exit)."""
        self._execute(sql + ";\nCOMMIT", params)
        self.in_transaction = False

    def rollback(self) -> None:
        """End the open transaction without its changes (nothing to do when none is open)."""
        if self.in_transaction:
            self._execute("ROLLBACK", None)
            self.in_transaction = False

    def _execute(self, sql: str, params: Params | None) -> None:
        try:
            self._cursor.execute(sql, params)
        except self._engine.dialect.loaded_dbapi.Error as exc:
            dead = bool(self._engine.dialect.is_disconnect(exc, self._dbapi, self._cursor))
            if dead:
                self._invalidate(exc)
            raise DBAPIError.instance(
                sql, params, exc, self._engine.dialect.loaded_dbapi.Error,
                hide_parameters=True, connection_invalidated=dead, dialect=self._engine.dialect,
            ) from exc  # fmt: skip

    def _invalidate(self, exc: BaseException | None) -> None:
        if not self.invalidated:
            self.invalidated = True
            self._fairy.invalidate(exc)

    def _give_back(self) -> None:
        """Roll back what is still open, restore the pool's transaction mode, return the connection."""
        try:
            if not self.invalidated and self.in_transaction:
                try:
                    self._execute("ROLLBACK", None)
                    self.in_transaction = False
                except DBAPIError as exc:  # it cannot end its transaction: never lend it out again
                    self._invalidate(exc.orig)
            if not self.invalidated:
                self._cursor.close()
                self._dbapi.autocommit = False
        finally:
            self._fairy.close()


@contextmanager
def direct(engine: Engine) -> Iterator[Direct]:
    """A pooled connection lent in autocommit for fixed statements (PostgreSQL); see the module docstring.

    Checkout failing (the server down) raises SQLAlchemy's ``OperationalError``, as a session's first statement would.
    """
    try:
        fairy = engine.raw_connection()
    except DBAPIError:
        raise
    except engine.dialect.loaded_dbapi.Error as exc:  # pragma: no cover - the pool wraps connect errors already
        raise DBAPIError.instance(None, None, exc, engine.dialect.loaded_dbapi.Error, connection_invalidated=True) from exc
    handle = Direct(engine, fairy)
    handle._dbapi.autocommit = True
    try:
        yield handle
    finally:
        handle._give_back()
