"""An order's lifetime is ours, not the queue's: its deadline, the waits before it, and the ``expired`` record after it.

    deadline    every accepted order has one: ``orders.expires_at`` and ``expires_at`` in its message,
                ``OMNI_TRADING_ORDER_TTL_S`` after it was accepted (:func:`deadline_of`)
    waits       while the database is unavailable an order is retried with exponential backoff
                and jitter, never waiting past its deadline (:func:`retry_delay_s`)
    expired     an order not sent by its deadline is never sent: its row becomes ``expired`` with
                the reason and an ``order_events`` row "expired" (check ``deadline``) says why, in
                one transaction (:func:`expire_order`)
    reconcile   every watchdog tick, :func:`expire_overdue` records ``expired`` every pending order
                past its deadline plus ``OMNI_TRADING_ORDER_EXPIRY_GRACE_S`` that no delivery holds:
                a message lost with Redis, refused while trading was halted, or stuck behind a
                paused or dead worker still ends with a recorded status

Exactly one of "sent" and "expired" wins. Expiring is one conditional UPDATE
(``WHERE status = 'pending' AND submitted_at IS NULL``). A venue that takes an
order holds the row first: the simulated venue locks it (``FOR UPDATE``) in the
ledger transaction that accepts it, and for any other venue the orders path
claims it (sets ``submitted_at``, same condition) before the call. So an UPDATE
that comes second finds the row decided and changes nothing, and a venue that
comes second finds it expired and sends nothing. The reconciler also skips rows
another transaction holds right now (``FOR UPDATE SKIP LOCKED``): an order being
decided is never marked expired under it.

Plain Python: the sessions, the clock and the settings' numbers are arguments.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import structlog
from sqlalchemy import CursorResult, and_, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.ops import prometheus as metrics
from omni_tasks.storage.models import Order, OrderEvent

_log = structlog.get_logger("omni.orders.expiry")

EXPIRED: Final = "expired"
#: The check an expiry is recorded under (``orders.reason`` starts with it, as a denial's does).
CHECK: Final = "deadline"
#: The first wait after a database failure; it doubles up to the cap.
FIRST_RETRY_S: Final = 0.5
#: Rows one reconciliation expires at most (the next tick takes the rest).
RECONCILE_BATCH: Final = 500


def utc(seconds: float) -> datetime:
    """UNIX seconds as a timezone-aware UTC datetime."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def deadline_of(expires_at: float | None, *, accepted_at: float, ttl_s: float) -> datetime:
    """The order's deadline (UTC): its message's ``expires_at`` (UNIX seconds), else ``ttl_s`` after ``accepted_at``."""
    return utc(float(expires_at) if expires_at is not None else accepted_at + ttl_s)


