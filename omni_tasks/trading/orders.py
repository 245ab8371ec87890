"""The order submission flow: record, read the desk, run the pre-trade checks, send or deny, record.

    requested   an ``Order`` row (status ``pending``, with its deadline ``expires_at``) and an
                ``OrderEvent`` "requested", with today's trade count, in one transaction; the CLI
                records both before it queues the order (:mod:`omni_tasks.trading.intake`), and
                then this step finds the row and adds nothing
    deadline    past the order's deadline (on arrival, or after the checks) the order is not
                sent: it is recorded ``expired`` (:mod:`omni_tasks.trading.expiry`)
    context     the trading state (the kill switch), the venue's breaker (``broker:<name>``,
                unreadable counts as open), the portfolio, the latest quotes, the symbol's
                trading status (halts, LULD band) from the stream
    checks      :func:`omni_tasks.trading.checks.run_checks`; first denial wins
    denied      the row becomes ``denied`` with the check and reason, an ``OrderEvent``
                "denied": a recorded outcome, not an exception
    sent        ``venue.submit`` inside the venue's breaker; the venue was built with the
                kill switch's guard, which checks once more right before the order leaves;
                the row and the events say ``submitted`` / ``filled`` / ``rejected``

The rooms: the rows, events and outcomes in :mod:`omni_tasks.trading.order_records`,
the breakers (``broker:<name>`` around every venue call, ``database`` around every
transaction, fail closed) in :mod:`omni_tasks.trading.order_breakers`, parsing in
:mod:`omni_tasks.trading.parsing`; this module is the sequence.

Idempotent on ``client_order_id``: a second delivery of a decided order returns
what was decided; one that died before the venue accepted it (row still
``pending``) runs the checks again and lets the venue take the row over (a
venue resubmit with the same id never makes a second order). A venue takes a
row only while it is ``pending``: the simulated venue under a row lock in its
ledger transaction, any other venue after this path claimed the row (set
``submitted_at`` where still pending). An order expired in the meantime is not sent.

A denial by a later check gives back the venue breaker's half-open trial slot
unused. The database failing anywhere on the path (the venue's ledger included)
means nothing is sent now and :class:`~omni_tasks.core.errors.DatabaseUnavailable`
(retryable) is raised: the task retries with backoff until the order's deadline.

The portfolio comes from the book the venue publishes in Redis after every
change (:mod:`omni_tasks.contracts.portfolio`) when the venue keeps our ledger
(the simulated venue) and the book is of today; otherwise (no book, another
venue's, yesterday's: the venue rolls the day when asked) from
``venue.account()`` and ``venue.positions()``.

Latency: the whole flow is timed; over the 10 ms order-submission budget counts a
violation in Prometheus and in ``omni:latency:violations:order_submission``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, Final, cast
from zoneinfo import ZoneInfo

import redis as redis_lib
import structlog
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.portfolio import PortfolioBook, parse_book, read_book
from omni_tasks.contracts.quotes import (
    LatestQuote,
    TradingStatus,
    parse_quote,
    parse_trading_status,
    quote_key,
    read_latest,
    read_trading_status,
    trading_status_key,
)
from omni_tasks.contracts.venue import InvalidOrder, LedgerVenue, OrderBlocked, OrderRequest, Venue, VenueError
from omni_tasks.core import budgets
from omni_tasks.core.errors import DatabaseUnavailable, RetryableError, TaskRefused
from omni_tasks.core.keys import TRADING_BOOK_KEY, TRADING_STATE_KEY
from omni_tasks.core.redis_batch import RedisBatch
from omni_tasks.ops import prometheus as metrics
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.safety.breaker import Decision as BreakerDecision
from omni_tasks.safety.killswitch import current_state, judge
from omni_tasks.safety.order_guard import order_task_refusal, refusal_of
from omni_tasks.safety.state_rule import Copy, TradingState
from omni_tasks.safety.state_store import database_copy, redis_copy_of
from omni_tasks.settings import RiskSettings
from omni_tasks.storage.models import Order
from omni_tasks.trading.checks import BreakerReading, CheckContext, Decision, run_checks
from omni_tasks.trading.expiry import is_database_failure
from omni_tasks.trading.order_breakers import DATABASE_BREAKER, breaker_reading, is_venue_failure, venue_breaker_name
from omni_tasks.trading.order_records import OrderOutcome, OrderRecords, ms_since, outcome_of, utc_of_ns

_log = structlog.get_logger("omni.orders")

BUDGET: Final = "order_submission"
ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class Portfolio:
    """The desk before the order: signed quantities, market values, equity and the day's start."""

    quantities: Mapping[str, Decimal]
    market_values: Mapping[str, Decimal]
    equity: Decimal
    day_start_equity: Decimal


