"""The simulated venue, the embedded default: fills against the latest quotes in Redis, ledger in the database.

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

The rooms: :mod:`omni_tasks.trading.fills` (the fill and position arithmetic, pure),
:mod:`omni_tasks.trading.ledger` (the rows in the database, changed under the account
lock, and the book published after each commit); this class composes them with the
quotes and the guard.

Concurrency: every change runs in one transaction that first locks this venue's
account row (:meth:`~omni_tasks.trading.ledger.SimulatedLedger.lock`), so a
``client_order_id`` seen under the lock is never submitted twice. The guard runs
inside that transaction, right before the order is accepted, so a kill switch that
engaged before the guard read it stops the order, and ``cancel_all`` (which takes the
same lock) sees every order accepted before it. The order's own row is locked as it is
read, so an expiry (:mod:`omni_tasks.trading.expiry`) and a fill never both win: only a
row still ``pending`` is taken over.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.portfolio import decimal_text
from omni_tasks.contracts.quotes import LatestQuote, parse_quote, quote_key, read_latest
from omni_tasks.contracts.venue import (
    Guard,
    OrderBlocked,
    OrderRequest,
    VenueAccountView,
    VenueError,
    VenueOrder,
    VenuePosition,
    check_order_request,
)
from omni_tasks.core.redis_batch import RedisBatch
from omni_tasks.safety.state_rule import Copy
from omni_tasks.safety.state_store import redis_copy_of
from omni_tasks.storage.direct import Direct
from omni_tasks.storage.models import BrokerAccount, Order, Position
from omni_tasks.trading.fills import ZERO, PositionState, apply_fill, cash_after, equity_at, fill_price, ns_of, q8, quote_problem, side_of
from omni_tasks.trading.lean_ledger import LeanLedger, LeanWrite, LockedRead
from omni_tasks.trading.ledger import (
    AccountSnapshot,
    Outcome,
    SimulatedLedger,
    check_same,
    order_view,
    request_of,
)

_log = structlog.get_logger("omni.trading.simulated")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SimulatedVenue:
    """The built-in venue (see the module docstring). Thread-safe; one instance per process is enough."""

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
            raise ValueError(f"venue name {name!r}: 1-20 characters (the ledger's broker column)")
        self.name = name
        self.keeps_ledger = True
        #: The account's cash when its row is first created, and the oldest quote filled on (seconds).
        self.starting_cash = q8(starting_cash)
        self.quote_max_age_s = float(quote_max_age_s)
        self._redis = redis
        self._guard = guard
        self._ledger = SimulatedLedger(
            sessions, redis, name=name, starting_cash=self.starting_cash, clock=clock, exchange_tz=exchange_tz, marks=self._marks
        )
        #: PostgreSQL: the common case's transaction on a DB-API cursor (None on SQLite).
        self._lean = LeanLedger.for_sessions(sessions, name=name)

    def __repr__(self) -> str:
        return f"SimulatedVenue(name={self.name!r}, quote_max_age_s={self.quote_max_age_s:g})"

    # ---- the protocol ----------------------------------------------------------------------------

    def account(self) -> VenueAccountView:
        """Cash, equity (marks: fresh quotes' mids, else average prices; ``extra`` says which) and the day's marks."""
        self._prepare()
        row, every = self._ledger.account_and_positions()
        positions = [p for p in every if p.qty != 0]
        marks = self._marks(p.symbol for p in positions)
        equity = equity_at(row.cash, ((p.symbol, p.qty, p.avg_price) for p in positions), marks)
        peak = row.peak_equity
        if equity > peak:
            peak = self._ledger.raise_peak(equity)
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
        with self._ledger.sessions() as session:
            rows = [p for p in self._ledger.positions_by_symbol(session).values() if p.qty != 0]
        marks = self._marks(p.symbol for p in rows)
        return [VenuePosition(symbol=p.symbol, qty=p.qty, avg_price=p.avg_price, market_price=marks.get(p.symbol)) for p in rows]

    def open_orders(self) -> list[VenueOrder]:
        """Orders resting at this venue (after matching them against the current quotes), oldest first.

        One read when no quote crosses a resting order (the common case, and always once the kill switch has
        engaged: its guard fills nothing); a second, after the match, only when one does.
        """
        self._ledger.ensure_account()
        self._roll_day_if_new()
        with self._ledger.sessions() as session:
            rows = self._ledger.resting(session)
            views = [order_view(row) for row in rows]
            terms = [(row.symbol, row.side, row.order_type, row.limit_price) for row in rows]
        if not self._marketable(terms):
            return views
        self.match_resting()
        with self._ledger.sessions() as session:
            return [order_view(row) for row in self._ledger.resting(session)]

    def submit(self, request: OrderRequest) -> VenueOrder:
        """Record, guard and fill (or rest, or reject) one order; idempotent on ``client_order_id``."""
        return self.submit_batched(request, None)

    def submit_batched(self, request: OrderRequest, batch: RedisBatch | None) -> VenueOrder:
        """:meth:`submit`, with the book's publication after the commit queued in ``batch`` (None: published at once)."""
        check_order_request(request)
        self._ledger.ensure_account()
        try:
            outcome = self._submit_locked(request)
        except IntegrityError:
            # Another writer that does not take our lock (the orders path, another venue) inserted this id first.
            known = self._ledger.find(request.client_order_id)
            if known is None:
                raise
            if not self._ledger.claimable(known):
                return self._ledger.known_view(known, request)
            outcome = self._submit_locked(request)
        self._ledger.publish(outcome, batch)
        if outcome.blocked is not None:
            raise outcome.blocked
        if outcome.order is None:  # pragma: no cover - _submit_locked always sets one
            raise VenueError(f"order {request.client_order_id} left no record")
        return outcome.order

    def cancel_all(self) -> list[str]:
        """Cancel every resting order at once (no matching first); returns their venue order ids."""
        return [order.broker_order_id for order in self.cancel_open_orders()]

    def cancel_open_orders(self) -> list[VenueOrder]:
        """Cancel every resting order at once (no matching first); returns them as they rested (status before the cancel), oldest first.

        On PostgreSQL, once the day has rolled, two statements under the account lock
        (:meth:`~omni_tasks.trading.ledger.SimulatedLedger.cancel_resting_lean`); otherwise the ORM path,
        which rolls the day first (expiring yesterday's orders, which are then not cancelled).
        """
        self._ledger.ensure_account()
        outcome = Outcome()
        with self._ledger.sessions() as session, session.begin():
            cancelled = self._ledger.cancel_resting_lean(session, reason="cancel_all") if self._lean is not None else None
            if cancelled is None:
                account, now = self._ledger.lock(session)
                self._ledger.roll_day(session, account, now, outcome)
                cancelled = [order_view(row) for row in self._ledger.resting(session)]
                self._ledger.cancel_resting(session, now, reason="cancel_all")
        self._ledger.publish(outcome)
        if cancelled:
            _log.info("orders cancelled", broker=self.name, count=len(cancelled))
        return cancelled

    def warm_up(self) -> None:
        """Create the account row and plan the cancel's statements, so the kill switch's first cancel is as fast as the next."""
        self._ledger.ensure_account()
        self._ledger.plan_cancel()

    def close_all(self) -> list[VenueOrder]:
        """Cancel resting orders, then a market order against every position for exactly its size (not guarded)."""
        self._ledger.ensure_account()
        outcome = Outcome()
        with self._ledger.sessions() as session, session.begin():
            account, now = self._ledger.lock(session)
            self._ledger.roll_day(session, account, now, outcome)
            self._ledger.cancel_resting(session, now, reason="close_all")
            positions = self._ledger.positions_by_symbol(session)
            held = [p for p in positions.values() if p.qty != 0]
            quotes = self._quotes_or_none(p.symbol for p in held)
            now_ns = ns_of(now)
            for position in held:
                request = OrderRequest(
                    client_order_id=f"close-{uuid.uuid4().hex}",
                    symbol=position.symbol,
                    side="sell" if position.qty > 0 else "buy",
                    qty=abs(position.qty),
                    requested_by="close_all",
                )
                quote = quotes.get(position.symbol)
                problem = quote_problem(position.symbol, quote, now_ns=now_ns, max_age_s=self.quote_max_age_s)
                row = self._ledger.record(session, request, None, now, refused=problem, check="quote")
                price = self._price(request.side, "market", None, quote, now_ns)
                if price is not None:
                    self._ledger.fill(session, account, positions, row, price, now)
                outcome.orders.append(order_view(row))
            if held:
                outcome.book = self._ledger.book_of(account, positions)
        self._ledger.publish(outcome)
        _log.info(
            "positions closed", broker=self.name, orders=len(outcome.orders), filled=sum(o.status == "filled" for o in outcome.orders)
        )
        return outcome.orders

    def publish_book(self) -> None:
        """Publish the ledger's book now (after a Redis restart, say); :func:`~omni_tasks.contracts.portfolio.refresh_book` calls it."""
        self._ledger.ensure_account()
        outcome = Outcome()
        with self._ledger.sessions() as session, session.begin():
            account, now = self._ledger.lock(session)
            self._ledger.roll_day(session, account, now, outcome)
            outcome.book = self._ledger.book_of(account, self._ledger.positions_by_symbol(session))
        self._ledger.publish(outcome)

    # ---- matching --------------------------------------------------------------------------------

    def match_resting(self) -> list[VenueOrder]:
        """Fill every resting order a fresh quote now crosses (the guard permitting); returns those filled."""
        self._ledger.ensure_account()
        with self._ledger.sessions() as session:
            resting = [(row.symbol, row.side, row.order_type, row.limit_price) for row in self._ledger.resting(session)]
        quotes = self._marketable(resting)
        if not quotes:
            return []
        outcome = Outcome()
        with self._ledger.sessions() as session, session.begin():
            account, now = self._ledger.lock(session)
            self._ledger.roll_day(session, account, now, outcome)
            positions = self._ledger.positions_by_symbol(session)
            outcome.orders = self._match(session, account, positions, self._ledger.resting(session), quotes, now)
            if outcome.orders or outcome.book is not None:
                outcome.book = self._ledger.book_of(account, positions)
        self._ledger.publish(outcome)
        return outcome.orders

    def _marketable(self, resting: Sequence[tuple[str, str, str, Decimal | None]]) -> dict[str, LatestQuote]:
        """The latest quotes when one of these resting orders (symbol, side, type, limit) would fill now; empty otherwise."""
        if not resting:
            return {}
        quotes = self._quotes_or_none(symbol for symbol, *_ in resting)
        now_ns = ns_of(self._ledger.now())
        if all(self._price(side, kind, limit, quotes.get(symbol), now_ns) is None for symbol, side, kind, limit in resting):
            return {}
        return quotes

    def _price(self, side: str, order_type: str, limit: Decimal | None, quote: LatestQuote | None, now_ns: int) -> Decimal | None:
        """The fill price against a fresh, sane quote; None without one or when a limit is not marketable."""
        if quote is None or quote_problem(quote.symbol, quote, now_ns=now_ns, max_age_s=self.quote_max_age_s) is not None:
            return None
        return fill_price(side_of(side), order_type, limit, quote)

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
        now_ns = ns_of(now)
        for row in resting:
            price = self._price(row.side, row.order_type, row.limit_price, quotes.get(row.symbol), now_ns)
            if price is None:
                continue
            try:
                self._run_guard(request_of(row), session)
            except OrderBlocked as blocked:
                _log.info("resting order held by the guard", broker=self.name, client_order_id=row.client_order_id, reason=str(blocked))
                continue
            self._ledger.fill(session, account, positions, row, price, now)
            filled.append(order_view(row))
        return filled

    # ---- the submit transaction ------------------------------------------------------------------

    def _submit_locked(self, request: OrderRequest) -> Outcome:
        """One transaction under the account lock: dedupe, match resting orders, check the quote, guard, record, fill.

        On PostgreSQL the common case (the day already rolled, no other order resting here, the order new or
        still pending) takes the lean path (:meth:`_submit_lean`, :mod:`omni_tasks.trading.lean_ledger`): the same
        steps in two round trips; any other case is rolled back there and taken by the ORM path.
        """
        outcome = Outcome()
        lean = self._lean
        if lean is not None and (self._guard is None or hasattr(self._guard, "with_copies")):
            with lean.transaction() as db:
                locked = lean.lock_and_read(db, request.client_order_id)
                now = self._ledger.now()  # taken once the lock is held: updated_at stays in commit order across processes
                known = locked.known
                if locked.account.day >= self._ledger.day(now) and not locked.resting and (known is None or self._ledger.claimable(known)):
                    self._submit_lean(lean, db, request, now, locked, outcome)
        if outcome.order is None:
            with self._ledger.sessions() as session, session.begin():
                account, now = self._ledger.lock(session)
                self._submit_orm(session, request, account, now, outcome)
        assert outcome.order is not None  # both paths set it
        if outcome.order.status == "rejected":
            return outcome  # the rejection was logged with its reason
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

    def _submit_lean(
        self, lean: LeanLedger, db: Direct, request: OrderRequest, now: datetime, locked: LockedRead, outcome: Outcome
    ) -> None:
        """The lean path: the rows read under the lock (round trip 1), the quote and Redis's copy of the trading state in
        one pipeline, the guard on both copies, the outcome written and committed in one statement (round trip 2)."""
        known = locked.known
        account = locked.account
        if known is not None:
            check_same(known, request)
        guard_key = getattr(self._guard, "key", None) if self._guard is not None else None
        quote, cached = self._quote_and_state(request.symbol, guard_key)
        problem = quote_problem(request.symbol, quote, now_ns=ns_of(now), max_age_s=self.quote_max_age_s)
        if problem is None:
            try:
                self._run_guard(request, None, cached=cached, durable=locked.state)
            except OrderBlocked as blocked:
                outcome.blocked = blocked
        refused, check = None, ""
        if problem is not None:
            refused, check = problem, "quote"
        elif outcome.blocked is not None:
            refused, check = str(outcome.blocked), "guard"
        broker_order_id = f"{self.name}-{uuid.uuid4().hex}"
        price = fill_price(request.side, request.order_type, request.limit_price, quote) if quote is not None and refused is None else None
        events: list[tuple[str, str | None, str | None, dict[str, str]]]
        if refused is None:
            events = [("submitted", None, None, {"broker": self.name, "broker_order_id": broker_order_id})]
            status = "new" if price is None else "filled"
        else:
            events = [("rejected", check, refused, {"broker": self.name})]
            status = "rejected"
            _log.warning(
                "order rejected",
                broker=self.name,
                client_order_id=request.client_order_id,
                symbol=request.symbol,
                check=check,
                reason=refused,
            )
        fill: tuple[Decimal, PositionState, Decimal] | None = None
        positions = dict(locked.positions)
        if price is not None:
            side = side_of(request.side)
            after = apply_fill(positions.get(request.symbol, PositionState()), request.qty if side == "buy" else -request.qty, price)
            positions[request.symbol] = after
            fill = (price, after, cash_after(account.cash, side, request.qty, price))
            events.append(
                (
                    "filled",
                    None,
                    None,
                    {"qty": decimal_text(request.qty), "price": decimal_text(price), "position_after": decimal_text(after.qty)},
                )
            )
        lean.write_and_commit(
            db,
            LeanWrite(
                request=request, known_id=None if known is None else known.id, broker_order_id=broker_order_id, status=status,
                reason=refused, now=now, events=events, fill=fill,
            ),
        )  # fmt: skip
        outcome.order = VenueOrder(
            client_order_id=request.client_order_id, broker_order_id=broker_order_id, symbol=request.symbol, side=request.side,
            qty=request.qty, order_type=request.order_type, limit_price=request.limit_price, status=status,
            filled_qty=request.qty if fill is not None else ZERO, avg_fill_price=price if fill is not None else None,
            submitted_at=now if refused is None else None, reason=refused,
        )  # fmt: skip
        if fill is not None:
            snapshot = AccountSnapshot(fill[2], account.day, account.day_start_equity, account.peak_equity, ns_of(now))
            held = [VenuePosition(symbol, p.qty, p.avg_price) for symbol, p in sorted(positions.items()) if p.qty != 0]
            outcome.book = (snapshot, held)

    def _quote_and_state(self, symbol: str, state_key: str | None) -> tuple[LatestQuote | None, Copy | None]:
        """The latest quote of ``symbol`` and (``state_key``) Redis's copy of the trading state: one pipelined round trip.

        Redis failing is a retryable VenueError (no order is filled without a price), as in :meth:`_quotes`.
        """
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(quote_key(symbol))
            if state_key is not None:
                pipe.get(state_key)
            replies = pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise VenueError(f"quotes unreadable from Redis ({type(exc).__name__}: {exc}): order not recorded", retryable=True) from exc
        if isinstance(replies[0], Exception):
            raise VenueError(
                f"quotes unreadable from Redis ({type(replies[0]).__name__}: {replies[0]}): order not recorded", retryable=True
            )
        cached = redis_copy_of(replies[1]) if state_key is not None else None
        return parse_quote(symbol, replies[0]), cached

    def _submit_orm(self, session: Session, request: OrderRequest, account: BrokerAccount, now: datetime, outcome: Outcome) -> None:
        """Every case, with the ORM: a new day to roll, resting orders to match first, a row decided already."""
        self._ledger.roll_day(session, account, now, outcome)
        rows = (
            session.execute(
                select(Order)
                .where(or_(Order.client_order_id == request.client_order_id, self._ledger.resting_clause()))
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
        if known is not None and not self._ledger.claimable(known):
            outcome.order = self._ledger.known_view(known, request)
            return
        if known is not None:
            check_same(known, request)
        resting = [row for row in rows if row.client_order_id != request.client_order_id]
        positions = self._ledger.positions_by_symbol(session)
        quotes = self._quotes({request.symbol} | {row.symbol for row in resting})
        matched = self._match(session, account, positions, resting, quotes, now) if resting else []
        quote = quotes.get(request.symbol)
        problem = quote_problem(request.symbol, quote, now_ns=ns_of(now), max_age_s=self.quote_max_age_s)
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
        row = self._ledger.record(session, request, known, now, refused=refused, check=check)
        price = fill_price(request.side, request.order_type, request.limit_price, quote) if quote is not None and refused is None else None
        if price is not None:
            self._ledger.fill(session, account, positions, row, price, now)
        outcome.order = order_view(row)
        if matched or price is not None or outcome.book is not None:
            outcome.book = self._ledger.book_of(account, positions)

    def _run_guard(
        self, request: OrderRequest, session: Session | None, *, cached: Copy | None = None, durable: Copy | None = None
    ) -> None:
        """Call the guard; any failure of the guard itself counts as a refusal (fail closed).

        A guard with ``in_session`` (the kill switch's) reads the trading state's row in the ledger's open transaction;
        given both copies already read in this transaction (the lean path), its ``with_copies`` decides on them.
        """
        if self._guard is None:
            return
        in_session = getattr(self._guard, "in_session", None)
        with_copies = getattr(self._guard, "with_copies", None)
        try:
            if with_copies is not None and cached is not None and durable is not None:
                with_copies(request, cached, durable)
            elif in_session is not None and session is not None:
                in_session(request, session)
            else:
                self._guard(request)
        except OrderBlocked:
            raise
        except Exception as exc:  # a guard that cannot decide must block, whatever broke
            raise OrderBlocked(f"the order guard failed ({type(exc).__name__}: {exc}): blocked") from exc

    def _prepare(self) -> None:
        """Before a read: create the account, roll the day if this is the first call of a new one, match resting orders."""
        self._ledger.ensure_account()
        self._roll_day_if_new()
        self.match_resting()

    def _roll_day_if_new(self) -> None:
        """Roll the day when this is the first call of a new one (day orders expire, the day's figures start afresh)."""
        if self._ledger.stored_day() < self._ledger.day(self._ledger.now()):
            outcome = Outcome()
            with self._ledger.sessions() as session, session.begin():
                account, now = self._ledger.lock(session)
                self._ledger.roll_day(session, account, now, outcome)
            self._ledger.publish(outcome)

    # ---- quotes --------------------------------------------------------------------------------

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
        now_ns = ns_of(self._ledger.now())
        quotes = self._quotes_or_none(symbols)
        return {
            symbol: quote.mid
            for symbol, quote in quotes.items()
            if quote_problem(symbol, quote, now_ns=now_ns, max_age_s=self.quote_max_age_s) is None
        }
