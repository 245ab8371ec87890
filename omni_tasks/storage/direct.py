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

Prepared statements: a :class:`Prepared` is sent as ``EXECUTE name(...)``; the first use on a connection
sends its ``PREPARE`` in the same query string (no extra round trip), so PostgreSQL parses and plans it
once per connection, not once per order (the venue's lock-and-read: 287 us -> 139 us p50 here). Which
statements a connection holds is kept in the pool's record of that connection; a connection that lost
them (a server restart replaces it anyway) or holds one we did not know of is put right and the call
retried once.

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

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

Params = Mapping[str, Any]
#: Where a connection's prepared statement names are kept (the pool's per-connection ``info`` dict).
_PREPARED_KEY = "omni_prepared"
_PARAMETER = re.compile(r"%\((\w+)\)s")
#: PostgreSQL's codes for "prepared statement does not exist" and "already exists".
_MISSING, _DUPLICATE = "26000", "42P05"


@dataclass(frozen=True)
class Prepared:
    """A fixed statement written with ``%(name)s`` parameters, run as a prepared statement named ``name``."""

    name: str
    sql: str
    body: str = field(init=False)
    call: str = field(init=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.name):
            raise ValueError(f"prepared statement name {self.name!r}: lower-case letters, digits and _")
        order: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in order:
                order.append(match.group(1))
            return f"${order.index(match.group(1)) + 1}"

        object.__setattr__(self, "body", _PARAMETER.sub(number, self.sql.strip()))
        arguments = ", ".join(f"%({name})s" for name in order)
        object.__setattr__(self, "call", f"EXECUTE {self.name}({arguments})" if order else f"EXECUTE {self.name}")


Statement = str | Prepared


def is_postgresql(engine: Engine) -> bool:
    """Does this engine talk to PostgreSQL (where the direct statements run)?"""
    return bool(engine.dialect.name == "postgresql")


def postgresql_engine(sessions: Any) -> Engine | None:
    """The PostgreSQL engine a session factory is bound to; None on SQLite, or when it is bound to something else."""
    bind = sessions.kw.get("bind")
    return bind if isinstance(bind, Engine) and is_postgresql(bind) else None


class Direct:
    """One lent connection's cursor; see the module docstring. Not thread-safe (one per ``with direct(...)`` block)."""

    def __init__(self, engine: Engine, fairy: Any) -> None:
        self._engine = engine
        self._fairy = fairy
        self._dbapi = fairy.driver_connection
        self._dbapi.autocommit = True  # while lent out; restored when it goes back (_give_back)
        self._cursor = self._dbapi.cursor()
        self.in_transaction = False
        self.invalidated = False

    def fetch(self, *statements: Statement, params: Params | None = None) -> list[tuple[Any, ...]]:
        """Run the statements in one query string (one round trip) and return the last one's rows."""
        self._run(statements, params, begin=False, commit=False)
        return list(self._cursor.fetchall()) if self._cursor.description is not None else []

    def fetch_one(self, *statements: Statement, params: Params | None = None) -> tuple[Any, ...]:
        """Like :meth:`fetch` when the last statement returns exactly one row."""
        rows = self.fetch(*statements, params=params)
        if len(rows) != 1:
            raise RuntimeError(f"expected one row, the statement returned {len(rows)}: {_first_line(statements[-1])}")
        return rows[0]

    def prepare(self, *statements: Prepared) -> None:
        """Prepare those of ``statements`` this connection does not hold yet (a warm-up: nothing runs, nothing is locked)."""
        prepared: set[str] = self._fairy.info.setdefault(_PREPARED_KEY, set())
        fresh = [s for s in statements if s.name not in prepared]
        if fresh:
            self._execute(";\n".join(f"PREPARE {s.name} AS {s.body}" for s in fresh), None)
            prepared.update(s.name for s in fresh)

    def begin_with(self, *statements: Statement, params: Params | None = None) -> list[tuple[Any, ...]]:
        """Open a transaction and run the statements in it, one round trip; the last one's rows."""
        self._run(statements, params, begin=True, commit=False)
        return list(self._cursor.fetchall()) if self._cursor.description is not None else []

    def commit_with(self, *statements: Statement, params: Params | None = None) -> None:
        """Run the statements in the open transaction and commit, one round trip (an error leaves it open: rolled back on exit)."""
        self._run(statements, params, begin=False, commit=True)

    def _run(self, statements: Sequence[Statement], params: Params | None, *, begin: bool, commit: bool) -> None:
        """One query string for ``statements`` (a first use of a prepared one carries its PREPARE); retried once when
        the connection's prepared statements were not what we knew."""
        prepared: set[str] = self._fairy.info.setdefault(_PREPARED_KEY, set())
        for attempt in (1, 2):
            parts = ["BEGIN"] if begin else []
            fresh = [s for s in statements if isinstance(s, Prepared) and s.name not in prepared]
            parts += [f"PREPARE {s.name} AS {s.body}" for s in fresh]
            parts += [s.call if isinstance(s, Prepared) else s.strip() for s in statements]
            if commit:
                parts.append("COMMIT")
            if begin:
                self.in_transaction = True
            try:
                self._execute(";\n".join(parts), params)
            except DBAPIError as exc:
                code = getattr(exc.orig, "pgcode", None)
                if attempt == 2 or code not in (_MISSING, _DUPLICATE) or self.invalidated:
                    raise
                self.rollback()  # the string stopped at the prepared statement: undo what ran before it
                if code == _MISSING:
                    prepared.clear()
                else:
                    prepared.update(s.name for s in fresh)
                continue
            prepared.update(s.name for s in fresh)
            if commit:
                self.in_transaction = False
            return

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


def _first_line(statement: Statement) -> str:
    text = statement.sql if isinstance(statement, Prepared) else statement
    return text.strip().splitlines()[0][:80]


@contextmanager
def direct(engine: Engine) -> Iterator[Direct]:
    """A pooled connection lent in autocommit for fixed statements (PostgreSQL); see the module docstring.

    Checkout failing (the server down) raises SQLAlchemy's ``OperationalError``, as a session's first statement would.
    """
    try:
        fairy = engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as exc:  # raw_connection() raises the driver's own error on connect
        raise DBAPIError.instance(None, None, exc, engine.dialect.loaded_dbapi.Error, connection_invalidated=True) from exc
    handle = Direct(engine, fairy)
    try:
        yield handle
    finally:
        handle._give_back()