class OrderSubmitter:
    """Runs :meth:`submit` for one venue. Holds no order state; cheap to keep one per process."""

    def __init__(
        self,
        *,
        venue: Venue,
        redis: redis_lib.Redis,
        sessions: sessionmaker[Session],
        limits: RiskSettings,
        exchange_tz: str = "America/New_York",
        venue_breaker: CircuitBreaker | None = None,
        database_breaker: CircuitBreaker | None = None,
        venue_keeps_ledger: bool | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """``venue_keeps_ledger``: the venue keeps the orders ledger in our database and publishes its book after every
        change (default: the venue's own ``keeps_ledger``), so its book is read from Redis and its records are not repeated."""
        self.venue = venue
        self._redis = redis
        self._sessions = sessions
        self._limits = limits
        self._tz = ZoneInfo(exchange_tz)
        self.venue_breaker = venue_breaker or CircuitBreaker(venue_breaker_name(venue.name), redis, fail_open=False)
        self.database_breaker = database_breaker or CircuitBreaker(DATABASE_BREAKER, redis, fail_open=False)
        self._venue_keeps_ledger = venue.keeps_ledger if venue_keeps_ledger is None else venue_keeps_ledger
        #: The venue queues its book's publication with our breaker writes (one round trip after each order).
        self._batching = self._venue_keeps_ledger and isinstance(venue, LedgerVenue)
        self._clock_ns = clock_ns
        self._records = OrderRecords(
            sessions=sessions, database_breaker=self.database_breaker, venue_name=venue.name, exchange_tz=exchange_tz, clock_ns=clock_ns,
            trades_cap=limits.max_trades_per_day,
        )  # fmt: skip

    # ---- the flow ------------------------------------------------------------------------------

    def submit(self, request: OrderRequest, *, deadline: datetime | None = None, refuse_when_halted: bool = False) -> OrderOutcome:
        """Check and send one order (see the module docstring). A denial or an expiry returns; it never raises.

        ``deadline``: not sent after this moment (a recorded row's own ``expires_at`` wins).
        Raises :class:`~omni_tasks.core.errors.DatabaseUnavailable` when the database fails
        anywhere on the path, and RetryableError when the venue is unreachable.

        ``refuse_when_halted`` (the order task): the kill switch's refusal of an order task is decided
        on the path's own first reads instead of two reads of its own before the task starts: Redis's copy
        of the trading state comes with the breakers' pipeline, the database's with the request's record
        (:meth:`OrderRecords.record_request`, which records nothing when that copy says HALTED), and
        :func:`~omni_tasks.safety.order_guard.refusal_of` decides on both before any check runs or anything
        is sent; refused raises :class:`~omni_tasks.core.errors.TaskRefused`, with nothing recorded by this
        path. When Redis's copy is not open (HALTED, missing, malformed, unread) or the record reads no
        copy (SQLite), both copies are read first, as the check before a task's start does. An order past
        its deadline is recorded ``expired`` first, halted or not.
        """
        t0 = time.perf_counter()
        try:
            return self._submit(request, deadline, t0, refuse_when_halted)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if is_database_failure(exc):
                raise DatabaseUnavailable(
                    f"order {request.client_order_id} not sent now: database failed ({type(exc).__name__}: {str(exc)[:200]})"
                ) from exc
            raise

    def _submit(self, request: OrderRequest, deadline: datetime | None, t0: float, refuse_when_halted: bool) -> OrderOutcome:
        if self._past(deadline):
            expired = self._records.expire(request, deadline, t0)
            if expired is not None:
                return self._finish(expired, t0, count=False)
        # One round trip before anything is recorded: both breakers (the database's around the record, the venue's
        # around the send) and Redis's side of the desk for the checks.
        database, breaker, desk = self._open(request.symbol)
        trial = breaker.trial
        cached = redis_copy_of(desk[0]) if refuse_when_halted and desk is not None else None
        # The order task's refusal rides on the record when Redis's copy is open and the record reads the database's;
        # otherwise (Redis's copy not read, unreadable, missing, malformed or HALTED; SQLite) both are read now, first.
        refusable = (
            cached is not None and cached.value is not None and cached.value.state is not TradingState.HALTED and self._records.reads_state
        )
        if refuse_when_halted and not refusable:  # the record is not tried: its breaker trial goes back too
            self._refuse(order_task_refusal(self._redis, self._sessions), trial, database_trial=database.trial)
        # The database breaker's success is recorded with the venue breaker's outcome (one round trip), or at the end.
        settle: list[str] = []
        try:
            known, trades_today, deadline, durable = self._records.record_request(
                request, deadline, allowed=database, settle=settle, refusable=refusable
            )
        except BaseException:
            self.venue_breaker.release(trial)
            raise
        try:
            if refusable and cached is not None and durable is not None:  # nothing was recorded if the database's copy says HALTED
                self._refuse(refusal_of(judge(self._redis, cached, durable)), trial)
            return self._checked(request, deadline, t0, known, trades_today, durable, breaker, settle, desk)
        finally:
            self._record_outcomes([(self.database_breaker, True, database_trial) for database_trial in settle])
            settle.clear()

    def _refuse(self, reason: str | None, trial: str, *, database_trial: str = "") -> None:
        """Raise TaskRefused for ``reason`` (None: go on), giving back the trial slots unused: the venue breaker's, and
        the database breaker's when the record was not tried."""
        if reason is not None:
            self.venue_breaker.release(trial)
            self.database_breaker.release(database_trial)
            raise TaskRefused(reason)

    def _open(self, symbol: str) -> tuple[BreakerDecision, BreakerDecision, list[Any] | None]:
        """Both breakers' decisions and the desk's Redis reads (:meth:`_queue_desk_reads`), in one pipelined round trip.

        The desk's replies are None when they were not read here (a breaker on another client: asked apart) or Redis
        failed (the breakers then answer unreadable, which closes the order path; the checks read again one by one).
        """
        if not (self.database_breaker.shares_client(self._redis) and self.venue_breaker.shares_client(self._redis)):
            database, venue = CircuitBreaker.allow_together(self.database_breaker, self.venue_breaker)
            return database, venue, None
        pipe = self._redis.pipeline(transaction=False)
        self.database_breaker.allow_in(pipe)
        self.venue_breaker.allow_in(pipe)
        self._queue_desk_reads(pipe, symbol)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis_lib.RedisError, OSError) as exc:
            return self.database_breaker.allowed(exc), self.venue_breaker.allowed(exc), None
        return self.database_breaker.allowed(replies[0]), self.venue_breaker.allowed(replies[1]), list(replies[2:])

    def _queue_desk_reads(self, pipe: Any, symbol: str) -> None:
        """Redis's side of the desk: the trading state, the quote, the symbol's trading status, the venue's book."""
        pipe.get(TRADING_STATE_KEY)
        pipe.hgetall(quote_key(symbol))
        pipe.hgetall(trading_status_key(symbol))
        if self._venue_keeps_ledger:
            pipe.get(TRADING_BOOK_KEY)

    def _record_outcomes(self, outcomes: list[tuple[CircuitBreaker, bool, str]], batch: RedisBatch | None = None) -> None:
        """Record breaker outcomes (breaker, ok, trial) with what ``batch`` holds, in one pipelined round trip (one by one
        for a breaker on another client)."""
        batch = batch if batch is not None else RedisBatch(self._redis)
        for breaker, ok, trial in outcomes:
            if breaker.shares_client(self._redis):
                batch.add(partial(breaker.record_in, ok=ok, trial=trial), partial(breaker.recorded, ok=ok))
            else:
                breaker.record(ok, trial=trial)
        batch.flush()

    def _checked(
        self,
        request: OrderRequest,
        deadline: datetime | None,
        t0: float,
        known: Order | None,
        trades_today: int,
        durable: Copy | None,
        breaker: BreakerDecision,
        settle: list[str],
        desk: list[Any] | None,
    ) -> OrderOutcome:
        """After the request is recorded: the checks, then the send (see the module docstring).

        ``desk``: Redis's side of the desk read already (:meth:`_open`; None: read it now)."""
        trial = breaker.trial
        if known is not None:
            self.venue_breaker.release(trial)
            return self._finish(outcome_of(known, t0, repeat=True), t0, count=False)
        if self._past(deadline):
            self.venue_breaker.release(trial)
            expired = self._records.expire(request, deadline, t0)
            if expired is not None:
                return self._finish(expired, t0, count=False)
            breaker = self.venue_breaker.allow()  # a venue holds it: the checks run again, with a trial slot of their own
            trial = breaker.trial
            desk = None  # read again, after the wait
        try:
            context = self._context(request, breaker_reading(self.venue_breaker.name, breaker), trades_today, durable, desk)
            decision = run_checks(context)
        except (VenueError, redis_lib.RedisError, OSError) as exc:
            # The desk could not be read (the venue or Redis failing): nothing is sent without the checks.
            if isinstance(exc, VenueError):
                self.venue_breaker.record(not is_venue_failure(exc), trial=trial)
            else:
                self.venue_breaker.release(trial)
            denial = Decision(False, "context", f"the desk could not be read ({type(exc).__name__}: {str(exc)[:200]}): not sent unchecked")
            return self._finish(self._records.record_denial(request, denial, t0), t0)
        except BaseException:
            self.venue_breaker.release(trial)
            raise
        if not decision.allowed:
            self.venue_breaker.release(trial)
            return self._finish(self._records.record_denial(request, decision, t0), t0)
        if self._past(deadline):  # the desk took long to read: the deadline is checked once more before anything leaves
            self.venue_breaker.release(trial)
            expired = self._records.expire(request, deadline, t0)
            if expired is not None:
                return self._finish(expired, t0, count=False)
        return self._finish(self._send(request, trial, t0, settle), t0)

    def _past(self, deadline: datetime | None) -> bool:
        return deadline is not None and utc_of_ns(self._clock_ns()) >= deadline

    def _context(
        self,
        request: OrderRequest,
        breaker: BreakerReading,
        trades_today: int,
        durable: Copy | None = None,
        desk: list[Any] | None = None,
    ) -> CheckContext:
        """What the checks read. ``durable``: the trading state's row as :meth:`OrderRecords.record_request` read it
        (None: read it here); ``desk``: the replies of :meth:`_queue_desk_reads` (None: read them here, one round trip)."""
        symbol = request.symbol
        replies = desk
        if replies is None:
            pipe = self._redis.pipeline(transaction=False)
            self._queue_desk_reads(pipe, symbol)
            try:
                replies = pipe.execute(raise_on_error=False)
            except (redis_lib.RedisError, OSError):
                return self._context_one_by_one(request, breaker, trades_today)  # each read fails (or not) as it always did
        state = judge(self._redis, redis_copy_of(replies[0]), durable or database_copy(self._sessions)).state
        if state.value == "HALTED" or not breaker.readable or not breaker.allowed:
            # Denied before anything else is used: no venue call while halted or while its breaker is open.
            portfolio, quote, status = Portfolio({}, {}, ZERO, ZERO), None, None
        else:
            for reply in replies[1:]:
                if isinstance(reply, Exception):
                    raise reply
            book = parse_book(replies[3]) if self._venue_keeps_ledger else None
            portfolio, quote = self._portfolio_and_quote(symbol, book=book, quote=parse_quote(symbol, replies[1]))
            status = parse_trading_status(symbol, replies[2])
        return self._check_context(request, breaker, trades_today, state.value, portfolio, quote, status)

    def _context_one_by_one(self, request: OrderRequest, breaker: BreakerReading, trades_today: int) -> CheckContext:
        """The desk read one piece at a time (after a pipelined read failed): each failure counts as it always did."""
        state = current_state(self._redis, self._sessions)
        if state.value == "HALTED" or not breaker.readable or not breaker.allowed:
            portfolio, quote, status = Portfolio({}, {}, ZERO, ZERO), None, None
        else:
            book = read_book(self._redis) if self._venue_keeps_ledger else None
            portfolio, quote = self._portfolio_and_quote(request.symbol, book=book, quote=None)
            status = read_trading_status(self._redis, [request.symbol]).get(request.symbol)
        return self._check_context(request, breaker, trades_today, state.value, portfolio, quote, status)

    def _check_context(
        self,
        request: OrderRequest,
        breaker: BreakerReading,
        trades_today: int,
        state: str,
        portfolio: Portfolio,
        quote: LatestQuote | None,
        status: TradingStatus | None,
    ) -> CheckContext:
        return CheckContext(
            request=request,
            trading_state=state,
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

    def _portfolio_and_quote(
        self, symbol: str, *, book: PortfolioBook | None, quote: LatestQuote | None
    ) -> tuple[Portfolio, LatestQuote | None]:
        """The portfolio from ``book`` (the venue's, read already) when it is of today, else from the venue; and the quote.

        ``quote``: ``symbol``'s quote read already (None: read it here).
        """
        today = datetime.fromtimestamp(self._clock_ns() / 1e9, tz=self._tz).date()
        # A book of an earlier day still carries that day's starting equity: the venue rolls the day when asked.
        if book is not None and book.broker == self.venue.name and book.day == today:
            others = sorted(set(book.positions) - {symbol}) if quote is not None else sorted({symbol, *book.positions})
            quotes = read_latest(self._redis, others) if others else {}
            if quote is not None:
                quotes[symbol] = quote
            marks = self._marks(quotes)
            quantities = {s: p.qty for s, p in book.positions.items()}
            values = {s: p.qty * marks.get(s, p.avg_price) for s, p in book.positions.items()}
            return Portfolio(quantities, values, book.equity(marks), book.day_start_equity), quotes.get(symbol)
        account = self.venue.account()
        positions = self.venue.positions()
        quote = read_latest(self._redis, [symbol]).get(symbol)  # read after the venue answered, as before
        quantities = {p.symbol: p.qty for p in positions}
        values = {p.symbol: p.qty * (p.market_price if p.market_price is not None else p.avg_price) for p in positions}
        return Portfolio(quantities, values, account.equity, account.day_start_equity), quote

    def _marks(self, quotes: Mapping[str, LatestQuote]) -> dict[str, Decimal]:
        now_ns = self._clock_ns()
        return {
            s: (q.bid + q.ask) / 2 for s, q in quotes.items() if q.is_fresh(self._limits.quote_max_age_s, now_ns) and ZERO < q.bid <= q.ask
        }

    def _send(self, request: OrderRequest, trial: str, t0: float, settle: list[str]) -> OrderOutcome:
        """Send to the venue inside its breaker; its outcome is recorded with the database breaker's pending successes and
        (a venue keeping our ledger) the book it publishes after its commit: one round trip after the venue answered."""
        if not self._venue_keeps_ledger:
            held = self._records.claim(request)
            if held is not None:  # decided (expired) since it was checked: nothing leaves
                self.venue_breaker.release(trial)
                return outcome_of(held, t0, repeat=True)
        batch = RedisBatch(self._redis)
        sent = time.perf_counter()
        try:
            order = cast(LedgerVenue, self.venue).submit_batched(request, batch) if self._batching else self.venue.submit(request)
        except OrderBlocked as exc:
            venue_ms = ms_since(sent)
            self._record_venue(True, trial, settle, batch)
            outcome = self._records.record_refusal(request, "rejected", "guard", str(exc), t0)
        except InvalidOrder as exc:
            venue_ms = ms_since(sent)
            self._record_venue(True, trial, settle, batch)
            outcome = self._records.record_refusal(request, "rejected", "invalid", str(exc), t0)
        except VenueError as exc:
            venue_ms = ms_since(sent)
            self._record_venue(not is_venue_failure(exc), trial, settle, batch)
            if exc.retryable:
                self._records.record_event(request.client_order_id, "error", "broker", str(exc), {"retryable": True})
                raise RetryableError(f"order {request.client_order_id}: broker unavailable, will retry: {exc}") from exc
            outcome = self._records.record_refusal(request, "rejected", "broker", str(exc), t0)
        except BaseException as exc:
            batch.flush()
            if is_database_failure(exc):  # the venue's ledger is our database: its breaker, not the venue's, counts it
                self.venue_breaker.release(trial)
            else:
                self._record_venue(False, trial, settle, batch)
            raise
        else:
            venue_ms = ms_since(sent)
            self._record_venue(True, trial, settle, batch)
            return replace(self._records.record_sent(request, order, t0, venue_keeps_ledger=self._venue_keeps_ledger), broker_ms=venue_ms)
        return replace(outcome, broker_ms=venue_ms)

    def _record_venue(self, ok: bool, trial: str, settle: list[str], batch: RedisBatch) -> None:
        """The venue breaker's outcome and the database breaker's successes still pending, with what ``batch`` holds: one round trip."""
        self._record_outcomes([(self.venue_breaker, ok, trial), *((self.database_breaker, True, t) for t in settle)], batch)
        settle.clear()

    def abandon(self, client_order_id: str, reason: str) -> None:
        """Give up on an order the venue could not be reached for (retries exhausted): the row says rejected."""
        self._records.abandon(client_order_id, reason)

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
