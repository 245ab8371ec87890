"""The simulated venue's common case on PostgreSQL: one order's transaction in two round trips, on a DB-API cursor.

The common case: the day already rolled, no other order resting at the venue, the
order new or still ``pending`` (recorded by the CLI or an earlier delivery). Then
the transaction is

1. ``BEGIN``; lock the venue's account row (``SELECT ... FOR UPDATE``); then, in a
   second statement (a snapshot taken after the lock was granted, so nothing committed
   before it is missed), the account, this order's row and any resting order (both
   locked, as the ORM path locks them), every position and the trading state's row:
   one query string, one round trip (:meth:`LeanLedger.lock_and_read`);
2. the outcome in one statement (the order row, and when it fills the fill, the
   position, the cash; its events), then ``COMMIT``: one round trip
   (:meth:`LeanLedger.write_and_commit`).

Between them the venue checks the quote and runs the guard (no database call). Every
other case (a new day to roll, resting orders to match first, an order decided already)
is rolled back here and taken by the ORM path in :mod:`omni_tasks.trading.simulated`.
The statements go through :mod:`omni_tasks.storage.direct` (why: the CPU the ORM costs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import OPEN_STATUSES, OrderRequest
from omni_tasks.safety.state_rule import Copy
from omni_tasks.safety.state_store import STATE_ROW_ID, row_copy
from omni_tasks.storage.direct import Direct, Prepared, direct, postgresql_engine
from omni_tasks.storage.models import Order
from omni_tasks.trading.fills import ZERO, PositionState


@dataclass(frozen=True)
class LockedAccount:
    """The venue's account row as read under its lock."""

    cash: Decimal
    day: date
    day_start_equity: Decimal
    peak_equity: Decimal


@dataclass(frozen=True)
class LockedRead:
    """What :meth:`LeanLedger.lock_and_read` reads under the account lock.

    ``known``: this order's row (a detached copy; None when there is none), ``resting``: other open
    orders at this venue exist, ``positions``: every position of the venue, ``state``: the trading
    state's row as the kill switch's guard reads it.
    """

    account: LockedAccount
    known: Order | None
    resting: bool
    positions: dict[str, PositionState]
    state: Copy


@dataclass(frozen=True)
class LeanWrite:
    """The rows one order changes, written by :meth:`LeanLedger.write_and_commit` in one statement."""

    request: OrderRequest
    known_id: int | None
    broker_order_id: str
    status: str
    reason: str | None
    now: datetime
    events: list[tuple[str, str | None, str | None, dict[str, str]]]
    #: (price, the position after, cash after): None when nothing filled
    fill: tuple[Decimal, PositionState, Decimal] | None = None


#: The account lock, then (a statement of its own: its snapshot is taken after the lock) the account, this order's row and any resting order
#: (FOR UPDATE: the order path's expiry, UPDATE ... WHERE status = 'pending', waits for this transaction and then
#: finds the row decided), every position and the trading state's row.
_LOCK = Prepared("omni_lean_lock", "SELECT 1 FROM broker_accounts WHERE broker = %(broker)s FOR UPDATE")
_READ = Prepared(
    "omni_lean_read",
    """
SELECT a.cash, a.day, a.day_start_equity, a.peak_equity,
  (SELECT json_agg(json_build_array(o.id, o.client_order_id, o.broker, o.broker_order_id, o.symbol, o.side, o.qty::text,
                                    o.order_type, o.limit_price::text, o.status, o.filled_qty::text, o.requested_by) ORDER BY o.id)
     FROM (SELECT * FROM orders
            WHERE client_order_id = %(client_order_id)s
               OR (broker = %(broker)s AND status = ANY(%(open_statuses)s) AND broker_order_id IS NOT NULL)
            ORDER BY id FOR UPDATE) AS o),
  (SELECT json_agg(json_build_array(p.symbol, p.qty::text, p.avg_price::text, p.realized_pnl::text))
     FROM positions AS p WHERE p.broker = %(broker)s),
  (SELECT json_build_array(t.state, t.version) FROM trading_state AS t WHERE t.id = %(state_row)s)
FROM broker_accounts AS a WHERE a.broker = %(broker)s
""",
)


@cache
def _write(new_row: bool, filled: bool, events: int) -> Prepared:
    """:func:`_write_sql` prepared, one statement per shape."""
    return Prepared(f"omni_lean_write_{int(new_row)}_{int(filled)}_{events}", _write_sql(new_row, filled, events))


