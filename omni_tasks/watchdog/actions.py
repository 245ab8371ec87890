"""The watchdog's actions: engaging the kill switch, tripping a breaker automatically, alerting.

An action that raises is "not done": it is tried again at the next breaching evaluation
(:mod:`omni_tasks.watchdog.evaluation`). None of them ever releases anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import structlog

from omni_tasks.ops import alerts
from omni_tasks.safety.wiring import VenueFactory
from omni_tasks.watchdog.gathering import RuntimeLike
from omni_tasks.watchdog.rules import Finding

_log = structlog.get_logger("omni.watchdog")


class Actuator(Protocol):
    """How actions reach the world; raising means "not done" (tried again at the next breaching evaluation)."""

    def trip_breaker(self, name: str, finding: Finding) -> None: ...

    def engage_kill(self, finding: Finding) -> None: ...

    def alert(self, finding: Finding) -> None: ...


class LiveActuator:
    """The real actions: the kill switch's :func:`~omni_tasks.safety.engage.engage`, the shared breakers, the webhook."""

    def __init__(self, runtime: RuntimeLike, *, purge: Callable[[], int] | None, venue_factory: VenueFactory | None = None) -> None:
        """``venue_factory(runtime)`` builds the venue the kill switch cancels through (default: the configured one)."""
        self._runtime = runtime
        self._purge = purge
        self._venue_factory = venue_factory

    def engage_kill(self, finding: Finding) -> None:
        from omni_tasks.safety.engage import engage

        venue = None
        try:
            if self._venue_factory is not None:
                venue = self._venue_factory(self._runtime)
            else:
                from omni_tasks.trading.wiring import make_venue

                venue = make_venue(self._runtime)  # type: ignore[arg-type]  # the process runtime
        except Exception:  # noqa: BLE001 - engage still halts; its result says the orders were not cancelled
            _log.error("no broker for the kill switch (open orders cannot be cancelled)", exc_info=True)
        result = engage(
            self._runtime,
            actor=f"watchdog:{finding.rule}",
            reason=finding.message,
            broker=venue,
            purge=self._purge,
        )
        if not result.durable:
            raise RuntimeError(f"kill switch not durable: {result.errors}")

    def trip_breaker(self, name: str, finding: Finding) -> None:
        from omni_tasks.safety.breaker import CircuitBreaker
        from omni_tasks.safety.reporting import audit_transitions

        runtime = self._runtime
        breaker = CircuitBreaker(
            name, runtime.redis, on_transition=audit_transitions(runtime.sessions, settings=runtime.settings, actor=f"watchdog:{finding.rule}", client=runtime.redis)
        )
        # Automatic, not forced: report failures through the breaker's own call path until it opens
        # (a half-open breaker needs its trial slot to count one); its cooldown and trial close it again.
        for _ in range(breaker.policy.failure_threshold + 1):
            if breaker.state()["automatic"] == "open":
                return
            decision = breaker.allow()
            breaker.record(False, trial=decision.trial)
        if breaker.state()["automatic"] != "open":
            raise RuntimeError(f"breaker {name} did not open")

    def alert(self, finding: Finding) -> None:
        alerts.emit(
            {
                "kind": f"watchdog.{finding.rule}",
                "severity": finding.severity,
                "message": finding.message,
                "value": finding.value if math.isfinite(finding.value) else "none",
                "limit": finding.limit,
            },
            settings=self._runtime.settings,
        )


def fire(actuator: Actuator, finding: Finding) -> str:
    action = finding.action
    _log.critical("watchdog action", rule=finding.rule, action=str(action), message=finding.message)
    try:
        if action.kind == "engage_kill":
            actuator.engage_kill(finding)
        elif action.kind == "trip_breaker":
            actuator.trip_breaker(action.target or "", finding)
        else:
            actuator.alert(finding)
    except Exception as exc:  # noqa: BLE001 - tried again at the next breaching evaluation
        _log.exception("watchdog action failed; retried at the next breaching evaluation", rule=finding.rule, action=str(action))
        return f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    return "done"
