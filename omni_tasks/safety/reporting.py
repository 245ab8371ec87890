"""Where breaker transitions go: the structured log and the shared counter (by the breaker), the audit log, alerts.

Every transition is already queued in Redis by the breaker, atomically with the
transition itself (:data:`omni_tasks.core.keys.BREAKER_AUDIT_PENDING_KEY`). Here the
records become ``audit_log`` rows: the hook of the process that made a transition
writes its record at once, under its actor; whatever could not be written then
(the database was down: the database breaker's own CLOSED -> OPEN is the usual
case) or was made by a process without a hook is written by
:func:`flush_transitions`, which the hook calls after its own write and the
watchdog calls on every tick. A record is claimed before it is written and
given back if the write fails, so it is written exactly once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.ops import alerts
from omni_tasks.safety.breaker import (
    Transition,
    TransitionHook,
    claim_record,
    claim_records,
    settle_records,
    unclaim_records,
)
from omni_tasks.settings import Settings
from omni_tasks.storage.models import AuditLog

_log = structlog.get_logger("omni.audit")
FLUSH_BATCH = 500


def audit_transitions(
    factory: sessionmaker[Session] | None, *, settings: Settings, actor: str = "system", client: redis.Redis | None = None
) -> TransitionHook:
    """A transition hook that alerts (when ``settings`` configure a webhook) and audits each transition (the breaker counts it).

    With ``client`` (the Redis the breaker uses) the transition's queued record is written
    now under ``actor``, then anything else still queued; without it the record waits
    for the next flush (the watchdog's) and is written under the actor "system".
    """

    def hook(event: Transition) -> None:
        alerts.emit(
            {
                "kind": "breaker.transition",
                "severity": "warning" if "open" in event.to_state and "half" not in event.to_state else "info",
                "message": f"breaker {event.breaker}: {event.from_state} -> {event.to_state} ({event.reason})",
                "breaker": event.breaker,
                "actor": actor,
                "at": datetime.fromtimestamp(event.at, tz=UTC),
            },
            settings=settings,
        )
        if factory is None or client is None or not event.record:
            return
        try:
            _write_own(client, factory, event.record, actor)
            flush_transitions(client, factory)
        except Exception:  # noqa: BLE001 - the database (or Redis) may be the thing that is down; the record stays queued
            _log.warning("breaker transition not audited yet: queued in Redis", breaker=event.breaker, exc_info=True)

    return hook


def _write_own(client: redis.Redis, factory: sessionmaker[Session], record: str, actor: str) -> None:
    """Write this process's own transition under its actor (if no other process has taken the record)."""
    if not claim_record(client, record):
        return
    mine = _with_actor(record, actor)
    try:
        _insert(factory, [mine])
    except Exception:
        unclaim_records(client, [(record, mine)])
        raise
    settle_records(client, [record])


def flush_transitions(client: redis.Redis, factory: sessionmaker[Session], *, limit: int = FLUSH_BATCH) -> int:
    """Write queued transitions into ``audit_log``, oldest first, up to ``limit``; returns how many were written.

    A failing write gives the records back (raised again: the caller decides whether to log it).
    """
    records = claim_records(client, limit)
    if not records:
        return 0
    try:
        _insert(factory, records)
    except Exception:
        unclaim_records(client, [(r, r) for r in records])
        raise
    settle_records(client, records)
    _log.info("queued breaker transitions audited", count=len(records))
    return len(records)


def _with_actor(record: str, actor: str) -> str:
    data = json.loads(record)
    data["actor"] = actor
    return json.dumps(data, separators=(",", ":"))


def _insert(factory: sessionmaker[Session], records: list[str]) -> None:
    rows: list[dict[str, Any]] = [json.loads(r) for r in records]
    with factory() as session, session.begin():
        session.add_all(
            [
                AuditLog(
                    ts=datetime.fromtimestamp(float(row["at"]), tz=UTC),
                    actor=str(row.get("actor") or "system")[:200],
                    action="breaker.transition",
                    subject=f"breaker:{row['breaker']}"[:200],
                    detail={"from": row["from_state"], "to": row["to_state"], "reason": row["reason"], "event": row["id"]},
                )
                for row in rows
            ]
        )
