"""The trading state (ACTIVE, REDUCING, HALTED) every process reads before an order, kept durably.

HALTED is the kill switch engaged: nothing but cancels. REDUCING lets through
only orders that shrink a position (the pre-trade checks enforce that).

Two copies of one value:

* the database row ``trading_state`` (id 1) is the durable truth: it survives
  restarts of every process and of Redis;
* Redis key :data:`REDIS_STATE_KEY` holds ``"<STATE> <version>"``, the fast
  path every order reads (one GET).

``version`` grows with every change. Writers never let an older version
overwrite a newer one in Redis, so a copy re-populated from the database cannot
undo a change written meanwhile.

Reading fails closed (a kill switch that cannot be read counts as engaged):

* :func:`fast_state` reads Redis only: a missing, malformed or unreachable
  value is HALTED.
* :func:`current_state` reads Redis; only a *missing* key (Redis restarted:
  the shared Redis keeps nothing on disk) falls back to the database row
  (no row on a fresh install = ACTIVE) and re-populates Redis. A malformed
  value or an unreachable Redis is HALTED without a database fallback: with
  Redis down no order can be queued anyway, and a half-working Redis must not
  let one through. A database that cannot be read is HALTED too.

Writes (engage, release, ...) live in :mod:`omni_tasks.safety.engage`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.storage.models import EmergencySnapshot, OrderEvent, TradingStateRow
from omni_tasks.trading.broker import OrderBlocked, OrderRequest

REDIS_STATE_KEY = "omni:trading:state"
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


def fast_state(client: redis.Redis, *, key: str = REDIS_STATE_KEY) -> TradingState:
    """The state from Redis alone (one GET). Missing, malformed or unreachable: HALTED."""
    try:
        raw = client.get(key)
    except Exception as exc:  # noqa: BLE001 - any failure to read means "engaged" (fail closed)
        _log.warning("trading state unreadable in redis: counted as HALTED", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return TradingState.HALTED
    parsed = parse_value(raw)
    return parsed.state if parsed is not None else TradingState.HALTED


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


def current_state(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = REDIS_STATE_KEY) -> TradingState:
    """The state every order path reads: Redis, the database when Redis lost the key, HALTED when unreadable."""
    try:
        raw = client.get(key)
    except Exception as exc:  # noqa: BLE001 - unreachable Redis: fail closed
        _log.warning("trading state unreadable in redis: counted as HALTED", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return TradingState.HALTED
    if raw is not None:
        parsed = parse_value(raw)
        if parsed is None:
            _log.error("malformed trading state in redis: counted as HALTED", key=key, value=repr(raw)[:80])
            return TradingState.HALTED
        return parsed.state
    try:
        stored = durable_state(sessions)
    except Exception as exc:  # noqa: BLE001 - neither copy readable: fail closed
        _log.error(
            "trading state unreadable (redis key missing, database unreadable): counted as HALTED",
            error=f"{type(exc).__name__}: {str(exc)[:200]}",
        )
        return TradingState.HALTED
    try:
        # NX: a change written since we read the row wins over our (older) copy.
        if not client.set(key, format_value(stored.state, stored.version), nx=True):
            again = parse_value(client.get(key))
            return again.state if again is not None else TradingState.HALTED
        _log.info("trading state re-populated in redis from the database", state=stored.state.value, version=stored.version)
    except Exception as exc:  # noqa: BLE001 - the database answered; Redis will be re-populated by the next reader
        _log.warning("could not re-populate the trading state in redis", error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return stored.state


def state_info(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = REDIS_STATE_KEY) -> dict[str, Any]:
    """Everything status and /health show: state, version, who, why, since, where it was read, the last snapshot.

    ``source``: ``redis`` (the fast copy answered), ``database`` (Redis had no key),
    ``unreadable`` (counted as HALTED). ``consistent`` is False when both copies
    were read and disagree (a write in progress, or a step that failed: see the events).
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
        "last_snapshot": None,
        "errors": [],
    }
    redis_copy: StoredState | None = None
    redis_ok = False
    try:
        raw = client.get(key)
        redis_ok = True
        redis_copy = parse_value(raw)
        info["redis"] = None if raw is None else (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
        if raw is not None and redis_copy is None:
            info["errors"].append(f"malformed value in redis key {key}")
    except Exception as exc:  # noqa: BLE001 - reported, counted as HALTED
        info["errors"].append(f"redis: {type(exc).__name__}: {str(exc)[:200]}")
    row: dict[str, Any] | None = None
    try:
        with sessions() as session:
            found = read_row(session)
            if found is not None:
                row = {
                    "state": found.state,
                    "version": int(found.version),
                    "actor": found.actor,
                    "reason": found.reason,
                    "changed_at": found.changed_at.isoformat(),
                }
            else:
                row = {"state": TradingState.ACTIVE.value, "version": 0, "actor": None, "reason": None, "changed_at": None}
            snapshot = session.scalars(select(EmergencySnapshot).order_by(EmergencySnapshot.id.desc()).limit(1)).first()
            if snapshot is not None:
                info["last_snapshot"] = {"id": snapshot.id, "ts": snapshot.ts.isoformat(), "path": snapshot.file_path}
        info["database"] = row
    except Exception as exc:  # noqa: BLE001 - reported
        info["errors"].append(f"database: {type(exc).__name__}: {str(exc)[:200]}")
    if redis_ok and redis_copy is not None:
        info["state"], info["version"], info["source"] = redis_copy.state.value, redis_copy.version, "redis"
    elif redis_ok and info["redis"] is None and row is not None:
        info["state"], info["version"], info["source"] = row["state"], row["version"], "database"
    if row is not None:
        info["actor"], info["reason"], info["changed_at"] = row["actor"], row["reason"], row["changed_at"]
        if redis_copy is not None:
            info["consistent"] = redis_copy.state.value == row["state"]
    info["engaged"] = info["state"] == TradingState.HALTED.value
    return info


def order_guard(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = REDIS_STATE_KEY) -> Callable[[OrderRequest], None]:
    """The broker's last-step guard: raises OrderBlocked unless orders may leave.

    HALTED or unreadable: blocked. REDUCING passes here; the pre-trade checks
    enforce reduce-only. It only reads (the simulated broker calls it under its ledger lock).
    """

    def guard(request: OrderRequest) -> None:
        state = current_state(client, sessions, key=key)
        if state is TradingState.HALTED:
            raise OrderBlocked(
                f"order {request.client_order_id} not sent: trading is HALTED (kill switch engaged, or the state cannot be read)"
            )

    return guard


def order_task_refusal(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = REDIS_STATE_KEY) -> str | None:
    """Why an order-bearing task must not start now (None: it may). Checked before every such task."""
    state = current_state(client, sessions, key=key)
    if state is TradingState.HALTED:
        return "trading is HALTED (kill switch engaged, or the state cannot be read): order task refused, not run"
    return None


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
