"""The simulated broker, the embedded default: fills against the latest quotes in Redis, ledger in the database.

Fills:

* a market buy fills at the ask, a market sell at the bid, the whole quantity at once
  (quote sizes are not consumed: the simulation has no depth);
* a limit order fills at once when marketable (buy: ask <= limit, sell: bid >= limit) at
  the quote, which is the limit or better; otherwise it rests (status ``new``) and
  :meth:`SimulatedVenue.match_resting` fills it once a fresh quote crosses it. Every
  ``submit``, ``open_orders``, ``positions`` and ``account`` call matches first, so what
  they report is consistent with the quotes. A resting order is treated like an order
  leaving: the guard runs before it fills, and while the guard refuses (the kill
  switch engaged) it keeps resting until cancelled;
* resting orders are day orders: the first call on a new trading day expires them;
* no fresh quote (missing, older than ``quote_max_age_s``, crossed) means no fill: a new
  order is recorded as ``rejected`` with a reason naming the symbol and the quote's age,
  a resting order keeps resting.

The ledger (tables orders, fills, positions, broker_accounts, order_events) holds
exact decimals with 8 places, the columns' scale: average prices are rounded half-even
to 8 places, cash moves by qty x price exactly. Cash can go negative (a margin account
without a buying-power check: leverage is the pre-trade checks' business).

Concurrency: every change runs in one transaction that first locks this broker's
account row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite a write to it, which
takes the database's write lock), so processes and threads change the ledger one
at a time, and a ``client_order_id`` seen under the lock is never submitted twice
(the unique constraint on orders.client_order_id is the backstop). The guard runs
inside that transaction, right before the order is accepted, so a kill switch that
engaged before the guard read it stops the order, and ``cancel_all`` (which takes the
same lock) sees every order accepted before it. The order's own row is locked as it is
read, so an expiry (:mod:`omni_tasks.trading.expiry`) and a fill never both win: only a
row still ``pending`` is taken over.

After every change to cash or positions the book is published to Redis
(:mod:`omni_tasks.contracts.portfolio`); the day rolls at the first call on a new New York
date, setting the day's starting equity to the equity then.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

import structlog
from redis.exceptions import RedisError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.portfolio import decimal_text, publish_book
from omni_tasks.contracts.quotes import LatestQuote, read_latest
from omni_tasks.contracts.venue import (
    OPEN_STATUSES,
    Guard,
    InvalidOrder,
    OrderBlocked,
    OrderRequest,
    Side,
    VenueAccountView,
    VenueError,
    VenueOrder,
    VenuePosition,
    check_order_request,
)
from omni_tasks.storage.models import BrokerAccount, Fill, Order, OrderEvent, Position

_log = structlog.get_logger("omni.trading.simulated")

ZERO: Final = Decimal(0)
_PLACES: Final = Decimal("1e-8")


def q8(value: Decimal) -> Decimal:
    """Round to the ledger's 8 decimal places (half-even)."""
    return value.quantize(_PLACES, rounding=ROUND_HALF_EVEN)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ---- the arithmetic (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class PositionState:
    """A signed quantity (short is negative), its average price and the P&L realised so far."""

    qty: Decimal = ZERO
    avg_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO


def apply_fill(state: PositionState, signed_qty: Decimal, price: Decimal) -> PositionState:
    """The position after a fill of ``signed_qty`` (buy positive, sell negative) at ``price``.

    Adding to a position (or opening one) averages the price, weighted by quantity;
    reducing it realises (price - avg) x closed quantity (reversed for a short) and keeps
    the average; crossing zero closes the old side at ``price`` and opens the rest at
    ``price``; flat, the average is 0.
    """
    if signed_qty == 0:
        return state
    qty, avg = state.qty, state.avg_price
    new_qty = qty + signed_qty
    if qty == 0 or (qty > 0) == (signed_qty > 0):
        new_avg = q8((abs(qty) * avg + abs(signed_qty) * price) / abs(new_qty))
        return PositionState(new_qty, new_avg, state.realized_pnl)
    closed = min(abs(qty), abs(signed_qty))
    direction = 1 if qty > 0 else -1
    realized = state.realized_pnl + q8(closed * (price - avg) * direction)
    if new_qty == 0:
        new_avg = ZERO
    elif (new_qty > 0) == (qty > 0):
        new_avg = avg
    else:
        new_avg = price
    return PositionState(new_qty, new_avg, realized)


def cash_after(cash: Decimal, side: Side, qty: Decimal, price: Decimal) -> Decimal:
    """Cash after a fill: a buy pays qty x price, a sell receives it."""
    notional = q8(qty * price)
    return cash - notional if side == "buy" else cash + notional


def quote_problem(symbol: str, quote: LatestQuote | None, *, now_ns: int, max_age_s: float) -> str | None:
    """Why ``quote`` cannot be filled on (None when it can): missing, stale, crossed or not positive."""
    if quote is None:
        return f"no quote for {symbol} in Redis (never served, or expired): not filled without a price"
    age = quote.age_s(now_ns)
    if age > max_age_s:
        return f"the quote for {symbol} is {age:.3f} s old (max {max_age_s:g} s): not filled on a stale price"
    if quote.bid <= 0 or quote.ask <= 0 or quote.bid > quote.ask:
        return f"the quote for {symbol} is unusable (bid {quote.bid}, ask {quote.ask}): not filled"
    return None


def fill_price(side: Side, order_type: str, limit_price: Decimal | None, quote: LatestQuote) -> Decimal | None:
    """The price an order fills at against ``quote`` (ask to buy, bid to sell), or None when a limit is not marketable."""
    price = quote.ask if side == "buy" else quote.bid
    if order_type == "limit" and limit_price is not None:
        marketable = price <= limit_price if side == "buy" else price >= limit_price
        if not marketable:
            return None
    return q8(price)


def equity_at(cash: Decimal, positions: Iterable[tuple[str, Decimal, Decimal]], marks: Mapping[str, Decimal]) -> Decimal:
    """Cash plus each (symbol, qty, avg_price) at its mark, or at its average price without one."""
    total = cash
    for symbol, qty, avg in positions:
        total += qty * marks.get(symbol, avg)
    return q8(total)


# ---- the broker ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AccountSnapshot:
    """The account as committed, in plain values (published after the session is gone)."""

    cash: Decimal
    day: date
    day_start_equity: Decimal
    peak_equity: Decimal
    updated_ns: int


@dataclass
class _Outcome:
    """What one locked transaction did, for after the commit."""

    order: VenueOrder | None = None
    blocked: OrderBlocked | None = None
    orders: list[VenueOrder] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    book: tuple[_AccountSnapshot, list[VenuePosition]] | None = None


class SimulatedVenue:
    """The built-in broker (see the module docstring). Thread-safe; one instance per process is enough."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        redis: Any,
        *,
        name: str = "simulated",
        starting_cash: Decimal,
        quote_max_age_s: float,
        guard: Guard | None = None,
        clock: Callable[[], datetime] = _utc_now,
        exchange_tz: str = "America/New_York",
    ) -> None:
        """``sessions`` for the ledger, ``redis`` for quotes and the book; ``clock`` returns aware UTC now."""
        if not isinstance(starting_cash, Decimal) or not starting_cash.is_finite() or starting_cash <= 0:
            raise ValueError(f"starting_cash {starting_cash!r}: must be a positive Decimal")
        if not quote_max_age_s > 0:
            raise ValueError(f"quote_max_age_s {quote_max_age_s!r}: must be positive")
        if not name or len(name) > 20:
            raise ValueError(f"broker name {name!r}: 1-20 characters (the ledger's broker column)")
        self.name = name
        self.keeps_ledger = True
        self._sessions = sessions
        self._redis = redis
        self._starting_cash = q8(starting_cash)
        self._max_age_s = float(quote_max_age_s)
        self._guard = guard
        self._clock = clock
        self._tz = ZoneInfo(exchange_tz)
        self._account_ready = False

    def __repr__(self) -> str:
        return f"SimulatedVenue(name={self.name!r}, quote_max_age_s={self._max_age_s:g})"

    # ---- the protocol ----------------------------------------------------------------------------

    def account(self) -> VenueAccountView:
        """Cash, equity (marks: fresh quotes' mids, else average prices; ``extra`` says which) and the day's marks."""
        self._prepare()
        with self._sessions() as session:
            row = session.execute(select(BrokerAccount).where(BrokerAccount.broker == self.name)).scalar_one()
            every = session.execute(select(Position).where(Position.broker == self.name)).scalars().all()
        positions = [p for p in every if p.qty != 0]
        marks = self._marks(p.symbol for p in positions)
        equity = equity_at(row.cash, ((p.symbol, p.qty, p.avg_price) for p in positions), marks)
        peak = row.peak_equity
        if equity > peak:
            peak = self._raise_peak(equity)
        by_quote = sorted(p.symbol for p in positions if p.symbol in marks)
        by_avg = sorted(p.symbol for p in positions if p.symbol not in marks)
        return VenueAccountView(
            cash=row.cash,
            equity=equity,
            day_start_equity=row.day_start_equity,
            peak_equity=peak,
            extra={
                "broker": self.name,
                "day": row.day.isoformat(),
                "marks": "none" if not positions else "quotes" if not by_avg else "avg_price" if not by_quote else "mixed",
                "marked_by_quote": ",".join(by_quote),
                "marked_by_avg_price": ",".join(by_avg),
                "realized_pnl": decimal_text(sum((p.realized_pnl for p in every), ZERO)),
            },
        )

    def positions(self) -> list[VenuePosition]:
        """Every non-flat position; ``market_price`` is the fresh quote's mid, None without one."""
        self._prepare()
        with self._sessions() as session:
            rows = [p for p in self._positions_by_symbol(session).values() if p.qty != 0]
        marks = self._marks(p.symbol for p in rows)
        return [VenuePosition(symbol=p.symbol, qty=p.qty, avg_price=p.avg_price, market_price=marks.get(p.symbol)) for p in rows]

    def open_orders(self) -> list[VenueOrder]:
        """Orders resting at this broker (after matching them against the current quotes), oldest first."""
        self._prepare()
        with self._sessions() as session:
            return [_order_view(row) for row in self._resting(session)]

    def submit(self, request: OrderRequest) -> VenueOrder:
        """Record, guard and fill (or rest, or reject) one order; idempotent on ``client_order_id``."""
        check_order_request(request)
        self._ensure_account()
        try:
            outcome = self._submit_locked(request)
        except IntegrityError:
            # Another writer that does not take our lock (the orders path, another broker) inserted this id first.
            known = self._find(request.client_order_id)
            if known is None:
                raise
            if not self._claimable(known):
                return self._known_view(known, request)
            outcome = self._submit_locked(request)
        self._publish(outcome)
        if outcome.blocked is not None:
            raise outcome.blocked
        if outcome.order is None:  # pragma: no cover - _submit_locked always sets one
            raise VenueError(f"order {request.client_order_id} left no record")
        return outcome.order

    def cancel_all(self) -> list[str]:
        """Cancel every resting order at once (no matching first); returns their broker ids."""
        self._ensure_account()
        outcome = _Outcome()
        with self._sessions() as session, session.begin():
            account, now = self._lock(session)
            self._roll_day(session, account, now, outcome)
            outcome.ids = self._cancel_resting(session, now, reason="cancel_all")
        self._publish(outcome)
        if outcome.ids:
            _log.info("orders cancelled", broker=self.name, count=len(outcome.ids))
        return outcome.ids

    def close_all(self) -> list[VenueOrder]:
        """Cancel resting orders, then a market order against every position for exactly its size (not guarded)."""
        self._ensure_account()
        outcome = _Outcome()
        with self._sessions() as session, session.begin():
            account, now = self._lock(session)
            self._roll_day(session, account, now, outcome)
            self._cancel_resting(session, now, reason="close_all")
            positions = self._positions_by_symbol(session)
            held = [p for p in positions.values() if p.qty != 0]
            quotes = self._quotes_or_none(p.symbol for p in held)
            now_ns = _ns(now)
            for position in held:
                request = OrderRequest(
                    client_order_id=f"close-{uuid.uuid4().hex}",
                    symbol=position.symbol,
                    side="sell" if position.qty > 0 else "buy",
                    qty=abs(position.qty),
                    requested_by="close_all",
                )
                quote = quotes.get(position.symbol)
                problem = quote_problem(position.symbol, quote, now_ns=now_ns, max_age_s=self._max_age_s)
                row = self._record(session, request, None, now, refused=problem, check="quote")
                price = self._price(request.side, "market", None, quote, now_ns)
                if price is not None:
                    self._fill(session, account, positions, row, price, now)
                outcome.orders.append(_order_view(row))
            if held:
                outcome.book = self._book_of(account, positions)
        self._publish(outcome)
        _log.info(
            "positions closed", broker=self.name, orders=len(outcome.orders), filled=sum(o.status == "filled" for o in outcome.orders)
        )
        return outcome.orders

    def publish_book(self) -> None:
        """Publish the ledger's book now (after a Redis restart, say); :func:`~omni_tasks.contracts.portfolio.refresh_book` calls it."""
        self._ensure_account()
        outcome = _Outcome()
        with self._sessions() as session, session.begin():
            account, now = self._lock(session)
            self._roll_day(session, account, now, outcome)
            outcome.book = self._book_of(account, self._positions_by_symbol(session))
        self._publish(outcome)

    # ---- matching --------------------------------------------------------------------------------

    def match_resting(self) -> list[VenueOrder]:
        """Fill every resting order a fresh quote now crosses (the guard permitting); returns those filled."""
        self._ensure_account()
        with self._sessions() as session:
            resting = [(row.symbol, row.side, row.order_type, row.limit_price) for row in self._resting(session)]
        if not resting:
            return []
        quotes = self._quotes_or_none(symbol for symbol, *_ in resting)
        now_ns = _ns(self._now())
        if all(self._price(side, kind, limit, quotes.get(symbol), now_ns) is None for symbol, side, kind, limit in resting):
            return []
        outcome = _Outcome()
        with self._sessions() as session, session.begin():
            account, now = self._lock(session)
            self._roll_day(session, account, now, outcome)
            positions = self._positions_by_symbol(session)
            outcome.orders = self._match(session, account, positions, self._resting(session), quotes, now)
            if outcome.orders or outcome.book is not None:
                outcome.book = self._book_of(account, positions)
        self._publish(outcome)
        return outcome.orders

    def _price(self, side: str, order_type: str, limit: Decimal | None, quote: LatestQuote | None, now_ns: int) -> Decimal | None:
        """The fill price against a fresh, sane quote; None without one or when a limit is not marketable."""
        if quote is None or quote_problem(quote.symbol, quote, now_ns=now_ns, max_age_s=self._max_age_s) is not None:
            return None
        return fill_price(_side(side), order_type, limit, quote)

    def _match(
        self,
        session: Session,
        account: BrokerAccount,
        positions: dict[str, Position],
        resting: Sequence[Order],
        quotes: Mapping[str, LatestQuote],
        now: datetime,
    ) -> list[VenueOrder]:
        filled: list[VenueOrder] = []
        now_ns = _ns(now)
        for row in resting:
            price = self._price(row.side, row.order_type, row.limit_price, quotes.get(row.symbol), now_ns)
            if price is None:
                continue
            try:
                self._run_guard(_request_of(row), session)
            except OrderBlocked as blocked:
                _log.info("resting order held by the guard", broker=self.name, client_order_id=row.client_order_id, reason=str(blocked))
                continue
            self._fill(session, account, positions, row, price, now)
            filled.append(_order_view(row))
        return filled

    # ---- the submit transaction ------------------------------------------------------------------

    def _submit_locked(self, request: OrderRequest) -> _Outcome:
        """One transaction under the account lock: dedupe, match resting orders, check the quote, guard, record, fill."""
        outcome = _Outcome()
        with self._sessions() as session, session.begin():
            account, now = self._lock(session)
            self._roll_day(session, account, now, outcome)
            rows = (
                session.execute(
                    select(Order)
                    .where(or_(Order.client_order_id == request.client_order_id, self._resting_clause()))
                    .order_by(Order.id)
                    # Row locks: the order path's expiry (UPDATE ... WHERE status = 'pending') waits for this
                    # transaction and then finds the row decided, so an order is never both expired and filled.
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
                .scalars()
                .all()
            )
            known = next((row for row in rows if row.client_order_id == request.client_order_id), None)
            if known is not None and not self._claimable(known):
                outcome.order = self._known_view(known, request)
                return outcome
            if known is not None:
                self._check_same(known, request)
            resting = [row for row in rows if row.client_order_id != request.client_order_id]
            positions = self._positions_by_symbol(session)
            quotes = self._quotes({request.symbol} | {row.symbol for row in resting})
            matched = self._match(session, account, positions, resting, quotes, now) if resting else []
            quote = quotes.get(request.symbol)
            problem = quote_problem(request.symbol, quote, now_ns=_ns(now), max_age_s=self._max_age_s)
            if problem is None:
                try:
                    self._run_guard(request, session)
                except OrderBlocked as blocked:
                    outcome.blocked = blocked
            refused, check = None, ""
            if problem is not None:
                refused, check = problem, "quote"
            elif outcome.blocked is not None:
                refused, check = str(outcome.blocked), "guard"
            row = self._record(session, request, known, now, refused=refused, check=check)
            price = (
                fill_price(request.side, request.order_type, request.limit_price, quote) if quote is not None and refused is None else None
            )
            if price is not None:
                self._fill(session, account, positions, row, price, now)
            outcome.order = _order_view(row)
            if matched or price is not None or outcome.book is not None:
                outcome.book = self._book_of(account, positions)
        if outcome.order.status == "rejected":
            return outcome  # _record logged the rejection with its reason
        _log.info(
            "order submitted",
            broker=self.name,
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            qty=decimal_text(request.qty),
            status=outcome.order.status,
            price=None if outcome.order.avg_fill_price is None else decimal_text(outcome.order.avg_fill_price),
        )
        return outcome

    def _run_guard(self, request: OrderRequest, session: Session) -> None:
        """Call the guard; any failure of the guard itself counts as a refusal (fail closed).

        A guard with ``in_session`` (the kill switch's) reads the trading state's row in the ledger's open transaction.
        """
        if self._guard is None:
            return
        in_session = getattr(self._guard, "in_session", None)
        try:
            if in_session is not None:
                in_session(request, session)
            else:
                self._guard(request)
        except OrderBlocked:
            raise
        except Exception as exc:  # a guard that cannot decide must block, whatever broke
            raise OrderBlocked(f"the order guard failed ({type(exc).__name__}: {exc}): blocked") from exc

    def _record(
        self, session: Session, request: OrderRequest, claimed: Order | None, now: datetime, *, refused: str | None, check: str
    ) -> Order:
        """The order as the broker took it: ``new`` (at the broker), or ``rejected`` with the reason and the check that refused it.

        A new row is inserted in its final state by the caller's flush (one INSERT); a claimed pending row is updated.
        """
        status = "new" if refused is None else "rejected"
        broker_order_id = f"{self.name}-{uuid.uuid4().hex}"
        if claimed is None:
            row = Order(
                client_order_id=request.client_order_id,
                broker=self.name,
                broker_order_id=broker_order_id,
                symbol=request.symbol,
                side=request.side,
                qty=request.qty,
                order_type=request.order_type,
                limit_price=request.limit_price,
                status=status,
                filled_qty=ZERO,
                avg_fill_price=None,
                requested_by=(request.requested_by or "unknown")[:100],
                reason=refused,
                created_at=now,
                submitted_at=now if refused is None else None,
                updated_at=now,
            )
            session.add(row)
        else:
            row = claimed
            row.broker_order_id, row.status, row.reason, row.updated_at = broker_order_id, status, refused, now
            row.submitted_at = now if refused is None else None
        if refused is None:
            session.add(_event(now, row, "submitted", broker=self.name, broker_order_id=broker_order_id))
        else:
            session.add(_event(now, row, "rejected", check=check, reason=refused, broker=self.name))
            _log.warning(
                "order rejected", broker=self.name, client_order_id=row.client_order_id, symbol=row.symbol, check=check, reason=refused
            )
        return row

    def _fill(
        self, session: Session, account: BrokerAccount, positions: dict[str, Position], row: Order, price: Decimal, now: datetime
    ) -> None:
        """Fill the whole remaining quantity of ``row`` at ``price``: the order, a fill, the position, cash, an event."""
        qty = row.qty - row.filled_qty
        side = _side(row.side)
        held = positions.get(row.symbol)
        before = PositionState(held.qty, held.avg_price, held.realized_pnl) if held is not None else PositionState()
        after = apply_fill(before, qty if side == "buy" else -qty, price)
        if held is None:
            held = Position(
                broker=self.name,
                symbol=row.symbol,
                qty=after.qty,
                avg_price=after.avg_price,
                realized_pnl=after.realized_pnl,
                updated_at=now,
            )
            session.add(held)
            positions[row.symbol] = held
        else:
            held.qty, held.avg_price, held.realized_pnl, held.updated_at = after.qty, after.avg_price, after.realized_pnl, now
        account.cash = cash_after(account.cash, side, qty, price)
        account.updated_at = now
        row.avg_fill_price, row.filled_qty, row.status, row.updated_at = price, row.qty, "filled", now
        if row.id is None:
            session.flush()  # a new order goes in once, already filled; its id is the fill's order_id
        session.add(Fill(order_id=row.id, broker=self.name, symbol=row.symbol, side=side, qty=qty, price=price, ts=now))
        session.add(_event(now, row, "filled", qty=decimal_text(qty), price=decimal_text(price), position_after=decimal_text(after.qty)))

    def _cancel_resting(self, session: Session, now: datetime, *, reason: str, status: str = "cancelled") -> list[str]:
        ids: list[str] = []
        for row in self._resting(session):
            row.status, row.reason, row.updated_at = status, reason, now
            session.add(_event(now, row, status, reason=reason, broker=self.name, broker_order_id=row.broker_order_id or ""))
            ids.append(row.broker_order_id or "")
        return ids

    # ---- idempotency -----------------------------------------------------------------------------

    def _find(self, client_order_id: str) -> Order | None:
        with self._sessions() as session:
            return session.execute(select(Order).where(Order.client_order_id == client_order_id)).scalar_one_or_none()

    def _claimable(self, row: Order) -> bool:
        """A row the orders path recorded before sending (pending, never at a broker) is this submit's to take over."""
        return row.status == "pending" and row.broker_order_id is None and row.broker == self.name

    def _known_view(self, row: Order, request: OrderRequest) -> VenueOrder:
        """The recorded order for a resubmit (never a second one), after checking it is the same order."""
        if row.broker != self.name:
            raise VenueError(f"client_order_id {row.client_order_id!r} is an order of broker {row.broker!r}, not {self.name!r}")
        self._check_same(row, request)
        _log.info("order resubmitted: the recorded one returned", broker=self.name, client_order_id=row.client_order_id, status=row.status)
        return _order_view(row)

    @staticmethod
    def _check_same(row: Order, request: OrderRequest) -> None:
        recorded = (row.symbol, row.side, row.qty, row.order_type, row.limit_price)
        asked = (request.symbol, request.side, request.qty, request.order_type, request.limit_price)
        if recorded != asked:
            raise InvalidOrder(
                f"client_order_id {row.client_order_id!r} was already used for {row.side} {_plain(row.qty)} {row.symbol} {row.order_type}"
                f"{'' if row.limit_price is None else f' @ {_plain(row.limit_price)}'}; a different order needs a new id"
            )

    # ---- the account, the day, the lock ----------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the broker's clock returned a naive datetime: it must be timezone-aware")
        return now

    def _day(self, now: datetime) -> date:
        return now.astimezone(self._tz).date()

    def _ensure_account(self) -> None:
        """Create this broker's account row (starting cash) if it does not exist; safe to race."""
        if self._account_ready:
            return
        now = self._now()
        values = {
            "broker": self.name,
            "cash": self._starting_cash,
            "day": self._day(now),
            "day_start_equity": self._starting_cash,
            "peak_equity": self._starting_cash,
            "updated_at": now,
        }
        with self._sessions() as session, session.begin():
            insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
            session.execute(insert(BrokerAccount).values(**values).on_conflict_do_nothing(index_elements=["broker"]))
        self._account_ready = True

    def _lock(self, session: Session) -> tuple[BrokerAccount, datetime]:
        """Lock this broker's account row for the transaction (the ledger's mutex); returns it fresh, and the time once held.

        Taking the time after the lock keeps ``updated_at`` (the book's ``updated_ns``) in commit order across processes.
        """
        query = select(BrokerAccount).where(BrokerAccount.broker == self.name).execution_options(populate_existing=True)
        if session.get_bind().dialect.name == "postgresql":
            return session.execute(query.with_for_update()).scalar_one(), self._now()
        # SQLite has no row locks: a write as the transaction's first statement takes the database's write lock
        # (waiting out the busy timeout), which serialises every writer the same way.
        session.execute(
            update(BrokerAccount)
            .where(BrokerAccount.broker == self.name)
            .values(broker=BrokerAccount.broker)
            .execution_options(synchronize_session=False)
        )
        return session.execute(query).scalar_one(), self._now()

    def _roll_day(self, session: Session, account: BrokerAccount, now: datetime, outcome: _Outcome) -> None:
        """On the first call of a new trading day: expire resting orders, start the day at the equity now."""
        today = self._day(now)
        if account.day >= today:
            return
        expired = self._cancel_resting(session, now, reason=f"day order expired at the end of {account.day.isoformat()}", status="expired")
        positions = self._positions_by_symbol(session)
        held = [p for p in positions.values() if p.qty != 0]
        marks = self._marks(p.symbol for p in held)
        equity = equity_at(account.cash, ((p.symbol, p.qty, p.avg_price) for p in held), marks)
        _log.info(
            "trading day rolled",
            broker=self.name,
            previous=account.day.isoformat(),
            day=today.isoformat(),
            day_start_equity=decimal_text(equity),
            expired_orders=len(expired),
            marked_by_avg_price=sorted(p.symbol for p in held if p.symbol not in marks),
        )
        account.day = today
        account.day_start_equity = equity
        account.peak_equity = max(account.peak_equity, equity)
        account.updated_at = now
        outcome.book = self._book_of(account, positions)

    def _raise_peak(self, equity: Decimal) -> Decimal:
        """Raise the stored peak to ``equity`` if it is higher (under the lock); returns the peak now stored."""
        outcome = _Outcome()
        with self._sessions() as session, session.begin():
            account, now = self._lock(session)
            if equity > account.peak_equity:
                account.peak_equity = equity
                account.updated_at = now
                outcome.book = self._book_of(account, self._positions_by_symbol(session))
            peak = account.peak_equity
        self._publish(outcome)
        return peak

    def _prepare(self) -> None:
        """Before a read: create the account, roll the day if this is the first call of a new one, match resting orders."""
        self._ensure_account()
        now = self._now()
        with self._sessions() as session:
            day = session.execute(select(BrokerAccount.day).where(BrokerAccount.broker == self.name)).scalar_one()
        if day < self._day(now):
            outcome = _Outcome()
            with self._sessions() as session, session.begin():
                account, now = self._lock(session)
                self._roll_day(session, account, now, outcome)
            self._publish(outcome)
        self.match_resting()

    # ---- reads -----------------------------------------------------------------------------------

    def _resting_clause(self) -> Any:
        return and_(Order.broker == self.name, Order.status.in_(OPEN_STATUSES), Order.broker_order_id.is_not(None))

    def _resting(self, session: Session) -> Sequence[Order]:
        query = select(Order).where(self._resting_clause()).order_by(Order.id).execution_options(populate_existing=True)
        return session.execute(query).scalars().all()

    def _positions_by_symbol(self, session: Session) -> dict[str, Position]:
        """Every position row of this broker (flat ones too: a fill updates rather than inserts), by symbol."""
        query = select(Position).where(Position.broker == self.name).order_by(Position.symbol).execution_options(populate_existing=True)
        return {row.symbol: row for row in session.execute(query).scalars()}

    def _book_of(self, account: BrokerAccount, positions: Mapping[str, Position]) -> tuple[_AccountSnapshot, list[VenuePosition]]:
        """The book as this transaction leaves it, in plain values (published after the commit)."""
        snapshot = _AccountSnapshot(account.cash, account.day, account.day_start_equity, account.peak_equity, _ns(account.updated_at))
        return snapshot, [VenuePosition(p.symbol, p.qty, p.avg_price) for _, p in sorted(positions.items()) if p.qty != 0]

    def _quotes(self, symbols: Iterable[str]) -> dict[str, LatestQuote]:
        """The latest quotes; Redis failing is a retryable VenueError (no order is filled without a price)."""
        try:
            return read_latest(self._redis, sorted(set(symbols)))
        except (RedisError, OSError) as exc:
            raise VenueError(f"quotes unreadable from Redis ({type(exc).__name__}: {exc}): order not recorded", retryable=True) from exc

    def _quotes_or_none(self, symbols: Iterable[str]) -> dict[str, LatestQuote]:
        """The latest quotes, or none when Redis fails (then nothing fills and marks fall back to average prices)."""
        try:
            return read_latest(self._redis, sorted(set(symbols)))
        except (RedisError, OSError) as exc:
            _log.warning("quotes unreadable from Redis", broker=self.name, error=f"{type(exc).__name__}: {exc}")
            return {}

    def _marks(self, symbols: Iterable[str]) -> dict[str, Decimal]:
        """Mids of the fresh, sane quotes among ``symbols``."""
        now_ns = _ns(self._now())
        quotes = self._quotes_or_none(symbols)
        return {
            symbol: quote.mid
            for symbol, quote in quotes.items()
            if quote_problem(symbol, quote, now_ns=now_ns, max_age_s=self._max_age_s) is None
        }

    def _publish(self, outcome: _Outcome) -> None:
        """Publish the book captured in the transaction (after its commit); a Redis failure is logged, the ledger stays right."""
        if outcome.book is None:
            return
        account, positions = outcome.book
        try:
            publish_book(self._redis, self.name, account, positions, updated_ns=account.updated_ns)
        except (RedisError, OSError) as exc:
            _log.warning("book not published to Redis", broker=self.name, error=f"{type(exc).__name__}: {exc}")


def _plain(value: Decimal) -> str:
    """10.00000000 as 10, 187.50000000 as 187.5 (for messages)."""
    return decimal_text(value.normalize())


def _side(text: str) -> Side:
    return "buy" if text == "buy" else "sell"


def _event(now: datetime, row: Order, event: str, *, check: str | None = None, reason: str | None = None, **detail: str) -> OrderEvent:
    return OrderEvent(ts=now, client_order_id=row.client_order_id, event=event, check=check, reason=reason, detail=detail)


def _ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (exact to the microsecond)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _order_view(row: Order) -> VenueOrder:
    return VenueOrder(
        client_order_id=row.client_order_id,
        broker_order_id=row.broker_order_id or "",
        symbol=row.symbol,
        side="buy" if row.side == "buy" else "sell",
        qty=row.qty,
        order_type="limit" if row.order_type == "limit" else "market",
        limit_price=row.limit_price,
        status=row.status,
        filled_qty=row.filled_qty,
        avg_fill_price=row.avg_fill_price,
        submitted_at=row.submitted_at,
        reason=row.reason,
    )


def _request_of(row: Order) -> OrderRequest:
    return OrderRequest(
        client_order_id=row.client_order_id,
        symbol=row.symbol,
        side="buy" if row.side == "buy" else "sell",
        qty=row.qty,
        order_type="limit" if row.order_type == "limit" else "market",
        limit_price=row.limit_price,
        requested_by=row.requested_by,
    )
