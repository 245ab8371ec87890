"""The trading state (ACTIVE, REDUCING, HALTED) every process reads before an order, kept durably.

HALTED is the kill switch engaged: nothing but cancels. REDUCING lets through
only orders that shrink a position (the pre-trade checks enforce that).

Two copies of one versioned record:

* the database row ``trading_state`` (id 1) is the durable copy: it survives
  restarts of every process and of Redis;
* Redis key :data:`TRADING_STATE_KEY` holds ``"<STATE> <version>"``, the copy the
  engage writes first (one Lua call) and the fast readers (stream, listener) use.

``version`` grows with every change. Either copy can fall behind: Redis
restarted from an older append-only file, restored, flushed or overwritten by
hand; the database missing an engage made while it was down. One rule,
:func:`resolve`, decides what applies, and every reader that can let an order
through or that an operator sees uses it (through :func:`read_state`):

* both copies are read (Redis first, then the database: writers that loosen go
  database first, the engage goes Redis first, so this order never shows a
  looser copy as the newer one);
* they agree: that state;
* they disagree (different versions or states): the higher version says which
  copy is behind and gets repaired, and meanwhile the **stricter** state of the
  two applies (HALTED > REDUCING > ACTIVE); a Redis copy newer but looser than
  the database never loosens anything;
* Redis has no key: the database's value applies and is put back in Redis;
* either copy unreadable (Redis down or malformed, the database down): HALTED
  (fail closed: a kill switch that cannot be read counts as engaged).

Repairs: a reader on the order path puts the database's value back in Redis
when that does not loosen what applies (a missing key, a Redis copy older than
the database and no stricter than it), with a compare-and-set on the value it
read. The watchdog's reconciler (:class:`omni_tasks.safety.engage.Reconciler`)
does every repair: the same ones at once, a repair that loosens Redis (a
release whose Redis write was lost, a malformed value) only when it saw the same
disagreement a round earlier (so an engage between its two writes is never
undone), and the database side from a newer Redis copy
(:func:`omni_tasks.safety.engage.make_durable_from_redis`).

:func:`fast_state` (Redis alone) is for readers that only quiet something
(the alarm listener's coalescing); it is never used to let an order through.

Writes (engage, release, ...) live in :mod:`omni_tasks.safety.engage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import redis
import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import OrderBlocked, OrderRequest
from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.storage.models import EmergencySnapshot, OrderEvent, TradingStateRow

STATE_ROW_ID = 1
_log = structlog.get_logger("omni.killswitch")


class TradingState(StrEnum):
    """What orders may do. HALTED == the kill switch is engaged."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


#: A state change that makes trading *less* restricted; only an operator may make one.
LOOSER = {
    (TradingState.HALTED, TradingState.ACTIVE),
    (TradingState.HALTED, TradingState.REDUCING),
    (TradingState.REDUCING, TradingState.ACTIVE),
}


@dataclass(frozen=True)
class StoredState:
    """One copy of the state (Redis value or database row) with its version."""

    state: TradingState
    version: int


def format_value(state: TradingState, version: int) -> str:
    """The Redis value for ``state`` at ``version``: ``"HALTED 7"``."""
    if version < 0:
        raise ValueError(f"version must not be negative, got {version}")
    return f"{TradingState(state).value} {int(version)}"


