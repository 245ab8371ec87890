"""Where breaker transitions go: the structured log and the shared counter (by the breaker), the audit log, alerts."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks import alerts
from omni_tasks.safety.breaker import Transition, TransitionHook
from omni_tasks.storage.models import AuditLog

_log = structlog.get_logger("omni.audit")


def audit_transitions(factory: sessionmaker[Session] | None, *, actor: str = "system") -> TransitionHook:
    """A transition hook that audits each transition and alerts (the breaker itself counts it) (when a webhook is configured)."""

    def hook(event: Transition) -> None:
        alerts.emit(
            {
                "kind": "breaker.transition",
                "severity": "warning" if "open" in event.to_state and "half" not in event.to_state else "info",
                "message": f"breaker {event.breaker}: {event.from_state} -> {event.to_state} ({event.reason})",
                "breaker": event.breaker,
                "actor": actor,
                "at": datetime.fromtimestamp(event.at, tz=UTC),
            }
        )
        if factory is None:
            return
        try:
            with factory() as session, session.begin():
                session.add(
                    AuditLog(
                        ts=datetime.fromtimestamp(event.at, tz=UTC),
                        actor=actor,
                        action="breaker.transition",
                        subject=f"breaker:{event.breaker}",
                        detail={"from": event.from_state, "to": event.to_state, "reason": event.reason},
                    )
                )
        except Exception:  # noqa: BLE001 - the database may be the thing that is down
            _log.exception("breaker transition not audited", breaker=event.breaker)

    return hook
