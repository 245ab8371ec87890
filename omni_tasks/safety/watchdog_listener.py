"""The watchdog worker's answer to safety alarms: a critical alarm engages the kill switch, a warning is alerted.

:func:`start_watchdog_listener` wires an :class:`~omni_tasks.safety.alarms.AlarmListener` to
:func:`~omni_tasks.safety.engage.engage` (as ``watchdog:alarm:<kind>``), to the alert webhook, and to
the :class:`~omni_tasks.safety.reconcile.Reconciler` it runs every ``OMNI_KILL_RECONCILE_EVERY_S``.
It never releases anything. The venue and the orders-queue purge come from the worker that starts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from omni_tasks.contracts.venue import CancelsOpenOrders, Venue
from omni_tasks.safety.alarms import Alarm, AlarmListener, alarm_reason
from omni_tasks.safety.engage import engage
from omni_tasks.safety.engage_write import warm_up
from omni_tasks.safety.killswitch import current_state, fast_state
from omni_tasks.safety.reconcile import Reconciler
from omni_tasks.safety.state_rule import TradingState
from omni_tasks.safety.state_store import changed_at
from omni_tasks.safety.wiring import VenueFactory

_log = structlog.get_logger("omni.alarms")


def start_watchdog_listener(
    runtime: Any,
    *,
    purge: Callable[[], int] | None,
    venue_factory: VenueFactory,
) -> AlarmListener:
    """Start the listener of the watchdog worker: a critical alarm engages the kill switch.

    ``venue_factory(runtime)`` builds the trading venue (the watchdog worker passes
    :func:`omni_tasks.trading.wiring.make_venue`); it is built once, ahead of the first
    alarm, and rebuilt after a failure. ``purge`` empties the orders queue (built at the Celery edge).
    """
    settings = runtime.settings
    holder: dict[str, Venue] = {}

    def venue() -> Venue | None:
        if "venue" not in holder:
            try:
                holder["venue"] = venue_factory(runtime)
            except Exception as exc:  # noqa: BLE001 - engage still halts; the error is in its result
                _log.error(
                    "no broker for the kill switch (open orders cannot be cancelled)", error=f"{type(exc).__name__}: {str(exc)[:200]}"
                )
                return None
        return holder["venue"]

    def on_critical(alarm: Alarm) -> None:
        result = engage(
            runtime,
            actor=f"watchdog:alarm:{alarm.kind}",
            reason=alarm_reason(alarm),
            broker=venue(),
            purge=purge,
        )
        if "broker" in result.errors or "snapshot" in result.errors:
            holder.pop("venue", None)
        lag_ms = (result.halted_at_ns - alarm.ts_ns) / 1e6 if result.halted_at_ns else None
        _log.critical(
            "kill switch engaged by an alarm",
            kind=alarm.kind,
            repeat=result.repeat,
            durable=result.durable,
            alarm_to_halted_ms=round(lag_ms, 3) if lag_ms is not None else None,
            timings_ms=result.timings_ms,
            remaining_open=len(result.remaining_open),
            errors=result.errors,
        )

    def on_warning(alarm: Alarm) -> None:
        from omni_tasks.ops import alerts

        alerts.emit(
            {"kind": f"alarm.{alarm.kind}", "severity": "warning", "message": alarm_reason(alarm), "source": alarm.source},
            settings=settings,
        )

    def last_change_ns() -> int | None:
        when = changed_at(runtime.sessions)
        return None if when is None else int(when.timestamp() * 1e9)

    reconciler = Reconciler(runtime)

    def maintenance() -> None:
        # The two copies of the trading state made to agree: a Redis behind the database (restarted from
        # older data, restored, flushed) is rewritten from it; an engage the database missed is written down.
        reconciler.run()

    # Warm up what the first engage needs (connections, the durable write's plan, the venue) so it is fast.
    try:
        current_state(runtime.redis, runtime.sessions)
        warm_up(runtime.sessions)
    except Exception:  # noqa: BLE001, S110 - warming up only
        pass
    built = venue()
    if isinstance(built, CancelsOpenOrders):
        try:
            built.warm_up()
        except Exception:  # noqa: BLE001, S110 - warming up only
            pass
    listener = AlarmListener(
        client_factory=lambda: runtime.redis,
        on_critical=on_critical,
        on_warning=on_warning,
        is_halted=lambda: fast_state(runtime.redis) is TradingState.HALTED,
        last_change_ns=last_change_ns,
        maintenance=maintenance,
        maintenance_every_s=settings.kill.reconcile_every_s,
        catchup_s=settings.kill.alarm_catchup_s,
        owner=f"{getattr(runtime, 'hostname', 'host')}:{getattr(runtime, 'pid', 0)}",
    )
    return listener.start()