def parse_value(raw: bytes | str | None) -> StoredState | None:
    """Parse a Redis value; None when it is missing or malformed (callers treat both as HALTED)."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    parts = text.split(" ")
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    try:
        state = TradingState(parts[0])
    except ValueError:
        return None
    return StoredState(state, int(parts[1]))


#: How strict each state is; while the two copies disagree the stricter one applies.
STRICTNESS = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}

CopyStatus = Literal["ok", "missing", "malformed", "unreadable"]


def stricter(a: TradingState, b: TradingState) -> TradingState:
    """The stricter of two states (HALTED > REDUCING > ACTIVE)."""
    return a if STRICTNESS[a] >= STRICTNESS[b] else b


@dataclass(frozen=True)
class Copy:
    """One store's copy as read: ``ok`` with its value; Redis ``missing`` (no key) or ``malformed``; ``unreadable``.

    ``raw`` is the Redis value exactly as read (None for a missing key or for the database), which a
    repair compares before it writes; ``detail`` is the malformed text or the error.
    """

    status: CopyStatus
    value: StoredState | None = None
    raw: str | None = None
    detail: str | None = None

    def text(self) -> str:
        if self.value is not None:
            return f"{self.value.state.value} {self.value.version}"
        return {"missing": "no key", "malformed": f"malformed ({self.detail})", "unreadable": f"unreadable ({self.detail})"}.get(
            self.status, self.status
        )


@dataclass(frozen=True)
class Reading:
    """What applies now, by :func:`resolve`, and why.

    ``source``: which copy's state applies: ``both`` (they agree), ``redis``, ``database``, or
    ``unreadable`` (a copy could not be read: HALTED). ``newer``: the copy with the higher version
    when they disagree. ``repair``: the copy that is behind and is to be rewritten from the other
    (``redis`` or ``database``). ``immediate``: the repair does not loosen what applies, so any
    reader may make it at once; otherwise only the watchdog makes it, after seeing it twice.
    """

    state: TradingState
    version: int | None
    source: Literal["both", "redis", "database", "unreadable"]
    agree: bool | None
    newer: Literal["redis", "database"] | None
    repair: Literal["redis", "database"] | None
    immediate: bool
    why: str
    redis: Copy
    database: Copy


def resolve(redis_copy: Copy, database: Copy) -> Reading:
    """THE rule for the trading state: both copies in, what applies out (pure; every reader uses it).

    * the database unreadable, or Redis unreachable or malformed: HALTED (fail closed);
    * Redis without a key: the database's value (Redis is repaired from it);
    * both the same: that value;
    * otherwise the stricter of the two states applies until they are reconciled; the higher
      version says which copy is behind. A Redis copy behind the database is rewritten from it; a
      database behind Redis adopts Redis's state when it is at least as strict, and otherwise keeps
      its own, stricter state under a version above Redis's (Redis never loosens the database).
    """

    def reading(state: TradingState, version: int | None, source: Any, why: str, **kw: Any) -> Reading:
        fields = {"agree": False, "newer": None, "repair": None, "immediate": False, **kw}
        return Reading(state, version, source, why=why, redis=redis_copy, database=database, **fields)

    halted = TradingState.HALTED
    if database.status != "ok" or database.value is None:
        version = redis_copy.value.version if redis_copy.value is not None else None
        return reading(halted, version, "unreadable", f"the database cannot be read ({database.detail}): counted as HALTED", agree=None)
    db = database.value
    if redis_copy.status == "unreadable":
        return reading(halted, db.version, "unreadable", f"Redis cannot be read ({redis_copy.detail}): counted as HALTED", agree=None)
    if redis_copy.status == "malformed":
        return reading(
            halted,
            db.version,
            "unreadable",
            f"Redis holds a malformed value ({redis_copy.detail}): counted as HALTED until it is rewritten from the database",
            newer="database",
            repair="redis",
            immediate=db.state is halted,
        )
    if redis_copy.status == "missing" or redis_copy.value is None:
        return reading(
            db.state,
            db.version,
            "database",
            "Redis has no copy (restarted empty or flushed): the database's value applies and is put back in Redis",
            newer="database",
            repair="redis",
            immediate=True,
        )
    cached = redis_copy.value
    if cached == db:
        return reading(db.state, db.version, "both", "both copies agree", agree=True)
    applied = stricter(cached.state, db.state)
    version = max(cached.version, db.version)
    if db.version > cached.version or (db.version == cached.version and STRICTNESS[db.state] > STRICTNESS[cached.state]):
        tighter_or_same = STRICTNESS[db.state] >= STRICTNESS[cached.state]
        source = "database" if applied is db.state else "redis"
        why = (
            f"the copies disagree: Redis holds {cached.state.value} {cached.version}, behind the database's {db.state.value} {db.version} "
            f"(restarted from older data, restored or overwritten); {applied.value}, the stricter, applies until Redis is rewritten "
            + ("from the database" if tighter_or_same else "from the database by the watchdog")
        )
        return reading(applied, version, source, why, newer="database", repair="redis", immediate=tighter_or_same)
    source = "redis" if applied is cached.state else "database"
    if STRICTNESS[cached.state] >= STRICTNESS[db.state]:
        why = (
            f"the copies disagree: Redis holds {cached.state.value} {cached.version}, ahead of the database's {db.state.value} {db.version} "
            f"(a change the database has not recorded, e.g. an engage while it was down); {applied.value} applies "
            "until the watchdog writes it to the database"
        )
    else:
        why = (
            f"the copies disagree: Redis holds {cached.state.value} {cached.version}, ahead of the database's {db.state.value} {db.version} "
            f"but looser; Redis never loosens the database: {applied.value} applies and the watchdog records it above version {cached.version}"
        )
    return reading(applied, version, source, why, newer="redis", repair="database", immediate=True)


def redis_copy(client: redis.Redis, *, key: str = TRADING_STATE_KEY) -> Copy:
    """Redis's copy: ``ok``, ``missing``, ``malformed`` or ``unreadable`` (never raises)."""
    try:
        raw = client.get(key)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported and counts as HALTED
        return Copy("unreadable", detail=f"{type(exc).__name__}: {str(exc)[:200]}")
    if raw is None:
        return Copy("missing")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    parsed = parse_value(text)
    if parsed is None:
        return Copy("malformed", raw=text, detail=repr(text)[:80])
    return Copy("ok", value=parsed, raw=text)


