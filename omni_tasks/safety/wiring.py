"""What the kill switch takes from the process that runs it: the runtime, a venue factory, the alert path, the change counter.

Nothing in the safety package builds a venue: the edge that runs the kill switch (the CLI, the
watchdog worker's bootstep, the watchdog task) passes a :data:`VenueFactory` (usually
:func:`omni_tasks.trading.wiring.make_venue`), so ``omni_tasks.safety`` never imports ``omni_tasks.trading``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import redis
import structlog
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import Venue
from omni_tasks.core import counters
from omni_tasks.settings import Settings

_log = structlog.get_logger("omni.killswitch")

#: Builds the venue the kill switch cancels and flattens through, from the process runtime.
VenueFactory = Callable[[Any], Venue]
#: Sends one alert (a caller's own: the drill collects them instead).
AlertSender = Callable[[dict[str, Any]], None]


class RuntimeLike(Protocol):
    """What the sequences need of a process runtime (:class:`omni_tasks.core.runtime.Runtime` fits)."""

    settings: Settings

    @property
    def redis(self) -> redis.Redis: ...

    @property
    def sessions(self) -> sessionmaker[Session]: ...


def _by(actor: str) -> str:
    """The metric label for who acted: operator, watchdog, http or other (names never become labels)."""
    for prefix, label in (("operator:", "operator"), ("watchdog", "watchdog"), ("http:", "http")):
        if actor.lower().startswith(prefix):
            return label
    return "other"


def count_change(client: redis.Redis, action: str, actor: str) -> None:
    """Count a change in the runtime's own Redis (a drill's scratch Redis keeps its counts to itself); never raises."""
    counters.KILL_SWITCH_CHANGES.inc(client, action, _by(actor))


def send_alert(runtime: RuntimeLike, alert: AlertSender | None, event: dict[str, Any]) -> None:
    """Send the alert without blocking or failing the sequence.

    The default (:func:`omni_tasks.ops.alerts.emit`) queues it for its own background
    thread and never raises, so it is called directly: a CLI that exits right after
    can wait for that queue (``alerts.drain``). A caller's own ``alert`` runs in a thread.
    """
    if alert is None:
        try:
            from omni_tasks.ops import alerts

            alerts.emit(event, settings=runtime.settings)
        except Exception as exc:  # noqa: BLE001 - an alert must never fail the kill switch
            _log.error("kill switch alert not sent", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return
    sender = alert

    def run() -> None:
        try:
            sender(event)
        except Exception as exc:  # noqa: BLE001 - an alert must never fail the kill switch
            _log.error("kill switch alert not sent", error=f"{type(exc).__name__}: {str(exc)[:200]}")

    threading.Thread(target=run, name="omni-kill-alert", daemon=True).start()
