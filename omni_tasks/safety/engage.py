"""Engaging and releasing the kill switch, and the other trading state changes.

The engage sequence (DESIGN section 8), each step timed, none allowed to stop
the ones after it:

1. ``redis``: Redis says HALTED (one Lua call). Every order path reads this
   key, so orders stop here, a fraction of a millisecond in.
2. ``durable``: the database row says HALTED, with a :class:`KillEvent` and an
   :class:`AuditLog` row in the same transaction (who, why, when); Redis is
   then re-synced to the row's version. From here it survives every restart.
3. ``snapshot``: open orders, positions and breaker states read, saved as an
   :class:`EmergencySnapshot` row and a JSON file (temp file + rename).
   ``cancel_all`` is sent as soon as the open orders are read, before the
   snapshot is written, so the write does not delay the cancels.
4. ``cancel_requested`` / ``cancelled_confirmed``: ``cancel_all``, then
   ``open_orders`` polled every ``poll_interval_ms`` until none is open or
   ``cancel_confirm_timeout_s`` passes (an order that appears meanwhile is
   cancelled too). Orders still open are reported by id, loudly.
5. ``flatten``: ``close_all`` when configured (``OMNI_KILL_FLATTEN_ON_ENGAGE``)
   or asked for.
6. ``purge``: the queued order tasks are purged. It starts right after the
   durable step, in a thread alongside steps 3-5 (queued orders would only be
   refused, and the purge must not delay the cancels); its timing is when it
   finished, so it may be smaller than ``flatten``.
7. the KillEvent gets its timings and counts; an alert goes out in the
   background (never blocking, never failing the sequence).

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

Releasing is the reverse order: the database first, then Redis, so a failure
in between leaves orders blocked, never the other way round. Only an operator
releases: actors naming automation (``watchdog...``, ``alarm...``) are refused.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import redis
import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import Venue, VenueOrder, VenuePosition
from omni_tasks.core import counters
from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.safety.killswitch import (
    LOOSER,
    STATE_ROW_ID,
    STRICTNESS,
    Copy,
    Reading,
    StoredState,
    TradingState,
    read_row,
    read_state,
    redis_copy,
    repair_redis,
    resolve,
)
from omni_tasks.settings import Settings
from omni_tasks.storage.models import AuditLog, EmergencySnapshot, KillEvent, TradingStateRow

_log = structlog.get_logger("omni.killswitch")

#: Actor prefixes that name automation; none of them may loosen the trading state.
AUTOMATIC_ACTOR_PREFIXES = ("watchdog", "alarm", "auto:", "system:")
#: Who the watchdog's reconciler records as when it repairs a copy from the other.
RECONCILE_ACTOR = "watchdog:reconcile"
MAX_REASON_CHARS = 2000

# KEYS[1] state key. Writes HALTED at version+1 unless Redis already says HALTED.
# A missing or malformed value counts as version 0. Returns {changed 0/1, version}.
_HALT_LUA = """
local cur = redis.call('get', KEYS[1])
local state, version = nil, 0
if cur then
  local s, v = string.match(cur, '^(%u+) (%d+)$')
  if s then state = s; version = tonumber(v) end
end
if state == 'HALTED' then return {0, version} end
version = version + 1
redis.call('set', KEYS[1], 'HALTED ' .. string.format('%d', version))
return {1, version}
"""

# KEYS[1] state key; ARGV state, version. Sets the value unless Redis holds a newer version.
_SYNC_LUA = """
local cur = redis.call('get', KEYS[1])
local want = tonumber(ARGV[2])
if cur then
  local s, v = string.match(cur, '^(%u+) (%d+)$')
  if s and (s == 'ACTIVE' or s == 'REDUCING' or s == 'HALTED') and tonumber(v) > want then return 0 end
