"""The order submission flow: record, read the desk, run the pre-trade checks, send or deny, record.

    requested   an ``Order`` row (status ``pending``, with its deadline ``expires_at``) and an
                ``OrderEvent`` "requested", with today's trade count, in one transaction; the CLI
                records both before it queues the order (:mod:`omni_tasks.trading.intake`), and
                then this step finds the row and adds nothing
    deadline    past the order's deadline (on arrival, or after the checks) the order is not
                sent: it is recorded ``expired`` (:mod:`omni_tasks.trading.expiry`)
    context     the trading state (the kill switch), the broker's breaker (``broker:<name>``,
                unreadable counts as open), the portfolio, the latest quotes, the symbol's
                trading status (halts, LULD band) from the stream
    checks      :func:`omni_tasks.trading.checks.run_checks`; first denial wins
    denied      the row becomes ``denied`` with the check and reason, an ``OrderEvent``
                "denied": a recorded outcome, not an exception
    sent        ``broker.submit`` inside the broker breaker; the broker was built with the
                kill switch's guard, which checks once more right before the order leaves;
                the row and the events say ``submitted`` / ``filled`` / ``rejected``

Idempotent on ``client_order_id``: a second delivery of a decided order returns
what was decided; one that died before the broker accepted it (row still
``pending``) runs the checks again and lets the broker take the row over (a
broker resubmit with the same id never makes a second order). A broker takes a
row only while it is ``pending``: the simulated broker under a row lock in its
ledger transaction, any other broker after this path claimed the row (set
``submitted_at`` where still pending). An order expired in the meantime is not sent.

Where the breakers are:

* ``broker:<name>`` wraps every broker call of the order path (the portfolio read
  when the broker must be asked, and ``submit``). A denial by a later check gives
  back a half-open trial slot unused. Only the broker failing (unreachable, 5xx,
  retryable errors, unexpected exceptions) counts against it; a refusal (the guard,
  an invalid order, a 4xx) is the broker answering.
* ``database`` wraps each database transaction of the order path (the request
  record, the denial record, the outcome record). Read with ``fail_open=False``:
  a database breaker open or unreadable, or the database failing anywhere on the
  path (the broker's ledger included), means nothing is sent now and
  :class:`~omni_tasks.core.errors.DatabaseUnavailable` (retryable) is raised: the task
  retries with backoff until the order's deadline.

The portfolio comes from the book the broker publishes in Redis after every
change (:mod:`omni_tasks.contracts.portfolio`) when that broker publishes on every change
(the simulated broker) and the book is of today; otherwise (no book, another
broker's, yesterday's: the broker rolls the day when asked) from
``broker.account()`` and ``broker.positions()``.

Latency: the whole flow is timed; over the 10 ms order-submission budget counts a
violation in Prometheus and in ``omni:latency:violations:order_submission``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

import redis as redis_lib
import structlog
from sqlalchemy import func, select, text, update
from sqlalchemy import insert as insert_into
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.portfolio import read_book
from omni_tasks.contracts.quotes import LatestQuote, read_latest, read_trading_status
from omni_tasks.contracts.venue import (
    MONEY_PLACES,
    InvalidOrder,
    OrderBlocked,
    OrderRequest,
    Venue,
    VenueError,
    VenueOrder,
    check_order_request,
)
from omni_tasks.core import budgets, inputs
from omni_tasks.core.errors import DatabaseUnavailable, RetryableError
from omni_tasks.ops import prometheus as metrics
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.safety.killswitch import current_state
from omni_tasks.settings import RiskSettings
from omni_tasks.storage.models import Order, OrderEvent
from omni_tasks.trading.checks import BreakerReading, CheckContext, Decision, run_checks
from omni_tasks.trading.expiry import CHECK as DEADLINE_CHECK
from omni_tasks.trading.expiry import EXPIRED, expire_order, is_database_failure, updated_rows

_log = structlog.get_logger("omni.orders")

BUDGET: Final = "order_submission"
DATABASE_BREAKER: Final = "database"
ZERO: Final = Decimal(0)
#: The ledger's Numeric(24, 8) holds 16 digits before the point.
MAX_INTEGER_DIGITS: Final = 16
#: Statuses that mean the order is decided (a redelivery returns them as they are).
DECIDED: Final = frozenset({"denied", "new", "accepted", "partially_filled", "filled", "cancelled", "rejected", "expired"})


def parse_order(
    *,
    symbol: str,
    side: str,
    qty: str,
    order_type: str = "market",
    limit_price: str | None = None,
    client_order_id: str,
    requested_by: str,
) -> OrderRequest:
    """An :class:`OrderRequest` from text (the CLI's words, a task's JSON arguments); InvalidOrder names the bad field.

    ``qty`` and ``limit_price`` are plain decimal text (never floats: money is exact), parsed
    strictly by :func:`omni_tasks.core.inputs.decimal`: ASCII digits and one point, no sign,
    exponent, underscore (``Decimal("1_0")`` is 10), non-ASCII digits (``Decimal("١٠")``
    is 10), NaN or infinity.
    """

    def number(name: str, text: str) -> Decimal:
        try:
            return inputs.decimal(text, what=name, max_integer_digits=MAX_INTEGER_DIGITS, max_places=MONEY_PLACES)
        except inputs.InputError as exc:
            raise InvalidOrder(str(exc)) from None

    kind = (order_type or "").strip().lower()
    if limit_price is not None and kind == "market":
        raise InvalidOrder(f"limit_price {limit_price!r}: a market order takes no limit price (use order_type 'limit')")
    if isinstance(symbol, str) and not symbol.isascii():
        raise InvalidOrder(f"symbol {inputs.shown(symbol)} is not an upper-case ticker (1-10 of A-Z, 0-9, '.', '-')")
    request = OrderRequest(
        client_order_id=client_order_id,
        symbol=symbol.strip().upper() if isinstance(symbol, str) else symbol,
        side=(side or "").strip().lower(),  # type: ignore[arg-type]  # checked below
        qty=number("qty", qty),
        order_type=kind,  # type: ignore[arg-type]  # checked below
        limit_price=None if limit_price is None else number("limit_price", limit_price),
        requested_by=(requested_by or "unknown")[:100],
    )
    check_order_request(request)
    return request


def broker_breaker_name(broker_name: str) -> str:
    return f"broker:{broker_name}"


def order_row_values(request: OrderRequest, *, broker: str, now: datetime, deadline: datetime | None) -> dict[str, Any]:
    """The columns of a new ``orders`` row for ``request``: ``pending``, nothing filled, due by ``deadline``."""
    return {
        "client_order_id": request.client_order_id, "broker": broker, "broker_order_id": None,
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


def record_expired_message(
    sessions: sessionmaker[Session], *, broker: str, arguments: Mapping[str, Any], reason: str, now: datetime
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
    deadline = _utc(int(float(expires_at) * 1e9)) if isinstance(expires_at, int | float) else now
    values = None if request is None else order_row_values(request, broker=broker, now=now, deadline=deadline)
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
    #: Milliseconds inside ``broker.submit`` (None: the broker was not called); the rest of ``elapsed_ms`` is the orders path's own.
    broker_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Portfolio:
    """The desk before the order: signed quantities, market values, equity and the day's start."""

    quantities: Mapping[str, Decimal]
    market_values: Mapping[str, Decimal]
    equity: Decimal
    day_start_equity: Decimal


