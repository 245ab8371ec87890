"""Bringing the two copies of the trading state back together: the watchdog's reconciler and its repairs.

A Redis copy behind the database is rewritten from it (:func:`omni_tasks.safety.state_store.repair_redis`);
a database behind Redis is brought up to it without ever being loosened (:func:`make_durable_from_redis`).
:class:`Reconciler` runs one round of both every ``OMNI_KILL_RECONCILE_EVERY_S``.
"""

from __future__ import annotations

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.safety.killswitch import read_state
from omni_tasks.safety.state_rule import STRICTNESS, Copy, Reading, StoredState, TradingState, resolve
from omni_tasks.safety.state_store import locked_row, record_audit, redis_value, repair_redis, sync_redis, with_db_retry
from omni_tasks.safety.wiring import RuntimeLike
from omni_tasks.storage.models import KillEvent

_log = structlog.get_logger("omni.killswitch")

#: Who the watchdog's reconciler records as when it repairs a copy from the other.
RECONCILE_ACTOR = "watchdog:reconcile"


def state_before_reconcile(session: Session, version: int) -> str:
    """The state the reconciler's repair at ``version`` replaced (its KillEvent), ACTIVE when not found."""
    events = session.scalars(select(KillEvent).where(KillEvent.actor == RECONCILE_ACTOR).order_by(KillEvent.id.desc()).limit(5)).all()
    for event in events:
        if (event.detail or {}).get("version") == version:
            return str(event.state_before)
    return TradingState.ACTIVE.value


def make_durable_from_redis(runtime: RuntimeLike, *, actor: str = RECONCILE_ACTOR, key: str = TRADING_STATE_KEY) -> bool:
    """Bring the database up to a Redis copy that is ahead of it, without ever loosening it. True when it wrote.

    * Redis ahead and at least as strict (an engage made while the database was down, or whose
      database write failed): the row takes Redis's state and version;
    * Redis at the row's version but stricter: the row takes Redis's state at the next version;
    * Redis ahead but looser (overwritten by hand, or the database restored from older data): the
      row keeps its own, stricter state, recorded at the version after Redis's.

    Each write records a KillEvent (``repair: true``) and an audit row as ``actor``; Redis is then
    rewritten from the row when it differs. Never releases anything.
    """
    cached = redis_value(runtime.redis, key)
    if cached is None:
        return False

    def apply() -> StoredState | None:
        with locked_row(runtime.sessions) as (session, row, now):
            durable = StoredState(TradingState(row.state), int(row.version))
            reading = resolve(Copy("ok", value=cached), Copy("ok", value=durable))
            if reading.repair != "database":
                return None
            if STRICTNESS[cached.state] >= STRICTNESS[durable.state]:
                target = StoredState(cached.state, cached.version if cached.version > durable.version else durable.version + 1)
                reason = (
                    f"redis held {cached.state.value} {cached.version}, ahead of the database's {durable.state.value} {durable.version} "
                    "(a change the database missed, e.g. an engage while it was down): made durable"
                )
            else:
                target = StoredState(durable.state, cached.version + 1)
                reason = (
                    f"redis held {cached.state.value} {cached.version}, ahead of the database's {durable.state.value} {durable.version} "
                    "but looser: the database's state stands (Redis never loosens it), recorded above Redis's version"
                )
            before = durable.state.value
            if target.state is not durable.state:
                row.state, row.changed_at, row.actor, row.reason = target.state.value, now, actor, reason
            row.version = target.version
            session.add(
                KillEvent(
                    ts=now,
                    action="engage" if target.state is TradingState.HALTED else "repair",
                    actor=actor,
                    reason=reason,
                    state_before=before,
                    state_after=target.state.value,
                    timings_ms={},
                    detail={"repair": True, "version": target.version, "redis": f"{cached.state.value} {cached.version}"},
                )
            )
            record_audit(
                session,
                ts=now,
                actor=actor,
                action="kill.repair.database",
                detail={
                    "from": f"{before} {durable.version}",
                    "to": f"{target.state.value} {target.version}",
                    "redis": f"{cached.state.value} {cached.version}",
                },
            )
            return target

    written: StoredState | None = with_db_retry(apply)
    if written is None:
        return False
    _log.warning(
        "trading state in the database reconciled from redis",
        state=written.state.value,
        version=written.version,
        redis=f"{cached.state.value} {cached.version}",
    )
    if written != cached:
        try:
            sync_redis(runtime.redis, written.state, written.version, key=key)
        except Exception as exc:  # noqa: BLE001 - the row holds it; the next round rewrites Redis
            _log.warning("could not rewrite the trading state in redis", error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return True


class Reconciler:
    """The watchdog's repair of the two copies, run every ``OMNI_KILL_RECONCILE_EVERY_S`` (one call per round).

    * Redis behind the database (restart from an older append-only file, restore, FLUSHALL, a
      hand-written value) and no stricter than it: rewritten from the database at once;
    * Redis behind but stricter (a release whose Redis write was lost) or malformed: rewritten
      only when the very same disagreement was seen on the previous round, so an engage caught
      between its Redis write and its database write is never undone (the stricter state applies
      meanwhile);
    * the database behind Redis: :func:`make_durable_from_redis`.
    """

    def __init__(self, runtime: RuntimeLike, *, key: str = TRADING_STATE_KEY) -> None:
        self._runtime = runtime
        self._key = key
        self._pending: tuple[str | None, StoredState | None] | None = None

    def run(self) -> str | None:
        """One round; returns what it repaired (``redis``, ``database``) or None. Raises when a store fails mid-repair."""
        reading: Reading = read_state(self._runtime.redis, self._runtime.sessions, key=self._key, repair=False)
        seen = (reading.redis.raw, reading.database.value)
        pending, self._pending = self._pending, None
        if reading.repair == "database":
            return "database" if make_durable_from_redis(self._runtime, key=self._key) else None
        if reading.repair != "redis":
            return None
        if not reading.immediate and pending != seen:
            self._pending = seen
            _log.warning("trading state: " + reading.why + "; rewritten next round if it lasts")
            return None
        return "redis" if repair_redis(self._runtime.redis, reading, key=self._key) else None
