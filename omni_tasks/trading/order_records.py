"""The order path's records: an order's row and events in the ledger, and the outcome a task returns.

Every write goes through :func:`~omni_tasks.trading.order_breakers.guarded_transaction`
(the ``database`` breaker, fail closed). The rows: ``pending`` with its deadline when
requested (:func:`order_row_values`), then ``denied``, ``expired``, or what the venue
answered (unless the venue keeps the ledger itself and wrote it in the transaction that
accepted the order). :class:`OrderOutcome` is what happened, as the task returns it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, Final
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Engine, func, select, update
from sqlalchemy import insert as insert_into
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import InvalidOrder, OrderRequest, VenueOrder
from omni_tasks.ops import prometheus as metrics
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.safety.breaker import Decision as BreakerDecision
from omni_tasks.safety.state_rule import Copy, TradingState
from omni_tasks.safety.state_store import STATE_ROW_ID, row_copy
from omni_tasks.storage.direct import Prepared, postgresql_engine
from omni_tasks.storage.models import Order, OrderEvent
from omni_tasks.trading.checks import Decision
from omni_tasks.trading.expiry import CHECK as DEADLINE_CHECK
from omni_tasks.trading.expiry import EXPIRED, expire_order, updated_rows
from omni_tasks.trading.order_breakers import guarded_direct, guarded_transaction
from omni_tasks.trading.parsing import parse_order

_log = structlog.get_logger("omni.orders")

ZERO: Final = Decimal(0)
#: Statuses that mean the order is decided (a redelivery returns them as they are).
DECIDED: Final = frozenset({"denied", "new", "accepted", "partially_filled", "filled", "cancelled", "rejected", "expired"})


def order_row_values(request: OrderRequest, *, venue: str, now: datetime, deadline: datetime | None) -> dict[str, Any]:
    """The columns of a new ``orders`` row for ``request``: ``pending``, nothing filled, due by ``deadline``."""
    return {
        "client_order_id": request.client_order_id, "broker": venue, "broker_order_id": None,
        "symbol": request.symbol, "side": request.side, "qty": request.qty, "order_type": request.order_type,
        "limit_price": request.limit_price, "status": "pending", "filled_qty": ZERO, "avg_fill_price": None,
        "requested_by": request.requested_by[:100], "reason": None, "created_at": now, "submitted_at": None, "updated_at": now,
        "expires_at": deadline,
    }  # fmt: skip


def requested_detail(request: OrderRequest, deadline: datetime | None) -> dict[str, Any]:
    """The detail of an order's "requested" event: the order as asked, and its deadline."""
    return {
        "symbol": request.symbol, "side": request.side, "qty": str(request.qty), "order_type": request.order_type,
        "limit_price": None if request.limit_price is None else str(request.limit_price),
        "requested_by": request.requested_by, "expires_at": None if deadline is None else deadline.isoformat(),
    }  # fmt: skip