def _row_copy(row: Any) -> Copy:
    if row is None:  # a fresh install: ACTIVE at version 0
        return Copy("ok", value=StoredState(TradingState.ACTIVE, 0))
    return Copy("ok", value=StoredState(TradingState(row.state), int(row.version)))


#: The order path's read of the row: two columns by primary key (no ORM object).
_ROW_STATE = select(TradingStateRow.state, TradingStateRow.version).where(TradingStateRow.id == STATE_ROW_ID)


def database_copy(sessions: sessionmaker[Session], *, session: Session | None = None) -> Copy:
    """The database's copy: one primary-key read (``session`` reuses an open one). No row: ACTIVE 0. Never raises.

    Without a session it reads on a pooled connection of the sessions' engine (about 0.2 ms less than
    opening an ORM session, measured on PostgreSQL).
    """
    try:
        if session is not None:
            return _row_copy(session.execute(_ROW_STATE).first())
        bind = sessions.kw.get("bind")
        if isinstance(bind, Engine):
            with bind.connect() as connection:
                return _row_copy(connection.execute(_ROW_STATE).first())
        with sessions() as own:
            return _row_copy(own.execute(_ROW_STATE).first())
    except Exception as exc:  # noqa: BLE001 - an unreadable database counts as HALTED on the order path
        return Copy("unreadable", detail=f"{type(exc).__name__}: {str(exc)[:200]}")


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


