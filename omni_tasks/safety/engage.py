"""Engaging the kill switch: the sequence of steps, each timed, none allowed to stop the ones after it.

The sequence (DESIGN section 8):

1. ``redis``: Redis says HALTED (one Lua call). Every order path reads this
   key, so orders stop here, a fraction of a millisecond in.
2. ``durable``: the database row says HALTED, with a :class:`KillEvent` and an
   :class:`AuditLog` row in the same transaction (who, why, when; on PostgreSQL one
   statement, see :mod:`omni_tasks.safety.engage_write`); Redis is then re-synced
   to the row's version. From here it survives every restart.
3. ``snapshot``: open orders, positions and breaker states read, saved as an
   :class:`EmergencySnapshot` row and a JSON file (temp file + rename), see
   :mod:`omni_tasks.safety.snapshot`. The cancels are sent before the snapshot is
   written, so the write does not delay them: a venue whose cancel reports what it
   cancelled (the simulated venue) is sent it first and its report is the open
   orders; any other is read (``open_orders``), then sent ``cancel_all``.
4. ``cancel_requested`` / ``cancelled_confirmed``: ``cancel_all``, then
   ``open_orders`` polled every ``poll_interval_ms`` until none is open or
   ``cancel_confirm_timeout_s`` passes (an order that appears meanwhile is
   cancelled too). Orders still open are reported by id, loudly.
5. ``flatten``: ``close_all`` when configured (``OMNI_KILL_FLATTEN_ON_ENGAGE``)
   or asked for.
6. ``purge``: the queued order tasks are purged. It starts once the cancels
   are sent, in a thread alongside the snapshot, the confirmation and step 5
   (queued orders would only be refused, and the purge must not delay the
   cancels); its timing is when it finished, so it may be smaller than ``flatten``.
7. the KillEvent gets its timings and counts; an alert goes out in the
   background (never blocking, never failing the sequence).

Each step runs through :class:`~omni_tasks.safety.steps.Steps`: a step that raises has its error recorded
under its name in ``EngageResult.errors`` and the sequence goes on.
``timings_ms`` are milliseconds from the start of :func:`engage` to the end of
each step (so ``durable`` is "engaged, durably" and ``cancelled_confirmed`` is
"every open order cancelled").

Idempotent: engaging an engaged switch keeps the engaged period (state,
version, ``changed_at``, who engaged it first) and records the request (a
KillEvent ``engage`` with ``repeat: true`` and an audit row). It re-runs
cancel-and-confirm and the purge (both harmless, and an order that slipped
into the book is cancelled), takes a snapshot only when the period has none
yet, and flattens only when the caller asks for it explicitly (``flatten=True``;
the configured default applies to the first engage only, so two engages never
send two rounds of closing orders).

Releasing and the other state changes are in :mod:`omni_tasks.safety.transitions`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import CancelsOpenOrders, Venue, VenueOrder, VenuePosition
from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.safety.engage_write import DurableEngage, write_engage
from omni_tasks.safety.snapshot import (
    period_has_snapshot,
    read_breakers,
    save_snapshot_row,
    snapshot_path,
    snapshot_payload,
    write_json_atomically,
)
from omni_tasks.safety.state_rule import TradingState
from omni_tasks.safety.state_store import (
    MAX_REASON_CHARS,
    halt_in_redis,
    plain,
    sync_redis,
    utc_now,
    with_db_retry,
)
from omni_tasks.safety.steps import Steps, attempt, ms_since
from omni_tasks.safety.wiring import AlertSender, RuntimeLike, count_change, send_alert
from omni_tasks.settings import Settings
from omni_tasks.storage.models import KillEvent

_log = structlog.get_logger("omni.killswitch")


@dataclass
class EngageResult:
    """What one engage did. ``complete`` is True when it is durable, nothing failed and no order stayed open."""

    actor: str
    reason: str
    started_at: str
    state_before: str | None = None
    repeat: bool = False
    version: int | None = None
    redis_written: bool = False
    durable: bool = False
    kill_event_id: int | None = None
    snapshot_id: int | None = None
    snapshot_path: str | None = None
    open_orders_before: int = 0
    positions_before: int = 0
    cancel_requested: int = 0
    cancel_rounds: int = 0
    remaining_open: list[str] = field(default_factory=list)
    flattened: int = 0
    purged: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: Wall-clock time (ns since the epoch) when Redis said HALTED: from here no order passes the gate.
    halted_at_ns: int | None = None
    #: Wall-clock time (ns since the epoch) when engage was called; ``timings_ms`` count from here.
    started_at_ns: int = 0

    @property
    def complete(self) -> bool:
        return self.durable and not self.errors and not self.remaining_open

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["complete"] = self.complete
        return out


def engage(
    runtime: RuntimeLike,
    *,
    actor: str,
    reason: str,
    broker: Venue | None,
    flatten: bool | None = None,
    purge: Callable[[], int] | None = None,
    alert: AlertSender | None = None,
    key: str = TRADING_STATE_KEY,
) -> EngageResult:
    """Engage the kill switch: orders stop, durably; snapshot, cancel and confirm, flatten, purge, audit, alert.

    Never raises, and never refuses: a failing step's error is in ``result.errors``
    under its name and the remaining steps still run; a blank actor or reason is
    recorded as ``unknown`` / ``(no reason given)`` rather than stopping the engage. ``broker`` is the
    trading venue; None skips the venue steps (recorded as an error: the open orders were not cancelled).
    """
    venue = broker  # the keyword keeps its name for its callers (CLI, HTTP, watchdog, tests); here it is the venue
    # Bad words never stop an engage: a missing actor or reason is recorded as such.
    actor = actor.strip()[:100] if isinstance(actor, str) and actor.strip() else "unknown"
    reason = reason.strip()[:MAX_REASON_CHARS] if isinstance(reason, str) and reason.strip() else "(no reason given)"
    settings = runtime.settings
    t0 = time.perf_counter()
    started_ns = time.time_ns()
    started = datetime.fromtimestamp(started_ns / 1e9, tz=UTC)
    result = EngageResult(actor=actor, reason=reason, started_at=started.isoformat(), started_at_ns=started_ns)
    steps = Steps(result.errors, result.timings_ms, t0)
    client = runtime.redis
    sessions = runtime.sessions

    # 1. Redis first: every order path reads this key, so orders stop now.
    redis_version, redis_changed = 0, False
    halted = steps.run("redis", lambda: halt_in_redis(client, key=key))
    if halted is None:
        # An unreachable Redis already counts as HALTED everywhere.
        _log.error("kill switch: redis not written (an unreadable state counts as HALTED)", error=result.errors["redis"])
    else:
        redis_changed, redis_version = halted
        result.redis_written = True
        result.halted_at_ns = time.time_ns()
    steps.timed("redis")

    # 2. Durable: the row, the KillEvent and the audit row in one transaction.
    engaged_since = _durable_step(
        steps, result, sessions, actor=actor, reason=reason, redis_changed=redis_changed, redis_version=redis_version
    )
    if result.durable:
        # The row is durable; Redis follows it (an unreadable Redis counts as HALTED meanwhile).
        version = result.version or 0
        if steps.run("redis", lambda: sync_redis(client, TradingState.HALTED, version, key=key), first=True) is not None:
            result.redis_written = True
            if result.halted_at_ns is None:
                result.halted_at_ns = time.time_ns()
    else:
        # Reported loudly; Redis (if written) still blocks orders.
        _log.critical(
            "kill switch NOT DURABLE: the database write failed; orders are blocked only while Redis holds the state",
            error=result.errors["durable"],
        )
    steps.timed("durable")

    # 3 + 4. Send the cancels (reading what is open first when the venue's cancel does not report it), then write
    # the snapshot, then confirm.
    open_orders: list[VenueOrder] = []
    positions: list[VenuePosition] = []
    asked: set[str] = set()
    snap_t0 = time.perf_counter()
    if venue is None:
        result.errors["broker"] = "no broker given: open orders were not cancelled, positions not read"
    else:
        open_orders = _send_cancels(venue, steps, result, asked)
        steps.timed("cancel_requested")
    # Counted and logged once the cancels are sent: neither may delay them.
    count_change(client, "engage_repeat" if result.repeat else "engage", actor)
    _log.warning(
        "kill switch engaged" if not result.repeat else "kill switch engage requested again (already engaged)",
        actor=actor,
        reason=reason,
        version=result.version,
        durable=result.durable,
        ms=result.timings_ms["durable"],
    )
    # 6 starts once the cancels are sent, alongside the snapshot and the confirmation: the queued order tasks
    # it removes would only be refused (the state is HALTED), and its thread must not slow the cancels.
    purger = _start_purge(purge, t0) if purge is not None else None
    if venue is not None:
        held = steps.run("snapshot", venue.positions, part="positions")  # the snapshot records what it could read
        if held is not None:
            positions = held
            result.positions_before = len(held)
    if not result.repeat or not period_has_snapshot(sessions, engaged_since):
        _snapshot_step(steps, result, runtime, open_orders, positions, snap_t0)
    steps.timed("snapshot")
    if venue is not None:
        _confirm_cancelled(venue, steps, result, settings, asked)

    # 5. Flatten (a failure is reported; the switch stays engaged).
    do_flatten = flatten if flatten is not None else (settings.kill.flatten_on_engage and not result.repeat)
    if do_flatten and venue is not None:
        closed = steps.run("flatten", venue.close_all)
        if closed is not None:
            result.flattened = len(closed)
    steps.timed("flatten")

    # 6. The purge (started after the durable step) is waited for.
    if purger is not None:
        thread, done = purger
        thread.join(timeout=30)
        if thread.is_alive():
            result.errors["purge"] = "the purge of the orders queue did not finish within 30 s"
        elif "error" in done:
            result.errors["purge"] = done["error"]
        else:
            result.purged = done["count"]
        result.timings_ms["purge"] = done.get("ms", ms_since(t0))
    steps.timed("total")

    # 7. The KillEvent gets the whole story; an alert goes out in the background.
    steps.run("audit", lambda: with_db_retry(lambda: _finish_event(sessions, result), attempts=2))  # the engage is durable already
    if result.remaining_open:
        _log.critical(
            "kill switch: orders still open after the cancel timeout",
            remaining=result.remaining_open[:50],
            count=len(result.remaining_open),
        )
    send_alert(runtime, alert, _engage_alert(result))
    return result


def _durable_step(
    steps: Steps, result: EngageResult, sessions: sessionmaker[Session], *, actor: str, reason: str, redis_changed: bool, redis_version: int
) -> datetime | None:
    """Step 2: the row says HALTED, with its KillEvent and audit row. Returns when the engaged period began (None: not durable)."""
    written: DurableEngage | None = steps.run(
        "durable",
        lambda: with_db_retry(
            lambda: write_engage(sessions, actor=actor, reason=reason, redis_changed=redis_changed, redis_version=redis_version)
        ),
    )
    if written is None:
        return None
    result.state_before, result.repeat = written.state_before, written.repeat
    result.version, result.kill_event_id = written.version, written.kill_event_id
    result.durable = True
    return written.engaged_since


def _send_cancels(venue: Venue, steps: Steps, result: EngageResult, asked: set[str]) -> list[VenueOrder]:
    """Step 4's request, and what was open for the snapshot (step 3). A failed cancel is retried by the confirmation.

    A venue whose cancel reports what it cancelled (:class:`~omni_tasks.contracts.venue.CancelsOpenOrders`:
    the simulated venue) is sent it at once, and its report is what was open; any other is read first
    (``open_orders``), then sent ``cancel_all``.
    """
    if isinstance(venue, CancelsOpenOrders):
        cancelled = steps.run("cancel_requested", venue.cancel_open_orders)
        if cancelled is not None:
            _asked(result, asked, [order.broker_order_id for order in cancelled])
            result.open_orders_before = len(cancelled)
            return cancelled
    found = steps.run("snapshot", lambda: [o for o in venue.open_orders() if o.is_open], part="open orders")
    if found is not None:
        result.open_orders_before = len(found)
    if not isinstance(venue, CancelsOpenOrders):
        ids = steps.run("cancel_requested", venue.cancel_all)
        if ids is not None:
            _asked(result, asked, ids)
    return found or []


def _asked(result: EngageResult, asked: set[str], ids: list[str]) -> None:
    """The first round of cancels was sent for ``ids``."""
    asked.update(ids)
    result.cancel_requested = len(asked)
    result.cancel_rounds = 1


def _start_purge(purge: Callable[[], int], t0: float) -> tuple[threading.Thread, dict[str, Any]]:
    """Step 6 in a thread: returns it and what it will have done (``count`` or ``error``, and ``ms``)."""
    done: dict[str, Any] = {}

    def run() -> None:
        # A failure is recorded: queued order tasks are refused by the before-start check anyway.
        count, error = attempt(lambda: int(purge()))
        if error is None:
            done["count"] = count
        else:
            done["error"] = error
        done["ms"] = ms_since(t0)

    thread = threading.Thread(target=run, name="omni-kill-purge", daemon=True)
    thread.start()
    return thread, done


def _snapshot_step(
    steps: Steps, result: EngageResult, runtime: RuntimeLike, open_orders: list[VenueOrder], positions: list[VenuePosition], snap_t0: float
) -> None:
    """Step 3: the snapshot file and row; each part that fails is recorded, the others still written."""
    breakers = steps.run("snapshot", lambda: read_breakers(runtime.redis), part="breakers", limit=200) or []
    ts = utc_now()
    payload = snapshot_payload(
        ts,
        kill_event_id=result.kill_event_id,
        actor=result.actor,
        reason=result.reason,
        version=result.version,
        open_orders=open_orders,
        positions=positions,
        breakers=breakers,
    )
    path = snapshot_path(runtime.settings, ts, result.kill_event_id)
    if steps.run("snapshot_file", lambda: write_json_atomically(path, payload)) is not None:  # the row is still written
        result.snapshot_path = str(path)
    saved = steps.run(  # the file (if written) still holds it
        "snapshot_db",
        lambda: with_db_retry(
            lambda: save_snapshot_row(runtime.sessions, ts, result.kill_event_id, payload, result.snapshot_path), attempts=2
        ),
    )
    result.snapshot_id = saved
    _log.info("emergency snapshot saved", path=result.snapshot_path, id=result.snapshot_id, ms=ms_since(snap_t0))


def _confirm_cancelled(venue: Venue, steps: Steps, result: EngageResult, settings: Settings, asked: set[str]) -> None:
    """Step 4: poll ``open_orders`` until none is open; cancel again whatever appeared since the last request."""
    deadline = time.perf_counter() + settings.kill.cancel_confirm_timeout_s
    interval_s = settings.kill.poll_interval_ms / 1000
    still_open: list[VenueOrder] = []
    last_error: str | None = None
    resend_after = time.perf_counter() + 1.0
    while True:
        # An unreadable book keeps the poll going until the deadline.
        found, last_error = attempt(lambda: [o for o in venue.open_orders() if o.is_open])
        still_open = found or []
        if not still_open and last_error is None:
            break
        now = time.perf_counter()
        if now >= deadline:
            break
        unasked = [o for o in still_open if o.broker_order_id not in asked]
        if unasked or now >= resend_after or "cancel_requested" in result.errors:
            # An order that reached the book after cancel_all (or a cancel that did not take): ask again.
            ids = steps.run("cancel_requested", venue.cancel_all)  # a failure keeps the poll going
            if ids is not None:
                asked.update(ids)
                result.cancel_requested = len(asked)
                result.cancel_rounds += 1
                result.errors.pop("cancel_requested", None)
            resend_after = time.perf_counter() + 1.0
        time.sleep(interval_s)
    steps.timed("cancelled_confirmed")
    if last_error is not None:
        result.errors["cancelled_confirmed"] = f"open orders could not be read: {last_error}"
    result.remaining_open = sorted(o.client_order_id for o in still_open)


def _finish_event(sessions: sessionmaker[Session], result: EngageResult) -> None:
    """Step 7: the engage's KillEvent gets the timings and counts of the whole sequence."""
    if result.kill_event_id is None:
        return
    with sessions() as session, session.begin():
        event = session.get(KillEvent, result.kill_event_id)
        if event is None:
            return
        event.timings_ms = dict(result.timings_ms)
        event.detail = plain(
            {
                **(event.detail or {}),
                "open_orders_before": result.open_orders_before,
                "positions_before": result.positions_before,
                "cancel_requested": result.cancel_requested,
                "cancel_rounds": result.cancel_rounds,
                "remaining_open": result.remaining_open,
                "flattened": result.flattened,
                "purged": result.purged,
                "snapshot_id": result.snapshot_id,
                "snapshot_path": result.snapshot_path,
                "errors": result.errors,
                "started_at_ns": result.started_at_ns,
                "halted_at_ns": result.halted_at_ns,
            }
        )


def _engage_alert(result: EngageResult) -> dict[str, Any]:
    remaining = len(result.remaining_open)
    message = (
        f"Kill switch {'engage requested again' if result.repeat else 'ENGAGED'} by {result.actor}: {result.reason}. "
        f"{result.open_orders_before} open orders, {remaining} still open after cancel; "
        f"durable in {result.timings_ms.get('durable', 0):.1f} ms"
    )
    return {
        "kind": "kill_switch.engaged",
        "severity": "critical",
        "message": message,
        "actor": result.actor,
        "reason": result.reason,
        "repeat": result.repeat,
        "version": result.version,
        "durable": result.durable,
        "open_orders_before": result.open_orders_before,
        "remaining_open": remaining,
        "flattened": result.flattened,
        "engaged_ms": result.timings_ms.get("durable"),
        "cancelled_ms": result.timings_ms.get("cancelled_confirmed"),
        "failed_steps": ",".join(sorted(result.errors)) or "none",
    }