#: PostgreSQL: the pending row and its "requested" event when the order is new, the row's status and deadline when it is
#: not, today's trade count and the trading state's row, in one statement run on its own (one round trip, no
#: transaction block; ``set_config(..., true)`` holds for the statement's implicit transaction, measured: its commit
#: takes 0.1 ms against 5 ms with the fsync on this machine). Its commit does not wait for the fsync: nothing has
#: left yet, and the venue's own (synchronous) commit flushes the write-ahead log up to and including it before any order
#: is accepted. A row recorded earlier (by the CLI, or a delivery that died) is read as it was: the statement's snapshot
#: does not see the row its own INSERT adds, so ``status`` is the earlier row's (None when the order is new).
_RECORD_REQUEST = Prepared(
    "omni_record_request",
    """
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS setting),
ins AS (
    INSERT INTO orders (client_order_id, broker, broker_order_id, symbol, side, qty, order_type, limit_price, status,
                        filled_qty, avg_fill_price, requested_by, reason, created_at, submitted_at, updated_at, expires_at)
    SELECT %(client_order_id)s, %(broker)s, %(broker_order_id)s, %(symbol)s, %(side)s, %(qty)s, %(order_type)s, %(limit_price)s,
           %(status)s, %(filled_qty)s, %(avg_fill_price)s, %(requested_by)s, %(reason)s, %(created_at)s, %(submitted_at)s,
           %(updated_at)s, %(expires_at)s
    -- refusable: an order task refused while the database's copy says HALTED records nothing here
    WHERE NOT (%(refusable)s AND EXISTS (SELECT 1 FROM trading_state s WHERE s.id = %(state_row)s AND s.state = 'HALTED'))
    ON CONFLICT (client_order_id) DO NOTHING
    RETURNING id
),
event AS (
    INSERT INTO order_events (ts, client_order_id, event, "check", reason, detail)
    SELECT %(created_at)s, %(client_order_id)s, 'requested', NULL, NULL, CAST(%(detail)s AS JSON) FROM ins
)
SELECT (SELECT id FROM ins) AS inserted,
       (SELECT setting FROM relaxed) AS relaxed,
       o.status, o.expires_at,
       (SELECT json_build_array(s.state, s.version) FROM trading_state s WHERE s.id = %(state_row)s) AS trading_state,
       -- counted up to the day's limit only: the check needs no more, and the count's cost stays bounded by it
       (SELECT count(*) FROM (SELECT 1 FROM orders t
         WHERE t.broker = %(broker)s AND t.created_at >= %(day_start)s AND t.submitted_at IS NOT NULL
         LIMIT %(trades_cap)s) AS capped) AS trades
FROM (SELECT 1) AS one
LEFT JOIN orders o ON o.client_order_id = %(client_order_id)s
""",
)


def record_expired_message(
    sessions: sessionmaker[Session], *, venue: str, arguments: Mapping[str, Any], reason: str, now: datetime
) -> str | None:
    """An order message that will not run (past its deadline): record the order ``expired`` from the message's arguments.

    Returns the order's status now (None: the arguments name no order). An order never
    recorded before is recorded now, so it is seen; a decided one is left as it is.
    """
    client_order_id = arguments.get("client_order_id")
    if not isinstance(client_order_id, str):
        return None
    try:
        request: OrderRequest | None = parse_order(
            **{k: arguments[k] for k in ("symbol", "side", "qty", "order_type", "limit_price", "requested_by") if k in arguments},
            client_order_id=client_order_id,
        )
    except (InvalidOrder, TypeError, AttributeError):
        request = None  # a malformed message: only an existing row can be expired
    expires_at = arguments.get("expires_at")
    deadline = utc_of_ns(int(float(expires_at) * 1e9)) if isinstance(expires_at, int | float) else now
    values = None if request is None else order_row_values(request, venue=venue, now=now, deadline=deadline)
    with sessions() as session, session.begin():
        return expire_order(session, client_order_id=client_order_id, reason=reason, now=now, detail={"by": "expires"}, row_values=values)