def read_state(
    client: redis.Redis,
    sessions: sessionmaker[Session],
    *,
    key: str = TRADING_STATE_KEY,
    repair: bool = True,
    session: Session | None = None,
) -> Reading:
    """Read both copies (Redis, then the database) and apply :func:`resolve`.

    ``repair``: when Redis is behind and rewriting it does not loosen what applies, do it now
    (best effort; the answer stands either way). ``session`` reads the row in an open session.
    """
    cached = redis_copy(client, key=key)
    durable = database_copy(sessions, session=session)
    reading = resolve(cached, durable)
    if reading.source == "unreadable" or not reading.agree:
        log = _log.warning if reading.source == "unreadable" else _log.info
        log("trading state: " + reading.why, applied=reading.state.value)
    if repair and reading.repair == "redis" and reading.immediate:
        try:
            repair_redis(client, reading, key=key)
        except Exception as exc:  # noqa: BLE001 - the reading stands; the watchdog repairs on its next round
            _log.warning("could not rewrite the trading state in redis", error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return reading


def fast_state(client: redis.Redis, *, key: str = TRADING_STATE_KEY) -> TradingState:
    """The state from Redis alone (one GET). Missing, malformed or unreachable: HALTED.

    Not for letting orders through (a Redis restored from older data says ACTIVE here): only for
    quieting things while halted. Orders go through :func:`current_state`.
    """
    copy = redis_copy(client, key=key)
    return copy.value.state if copy.value is not None else TradingState.HALTED


def read_row(session: Session, *, lock: bool = False) -> TradingStateRow | None:
    """The durable row (id 1), locked for update when ``lock`` (PostgreSQL; SQLite locks the file on write)."""
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


def current_state(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = TRADING_STATE_KEY) -> TradingState:
    """The state every order path reads: :func:`read_state` (both copies, the rule, fail closed)."""
    return read_state(client, sessions, key=key).state


def state_info(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = TRADING_STATE_KEY) -> dict[str, Any]:
    """Everything status, /health and /metrics show, by the same rule as the order path (read only: no repair).

    ``state``: what applies; ``version``: the higher of the two; ``source``: which copy's state
    applies (``both``, ``redis``, ``database``, ``unreadable``); ``redis`` (the raw value) and
    ``database`` (the row) are both copies; ``consistent`` is False while they disagree and
    ``why`` says which applies and why; ``repair``: the copy that is behind.
    """
    info: dict[str, Any] = {
        "state": TradingState.HALTED.value,
        "engaged": True,
        "version": None,
        "actor": None,
        "reason": None,
        "changed_at": None,
        "source": "unreadable",
        "redis": None,
        "database": None,
        "consistent": None,
        "newer": None,
        "repair": None,
        "why": None,
        "last_snapshot": None,
        "errors": [],
    }
    cached = redis_copy(client, key=key)
    if cached.status == "unreadable":
        info["errors"].append(f"redis: {cached.detail}")
    elif cached.status == "malformed":
        info["errors"].append(f"malformed value in redis key {key}: {cached.detail}")
    info["redis"] = cached.raw
    durable: Copy
    try:
        with sessions() as session:
            found = read_row(session)
            durable = _row_copy(found)
            if found is not None:
                info["database"] = {
                    "state": found.state,
                    "version": int(found.version),
                    "actor": found.actor,
                    "reason": found.reason,
                    "changed_at": found.changed_at.isoformat(),
                }
            else:
                info["database"] = {"state": TradingState.ACTIVE.value, "version": 0, "actor": None, "reason": None, "changed_at": None}
            snapshot = session.scalars(select(EmergencySnapshot).order_by(EmergencySnapshot.id.desc()).limit(1)).first()
            if snapshot is not None:
                info["last_snapshot"] = {"id": snapshot.id, "ts": snapshot.ts.isoformat(), "path": snapshot.file_path}
    except Exception as exc:  # noqa: BLE001 - reported; counted as HALTED
        durable = Copy("unreadable", detail=f"{type(exc).__name__}: {str(exc)[:200]}")
        info["errors"].append(f"database: {durable.detail}")
    reading = resolve(cached, durable)
    info.update(
        state=reading.state.value,
        version=reading.version,
        source=reading.source,
        consistent=reading.agree,
        newer=reading.newer,
        repair=reading.repair,
        why=reading.why,
    )
    if info["database"] is not None:
        row = info["database"]
        info["actor"], info["reason"], info["changed_at"] = row["actor"], row["reason"], row["changed_at"]
    info["engaged"] = info["state"] == TradingState.HALTED.value
    return info


def _blocked_text(reading: Reading, what: str) -> str:
    text = f"{what}: trading is HALTED (kill switch engaged, or the state cannot be read)"
    return text if reading.agree else f"{text}; {reading.why}"


class OrderGuard:
    """The broker's last-step guard: raises OrderBlocked unless orders may leave (by :func:`read_state`).

    HALTED, unreadable, or the copies disagreeing with HALTED the stricter: blocked. REDUCING passes
    here; the pre-trade checks enforce reduce-only. :meth:`in_session` reads the row in a session
    the broker already holds open (the simulated broker's ledger transaction).
    """

    def __init__(self, client: redis.Redis, sessions: sessionmaker[Session], *, key: str = TRADING_STATE_KEY) -> None:
        self._client, self._sessions, self._key = client, sessions, key

    def __call__(self, request: OrderRequest) -> None:
        self._check(request, read_state(self._client, self._sessions, key=self._key))

    def in_session(self, request: OrderRequest, session: Session) -> None:
        self._check(request, read_state(self._client, self._sessions, key=self._key, session=session))

    @staticmethod
    def _check(request: OrderRequest, reading: Reading) -> None:
        if reading.state is TradingState.HALTED:
            raise OrderBlocked(_blocked_text(reading, f"order {request.client_order_id} not sent"))


def order_guard(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = TRADING_STATE_KEY) -> OrderGuard:
    """The broker's last-step guard (:class:`OrderGuard`)."""
    return OrderGuard(client, sessions, key=key)


def order_task_refusal(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = TRADING_STATE_KEY) -> str | None:
    """Why an order-bearing task must not start now (None: it may). Checked before every such task."""
    reading = read_state(client, sessions, key=key)
    if reading.state is not TradingState.HALTED:
        return None
    cached = reading.redis
    redis_open = cached.status == "ok" and cached.value is not None and cached.value.state is not TradingState.HALTED
    if reading.database.status == "unreadable" and redis_open:
        # A database outage is not an engage: the order cannot be recorded or sent without the database,
        # so the task starts, waits for it (retried until the order's deadline) and the broker's guard
        # reads both copies again before anything leaves. Refusing here would drop an accepted order.
        _log.info("trading state: the database cannot be read; the order task waits for it")
        return None
    return _blocked_text(reading, "order task refused, not run")


def _client_order_id(args: Any, kwargs: Any) -> str | None:
    """The order's id in an order task's arguments: a ``client_order_id`` keyword, or that key of a dict argument."""
    if isinstance(kwargs, dict) and isinstance(kwargs.get("client_order_id"), str):
        return str(kwargs["client_order_id"])[:64]
    for value in list(args or ()) + list((kwargs or {}).values() if isinstance(kwargs, dict) else ()):
        if isinstance(value, dict) and isinstance(value.get("client_order_id"), str):
            return str(value["client_order_id"])[:64]
    return None


def record_refused_order_task(
    sessions: sessionmaker[Session], *, task_name: str, task_id: str, args: Any, kwargs: Any, reason: str
) -> bool:
    """Record an order task refused before it started: an order event ``refused`` (check ``kill_switch``). True when written.

    Needs the order's ``client_order_id`` in the arguments; without it the task ledger alone records the refusal.
    """
    order_id = _client_order_id(args, kwargs)
    if order_id is None:
        return False
    try:
        with sessions() as session, session.begin():
            session.add(
                OrderEvent(
                    ts=datetime.now(tz=UTC),
                    client_order_id=order_id,
                    event="refused",
                    check="kill_switch",
                    reason=reason,
                    detail={"task": task_name, "task_id": task_id},
                )
            )
        return True
    except Exception as exc:  # noqa: BLE001 - the refusal stands; the task ledger and the log still record it
        _log.warning("refused order task not recorded in order_events", task_id=task_id, error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return False


def changed_at(sessions: sessionmaker[Session]) -> datetime | None:
    """When the durable state last changed (None: never, or unreadable)."""
    try:
        with sessions() as session:
            row = read_row(session)
            return None if row is None else row.changed_at
    except Exception:  # noqa: BLE001 - callers treat unknown as "no change recorded"
        return None
