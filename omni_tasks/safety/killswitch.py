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
read. The watchdog's reconciler (:class:`omni_tasks.safety.reconcile.Reconciler`)
does every repair: the same ones at once, a repair that loosens Redis (a
release whose Redis write was lost, a malformed value) only when it saw the same
disagreement a round earlier (so an engage between its two writes is never
undone), and the database side from a newer Redis copy
(:func:`omni_tasks.safety.reconcile.make_durable_from_redis`).

:func:`fast_state` (Redis alone) is for readers that only quiet something
(the alarm listener's coalescing); it is never used to let an order through.

Where the rest lives: the states and the rule in :mod:`~omni_tasks.safety.state_rule`, each
copy's reads and writes in :mod:`~omni_tasks.safety.state_store`, the engage sequence in
:mod:`~omni_tasks.safety.engage`, release / reduce / activate in :mod:`~omni_tasks.safety.transitions`,
the order path's guard in :mod:`~omni_tasks.safety.order_guard`, the watchdog's repairs in
:mod:`~omni_tasks.safety.reconcile`.
"""

from __future__ import annotations

from typing import Any

import redis
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.safety.state_rule import Copy, Reading, TradingState, resolve
from omni_tasks.safety.state_store import database_copy, read_row, redis_copy, repair_redis, row_copy
from omni_tasks.storage.models import EmergencySnapshot

_log = structlog.get_logger("omni.killswitch")


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
    return judge(client, cached, durable, key=key, repair=repair)


def judge(client: redis.Redis, cached: Copy, durable: Copy, *, key: str = TRADING_STATE_KEY, repair: bool = True) -> Reading:
    """:func:`read_state` for copies the caller read itself (each in a round trip it shares with other reads)."""
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
            durable = row_copy(found)
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