def _write_sql(new_row: bool, filled: bool, events: int) -> str:
    """The one statement that records an order's outcome: the row, and when filled the fill, the position and the cash; its events.

    A ``SELECT`` that divides by the rows written ends it: an order row not written (no longer there) fails the
    statement, so the transaction is rolled back, never committed with a fill and no order.
    """
    if new_row:
        order = """INSERT INTO orders (client_order_id, broker, broker_order_id, symbol, side, qty, order_type, limit_price, status,
                        filled_qty, avg_fill_price, requested_by, reason, created_at, submitted_at, updated_at)
    VALUES (%(client_order_id)s, %(broker)s, %(broker_order_id)s, %(symbol)s, %(side)s, %(qty)s, %(order_type)s, %(limit_price)s,
            %(status)s, %(filled_qty)s, %(avg_fill_price)s, %(requested_by)s, %(reason)s, %(now)s, %(submitted_at)s, %(now)s)
    RETURNING id"""
    else:
        order = """UPDATE orders SET broker_order_id = %(broker_order_id)s, status = %(status)s, reason = %(reason)s,
                      submitted_at = %(submitted_at)s, filled_qty = %(filled_qty)s, avg_fill_price = %(avg_fill_price)s,
                      updated_at = %(now)s
    WHERE id = %(order_id)s RETURNING id"""
    parts = [f"row AS (\n    {order}\n)"]
    if filled:
        parts += [
            """fill AS (
    INSERT INTO fills (order_id, broker, symbol, side, qty, price, ts)
    SELECT id, %(broker)s, %(symbol)s, %(side)s, %(fill_qty)s, %(price)s, %(now)s FROM row
)""",
            """position AS (
    INSERT INTO positions (broker, symbol, qty, avg_price, realized_pnl, updated_at)
    VALUES (%(broker)s, %(symbol)s, %(position_qty)s, %(position_avg_price)s, %(position_realized_pnl)s, %(now)s)
    ON CONFLICT (broker, symbol) DO UPDATE SET qty = EXCLUDED.qty, avg_price = EXCLUDED.avg_price,
        realized_pnl = EXCLUDED.realized_pnl, updated_at = EXCLUDED.updated_at
)""",
            "account AS (\n    UPDATE broker_accounts SET cash = %(cash)s, updated_at = %(now)s WHERE broker = %(broker)s\n)",
        ]
    rows = ", ".join(
        f"(%(now)s, %(client_order_id)s, %(event_{i})s, %(check_{i})s, %(reason_{i})s, CAST(%(detail_{i})s AS JSON))" for i in range(events)
    )
    parts.append(f'events AS (\n    INSERT INTO order_events (ts, client_order_id, event, "check", reason, detail) VALUES {rows}\n)')  # noqa: S608 - placeholders and fixed text only
    return "WITH " + ",\n".join(parts) + "\nSELECT 1 / (SELECT count(*) FROM row)::int"  # noqa: S608 - fixed text only


class LeanLedger:
    """One venue's common-case transaction on PostgreSQL (see the module docstring). Thread-safe (a connection per block)."""

    def __init__(self, engine: Engine, *, name: str) -> None:
        self._engine = engine
        self.name = name

    @classmethod
    def for_sessions(cls, sessions: sessionmaker[Session], *, name: str) -> LeanLedger | None:
        """The lean ledger of these sessions' database, or None when it is not PostgreSQL (SQLite keeps the ORM path)."""
        engine = postgresql_engine(sessions)
        return cls(engine, name=name) if engine is not None else None

    @contextmanager
    def transaction(self) -> Iterator[Direct]:
        """A lent connection; a transaction left open at the end of the block is rolled back."""
        with direct(self._engine) as db:
            yield db

    def lock_and_read(self, db: Direct, client_order_id: str) -> LockedRead:
        """Open the transaction, take the account lock and read under it (one round trip)."""
        params = {"client_order_id": client_order_id, "broker": self.name, "open_statuses": sorted(OPEN_STATUSES), "state_row": STATE_ROW_ID}
        rows = db.begin_with(_LOCK, _READ, params=params)
        if len(rows) != 1:
            raise RuntimeError(f"venue {self.name!r} has no account row")
        cash, day, day_start_equity, peak_equity, orders, positions, state = rows[0]
        known: Order | None = None
        resting = False
        for oid, coid, broker, boid, symbol, side, qty, kind, limit, status, filled, by in orders or ():
            if coid != client_order_id:
                resting = True
                continue
            known = Order(
                id=oid, client_order_id=coid, broker=broker, broker_order_id=boid, symbol=symbol, side=side, qty=Decimal(qty),
                order_type=kind, limit_price=None if limit is None else Decimal(limit), status=status, filled_qty=Decimal(filled),
                requested_by=by,
            )  # fmt: skip
        return LockedRead(
            account=LockedAccount(cash=cash, day=day, day_start_equity=day_start_equity, peak_equity=peak_equity),
            known=known,
            resting=resting,
            positions={symbol: PositionState(Decimal(q), Decimal(avg), Decimal(pnl)) for symbol, q, avg, pnl in positions or ()},
            state=row_copy(None if state is None else SimpleNamespace(state=state[0], version=state[1])),
        )

    def write_and_commit(self, db: Direct, change: LeanWrite) -> None:
        """Record one order's outcome in one statement and commit (one round trip)."""
        request = change.request
        filled = change.fill is not None
        params: dict[str, Any] = {
            "client_order_id": request.client_order_id, "broker": self.name, "broker_order_id": change.broker_order_id,
            "symbol": request.symbol, "side": request.side, "qty": request.qty, "order_type": request.order_type,
            "limit_price": request.limit_price, "status": change.status, "reason": change.reason, "now": change.now,
            "requested_by": (request.requested_by or "unknown")[:100], "order_id": change.known_id,
            "submitted_at": change.now if change.status != "rejected" else None,
            "filled_qty": request.qty if filled else ZERO, "avg_fill_price": change.fill[0] if change.fill is not None else None,
        }  # fmt: skip
        if change.fill is not None:
            price, after, cash = change.fill
            params.update(
                fill_qty=request.qty, price=price, position_qty=after.qty, position_avg_price=after.avg_price,
                position_realized_pnl=after.realized_pnl, cash=cash,
            )  # fmt: skip
        for i, (event, check, reason, detail) in enumerate(change.events):
            params.update({f"event_{i}": event, f"check_{i}": check, f"reason_{i}": reason, f"detail_{i}": json.dumps(detail)})
        db.commit_with(_write(change.known_id is None, filled, len(change.events)), params=params)