end
redis.call('set', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
return 1
"""


class KillSwitchError(Exception):
    """A trading state change was refused or could not be completed; the message says which and why."""


class ReleaseRefused(KillSwitchError):
    """Only an operator may release the kill switch (or loosen the trading state), with a reason."""


class RuntimeLike(Protocol):
    """What the sequences need of a process runtime (:class:`omni_tasks.core.runtime.Runtime` fits)."""

    settings: Settings

    @property
    def redis(self) -> redis.Redis: ...

    @property
    def sessions(self) -> sessionmaker[Session]: ...


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


@dataclass
class TransitionResult:
    """One release / reduce / activate: the state before and after, and whether anything changed."""

    action: str
    actor: str
    reason: str
    state_before: str
    state_after: str
    changed: bool
    version: int
    kill_event_id: int | None
    redis_synced: bool
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- small helpers ------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _check_words(actor: str, reason: str) -> tuple[str, str]:
    if not isinstance(actor, str) or not actor.strip():
        raise KillSwitchError("an actor is required (who is doing this)")
    if not isinstance(reason, str) or not reason.strip():
        raise KillSwitchError("a reason is required (why), and it must not be empty")
    return actor.strip()[:100], reason.strip()[:MAX_REASON_CHARS]


def is_automatic_actor(actor: str) -> bool:
    """True when ``actor`` names automation (the watchdog, an alarm...), which may never release."""
    return actor.strip().lower().startswith(AUTOMATIC_ACTOR_PREFIXES)


def _by(actor: str) -> str:
    """The metric label for who acted: operator, watchdog, http or other (names never become labels)."""
    for prefix, label in (("operator:", "operator"), ("watchdog", "watchdog"), ("http:", "http")):
        if actor.lower().startswith(prefix):
            return label
    return "other"


def _count(client: redis.Redis, action: str, actor: str) -> None:
    """Count a change in the runtime's own Redis (a drill's scratch Redis keeps its counts to itself); never raises."""
    counters.KILL_SWITCH_CHANGES.inc(client, action, _by(actor))


def snapshot_dir(settings: Settings) -> Path:
    """Where emergency snapshot files go: OMNI_KILL_SNAPSHOT_DIR, or <data dir>/emergency."""
    return settings.kill.snapshot_dir or settings.data_dir / "emergency"


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def _plain(value: Any) -> Any:
    """JSON-ready: Decimals as exact strings, datetimes as ISO text."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def order_dict(order: VenueOrder) -> dict[str, Any]:
    return _plain(asdict(order))  # type: ignore[no-any-return]


def position_dict(position: VenuePosition) -> dict[str, Any]:
    return _plain(asdict(position))  # type: ignore[no-any-return]