@dataclass(frozen=True)
class OrderOutcome:
    """What happened to one order. ``status`` is the Order row's status (denied, new, filled, rejected...)."""

    client_order_id: str
    status: str
    check: str | None
    reason: str | None
    broker_order_id: str | None
    filled_qty: str
    avg_fill_price: str | None
    elapsed_ms: float
    repeat: bool = False
    #: Milliseconds inside ``venue.submit`` (None: the venue was not called; the key keeps its old name); the rest of ``elapsed_ms`` is the orders path's own.
    broker_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OrderRecords:
    """The rows and events of one venue's orders (``venue_name`` is their broker column), each write in the database breaker."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        database_breaker: CircuitBreaker,
        venue_name: str,
        exchange_tz: str,
        clock_ns: Callable[[], int],
        trades_cap: int | None = None,
    ) -> None:
        """``trades_cap``: today's trades are counted up to this many (the day's limit: the check needs no
        more, and the count costs at most that many index entries, not the whole day's orders); None: all."""
        self._sessions = sessions
        self._trades_cap = trades_cap
        self.database_breaker = database_breaker
        self.venue_name = venue_name
        self._tz = ZoneInfo(exchange_tz)
        self._clock_ns = clock_ns
        #: PostgreSQL: the request is recorded by one statement on a DB-API cursor (None on SQLite: the ORM).
        self._engine = postgresql_engine(sessions)

    def transaction(self, decision: BreakerDecision | None = None, settle: list[str] | None = None) -> AbstractContextManager[Session]:
        """One transaction inside the database breaker (``decision``: its ``allow()`` asked already; ``settle``: see
        :func:`~omni_tasks.trading.order_breakers.guarded_transaction`)."""
        return guarded_transaction(self._sessions, self.database_breaker, decision=decision, settle=settle)

    def _day_start(self) -> datetime:
        now = datetime.fromtimestamp(self._clock_ns() / 1e9, tz=UTC)
        local = now.astimezone(self._tz)
        midnight = datetime(local.year, local.month, local.day, tzinfo=self._tz)
        return midnight.astimezone(UTC)

    @property
    def reads_state(self) -> bool:
        """Does :meth:`record_request` read the database's copy of the trading state (PostgreSQL), with ``refusable``?"""
        return self._engine is not None

    def record_request(
        self,
        request: OrderRequest,
        deadline: datetime | None,
        *,
        allowed: BreakerDecision | None = None,
        settle: list[str] | None = None,
        refusable: bool = False,
    ) -> tuple[Order | None, int, datetime | None, Copy | None]:
        """The pending row and the "requested" event, today's trade count and the order's deadline; or the decided row.

        A pending row recorded earlier (by the CLI, or a delivery that died) is taken as it
        is: no second "requested" event, and its ``expires_at`` is the deadline. On PostgreSQL the
        same statement reads the trading state's row (the database's copy, for the checks); else None.
        ``refusable`` (PostgreSQL, :attr:`reads_state`): the order task refuses itself when that copy says
        HALTED; then nothing is recorded and the copy is returned with no row (the caller refuses).
        """
        now = utc_of_ns(self._clock_ns())
        values = order_row_values(request, venue=self.venue_name, now=now, deadline=deadline)
        if self._engine is not None:
            return self._record_request_direct(self._engine, request, values, deadline, allowed, settle, refusable)
        with self.transaction(allowed, settle) as session:
            # SQLite. A conflict means an earlier delivery made the row.
            inserted = session.execute(
                sqlite_insert(Order).values(**values).on_conflict_do_nothing(index_elements=["client_order_id"]).returning(Order.id)
            ).scalar_one_or_none()
            if inserted is None:
                row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
                if row.status in DECIDED:
                    session.expunge(row)
                    return row, 0, None, None
                deadline = row.expires_at or deadline
            else:
                # Core inserts: no unit-of-work flush on the hot path.
                session.execute(
                    insert_into(OrderEvent),
                    {"ts": now, "client_order_id": request.client_order_id, "event": "requested", "check": None, "reason": None,
                     "detail": requested_detail(request, deadline)},
                )  # fmt: skip
            today = (
                select(Order.id)
                .where(Order.broker == self.venue_name, Order.created_at >= self._day_start(), Order.submitted_at.is_not(None))
                .limit(self._trades_cap)
            )
            trades = session.execute(select(func.count()).select_from(today.subquery())).scalar_one()
        return None, int(trades), deadline, None

    def _record_request_direct(
        self,
        engine: Engine,
        request: OrderRequest,
        values: dict[str, Any],
        deadline: datetime | None,
        allowed: BreakerDecision | None,
        settle: list[str] | None,
        refusable: bool,
    ) -> tuple[Order | None, int, datetime | None, Copy | None]:
        """:meth:`record_request` on PostgreSQL: :data:`_RECORD_REQUEST` alone, in autocommit (one round trip, no BEGIN/COMMIT)."""
        params = {
            **values, "detail": json.dumps(requested_detail(request, deadline)), "day_start": self._day_start(), "state_row": STATE_ROW_ID,
            "refusable": refusable, "trades_cap": self._trades_cap,
        }  # fmt: skip
        with guarded_direct(engine, self.database_breaker, decision=allowed, settle=settle) as db:
            inserted, _relaxed, status, expires_at, state, trades = db.fetch_one(_RECORD_REQUEST, params=params)
        durable = row_copy(None if state is None else SimpleNamespace(state=state[0], version=state[1]))
        if refusable and durable.value is not None and durable.value.state is TradingState.HALTED:
            return None, int(trades), deadline, durable  # nothing recorded: the caller refuses the order task
        if inserted is not None:
            return None, int(trades), deadline, durable
        if status is None or status in DECIDED:
            # Inserted by a transaction that committed while the statement waited (its snapshot is older), or decided:
            # read the row now, in a session of its own.
            with self.transaction() as session:
                row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
                session.expunge(row)
            if row.status in DECIDED:
                return row, 0, None, None
            status, expires_at = row.status, row.expires_at
        return None, int(trades), (expires_at.astimezone(UTC) if expires_at is not None else None) or deadline, durable

    def expire(self, request: OrderRequest, deadline: datetime | None, t0: float) -> OrderOutcome | None:
        """Record the order expired (not sent by its deadline); None when a venue holds it (claimed, outcome pending there)."""
        now = utc_of_ns(self._clock_ns())
        due = deadline or now
        reason = f"not sent by its deadline {due.isoformat(timespec='seconds')}: never sent to the broker"
        with self.transaction() as session:
            status = expire_order(
                session,
                client_order_id=request.client_order_id,
                reason=reason,
                now=now,
                detail={"by": "worker", "late_s": round((now - due).total_seconds(), 3)},
                row_values=order_row_values(request, venue=self.venue_name, now=now, deadline=due),
            )
            if status is None or status == "pending":
                return None
            row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
            session.expunge(row)
        if status == EXPIRED:
            _log.warning("order expired", client_order_id=request.client_order_id, symbol=request.symbol, reason=reason)
        return outcome_of(row, t0, repeat=status != EXPIRED)

    def claim(self, request: OrderRequest) -> Order | None:
        """Before a venue without a ledger of ours is called: mark the row as at the venue (``submitted_at``) while still pending.

        Returns None when claimed (send it), else the row as decided meanwhile (expired: send nothing).
        From here the watchdog no longer expires it; a redelivery resends it (same id, one order).
        """
        now = utc_of_ns(self._clock_ns())
        with self.transaction() as session:
            claimed = updated_rows(
                session,
                update(Order)
                .where(Order.client_order_id == request.client_order_id, Order.status == "pending")
                .values(submitted_at=now, updated_at=now)
                .execution_options(synchronize_session=False),
            )
            if claimed:
                return None
            row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
            session.expunge(row)
            return row

    def record_denial(self, request: OrderRequest, decision: Decision, t0: float) -> OrderOutcome:
        now = utc_of_ns(self._clock_ns())
        elapsed_ms = ms_since(t0)
        with self.transaction() as session:
            row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
            row.status = "denied"
            row.reason = f"{decision.check}: {decision.reason}"
            row.updated_at = now
            session.add(
                OrderEvent(
                    ts=now,
                    client_order_id=request.client_order_id,
                    event="denied",
                    check=decision.check,
                    reason=decision.reason,
                    detail={"elapsed_ms": elapsed_ms},
                )  # fmt: skip
            )
        _log.info(
            "order denied", client_order_id=request.client_order_id, symbol=request.symbol, check=decision.check, reason=decision.reason
        )
        return OrderOutcome(request.client_order_id, "denied", decision.check, decision.reason, None, "0", None, ms_since(t0))

    def record_sent(self, request: OrderRequest, order: VenueOrder, t0: float, *, venue_keeps_ledger: bool) -> OrderOutcome:
        """Bring the row and the events up to the venue's answer, unless the venue keeps the ledger itself."""
        now = utc_of_ns(self._clock_ns())
        if venue_keeps_ledger:  # it recorded the row and the events in the same transaction that accepted the order
            return sent_outcome(request, order, t0)
        with self.transaction() as session:
            row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
            if row.status == "pending":  # the venue keeps no ledger of its own: record what it said
                row.broker_order_id = order.broker_order_id or None
                row.status = order.status
                row.filled_qty = order.filled_qty
                row.avg_fill_price = order.avg_fill_price
                row.submitted_at = order.submitted_at or now
                row.reason = order.reason
                row.updated_at = now
                detail = {"broker": self.venue_name, "broker_order_id": order.broker_order_id}
                if order.status == "rejected":
                    session.add(
                        OrderEvent(
                            ts=now,
                            client_order_id=row.client_order_id,
                            event="rejected",
                            check="broker",
                            reason=order.reason,
                            detail=detail,
                        )
                    )
                else:
                    session.add(
                        OrderEvent(ts=now, client_order_id=row.client_order_id, event="submitted", check=None, reason=None, detail=detail)
                    )
                    if order.filled_qty > 0:
                        event = "filled" if order.status == "filled" else "partially_filled"
                        fill = {
                            **detail,
                            "qty": str(order.filled_qty),
                            "price": None if order.avg_fill_price is None else str(order.avg_fill_price),
                        }
                        session.add(
                            OrderEvent(ts=now, client_order_id=row.client_order_id, event=event, check=None, reason=None, detail=fill)
                        )
        return sent_outcome(request, order, t0)

    def record_refusal(self, request: OrderRequest, status: str, check: str, reason: str, t0: float) -> OrderOutcome:
        now = utc_of_ns(self._clock_ns())
        with self.transaction() as session:
            row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
            if row.status == "pending":  # a venue with a ledger has recorded its refusal already
                row.status = status
                row.reason = f"{check}: {reason}"
                row.updated_at = now
                session.add(
                    OrderEvent(ts=now, client_order_id=request.client_order_id, event=status, check=check, reason=reason, detail={})
                )
        _log.warning("order refused at the broker", client_order_id=request.client_order_id, check=check, reason=reason)
        return OrderOutcome(request.client_order_id, status, check, reason, None, "0", None, ms_since(t0))

    def abandon(self, client_order_id: str, reason: str) -> None:
        """Give up on an order the venue could not be reached for (retries exhausted): the row says rejected."""
        now = utc_of_ns(self._clock_ns())
        with self.transaction() as session:
            row = session.execute(select(Order).where(Order.client_order_id == client_order_id)).scalar_one_or_none()
            if row is not None and row.status == "pending":
                row.status = "rejected"
                row.reason = f"broker: {reason}"
                row.updated_at = now
                session.add(
                    OrderEvent(
                        ts=now, client_order_id=client_order_id, event="rejected", check="broker", reason=reason, detail={"abandoned": True}
                    )
                )
        metrics.ORDERS.labels("rejected", "broker").inc()

    def record_event(self, client_order_id: str, event: str, check: str | None, reason: str, detail: dict[str, Any]) -> None:
        with self.transaction() as session:
            session.add(
                OrderEvent(
                    ts=utc_of_ns(self._clock_ns()), client_order_id=client_order_id, event=event, check=check, reason=reason, detail=detail
                )
            )


