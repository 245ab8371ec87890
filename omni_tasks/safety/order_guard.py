"""The order path's gates on the trading state: the venue's last-step guard and the check before an order task starts.

Both read the state by the one rule (:func:`omni_tasks.safety.killswitch.read_state`) and
fail closed: HALTED, or a copy that cannot be read, stops the order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import OrderBlocked, OrderRequest
from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.safety.killswitch import judge, read_state
from omni_tasks.safety.state_rule import Copy, Reading, TradingState
from omni_tasks.storage.models import OrderEvent

_log = structlog.get_logger("omni.killswitch")


def _blocked_text(reading: Reading, what: str) -> str:
    text = f"{what}: trading is HALTED (kill switch engaged, or the state cannot be read)"
    return text if reading.agree else f"{text}; {reading.why}"


class OrderGuard:
    """The venue's last-step guard: raises OrderBlocked unless orders may leave (by :func:`read_state`).

    HALTED, unreadable, or the copies disagreeing with HALTED the stricter: blocked. REDUCING passes
    here; the pre-trade checks enforce reduce-only. :meth:`in_session` reads the row in a session
    the venue already holds open (the simulated venue's ledger transaction).
    """

    def __init__(self, client: redis.Redis, sessions: sessionmaker[Session], *, key: str = TRADING_STATE_KEY) -> None:
        self._client, self._sessions, self._key = client, sessions, key

    def __call__(self, request: OrderRequest) -> None:
        self._check(request, read_state(self._client, self._sessions, key=self._key))

    def in_session(self, request: OrderRequest, session: Session) -> None:
        self._check(request, read_state(self._client, self._sessions, key=self._key, session=session))

    @property
    def key(self) -> str:
        """The Redis key of the trading state (a venue pipelines its GET with its own reads)."""
        return self._key

    def with_copies(self, request: OrderRequest, cached: Copy, durable: Copy) -> None:
        """The same decision from both copies the venue read itself, in its locked transaction: Redis's
        (its GET of :attr:`key` pipelined with the quotes) and the row (read with the order's rows)."""
        self._check(request, judge(self._client, cached, durable, key=self._key))

    @staticmethod
    def _check(request: OrderRequest, reading: Reading) -> None:
        if reading.state is TradingState.HALTED:
            raise OrderBlocked(_blocked_text(reading, f"order {request.client_order_id} not sent"))


def order_guard(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = TRADING_STATE_KEY) -> OrderGuard:
    """The venue's last-step guard (:class:`OrderGuard`)."""
    return OrderGuard(client, sessions, key=key)


def order_task_refusal(client: redis.Redis, sessions: sessionmaker[Session], *, key: str = TRADING_STATE_KEY) -> str | None:
    """Why an order-bearing task must not run now (None: it may): :func:`refusal_of` both copies, read here."""
    return refusal_of(read_state(client, sessions, key=key))


def refusal_of(reading: Reading) -> str | None:
    """Why an order-bearing task must not run, by a reading of both copies (None: it may).

    The one decision for the check before an order task starts and for the order path's own first
    reads (:meth:`omni_tasks.trading.orders.OrderSubmitter.submit` with ``refuse_when_halted``).
    """
    if reading.state is not TradingState.HALTED:
        return None
    cached = reading.redis
    redis_open = cached.status == "ok" and cached.value is not None and cached.value.state is not TradingState.HALTED
    if reading.database.status == "unreadable" and redis_open:
        # A database outage is not an engage: the order cannot be recorded or sent without the database,
        # so the task starts, waits for it (retried until the order's deadline) and the venue's guard
        # reads both copies again before anything leaves. Refusing here would drop an accepted order.
        _log.info("trading state: the database cannot be read; the order task waits for it")
        return None
    return _blocked_text(reading, "order task refused, not run")


def _client_order_id(args: Any, kwargs: Any) -> str | None:
    """The order's id in an order task's arguments: a ``client_order_id`` keyword, or that key of a dict argument."""
    if isinstance(kwargs, dict) and isinstance(kwargs.get("client_order_id"), str):
        return str(kwargs["client_order_id"])[:64]
    for value in list(args or ()) + list((kwargs or {}).values() if isinstance(kwargs, dict) else ()):
        if isinstance(value, dict) and isinstance(value.get("client_order_id"), str):
            return str(value["client_order_id"])[:64]
    return None


def record_refused_order_task(
    sessions: sessionmaker[Session], *, task_name: str, task_id: str, args: Any, kwargs: Any, reason: str
) -> bool:
    """Record an order task refused before it started: an order event ``refused`` (check ``kill_switch``). True when written.

    Needs the order's ``client_order_id`` in the arguments; without it the task ledger alone records the refusal.
    """
    order_id = _client_order_id(args, kwargs)
    if order_id is None:
        return False
    try:
        with sessions() as session, session.begin():
            session.add(
                OrderEvent(
                    ts=datetime.now(tz=UTC),
                    client_order_id=order_id,
                    event="refused",
                    check="kill_switch",
                    reason=reason,
                    detail={"task": task_name, "task_id": task_id},
                )
            )
        return True
    except Exception as exc:  # noqa: BLE001 - the refusal stands; the task ledger and the log still record it
        _log.warning("refused order task not recorded in order_events", task_id=task_id, error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return False
