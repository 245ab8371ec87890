"""Release, reduce and activate: the trading state changes other than the engage, and who may make them.

Releasing is the reverse order of the engage: the database first (with its KillEvent and audit row),
then Redis, so a failure in between leaves orders blocked, never the other way round. Only an
operator releases or activates: actors naming automation (``watchdog...``, ``alarm...``) are
refused, and the refusal is audited. Anyone may tighten (ACTIVE -> REDUCING).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.safety.state_rule import LOOSER, Copy, StoredState, TradingState, resolve
from omni_tasks.safety.state_store import (
    MAX_REASON_CHARS,
    locked_row,
    read_row,
    record_audit,
    redis_value,
    sync_redis,
    utc_now,
    with_db_retry,
)
from omni_tasks.safety.wiring import RuntimeLike, count_change, send_alert
from omni_tasks.storage.models import KillEvent, TradingStateRow

_log = structlog.get_logger("omni.killswitch")

#: Actor prefixes that name automation; none of them may loosen the trading state.
AUTOMATIC_ACTOR_PREFIXES = ("watchdog", "alarm", "auto:", "system:")


class KillSwitchError(Exception):
    """A trading state change was refused or could not be completed; the message says which and why."""


class ReleaseRefused(KillSwitchError):
    """Only an operator may release the kill switch (or loosen the trading state), with a reason."""


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


def _check_words(actor: str, reason: str) -> tuple[str, str]:
    if not isinstance(actor, str) or not actor.strip():
        raise KillSwitchError("an actor is required (who is doing this)")
    if not isinstance(reason, str) or not reason.strip():
        raise KillSwitchError("a reason is required (why), and it must not be empty")
    return actor.strip()[:100], reason.strip()[:MAX_REASON_CHARS]


def is_automatic_actor(actor: str) -> bool:
    """True when ``actor`` names automation (the watchdog, an alarm...), which may never release."""
    return actor.strip().lower().startswith(AUTOMATIC_ACTOR_PREFIXES)


def _before(row: TradingStateRow, cached: StoredState | None) -> TradingState:
    """The state that applies, by the one rule, with the row as read under its lock and Redis's copy read before it."""
    durable = Copy("ok", value=StoredState(TradingState(row.state), int(row.version)))
    if cached is None:
        return TradingState(row.state)
    return resolve(Copy("ok", value=cached), durable).state


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
    cached = redis_value(client, key)

    def apply() -> TransitionResult:
        with locked_row(sessions) as (session, row, now):
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
            record_audit(
                session,
                ts=now,
                actor=actor,
                action=f"kill.{action}",
                detail={"reason": reason, "from": before.value, "to": target.value, "changed": changed},
            )
            session.flush()
            return TransitionResult(action, actor, reason, before.value, target.value, changed, version, int(event.id), False)

    try:
        result: TransitionResult = with_db_retry(apply)
    except KillSwitchError as exc:
        _audit_refusal(sessions, actor=actor, action=action, reason=reason, why=str(exc))
        raise
    count_change(client, action if result.changed else f"{action}_unchanged", actor)
    try:
        sync_redis(client, target, result.version, key=key)
        result.redis_synced = True
    except Exception as exc:  # noqa: BLE001 - the database holds the change; tell the operator what to do
        result.errors["redis"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    _log.warning(
        f"trading state {action}", actor=actor, reason=reason, before=result.state_before, after=result.state_after, changed=result.changed
    )
    if result.changed:
        send_alert(
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
            record_audit(session, ts=utc_now(), actor=actor, action=f"kill.{action}.refused", detail={"reason": reason, "refused": why})
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
    cached = redis_value(runtime.redis, key)
    try:
        with runtime.sessions() as session:
            row = read_row(session)
            if row is None:
                row = TradingStateRow(state=TradingState.ACTIVE.value, version=0)
            return _before(row, cached)
    except Exception:  # noqa: BLE001 - the change itself will report the database error
        return None