def _is_failure(exc: BaseException) -> bool:
    """Does this exception say the broker is failing (counts against its breaker), not merely refusing?"""
    if isinstance(exc, OrderBlocked | InvalidOrder):
        return False
    if isinstance(exc, VenueError):
        return exc.retryable or exc.http_status is None or exc.http_status >= 500
    return True


class OrderSubmitter:
    """Runs :meth:`submit` for one broker. Holds no order state; cheap to keep one per process."""

    def __init__(
        self,
        *,
        broker: Venue,
        redis: redis_lib.Redis,
        sessions: sessionmaker[Session],
        limits: RiskSettings,
        exchange_tz: str = "America/New_York",
        broker_breaker: CircuitBreaker | None = None,
        database_breaker: CircuitBreaker | None = None,
        ledger_broker: bool | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """``ledger_broker``: the broker keeps the orders ledger in our database and publishes its book after every
        change (default: true for the simulated broker), so its book is read from Redis and its records are not repeated."""
        self.broker = broker
        self._redis = redis
        self._sessions = sessions
        self._limits = limits
        self._tz = ZoneInfo(exchange_tz)
        self.broker_breaker = broker_breaker or CircuitBreaker(broker_breaker_name(broker.name), redis, fail_open=False)
        self.database_breaker = database_breaker or CircuitBreaker(DATABASE_BREAKER, redis, fail_open=False)
        if ledger_broker is None:
            ledger_broker = broker.keeps_ledger
        self._ledger_broker = ledger_broker
        self._clock_ns = clock_ns

    # ---- the flow ------------------------------------------------------------------------------

    def submit(self, request: OrderRequest, *, deadline: datetime | None = None) -> OrderOutcome:
        """Check and send one order (see the module docstring). A denial or an expiry returns; it never raises.

        ``deadline``: not sent after this moment (a recorded row's own ``expires_at`` wins).
        Raises :class:`~omni_tasks.core.errors.DatabaseUnavailable` when the database fails
        anywhere on the path, and RetryableError when the broker is unreachable.
        """
        t0 = time.perf_counter()
        try:
            return self._submit(request, deadline, t0)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if is_database_failure(exc):
                raise DatabaseUnavailable(
                    f"order {request.client_order_id} not sent now: database failed ({type(exc).__name__}: {str(exc)[:200]})"
                ) from exc
            raise

    def _submit(self, request: OrderRequest, deadline: datetime | None, t0: float) -> OrderOutcome:
        if self._past(deadline):
            expired = self._expire(request, deadline, t0)
            if expired is not None:
                return self._finish(expired, t0, count=False)
        known, trades_today, deadline = self._record_request(request, deadline)
        if known is not None:
            return self._finish(self._outcome_of(known, t0, repeat=True), t0, count=False)
        if self._past(deadline):
            expired = self._expire(request, deadline, t0)
            if expired is not None:
                return self._finish(expired, t0, count=False)
        breaker = self.broker_breaker.allow()
        trial = breaker.trial
        try:
            context = self._context(request, breaker_reading(self.broker_breaker.name, breaker), trades_today)
            decision = run_checks(context)
        except (VenueError, redis_lib.RedisError, OSError) as exc:
            # The desk could not be read (the broker or Redis failing): nothing is sent without the checks.
            if isinstance(exc, VenueError):
                self.broker_breaker.record(not _is_failure(exc), trial=trial)
            else:
                self.broker_breaker.release(trial)
            denial = Decision(False, "context", f"the desk could not be read ({type(exc).__name__}: {str(exc)[:200]}): not sent unchecked")
            return self._finish(self._record_denial(request, denial, t0), t0)
        except BaseException:
            self.broker_breaker.release(trial)
            raise
        if not decision.allowed:
            self.broker_breaker.release(trial)
            return self._finish(self._record_denial(request, decision, t0), t0)
        if self._past(deadline):  # the desk took long to read: the deadline is checked once more before anything leaves
            self.broker_breaker.release(trial)
            expired = self._expire(request, deadline, t0)
            if expired is not None:
                return self._finish(expired, t0, count=False)
        return self._finish(self._send(request, trial, t0), t0)

    def _past(self, deadline: datetime | None) -> bool:
        return deadline is not None and _utc(self._clock_ns()) >= deadline

    def _context(self, request: OrderRequest, breaker: BreakerReading, trades_today: int) -> CheckContext:
        state = current_state(self._redis, self._sessions)
        if state.value == "HALTED" or not breaker.readable or not breaker.allowed:
            # Denied before anything else is read: no broker call while halted or while its breaker is open.
            portfolio, quote, status = Portfolio({}, {}, ZERO, ZERO), None, None
        else:
            portfolio, quote = self._portfolio_and_quote(request.symbol)
            status = read_trading_status(self._redis, [request.symbol]).get(request.symbol)
        return CheckContext(
            request=request,
            trading_state=state.value,
            breaker=breaker,
            position_qty=portfolio.quantities.get(request.symbol, ZERO),
            equity=portfolio.equity,
            day_start_equity=portfolio.day_start_equity,
            daily_pnl=portfolio.equity - portfolio.day_start_equity,
            trades_today=trades_today,
            market_values=portfolio.market_values,
            quote=quote,
            limits=self._limits,
            now_ns=self._clock_ns(),
            symbol_status=status,
        )

    def _portfolio_and_quote(self, symbol: str) -> tuple[Portfolio, LatestQuote | None]:
        book = read_book(self._redis) if self._ledger_broker else None
        today = datetime.fromtimestamp(self._clock_ns() / 1e9, tz=self._tz).date()
        # A book of an earlier day still carries that day's starting equity: the broker rolls the day when asked.
        if book is not None and book.broker == self.broker.name and book.day == today:
            quotes = read_latest(self._redis, sorted({symbol, *book.positions}))
            marks = self._marks(quotes)
            quantities = {s: p.qty for s, p in book.positions.items()}
            values = {s: p.qty * marks.get(s, p.avg_price) for s, p in book.positions.items()}
            return Portfolio(quantities, values, book.equity(marks), book.day_start_equity), quotes.get(symbol)
        account = self.broker.account()
        positions = self.broker.positions()
        quote = read_latest(self._redis, [symbol]).get(symbol)
        quantities = {p.symbol: p.qty for p in positions}
        values = {p.symbol: p.qty * (p.market_price if p.market_price is not None else p.avg_price) for p in positions}
        return Portfolio(quantities, values, account.equity, account.day_start_equity), quote

    def _marks(self, quotes: Mapping[str, LatestQuote]) -> dict[str, Decimal]:
        now_ns = self._clock_ns()
        return {
            s: (q.bid + q.ask) / 2 for s, q in quotes.items() if q.is_fresh(self._limits.quote_max_age_s, now_ns) and ZERO < q.bid <= q.ask
        }

    def _send(self, request: OrderRequest, trial: str, t0: float) -> OrderOutcome:
        if not self._ledger_broker:
            held = self._claim(request)
            if held is not None:  # decided (expired) since it was checked: nothing leaves
                self.broker_breaker.release(trial)
                return self._outcome_of(held, t0, repeat=True)
        sent = time.perf_counter()
        try:
            order = self.broker.submit(request)
        except OrderBlocked as exc:
            broker_ms = _ms(sent)
            self.broker_breaker.record(True, trial=trial)
            outcome = self._record_broker_refusal(request, "rejected", "guard", str(exc), t0)
        except InvalidOrder as exc:
            broker_ms = _ms(sent)
            self.broker_breaker.record(True, trial=trial)
            outcome = self._record_broker_refusal(request, "rejected", "invalid", str(exc), t0)
        except VenueError as exc:
            broker_ms = _ms(sent)
            self.broker_breaker.record(not _is_failure(exc), trial=trial)
            if exc.retryable:
                self._record_event(request.client_order_id, "error", "broker", str(exc), {"retryable": True})
                raise RetryableError(f"order {request.client_order_id}: broker unavailable, will retry: {exc}") from exc
            outcome = self._record_broker_refusal(request, "rejected", "broker", str(exc), t0)
        except BaseException as exc:
            if is_database_failure(exc):  # the broker's ledger is our database: its breaker, not the broker's, counts it
                self.broker_breaker.release(trial)
            else:
                self.broker_breaker.record(False, trial=trial)
            raise
        else:
            broker_ms = _ms(sent)
            self.broker_breaker.record(True, trial=trial)
            return replace(self._record_sent(request, order, t0), broker_ms=broker_ms)
        return replace(outcome, broker_ms=broker_ms)

    # ---- records ----------------------------------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[Session]:
        """One transaction inside the database breaker (fail closed on the order path)."""
        decision = self.database_breaker.allow()
        if not decision.allowed:
            raise DatabaseUnavailable(f"order not recorded and not sent: {decision.reason}")
        try:
            with self._sessions() as session, session.begin():
                yield session
        except BaseException as exc:
            self.database_breaker.record(not is_database_failure(exc), trial=decision.trial)
            if is_database_failure(exc):
                raise DatabaseUnavailable(
                    f"order not recorded and not sent: database failed ({type(exc).__name__}: {str(exc)[:200]})"
                ) from exc
            raise
        self.database_breaker.record(True, trial=decision.trial)

    def _day_start(self) -> datetime:
        now = datetime.fromtimestamp(self._clock_ns() / 1e9, tz=UTC)
        local = now.astimezone(self._tz)
        midnight = datetime(local.year, local.month, local.day, tzinfo=self._tz)
        return midnight.astimezone(UTC)

    def _record_request(self, request: OrderRequest, deadline: datetime | None) -> tuple[Order | None, int, datetime | None]:
        """The pending row and the "requested" event, today's trade count and the order's deadline; or the decided row.

        A pending row recorded earlier (by the CLI, or a delivery that died) is taken as it
        is: no second "requested" event, and its ``expires_at`` is the deadline.
        """
        now = _utc(self._clock_ns())
        values = order_row_values(request, broker=self.broker.name, now=now, deadline=deadline)
        with self._db() as session:
            postgres = session.get_bind().dialect.name == "postgresql"
            if postgres:
                # No fsync wait for this record: nothing has left yet, and the broker's own (synchronous)
                # commit flushes the write-ahead log up to and including it before any order is accepted.
                session.execute(text("SET LOCAL synchronous_commit = off"))
            insert = pg_insert if postgres else sqlite_insert
            # One round trip in the common case: the row is new. A conflict means an earlier delivery made it.
            inserted = session.execute(
                insert(Order).values(**values).on_conflict_do_nothing(index_elements=["client_order_id"]).returning(Order.id)
            ).scalar_one_or_none()
            if inserted is None:
                row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
                if row.status in DECIDED:
                    session.expunge(row)
                    return row, 0, None
                deadline = row.expires_at or deadline
            else:
                # Core inserts: no unit-of-work flush on the hot path.
                session.execute(
                    insert_into(OrderEvent),
                    {"ts": now, "client_order_id": request.client_order_id, "event": "requested", "check": None, "reason": None,
                     "detail": requested_detail(request, deadline)},
                )  # fmt: skip
            trades = session.execute(
                select(func.count())
                .select_from(Order)
                .where(Order.broker == self.broker.name, Order.created_at >= self._day_start(), Order.submitted_at.is_not(None))
            ).scalar_one()
        return None, int(trades), deadline

    def _expire(self, request: OrderRequest, deadline: datetime | None, t0: float) -> OrderOutcome | None:
        """Record the order expired (not sent by its deadline); None when a broker holds it (claimed, outcome pending there)."""
        now = _utc(self._clock_ns())
        due = deadline or now
        reason = f"not sent by its deadline {due.isoformat(timespec='seconds')}: never sent to the broker"
        with self._db() as session:
            status = expire_order(
                session,
                client_order_id=request.client_order_id,
                reason=reason,
                now=now,
                detail={"by": "worker", "late_s": round((now - due).total_seconds(), 3)},
                row_values=order_row_values(request, broker=self.broker.name, now=now, deadline=due),
            )
            if status is None or status == "pending":
                return None
            row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
            session.expunge(row)
        if status == EXPIRED:
            _log.warning("order expired", client_order_id=request.client_order_id, symbol=request.symbol, reason=reason)
        return self._outcome_of(row, t0, repeat=status != EXPIRED)

    def _claim(self, request: OrderRequest) -> Order | None:
        """Before a broker without a ledger of ours is called: mark the row as at the broker (``submitted_at``) while still pending.

        Returns None when claimed (send it), else the row as decided meanwhile (expired: send nothing).
        From here the watchdog no longer expires it; a redelivery resends it (same id, one order).
        """
        now = _utc(self._clock_ns())
        with self._db() as session:
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

    def _record_denial(self, request: OrderRequest, decision: Decision, t0: float) -> OrderOutcome:
        now = _utc(self._clock_ns())
        elapsed_ms = _ms(t0)
        with self._db() as session:
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
        return OrderOutcome(request.client_order_id, "denied", decision.check, decision.reason, None, "0", None, _ms(t0))

    def _record_sent(self, request: OrderRequest, order: VenueOrder, t0: float) -> OrderOutcome:
        """Bring the row and the events up to the broker's answer, unless the broker keeps the ledger itself."""
        now = _utc(self._clock_ns())
        if self._ledger_broker:  # it recorded the row and the events in the same transaction that accepted the order
            return self._sent_outcome(request, order, t0)
        with self._db() as session:
            row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
            if row.status == "pending":  # the broker keeps no ledger of its own: record what it said
                row.broker_order_id = order.broker_order_id or None
                row.status = order.status
                row.filled_qty = order.filled_qty
                row.avg_fill_price = order.avg_fill_price
                row.submitted_at = order.submitted_at or now
                row.reason = order.reason
                row.updated_at = now
                detail = {"broker": self.broker.name, "broker_order_id": order.broker_order_id}
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
        return self._sent_outcome(request, order, t0)

    def _sent_outcome(self, request: OrderRequest, order: VenueOrder, t0: float) -> OrderOutcome:
        check, reason = ("broker" if order.status == "rejected" else None), order.reason
        if order.status == EXPIRED and (reason or "").startswith(f"{DEADLINE_CHECK}: "):  # expired before the broker took it
            check, reason = DEADLINE_CHECK, (reason or "").removeprefix(f"{DEADLINE_CHECK}: ")
        return OrderOutcome(
            request.client_order_id, order.status, check, reason, order.broker_order_id or None,
            plain(order.filled_qty), None if order.avg_fill_price is None else plain(order.avg_fill_price), _ms(t0),
        )  # fmt: skip

    def _record_broker_refusal(self, request: OrderRequest, status: str, check: str, reason: str, t0: float) -> OrderOutcome:
        now = _utc(self._clock_ns())
        with self._db() as session:
            row = session.execute(select(Order).where(Order.client_order_id == request.client_order_id)).scalar_one()
            if row.status == "pending":  # a broker with a ledger has recorded its refusal already
                row.status = status
                row.reason = f"{check}: {reason}"
                row.updated_at = now
                session.add(
                    OrderEvent(ts=now, client_order_id=request.client_order_id, event=status, check=check, reason=reason, detail={})
                )
        _log.warning("order refused at the broker", client_order_id=request.client_order_id, check=check, reason=reason)
        return OrderOutcome(request.client_order_id, status, check, reason, None, "0", None, _ms(t0))

    def abandon(self, client_order_id: str, reason: str) -> None:
        """Give up on an order the broker could not be reached for (retries exhausted): the row says rejected."""
        now = _utc(self._clock_ns())
        with self._db() as session:
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

    def _record_event(self, client_order_id: str, event: str, check: str | None, reason: str, detail: dict[str, Any]) -> None:
        with self._db() as session:
            session.add(
                OrderEvent(
                    ts=_utc(self._clock_ns()), client_order_id=client_order_id, event=event, check=check, reason=reason, detail=detail
                )
            )

    def _outcome_of(self, row: Order, t0: float, *, repeat: bool) -> OrderOutcome:
        split = row.status == "denied" or (row.status == EXPIRED and (row.reason or "").startswith(f"{DEADLINE_CHECK}: "))
        check, _, reason = (row.reason or "").partition(": ") if split else (None, "", row.reason or "")
        return OrderOutcome(
            row.client_order_id, row.status, check or None, reason or None, row.broker_order_id,
            plain(row.filled_qty), None if row.avg_fill_price is None else plain(row.avg_fill_price), _ms(t0), repeat,
        )  # fmt: skip

    def _finish(self, outcome: OrderOutcome, t0: float, *, count: bool = True) -> OrderOutcome:
        seconds = time.perf_counter() - t0
        metrics.ORDER_SUBMIT_SECONDS.observe(seconds)
        if count:
            metrics.ORDERS.labels(outcome.status, outcome.check or "").inc()
        if seconds * 1000 > budgets.BUDGETS_MS[BUDGET]:
            metrics.LATENCY_VIOLATIONS.labels(BUDGET).inc()
            try:
                budgets.count_violations(self._redis, BUDGET)
            except redis_lib.RedisError:
                _log.warning("latency violation not counted in redis", budget=BUDGET)
        return outcome


def breaker_reading(name: str, decision: Any) -> BreakerReading:
    """A :class:`BreakerReading` from a :class:`~omni_tasks.safety.breaker.Decision` (state "unknown": unreadable)."""
    readable = decision.state != "unknown"
    return BreakerReading(
        name=name, readable=readable, allowed=bool(decision.allowed) and readable, state=decision.state, forced=decision.forced
    )


def plain(value: Decimal) -> str:
    """Decimal text without trailing zeros or an exponent: 10.50000000 -> 10.5, 1E+3 -> 1000."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def _utc(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)
