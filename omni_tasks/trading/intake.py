"""Accepting an order: recorded before it is queued, so every accepted order has a row that ends with a final status.

    record   the ``orders`` row (``pending``, due by now + ``OMNI_TRADING_ORDER_TTL_S``) and its
             "requested" event, in one transaction. The database failing here: :class:`NotQueued`,
             nothing recorded and nothing queued.
    queue    the message, carrying the deadline (``expires_at``). The broker (Redis) failing here:
             the row is recorded ``rejected`` (check ``queue``) and :class:`NotQueued` says so. Should
             the database fail at that very moment too, the row stays ``pending`` and the watchdog
             records it ``expired`` after its deadline (:mod:`omni_tasks.trading.expiry`).

An order is *accepted* when both steps succeeded: from then on its row reaches
a final status (filled, denied, rejected, expired...) whatever fails, and a
worker never sends it after its deadline.

Plain Python: the sessions, the clock and the sender (``send(kwargs)``, which the
CLI points at the orders task) are arguments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import OrderRequest
from omni_tasks.core.errors import OmniError
from omni_tasks.storage.models import Order, OrderEvent
from omni_tasks.trading.expiry import deadline_of, is_database_failure, updated_rows
from omni_tasks.trading.orders import order_row_values, requested_detail

_log = structlog.get_logger("omni.orders.intake")

#: The check a queueing failure is recorded under (``orders.reason`` starts with it).
QUEUE_CHECK: Final = "queue"


class NotQueued(OmniError):
    """The order could not be queued; the message says why and what was recorded (one line for the user)."""


@dataclass(frozen=True)
class Accepted:
    """An order recorded and queued: it will end with a final status, and is never sent after ``expires_at`` (UTC)."""

    client_order_id: str
    expires_at: datetime


def message_kwargs(request: OrderRequest, deadline: datetime) -> dict[str, Any]:
    """The orders task's keyword arguments for ``request`` (JSON primitives; money as decimal text)."""
    return {
        "symbol": request.symbol, "side": request.side, "qty": str(request.qty), "order_type": request.order_type,
        "limit_price": None if request.limit_price is None else str(request.limit_price),
        "client_order_id": request.client_order_id, "requested_by": request.requested_by,
        "expires_at": deadline.timestamp(),
    }  # fmt: skip


def accept_order(
    request: OrderRequest,
    *,
    sessions: sessionmaker[Session],
    broker: str,
    ttl_s: float,
    send: Callable[[dict[str, Any]], object],
    clock: Callable[[], float] = time.time,
) -> Accepted:
    """Record ``request`` as accepted, then queue it. Raises :class:`NotQueued` (with what was recorded) when either fails."""
    now_s = clock()
    deadline = deadline_of(None, accepted_at=now_s, ttl_s=ttl_s)
    now = deadline_of(None, accepted_at=now_s, ttl_s=0)
    try:
        with sessions() as session, session.begin():
            session.execute(insert(Order), order_row_values(request, broker=broker, now=now, deadline=deadline))
            session.execute(
                insert(OrderEvent),
                {"ts": now, "client_order_id": request.client_order_id, "event": "requested", "check": None, "reason": None,
                 "detail": {**requested_detail(request, deadline), "accepted_by": "cli"}},
            )  # fmt: skip
    except Exception as exc:
        if is_database_failure(exc):
            raise NotQueued(f"the database is unavailable ({_short(exc)}): nothing recorded, nothing queued") from exc
        raise
    try:
        send(message_kwargs(request, deadline))
    except Exception as exc:  # whatever stopped the send, the order is not queued and must be finalised
        reason = f"could not be queued: the broker failed ({_short(exc)})"
        status = _finalise(sessions, request.client_order_id, reason, clock())
        if status == "rejected":
            raise NotQueued(f"{reason}: recorded as rejected, nothing sent") from exc
        if status is None:
            raise NotQueued(f"{reason}: recorded as pending; the watchdog records it expired after its deadline, nothing is sent") from exc
        # The send reported a failure after the message went out: a worker has the order already.
        _log.warning("order send reported a failure but a worker has the order", client_order_id=request.client_order_id, status=status)
    return Accepted(request.client_order_id, deadline)


def _finalise(sessions: sessionmaker[Session], client_order_id: str, reason: str, now_s: float) -> str | None:
    """The order could not be queued: ``rejected`` (check ``queue``) while still pending.

    Returns the order's status after (``rejected``, or what a worker decided if the message
    went out after all); None when the database failed too (the row stays pending).
    """
    now = deadline_of(None, accepted_at=now_s, ttl_s=0)
    try:
        with sessions() as session, session.begin():
            changed = updated_rows(
                session,
                update(Order)
                .where(Order.client_order_id == client_order_id, Order.status == "pending", Order.submitted_at.is_(None))
                .values(status="rejected", reason=f"{QUEUE_CHECK}: {reason}", updated_at=now)
                .execution_options(synchronize_session=False),
            )
            if changed:
                session.execute(
                    insert(OrderEvent),
                    {
                        "ts": now,
                        "client_order_id": client_order_id,
                        "event": "rejected",
                        "check": QUEUE_CHECK,
                        "reason": reason,
                        "detail": {},
                    },
                )
                return "rejected"
            return session.execute(select(Order.status).where(Order.client_order_id == client_order_id)).scalar_one_or_none()
    except Exception as exc:  # noqa: BLE001 - the row stays pending; the watchdog's reconciliation finalises it
        _log.error("order not queued and not finalised", client_order_id=client_order_id, error=_short(exc))
        return None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