def write_json_atomically(path: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON to ``path`` through a temp file in the same folder, fsync and rename.

    A reader sees the old file or the whole new one, never half of it; the file is private (0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
    return path


def sync_redis(client: redis.Redis, state: TradingState, version: int, *, key: str = TRADING_STATE_KEY) -> bool:
    """Put ``state`` at ``version`` in Redis unless Redis already holds a newer version. True when written."""
    return bool(client.eval(_SYNC_LUA, 1, key, state.value, str(int(version))))


def halt_in_redis(client: redis.Redis, *, key: str = TRADING_STATE_KEY) -> tuple[bool, int]:
    """Redis says HALTED from now on. Returns (changed, version); an already-HALTED value is left alone."""
    changed, version = client.eval(_HALT_LUA, 1, key)
    return bool(changed), int(version)


def _record_audit(session: Session, *, ts: datetime, actor: str, action: str, detail: dict[str, Any]) -> None:
    session.add(AuditLog(ts=ts, actor=actor, action=action, subject="trading_state", detail=_plain(detail)))


def _with_db_retry(step: Callable[[], Any], *, attempts: int = 3) -> Any:
    """Run a short database step, retrying a lost connection or a lock conflict (SQLite) after a brief pause."""
    delay_s = 0.02
    for attempt in range(attempts):
        try:
            return step()
        except (OperationalError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(delay_s)
            delay_s *= 4
    raise AssertionError("unreachable")  # pragma: no cover


def _redis_value(client: redis.Redis, key: str) -> StoredState | None:
    """Redis's copy when it can be read and parsed (None otherwise: the database decides alone)."""
    return redis_copy(client, key=key).value


def _before(row: TradingStateRow, cached: StoredState | None) -> TradingState:
    """The state that applies, by the one rule, with the row as read under its lock and Redis's copy read before it."""
    durable = Copy("ok", value=StoredState(TradingState(row.state), int(row.version)))
    if cached is None:
        return TradingState(row.state)
    return resolve(Copy("ok", value=cached), durable).state


# ---- engage -------------------------------------------------------------------------------------


def engage(
    runtime: RuntimeLike,
    *,
    actor: str,
    reason: str,
    broker: Venue | None,
    flatten: bool | None = None,
    purge: Callable[[], int] | None = None,
    alert: Callable[[dict[str, Any]], None] | None = None,
    key: str = TRADING_STATE_KEY,
) -> EngageResult:
    """Engage the kill switch: orders stop, durably; snapshot, cancel and confirm, flatten, purge, audit, alert.

    Never raises, and never refuses: a failing step's error is in ``result.errors``
    under its name and the remaining steps still run; a blank actor or reason is
    recorded as ``unknown`` / ``(no reason given)`` rather than stopping the engage. ``broker`` None skips the
    broker steps (recorded as an error: the open orders were not cancelled).
    """
    # Bad words never stop an engage: a missing actor or reason is recorded as such.
    actor = actor.strip()[:100] if isinstance(actor, str) and actor.strip() else "unknown"
    reason = reason.strip()[:MAX_REASON_CHARS] if isinstance(reason, str) and reason.strip() else "(no reason given)"
    settings = runtime.settings
    t0 = time.perf_counter()
    started_ns = time.time_ns()
    started = datetime.fromtimestamp(started_ns / 1e9, tz=UTC)
    result = EngageResult(actor=actor, reason=reason, started_at=started.isoformat(), started_at_ns=started_ns)
    client = runtime.redis
    sessions = runtime.sessions

    # 1. Redis first: every order path reads this key, so orders stop now.
    redis_version, redis_changed = 0, False
    try:
        redis_changed, redis_version = halt_in_redis(client, key=key)
        result.redis_written = True
        result.halted_at_ns = time.time_ns()
    except Exception as exc:  # noqa: BLE001 - an unreachable Redis already counts as HALTED everywhere
        result.errors["redis"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        _log.error("kill switch: redis not written (an unreadable state counts as HALTED)", error=result.errors["redis"])
    result.timings_ms["redis"] = _ms(t0)

    # 2. Durable: the row, the KillEvent and the audit row in one transaction.
    engaged_since: datetime | None = None

    def durable() -> tuple[str, bool, int, int, datetime]:
        with sessions() as session, session.begin():
            row = read_row(session, lock=True)
            now = _now()
            if row is None:
                row = TradingStateRow(
                    id=STATE_ROW_ID, state=TradingState.ACTIVE.value, version=0, changed_at=now, actor="install", reason="initial state"
                )
                session.add(row)
                session.flush()
            before = str(row.state)
            repeat = before == TradingState.HALTED.value
            if repeat and redis_changed and int(row.version) == redis_version and row.actor == RECONCILE_ACTOR:
                # The reconciler wrote down this very engage from Redis between our two steps: it is ours.
                before = _state_before_reconcile(session, redis_version)
                repeat = False
                row.changed_at, row.actor, row.reason = now, actor, reason
            elif repeat:
                # The engaged period stands; a newer version seen in Redis is adopted so the copies agree.
                row.version = max(int(row.version), redis_version)
            else:
                row.state = TradingState.HALTED.value
                row.version = max(int(row.version) + 1, redis_version)
                row.changed_at = now
                row.actor = actor
                row.reason = reason
            event = KillEvent(
                ts=now,
                action="engage",
                actor=actor,
                reason=reason,
                state_before=before,
                state_after=TradingState.HALTED.value,
                timings_ms={},
                detail={"repeat": repeat, "version": int(row.version)},
            )
            session.add(event)
            _record_audit(
                session,
                ts=now,
                actor=actor,
                action="kill.engage.repeat" if repeat else "kill.engage",
                detail={"reason": reason, "state_before": before, "version": int(row.version)},
            )
            session.flush()
            return before, repeat, int(row.version), int(event.id), row.changed_at

    try:
        before, repeat, version, event_id, engaged_since = _with_db_retry(durable)
        result.state_before, result.repeat, result.version, result.kill_event_id = before, repeat, version, event_id
        result.durable = True
        try:
            sync_redis(client, TradingState.HALTED, version, key=key)
            result.redis_written = True
            if result.halted_at_ns is None:
                result.halted_at_ns = time.time_ns()
        except Exception as exc:  # noqa: BLE001 - the row is durable; an unreadable Redis counts as HALTED
            result.errors.setdefault("redis", f"{type(exc).__name__}: {str(exc)[:300]}")
    except Exception as exc:  # noqa: BLE001 - reported loudly; Redis (if written) still blocks orders
        result.errors["durable"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        _log.critical(
            "kill switch NOT DURABLE: the database write failed; orders are blocked only while Redis holds the state",
            error=result.errors["durable"],
        )
    result.timings_ms["durable"] = _ms(t0)
    _count(client, "engage_repeat" if result.repeat else "engage", actor)
    _log.warning(
        "kill switch engaged" if not result.repeat else "kill switch engage requested again (already engaged)",
        actor=actor,
        reason=reason,
        version=result.version,
        durable=result.durable,
        ms=result.timings_ms["durable"],
    )

    # 6 starts now, alongside the broker steps: queued order tasks go at once (they would only be refused).
    purge_done: dict[str, Any] = {}

    def run_purge() -> None:
        try:
            purge_done["count"] = int(purge())  # type: ignore[misc]  # only started when purge is set
        except Exception as exc:  # noqa: BLE001 - queued order tasks are refused by the before-start check anyway
            purge_done["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        purge_done["ms"] = _ms(t0)

    purger = threading.Thread(target=run_purge, name="omni-kill-purge", daemon=True) if purge is not None else None
    if purger is not None:
        purger.start()

    # 3 + 4. Read what is open, send the cancels, then write the snapshot, then confirm.
    open_orders: list[VenueOrder] = []
    positions: list[VenuePosition] = []
    asked: set[str] = set()
    snap_t0 = time.perf_counter()
    if broker is None:
        result.errors["broker"] = "no broker given: open orders were not cancelled, positions not read"
    else:
        try:
            open_orders = [o for o in broker.open_orders() if o.is_open]
            result.open_orders_before = len(open_orders)
        except Exception as exc:  # noqa: BLE001 - the cancel is still sent
            result.errors["snapshot"] = f"open orders: {type(exc).__name__}: {str(exc)[:300]}"
        try:
            asked.update(broker.cancel_all())
            result.cancel_requested = len(asked)
            result.cancel_rounds = 1
        except Exception as exc:  # noqa: BLE001 - confirmation below still polls and retries
            result.errors["cancel_requested"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        result.timings_ms["cancel_requested"] = _ms(t0)
        try:
            positions = broker.positions()
            result.positions_before = len(positions)
        except Exception as exc:  # noqa: BLE001 - the snapshot records what it could read
            result.errors["snapshot"] = (result.errors.get("snapshot", "") + f" positions: {type(exc).__name__}: {str(exc)[:300]}").strip()
    take_snapshot = not result.repeat or not _period_has_snapshot(sessions, engaged_since)
    if take_snapshot:
        _save_snapshot(runtime, result, open_orders, positions, client, snap_t0)
    result.timings_ms["snapshot"] = _ms(t0)
    if broker is not None:
        _confirm_cancelled(broker, result, settings, t0, asked)

    # 5. Flatten.
    do_flatten = flatten if flatten is not None else (settings.kill.flatten_on_engage and not result.repeat)
    if do_flatten and broker is not None:
        try:
            result.flattened = len(broker.close_all())
        except Exception as exc:  # noqa: BLE001 - reported; the switch stays engaged
            result.errors["flatten"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    result.timings_ms["flatten"] = _ms(t0)

    # 6. The purge (started after the durable step) is waited for.
    if purger is not None:
        purger.join(timeout=30)
        if purger.is_alive():
            result.errors["purge"] = "the purge of the orders queue did not finish within 30 s"
        elif "error" in purge_done:
            result.errors["purge"] = purge_done["error"]
        else:
            result.purged = purge_done["count"]
        result.timings_ms["purge"] = purge_done.get("ms", _ms(t0))
    result.timings_ms["total"] = _ms(t0)

    # 7. The KillEvent gets the whole story; an alert goes out in the background.
    _finish_event(sessions, result)
    if result.remaining_open:
        _log.critical(
            "kill switch: orders still open after the cancel timeout",
            remaining=result.remaining_open[:50],
            count=len(result.remaining_open),
        )
    _send_alert(runtime, alert, _engage_alert(result))
    return result


def _period_has_snapshot(sessions: sessionmaker[Session], since: datetime | None) -> bool:
    if since is None:
        return False
    try:
        with sessions() as session:
            found = session.scalars(select(EmergencySnapshot.id).where(EmergencySnapshot.ts >= since).limit(1)).first()
            return found is not None
    except Exception:  # noqa: BLE001 - unknown: take one
        return False


def _save_snapshot(
    runtime: RuntimeLike,
    result: EngageResult,
    open_orders: list[VenueOrder],
    positions: list[VenuePosition],
    client: redis.Redis,
    snap_t0: float,
) -> None:
    from omni_tasks.safety.breaker import CircuitBreaker, known_breakers

    breakers: list[dict[str, Any]] = []
    try:
        breakers = [CircuitBreaker(name, client).state() for name in known_breakers(client)]
    except Exception as exc:  # noqa: BLE001 - the snapshot keeps what it could read
        result.errors["snapshot"] = (result.errors.get("snapshot", "") + f" breakers: {type(exc).__name__}: {str(exc)[:200]}").strip()
    ts = _now()
    payload = {
        "ts": ts.isoformat(),
        "kill_event_id": result.kill_event_id,
        "actor": result.actor,
        "reason": result.reason,
        "version": result.version,
        "open_orders": [order_dict(o) for o in open_orders],
        "positions": [position_dict(p) for p in positions],
        "breakers": _plain(breakers),
    }
    name = f"emergency-{ts.strftime('%Y%m%dT%H%M%S.%fZ')}-{result.kill_event_id or 'nodb'}.json"
    path = snapshot_dir(runtime.settings) / name
    try:
        write_json_atomically(path, payload)
        result.snapshot_path = str(path)
    except Exception as exc:  # noqa: BLE001 - the database row is still written
        result.errors["snapshot_file"] = f"{type(exc).__name__}: {str(exc)[:300]}"

    def save() -> int:
        with runtime.sessions() as session, session.begin():
            row = EmergencySnapshot(
                ts=ts,
                kill_event_id=result.kill_event_id,
                open_orders=payload["open_orders"],
                positions=payload["positions"],
                breakers=payload["breakers"],
                file_path=result.snapshot_path,
            )
            session.add(row)
            session.flush()
            return int(row.id)

    try:
        result.snapshot_id = _with_db_retry(save, attempts=2)
    except Exception as exc:  # noqa: BLE001 - the file (if written) still holds it
        result.errors["snapshot_db"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    _log.info("emergency snapshot saved", path=result.snapshot_path, id=result.snapshot_id, ms=_ms(snap_t0))


def _confirm_cancelled(broker: Venue, result: EngageResult, settings: Settings, t0: float, asked: set[str]) -> None:
    """Poll ``open_orders`` until none is open; cancel again whatever appeared since the last request."""
    deadline = time.perf_counter() + settings.kill.cancel_confirm_timeout_s
    interval_s = settings.kill.poll_interval_ms / 1000
    still_open: list[VenueOrder] = []
    last_error: str | None = None
    resend_after = time.perf_counter() + 1.0
    while True:
        try:
            still_open = [o for o in broker.open_orders() if o.is_open]
            last_error = None
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            still_open = []
        if not still_open and last_error is None:
            break
        now = time.perf_counter()
        if now >= deadline:
            break
        unasked = [o for o in still_open if o.broker_order_id not in asked]
        if unasked or now >= resend_after or "cancel_requested" in result.errors:
            # An order that reached the book after cancel_all (or a cancel that did not take): ask again.
            try:
                ids = broker.cancel_all()
                asked.update(ids)
                result.cancel_requested = len(asked)
                result.cancel_rounds += 1
                result.errors.pop("cancel_requested", None)
            except Exception as exc:  # noqa: BLE001 - keep polling
                result.errors["cancel_requested"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            resend_after = time.perf_counter() + 1.0
        time.sleep(interval_s)
    result.timings_ms["cancelled_confirmed"] = _ms(t0)
    if last_error is not None:
        result.errors["cancelled_confirmed"] = f"open orders could not be read: {last_error}"
    result.remaining_open = sorted(o.client_order_id for o in still_open)


def _finish_event(sessions: sessionmaker[Session], result: EngageResult) -> None:
    if result.kill_event_id is None:
        return

    def update() -> None:
        with sessions() as session, session.begin():
            event = session.get(KillEvent, result.kill_event_id)
            if event is None:
                return
            event.timings_ms = dict(result.timings_ms)
            event.detail = _plain(
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

    try:
        _with_db_retry(update, attempts=2)
    except Exception as exc:  # noqa: BLE001 - the engage itself is durable already
        result.errors["audit"] = f"{type(exc).__name__}: {str(exc)[:300]}"


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


def _send_alert(runtime: RuntimeLike, alert: Callable[[dict[str, Any]], None] | None, event: dict[str, Any]) -> None:
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


# ---- release and the other state changes ---------------------------------------------------------


def _change(
    runtime: RuntimeLike,
    *,
    action: str,
    target: TradingState,
    allowed_from: frozenset[TradingState],
    actor: str,
    reason: str,
    key: str,
) -> TransitionResult:
    """Database first (with its KillEvent and audit row), then Redis. Refusals are audited and raised."""
    actor, reason = _check_words(actor, reason)
    client, sessions = runtime.redis, runtime.sessions
    cached = _redis_value(client, key)

    def apply() -> TransitionResult:
        with sessions() as session, session.begin():
            row = read_row(session, lock=True)
            now = _now()
            if row is None:
                row = TradingStateRow(
                    id=STATE_ROW_ID, state=TradingState.ACTIVE.value, version=0, changed_at=now, actor="install", reason="initial state"
                )
                session.add(row)
                session.flush()
            # While the copies disagree the stricter applies: a Redis copy ahead of the row (an engage the
            # database missed) counts when stricter, and never loosens the row when looser.
            before = _before(row, cached)
            base_version = max(int(row.version), cached.version if cached is not None else 0)
            if before == target:
                changed, version = False, base_version
                row.state, row.version = before.value, version
            elif before not in allowed_from:
                raise KillSwitchError(_refusal_text(action, before, target))
            elif (before, target) in LOOSER and is_automatic_actor(actor):
                # Defence in depth: whatever the entry point, automation never loosens the state.
                raise ReleaseRefused(
                    f"only an operator may loosen trading from {before.value} to {target.value}; {actor!r} names automation"
                )
            else:
                changed, version = True, base_version + 1
                row.state, row.version, row.changed_at, row.actor, row.reason = target.value, version, now, actor, reason
            event = KillEvent(
                ts=now,
                action=action,
                actor=actor,
                reason=reason,
                state_before=before.value,
                state_after=target.value,
                timings_ms={},
                detail={"changed": changed, "version": version},
            )
            session.add(event)
            _record_audit(
                session,
                ts=now,
                actor=actor,
                action=f"kill.{action}",
                detail={"reason": reason, "from": before.value, "to": target.value, "changed": changed},
            )
            session.flush()
            return TransitionResult(action, actor, reason, before.value, target.value, changed, version, int(event.id), False)

    try:
        result: TransitionResult = _with_db_retry(apply)
    except KillSwitchError as exc:
        _audit_refusal(sessions, actor=actor, action=action, reason=reason, why=str(exc))
        raise
    _count(client, action if result.changed else f"{action}_unchanged", actor)
    try:
        sync_redis(client, target, result.version, key=key)
        result.redis_synced = True
    except Exception as exc:  # noqa: BLE001 - the database holds the change; tell the operator what to do
        result.errors["redis"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    _log.warning(
        f"trading state {action}", actor=actor, reason=reason, before=result.state_before, after=result.state_after, changed=result.changed
    )
    if result.changed:
        _send_alert(
            runtime,
            None,
            {
                "kind": f"kill_switch.{action}",
                "severity": "warning",
                "message": f"Trading state {result.state_before} -> {result.state_after} by {actor}: {reason}",
                "actor": actor,
                "reason": reason,
                "version": result.version,
            },
        )
    return result


def _refusal_text(action: str, before: TradingState, target: TradingState) -> str:
    if action == "reduce" and before is TradingState.HALTED:
        return "the kill switch is engaged (HALTED): release it to REDUCING instead (omni kill release --to reducing)"
    if action == "activate" and before is TradingState.HALTED:
        return "the kill switch is engaged (HALTED): only a release (omni kill release) can lift it"
    return f"cannot {action} from {before.value} to {target.value}"


def _audit_refusal(sessions: sessionmaker[Session], *, actor: str, action: str, reason: str, why: str) -> None:
    try:
        with sessions() as session, session.begin():
            _record_audit(session, ts=_now(), actor=actor, action=f"kill.{action}.refused", detail={"reason": reason, "refused": why})
    except Exception:  # noqa: BLE001 - the refusal itself stands
        _log.warning("refused trading state change not audited", exc_info=True)
    _log.warning("trading state change refused", actor=actor, action=action, why=why)


def _require_operator(sessions: sessionmaker[Session], actor: str, reason: str, action: str) -> None:
    if is_automatic_actor(actor):
        why = f"only an operator may {action}; {actor!r} names automation (the watchdog never releases)"
        _audit_refusal(sessions, actor=actor.strip()[:100], action=action, reason=str(reason)[:MAX_REASON_CHARS], why=why)
        raise ReleaseRefused(why)


def release(
    runtime: RuntimeLike,
    *,
    actor: str,
    reason: str,
    to: TradingState = TradingState.ACTIVE,
    key: str = TRADING_STATE_KEY,
) -> TransitionResult:
    """Release the kill switch (HALTED -> ACTIVE, or -> REDUCING with ``to``). Operators only, reason required.

    Releasing a switch that is not engaged changes nothing (``changed`` False) but is recorded.
    Raises :class:`ReleaseRefused` for an automatic actor, :class:`KillSwitchError` for a missing reason.
    """
    to = TradingState(to)
    if to is TradingState.HALTED:
        raise KillSwitchError("release goes to ACTIVE or REDUCING; use engage to halt")
    _check_words(actor, reason)
    _require_operator(runtime.sessions, actor, reason, "release")
    current = _peek(runtime, key)
    if current is not None and current is not TradingState.HALTED:
        # Not engaged: a release changes nothing (and never turns REDUCING into ACTIVE by accident).
        return _change(runtime, action="release", target=current, allowed_from=frozenset(), actor=actor, reason=reason, key=key)
    return _change(runtime, action="release", target=to, allowed_from=frozenset({TradingState.HALTED}), actor=actor, reason=reason, key=key)


def set_reducing(runtime: RuntimeLike, *, actor: str, reason: str, key: str = TRADING_STATE_KEY) -> TransitionResult:
    """ACTIVE -> REDUCING (only orders that shrink positions pass). Anyone may tighten; HALTED is refused."""
    return _change(
        runtime,
        action="reduce",
        target=TradingState.REDUCING,
        allowed_from=frozenset({TradingState.ACTIVE}),
        actor=actor,
        reason=reason,
        key=key,
    )


def activate(runtime: RuntimeLike, *, actor: str, reason: str, key: str = TRADING_STATE_KEY) -> TransitionResult:
    """REDUCING -> ACTIVE. Operators only; HALTED is refused (that is a release)."""
    _check_words(actor, reason)
    _require_operator(runtime.sessions, actor, reason, "activate")
    return _change(
        runtime,
        action="activate",
        target=TradingState.ACTIVE,
        allowed_from=frozenset({TradingState.REDUCING}),
        actor=actor,
        reason=reason,
        key=key,
    )


def _peek(runtime: RuntimeLike, key: str) -> TradingState | None:
    """The state that applies by the one rule, with an unreachable Redis left out; None when the database is unreadable."""
    cached = _redis_value(runtime.redis, key)
    try:
        with runtime.sessions() as session:
            row = read_row(session)
            if row is None:
                row = TradingStateRow(state=TradingState.ACTIVE.value, version=0)
            return _before(row, cached)
    except Exception:  # noqa: BLE001 - the change itself will report the database error
        return None


# ---- repair and the orders-queue purge -------------------------------------------------------------


def _state_before_reconcile(session: Session, version: int) -> str:
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
    cached = _redis_value(runtime.redis, key)
    if cached is None:
        return False

    def apply() -> StoredState | None:
        with runtime.sessions() as session, session.begin():
            row = read_row(session, lock=True)
            now = _now()
            if row is None:
                row = TradingStateRow(
                    id=STATE_ROW_ID, state=TradingState.ACTIVE.value, version=0, changed_at=now, actor="install", reason="initial state"
                )
                session.add(row)
                session.flush()
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
            _record_audit(
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

    written: StoredState | None = _with_db_retry(apply)
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

