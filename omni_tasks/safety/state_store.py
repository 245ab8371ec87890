"""The two stored copies of the trading state: read, written, repaired (and what a change records with them).

* the database row ``trading_state`` (id :data:`STATE_ROW_ID`), read by :func:`database_copy` and
  :func:`read_row`, changed only inside :func:`locked_row` (the row under its lock, created for a
  fresh install), with a :class:`~omni_tasks.storage.models.KillEvent` and an audit row
  (:func:`record_audit`) in the same transaction;
* the Redis value ``"<STATE> <version>"`` at :data:`~omni_tasks.core.keys.TRADING_STATE_KEY`, read by
  :func:`redis_copy` and written by one Lua call each: :func:`halt_in_redis` (the engage's first
  step), :func:`sync_redis` (never over a newer version) and :func:`repair_redis` (compare-and-set
  over the value a reader saw).

Which copy applies is not decided here: :func:`omni_tasks.safety.state_rule.resolve` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import redis
import structlog
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.safety.state_rule import Copy, Reading, StoredState, TradingState, format_value, parse_value
from omni_tasks.storage.direct import Prepared, direct, is_postgresql
from omni_tasks.storage.models import AuditLog, TradingStateRow

STATE_ROW_ID = 1
#: The longest reason a change records (longer ones are cut).
MAX_REASON_CHARS = 2000
_log = structlog.get_logger("omni.killswitch")

# KEYS[1] state key. Writes HALTED at version+1 unless Redis already says HALTED.
# A missing or malformed value counts as version 0. Returns {changed 0/1, version}.
_HALT_LUA = """
local cur = redis.call('get', KEYS[1])
local state, version = nil, 0
if cur then
  local s, v = string.match(cur, '^(%u+) (%d+)$')
  if s then state = s; version = tonumber(v) end
end
if state == 'HALTED' then return {0, version} end
version = version + 1
redis.call('set', KEYS[1], 'HALTED ' .. string.format('%d', version))
return {1, version}
"""

# KEYS[1] state key; ARGV state, version. Sets the value unless Redis holds a newer version.
_SYNC_LUA = """
local cur = redis.call('get', KEYS[1])
local want = tonumber(ARGV[2])
if cur then
  local s, v = string.match(cur, '^(%u+) (%d+)$')
  if s and (s == 'ACTIVE' or s == 'REDUCING' or s == 'HALTED') and tonumber(v) > want then return 0 end
end
redis.call('set', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
return 1
"""


def utc_now() -> datetime:
    return datetime.now(tz=UTC)


def redis_copy(client: redis.Redis, *, key: str = TRADING_STATE_KEY) -> Copy:
    """Redis's copy: ``ok``, ``missing``, ``malformed`` or ``unreadable`` (never raises)."""
    try:
        raw = client.get(key)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported and counts as HALTED
        return Copy("unreadable", detail=f"{type(exc).__name__}: {str(exc)[:200]}")
    return redis_copy_of(raw)


def redis_copy_of(raw: Any) -> Copy:
    """Redis's copy from the value a GET of the key returned (a caller that pipelined the GET with other reads)."""
    if isinstance(raw, Exception):
        return Copy("unreadable", detail=f"{type(raw).__name__}: {str(raw)[:200]}")
    if raw is None:
        return Copy("missing")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    parsed = parse_value(text)
    if parsed is None:
        return Copy("malformed", raw=text, detail=repr(text)[:80])
    return Copy("ok", value=parsed, raw=text)


def row_copy(row: Any) -> Copy:
    if row is None:  # a fresh install: ACTIVE at version 0
        return Copy("ok", value=StoredState(TradingState.ACTIVE, 0))
    return Copy("ok", value=StoredState(TradingState(row.state), int(row.version)))


#: The order path's read of the row: two columns by primary key (no ORM object).
_ROW_STATE = select(TradingStateRow.state, TradingStateRow.version).where(TradingStateRow.id == STATE_ROW_ID)
_ROW_STATE_SQL = Prepared("omni_trading_state", "SELECT state, version FROM trading_state WHERE id = %(id)s")


def database_copy(sessions: sessionmaker[Session], *, session: Session | None = None) -> Copy:
    """The database's copy: one primary-key read (``session`` reuses an open one). No row: ACTIVE 0. Never raises.

    Without a session it reads on a pooled connection of the sessions' engine: on PostgreSQL one statement
    on the DB-API cursor in autocommit (:mod:`omni_tasks.storage.direct`; one round trip, no ORM: every
    order-bearing task's gate reads it), elsewhere through a Core connection.
    """
    try:
        if session is not None:
            return row_copy(session.execute(_ROW_STATE).first())
        bind = sessions.kw.get("bind")
        if isinstance(bind, Engine):
            if is_postgresql(bind):
                with direct(bind) as db:
                    rows = db.fetch(_ROW_STATE_SQL, params={"id": STATE_ROW_ID})
                return row_copy(SimpleNamespace(state=rows[0][0], version=rows[0][1]) if rows else None)
            with bind.connect() as connection:
                return row_copy(connection.execute(_ROW_STATE).first())
        with sessions() as own:
            return row_copy(own.execute(_ROW_STATE).first())
    except Exception as exc:  # noqa: BLE001 - an unreadable database counts as HALTED on the order path
        return Copy("unreadable", detail=f"{type(exc).__name__}: {str(exc)[:200]}")


def redis_value(client: redis.Redis, key: str) -> StoredState | None:
    """Redis's copy when it can be read and parsed (None otherwise: the database decides alone)."""
    return redis_copy(client, key=key).value


def read_row(session: Session, *, lock: bool = False) -> TradingStateRow | None:
    """The durable row (id 1), locked for update when ``lock`` (PostgreSQL; on SQLite :func:`locked_row` takes the write lock first)."""
    stmt = select(TradingStateRow).where(TradingStateRow.id == STATE_ROW_ID)
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).first()