def outcome_of(row: Order, t0: float, *, repeat: bool) -> OrderOutcome:
    split = row.status == "denied" or (row.status == EXPIRED and (row.reason or "").startswith(f"{DEADLINE_CHECK}: "))
    check, _, reason = (row.reason or "").partition(": ") if split else (None, "", row.reason or "")
    return OrderOutcome(
        row.client_order_id, row.status, check or None, reason or None, row.broker_order_id,
        plain(row.filled_qty), None if row.avg_fill_price is None else plain(row.avg_fill_price), ms_since(t0), repeat,
    )  # fmt: skip


def sent_outcome(request: OrderRequest, order: VenueOrder, t0: float) -> OrderOutcome:
    check, reason = ("broker" if order.status == "rejected" else None), order.reason
    if order.status == EXPIRED and (reason or "").startswith(f"{DEADLINE_CHECK}: "):  # expired before the venue took it
        check, reason = DEADLINE_CHECK, (reason or "").removeprefix(f"{DEADLINE_CHECK}: ")
    return OrderOutcome(
        request.client_order_id, order.status, check, reason, order.broker_order_id or None,
        plain(order.filled_qty), None if order.avg_fill_price is None else plain(order.avg_fill_price), ms_since(t0),
    )  # fmt: skip


def plain(value: Decimal) -> str:
    """Decimal text without trailing zeros or an exponent: 10.50000000 -> 10.5, 1E+3 -> 1000."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def utc_of_ns(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)