def retry_delay_s(attempt: int, *, seconds_left: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` failures (1: the first failure).

    Exponential from :data:`FIRST_RETRY_S`, capped at ``cap_s``, with equal jitter
    (half fixed, half random, so many orders failing together do not retry together).
    Before the deadline the wait ends at most just after it, so the next attempt
    either succeeds in time or records the expiry.
    """
    base = min(cap_s, FIRST_RETRY_S * 2 ** max(0, attempt - 1))
    delay = base / 2 + rand() * base / 2
    if seconds_left > 0:
        delay = min(delay, seconds_left + 0.05)
    return max(0.05, delay)


def updated_rows(session: Session, statement: Any) -> int:
    """Run an UPDATE in the session; the rows it changed (its cursor's rowcount)."""
    return int(cast("CursorResult[Any]", session.execute(statement)).rowcount)


def is_database_failure(exc: BaseException) -> bool:
    """Does this exception say the database is unreachable (retry later), not that the statement was wrong?"""
    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def expire_order(
    session: Session,
    *,
    client_order_id: str,
    reason: str,
    now: datetime,
    detail: Mapping[str, Any] | None = None,
    row_values: Mapping[str, Any] | None = None,
) -> str | None:
    """Record a pending, unsent order ``expired``, in the caller's transaction; returns the order's status now.

    ``expired`` when this call expired it; the status it already had when something else
    decided it first (filled, denied, expired...; ``pending`` when a venue holds it);
    None when there is no such order. With ``row_values`` (the columns of the order as
    :func:`omni_tasks.trading.order_records.order_row_values` builds them) an order that was never
    recorded is recorded now, ``expired``, with its "requested" event: seen, not discarded.
    """
    changed = updated_rows(
        session,
        update(Order)
        .where(Order.client_order_id == client_order_id, Order.status == "pending", Order.submitted_at.is_(None))
        .values(status=EXPIRED, reason=f"{CHECK}: {reason}", updated_at=now)
        .execution_options(synchronize_session=False),
    )
    if changed:
        _event(session, client_order_id, reason, now, detail)
        metrics.ORDERS.labels(EXPIRED, CHECK).inc()
        return EXPIRED
    status = session.execute(select(Order.status).where(Order.client_order_id == client_order_id)).scalar_one_or_none()
    if status is not None or row_values is None:
        return status
    values = {**row_values, "status": EXPIRED, "reason": f"{CHECK}: {reason}", "updated_at": now}
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    inserted = session.execute(
        dialect_insert(Order).values(**values).on_conflict_do_nothing(index_elements=["client_order_id"]).returning(Order.id)
    ).scalar_one_or_none()
    if inserted is None:  # recorded by someone else a moment ago: theirs stands
        return session.execute(select(Order.status).where(Order.client_order_id == client_order_id)).scalar_one_or_none()
    session.execute(
        insert(OrderEvent),
        {"ts": now, "client_order_id": client_order_id, "event": "requested", "check": None, "reason": None,
         "detail": {"recorded_at_expiry": True}},
    )  # fmt: skip
    _event(session, client_order_id, reason, now, detail)
    metrics.ORDERS.labels(EXPIRED, CHECK).inc()
    return EXPIRED


def _event(session: Session, client_order_id: str, reason: str, now: datetime, detail: Mapping[str, Any] | None) -> None:
    session.execute(
        insert(OrderEvent),
        {"ts": now, "client_order_id": client_order_id, "event": EXPIRED, "check": CHECK, "reason": reason, "detail": dict(detail or {})},
    )


def expire_overdue(
    sessions: sessionmaker[Session], *, now: datetime, ttl_s: float, grace_s: float, limit: int = RECONCILE_BATCH
) -> list[str]:
    """Record ``expired`` every pending, unsent order past its deadline + ``grace_s`` that no transaction holds now.

    Returns the ids it expired. Rows from before deadlines existed (``expires_at``
    empty) count ``ttl_s`` from their creation. The reason names the deadline and
    the order's last event (a refusal while halted, a venue error...), so the
    operator sees why it never went out.
    """
    cutoff = now - timedelta(seconds=grace_s)
    with sessions() as session, session.begin():
        rows = session.execute(
            select(Order.client_order_id, Order.expires_at, Order.created_at)
            .where(
                Order.status == "pending",
                Order.submitted_at.is_(None),
                or_(
                    Order.expires_at < cutoff,
                    and_(Order.expires_at.is_(None), Order.created_at < cutoff - timedelta(seconds=ttl_s)),
                ),
            )
            .order_by(Order.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return []
        last = _last_events(session, [r.client_order_id for r in rows])
        expired: list[str] = []
        for coid, expires_at, created_at in rows:
            deadline = expires_at or created_at + timedelta(seconds=ttl_s)
            reason = f"not sent by its deadline {_iso(deadline)}: never sent to the broker"
            event = last.get(coid)
            if event is not None:
                reason += f" (last event: {event})"
            if expire_order(session, client_order_id=coid, reason=reason, now=now, detail={"by": "watchdog"}) == EXPIRED:
                expired.append(coid)
    if expired:
        _log.warning("pending orders past their deadline recorded expired", count=len(expired), first=expired[0])
    return expired


def _last_events(session: Session, ids: list[str]) -> dict[str, str]:
    """The latest event other than "requested" of each order, as text (``refused kill_switch: trading is HALTED...``)."""
    rows = session.execute(
        select(OrderEvent.client_order_id, OrderEvent.event, OrderEvent.check, OrderEvent.reason)
        .where(OrderEvent.client_order_id.in_(ids), OrderEvent.event != "requested")
        .order_by(OrderEvent.id)
    ).all()
    found: dict[str, str] = {}
    for coid, event, check, reason in rows:
        words = " ".join(w for w in (event, f"{check}:" if check else None, (reason or "")[:160]) if w)
        found[coid] = words
    return found


def reconcile(sessions: sessionmaker[Session], *, now: datetime, ttl_s: float, grace_s: float) -> int:
    """The watchdog's call: :func:`expire_overdue`, counting the expired; a database that fails is logged (the next tick tries again)."""
    try:
        return len(expire_overdue(sessions, now=now, ttl_s=ttl_s, grace_s=grace_s))
    except (OperationalError, DBAPIError, PoolTimeout) as exc:
        _log.warning("overdue orders not reconciled: database failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return 0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