def durable_state(sessions: sessionmaker[Session]) -> StoredState:
    """The state in the database; no row (a fresh install) is ACTIVE at version 0. Raises when unreadable."""
    with sessions() as session:
        row = read_row(session)
        if row is None:
            return StoredState(TradingState.ACTIVE, 0)
        return StoredState(TradingState(row.state), int(row.version))


@contextmanager
def locked_row(sessions: sessionmaker[Session]) -> Iterator[tuple[Session, TradingStateRow, datetime]]:
    """A transaction holding the durable row under its lock: ``(session, row, now)``; commits when the block ends.

    A fresh install has no row yet: it is created (ACTIVE at version 0, by ``install``) and flushed
    first. ``now`` is read once the lock is held, so it orders the changes as the lock does.
    """
    with sessions() as session, session.begin():
        if session.get_bind().dialect.name == "sqlite":
            # SQLite has no row locks, and pysqlite begins a transaction only at the first write: without
            # the file's write lock taken before the read, two writers read the same row and one update is
            # lost (an operator's engage attributed to the reconciler, or an engage undone by a release).
            session.execute(text("BEGIN IMMEDIATE"))
        row = read_row(session, lock=True)
        now = utc_now()
        if row is None:
            row = TradingStateRow(
                id=STATE_ROW_ID, state=TradingState.ACTIVE.value, version=0, changed_at=now, actor="install", reason="initial state"
            )
            session.add(row)
            session.flush()
        yield session, row, now


def changed_at(sessions: sessionmaker[Session]) -> datetime | None:
    """When the durable state last changed (None: never, or unreadable)."""
    try:
        with sessions() as session:
            row = read_row(session)
            return None if row is None else row.changed_at
    except Exception:  # noqa: BLE001 - callers treat unknown as "no change recorded"
        return None


def sync_redis(client: redis.Redis, state: TradingState, version: int, *, key: str = TRADING_STATE_KEY) -> bool:
    """Put ``state`` at ``version`` in Redis unless Redis already holds a newer version. True when written."""
    return bool(client.eval(_SYNC_LUA, 1, key, state.value, str(int(version))))


def halt_in_redis(client: redis.Redis, *, key: str = TRADING_STATE_KEY) -> tuple[bool, int]:
    """Redis says HALTED from now on. Returns (changed, version); an already-HALTED value is left alone."""
    changed, version = client.eval(_HALT_LUA, 1, key)
    return bool(changed), int(version)


# KEYS[1] state key; ARGV: expected value ('' for no key), the new value. Writes only over what was read.
_REPAIR_LUA = """
local cur = redis.call('get', KEYS[1])
if ARGV[1] == '' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
redis.call('set', KEYS[1], ARGV[2])
return 1
"""


def repair_redis(client: redis.Redis, reading: Reading, *, key: str = TRADING_STATE_KEY) -> bool:
    """Put the database's value in Redis over the value ``reading`` saw there (compare-and-set). True when written.

    A change written to Redis since (an engage, a release's second step) makes the compare fail: nothing is undone.
    """
    if reading.repair != "redis" or reading.database.value is None or reading.redis.status not in ("missing", "malformed", "ok"):
        return False
    db = reading.database.value
    expected = reading.redis.raw or ""
    wrote = bool(client.eval(_REPAIR_LUA, 1, key, expected, format_value(db.state, db.version)))
    if wrote:
        _log.warning(
            "trading state in redis rewritten from the database",
            redis_before=reading.redis.text(),
            database=reading.database.text(),
            applied_before=reading.state.value,
        )
    return wrote


def plain(value: Any) -> Any:
    """JSON-ready: Decimals as exact strings, datetimes as ISO text."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def record_audit(session: Session, *, ts: datetime, actor: str, action: str, detail: dict[str, Any]) -> None:
    session.add(AuditLog(ts=ts, actor=actor, action=action, subject="trading_state", detail=plain(detail)))


def with_db_retry(step: Callable[[], Any], *, attempts: int = 3) -> Any:
    """Run a short database step, retrying a lost connection or a lock conflict (SQLite) after a brief pause."""
    delay_s = 0.02
    for attempt in range(attempts):
        try:
            return step()
        except (OperationalError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(delay_s)
            delay_s *= 4
    raise AssertionError("unreachable")  # pragma: no cover
