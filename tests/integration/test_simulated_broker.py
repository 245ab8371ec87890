"""The simulated venue on real Redis (quotes, book) and a real database: PostgreSQL, and SQLite (the embedded default).

Quotes are written to Redis in the streaming worker's format (omni_tasks.contracts.quotes)
by :func:`write_quote`; the broker's clock is a settable one so quote ages and
trading days are exact. Every behaviour runs on both databases; the process-level
race runs on PostgreSQL.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.portfolio import publish_book, read_book, refresh_book
from omni_tasks.contracts.quotes import quote_key, read_latest
from omni_tasks.contracts.venue import InvalidOrder, OrderBlocked, OrderRequest, VenueAccountView, VenueError, VenuePosition
from omni_tasks.core.keys import TRADING_BOOK_KEY
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import BrokerAccount, Fill, Order, OrderEvent, Position
from omni_tasks.trading.simulated import SimulatedVenue

pytestmark = pytest.mark.services

T0 = datetime(2026, 3, 9, 15, 0, tzinfo=UTC)  # Monday 11:00 in New York (EDT)
START = D(100000)
TRADING_TABLES = "order_events, fills, positions, orders, broker_accounts"


# ---- helpers -------------------------------------------------------------------------------------


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def write_quote(client: redis.Redis, symbol: str, bid: str, ask: str, *, ts_ns: int, ttl_s: int = 300) -> None:
    """A latest quote as the streaming worker serves it: one hash per symbol, same field names, expiring."""
    mid = (D(bid) + D(ask)) / 2
    spread_bps = float((D(ask) - D(bid)) / mid * 10_000)
    key = quote_key(symbol)
    client.hset(
        key,
        mapping={
            "bid": bid,
            "ask": ask,
            "bid_size": "300",
            "ask_size": "200",
            "ts": str(ts_ns),
            "recv": str(ts_ns + 150_000),
            "mid": str(mid),
            "spread_bps": f"{spread_bps:.4f}",
            "vwap": "",
            "liq": "0.8",
        },
    )
    client.expire(key, ttl_s)


class Clock:
    """A settable aware-UTC clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def buy(cid: str, qty: str, symbol: str = "AAPL", *, limit: str | None = None) -> OrderRequest:
    return OrderRequest(cid, symbol, "buy", D(qty), "limit" if limit else "market", D(limit) if limit else None, requested_by="test")


def sell(cid: str, qty: str, symbol: str = "AAPL", *, limit: str | None = None) -> OrderRequest:
    return OrderRequest(cid, symbol, "sell", D(qty), "limit" if limit else "market", D(limit) if limit else None, requested_by="test")


def count(sessions: sessionmaker[Session], model: Any, *where: Any) -> int:
    with sessions() as session:
        return session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def position(sessions: sessionmaker[Session], symbol: str) -> Position | None:
    with sessions() as session:
        return session.get(Position, {"broker": "simulated", "symbol": symbol})


def account_row(sessions: sessionmaker[Session]) -> BrokerAccount:
    with sessions() as session:
        return session.execute(select(BrokerAccount).where(BrokerAccount.broker == "simulated")).scalar_one()


def events(sessions: sessionmaker[Session], cid: str) -> list[tuple[str, str | None]]:
    with sessions() as session:
        rows = session.execute(select(OrderEvent.event, OrderEvent.check).where(OrderEvent.client_order_id == cid).order_by(OrderEvent.id))
        return [(event, check) for event, check in rows]


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_trading_url(pg_database: Callable[[], str]) -> str:
    url = pg_database()
    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        migrations.upgrade(engine)
    else:
        engine = make_engine(request.getfixturevalue("pg_trading_url"), pool_size=12)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {TRADING_TABLES} RESTART IDENTITY CASCADE"))
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def make(sessions: sessionmaker[Session], redis_client: redis.Redis, clock: Clock) -> Callable[..., SimulatedVenue]:
    def build(**overrides: Any) -> SimulatedVenue:
        options: dict[str, Any] = {"starting_cash": START, "quote_max_age_s": 5.0, "clock": clock}
        options.update(overrides)
        return SimulatedVenue(sessions, redis_client, **options)

    return build


@pytest.fixture
def quote(redis_client: redis.Redis, clock: Clock) -> Callable[..., None]:
    """Write a quote stamped ``age_s`` before the broker's now."""

    def write(symbol: str, bid: str, ask: str, *, age_s: float = 0.2) -> None:
        write_quote(redis_client, symbol, bid, ask, ts_ns=ns(clock.now) - int(age_s * 1e9))

    return write


# ---- fills ---------------------------------------------------------------------------------------


def test_write_quote_helper_is_read_back_by_the_stream_reader(redis_client: redis.Redis, clock: Clock) -> None:
    write_quote(redis_client, "AAPL", "187.20", "187.25", ts_ns=ns(clock.now))

    served = read_latest(redis_client, ["AAPL"])["AAPL"]

    assert (served.bid, served.ask, served.mid, served.ts_ns) == (D("187.20"), D("187.25"), D("187.225"), ns(clock.now))


def test_market_buy_fills_at_the_ask_and_market_sell_at_the_bid_with_an_exact_ledger(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")

    bought = venue.submit(buy("b-1", "10"))
    sold = venue.submit(sell("s-1", "4"))

    assert (bought.status, bought.avg_fill_price, bought.filled_qty) == ("filled", D("187.25"), D(10))
    assert (sold.status, sold.avg_fill_price) == ("filled", D("187.20"))
    with sessions() as session:
        fills = session.execute(select(Fill.side, Fill.qty, Fill.price).order_by(Fill.id)).all()
    assert [tuple(row) for row in fills] == [("buy", D(10), D("187.25")), ("sell", D(4), D("187.20"))]
    held = position(sessions, "AAPL")
    assert held is not None
    # 4 sold at 187.20 against an average of 187.25: -0.20 realised
    assert (held.qty, held.avg_price, held.realized_pnl) == (D(6), D("187.25"), D("-0.20"))
    # 100000 - 10 x 187.25 + 4 x 187.20 = 100000 - 1872.50 + 748.80
    assert account_row(sessions).cash == D("98876.30")
    assert events(sessions, "b-1") == [("submitted", None), ("filled", None)]


def test_eight_decimal_places_survive_the_ledger_exactly(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.12345670", "187.12345678")

    venue.submit(buy("p-1", "3.33333333"))

    # 3.33333333 x 187.12345678 = 623.74485530... -> 623.74485531 (half-even at 8 places)
    assert account_row(sessions).cash == START - D("623.74485531")
    held = position(sessions, "AAPL")
    assert held is not None
    assert (held.qty, held.avg_price) == (D("3.33333333"), D("187.12345678"))


def test_limit_order_rests_until_a_fresh_quote_crosses_it_then_fills_at_that_quote(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")

    resting = venue.submit(buy("l-1", "5", limit="187.00"))
    assert (resting.status, resting.is_open) == ("new", True)
    assert [o.client_order_id for o in venue.open_orders()] == ["l-1"]
    assert venue.positions() == []

    quote("AAPL", "186.90", "186.95", age_s=9)  # crosses, but stale: never filled on it
    assert [o.client_order_id for o in venue.open_orders()] == ["l-1"]

    quote("AAPL", "186.90", "186.95")
    assert venue.open_orders() == []
    with sessions() as session:
        order = session.execute(select(Order).where(Order.client_order_id == "l-1")).scalar_one()
    assert (order.status, order.avg_fill_price, order.filled_qty) == ("filled", D("186.95"), D(5))
    assert [(p.symbol, p.qty, p.avg_price) for p in venue.positions()] == [("AAPL", D(5), D("186.95"))]
    assert account_row(sessions).cash == START - D("934.75")


def test_marketable_limit_fills_at_once_at_the_quote_which_is_the_limit_or_better(make, quote) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")

    assert venue.submit(buy("l-b", "1", limit="190")).avg_fill_price == D("187.25")
    assert venue.submit(sell("l-s", "1", limit="187.20")).avg_fill_price == D("187.20")


def test_stale_quote_rejects_naming_the_symbol_and_its_age_and_fills_nothing(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25", age_s=12.5)

    order = venue.submit(buy("st-1", "10"))

    assert order.status == "rejected"
    assert order.reason is not None
    assert "AAPL" in order.reason
    assert "12.500 s old" in order.reason
    assert "max 5 s" in order.reason
    assert count(sessions, Fill) == 0
    assert position(sessions, "AAPL") is None
    assert account_row(sessions).cash == START
    assert events(sessions, "st-1") == [("rejected", "quote")]

    missing = venue.submit(buy("st-2", "1", "MSFT"))
    assert missing.status == "rejected"
    assert missing.reason is not None
    assert "no quote for MSFT" in missing.reason


# ---- idempotency and concurrency ------------------------------------------------------------------


def test_resubmit_of_a_client_order_id_returns_the_first_order_and_never_fills_twice(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    first = venue.submit(buy("same-1", "10"))

    quote("AAPL", "190.00", "190.10")
    again = venue.submit(buy("same-1", "10"))

    assert (again.broker_order_id, again.status, again.avg_fill_price) == (first.broker_order_id, "filled", D("187.25"))
    assert count(sessions, Order) == 1
    assert count(sessions, Fill) == 1
    with pytest.raises(InvalidOrder, match="already used for buy 10"):
        venue.submit(buy("same-1", "11"))


def test_concurrent_submits_of_the_same_ids_from_threads_make_one_order_and_one_fill_each(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    ids, threads_n = [f"race-{i}" for i in range(10)], 8
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def submit_all(seed: int) -> None:
        order = ids[:]
        random.Random(seed).shuffle(order)
        barrier.wait()
        try:
            for cid in order:
                venue.submit(buy(cid, "2"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=submit_all, args=(seed,)) for seed in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    orders, fills = count(sessions, Order), count(sessions, Fill)
    print(
        f"\nsame-id race ({sessions.kw['bind'].dialect.name}, {threads_n} threads): orders {orders} for {len(ids)} ids; "
        f"fills {fills} of {len(ids)}; submits {threads_n * len(ids)}"
    )
    assert errors == []
    assert (orders, fills) == (len(ids), len(ids))
    held = position(sessions, "AAPL")
    assert held is not None
    assert held.qty == D(20)
    assert account_row(sessions).cash == START - 10 * D(2) * D("187.25")


def test_concurrent_distinct_orders_from_threads_lose_no_update(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    quote("MSFT", "410.00", "410.10")
    plan = [(f"mix-{i}", "buy" if i % 3 else "sell", "MSFT" if i % 2 else "AAPL", D(i % 5 + 1)) for i in range(48)]
    chunks = [plan[i::6] for i in range(6)]

    def run(chunk: list[tuple[str, str, str, D]]) -> None:
        for cid, side, symbol, qty in chunk:
            venue.submit(OrderRequest(cid, symbol, side, qty))  # type: ignore[arg-type]

    workers = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    prices = {("AAPL", "buy"): D("187.25"), ("AAPL", "sell"): D("187.20"), ("MSFT", "buy"): D("410.10"), ("MSFT", "sell"): D("410.00")}
    expected_cash = START + sum((-1 if side == "buy" else 1) * qty * prices[(symbol, side)] for _, side, symbol, qty in plan)
    expected_qty = {s: sum((qty if side == "buy" else -qty) for _, side, symbol, qty in plan if symbol == s) for s in ("AAPL", "MSFT")}
    assert count(sessions, Fill) == len(plan)
    assert account_row(sessions).cash == expected_cash
    assert {p.symbol: p.qty for p in venue.positions()} == expected_qty


def _race_process(url: str, redis_url: str, ids: list[str], seed: int, barrier: Any) -> None:
    """One process of the PostgreSQL race: its own engine, Redis client and venue, every id in its own order."""
    engine = make_engine(url)
    client = redis.Redis.from_url(redis_url)
    venue = SimulatedVenue(session_factory(engine), client, starting_cash=START, quote_max_age_s=60.0)
    order = ids[:]
    random.Random(seed).shuffle(order)
    barrier.wait(timeout=60)
    for cid in order:
        venue.submit(buy(cid, "1"))
    engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_concurrent_submits_of_the_same_ids_from_processes_fill_once(  # type: ignore[no-untyped-def]
    dialect: str, request: pytest.FixtureRequest, tmp_path, redis_url: str, redis_client
) -> None:
    if dialect == "postgresql":
        url = request.getfixturevalue("pg_trading_url")
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {TRADING_TABLES} RESTART IDENTITY CASCADE"))
    else:
        url = f"sqlite:///{tmp_path / 'race.sqlite3'}"
        engine = make_engine(url)
        migrations.upgrade(engine)
    write_quote(redis_client, "AAPL", "187.20", "187.25", ts_ns=time.time_ns(), ttl_s=300)
    ids, processes_n = [f"proc-{i}" for i in range(25)], 4
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes_n)
    processes = [context.Process(target=_race_process, args=(url, redis_url, ids, seed, barrier)) for seed in range(processes_n)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)

    sessions = session_factory(engine)
    orders, fills = count(sessions, Order), count(sessions, Fill)
    print(
        f"\nsame-id race ({dialect}, {processes_n} processes): orders {orders} for {len(ids)} ids; fills {fills} of {len(ids)}; "
        f"submits {processes_n * len(ids)}"
    )
    assert [process.exitcode for process in processes] == [0] * processes_n
    assert (orders, fills) == (len(ids), len(ids))
    assert account_row(sessions).cash == START - len(ids) * D("187.25")
    engine.dispose()


def test_a_pending_row_recorded_by_the_orders_path_is_taken_over_not_duplicated(make, quote, sessions, clock) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session, session.begin():
        session.add(
            Order(
                client_order_id="path-1",
                broker="simulated",
                broker_order_id=None,
                symbol="AAPL",
                side="buy",
                qty=D(3),
                order_type="market",
                limit_price=None,
                status="pending",
                filled_qty=D(0),
                avg_fill_price=None,
                requested_by="orders-task",
                reason=None,
                created_at=clock.now,
                submitted_at=None,
                updated_at=clock.now,
            )
        )
    quote("AAPL", "187.20", "187.25")

    order = make().submit(buy("path-1", "3"))

    assert (order.status, order.avg_fill_price) == ("filled", D("187.25"))
    with sessions() as session:
        rows = session.execute(select(Order.requested_by, Order.status)).all()
    assert [tuple(r) for r in rows] == [("orders-task", "filled")]


# ---- cancel, close, day roll -----------------------------------------------------------------------


def test_cancel_all_cancels_every_resting_order_and_open_orders_is_then_empty(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    quote("MSFT", "410.00", "410.10")
    resting = [
        venue.submit(buy("r-1", "1", limit="180")),
        venue.submit(sell("r-2", "1", limit="200")),
        venue.submit(buy("r-3", "2", "MSFT", limit="400")),
    ]
    filled = venue.submit(buy("f-1", "1"))

    cancelled = venue.cancel_all()

    assert sorted(cancelled) == sorted(o.broker_order_id for o in resting)
    assert venue.open_orders() == []
    with sessions() as session:
        statuses = dict(session.execute(select(Order.client_order_id, Order.status)).all())
    assert statuses == {"r-1": "cancelled", "r-2": "cancelled", "r-3": "cancelled", "f-1": "filled"}
    assert events(sessions, "r-2")[-1] == ("cancelled", None)
    assert filled.status == "filled"
    assert venue.cancel_all() == []


def test_cancel_open_orders_reports_the_orders_as_they_rested_oldest_first_with_one_event_each(make, quote, sessions, clock) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    quote("MSFT", "410.00", "410.10")
    venue.submit(buy("r-1", "1.5", limit="180.125"))
    venue.submit(buy("f-1", "1"))
    venue.submit(sell("r-2", "1", limit="200"))
    venue.submit(buy("r-3", "2", "MSFT", limit="400"))
    resting = venue.open_orders()
    clock.now += timedelta(seconds=1)

    cancelled = venue.cancel_open_orders()

    assert cancelled == resting, "the same views open_orders gave, status and all"
    assert [o.client_order_id for o in cancelled] == ["r-1", "r-2", "r-3"]
    assert {o.status for o in cancelled} == {"new"}
    assert venue.open_orders() == []
    with sessions() as session:
        rows = session.execute(select(Order.client_order_id, Order.status, Order.reason, Order.updated_at).order_by(Order.id)).all()
        details = session.execute(
            select(OrderEvent.client_order_id, OrderEvent.detail, OrderEvent.reason, OrderEvent.ts).where(OrderEvent.event == "cancelled").order_by(OrderEvent.id)
        ).all()
    assert [tuple(row) for row in rows] == [
        ("r-1", "cancelled", "cancel_all", clock.now),
        ("f-1", "filled", None, T0),
        ("r-2", "cancelled", "cancel_all", clock.now),
        ("r-3", "cancelled", "cancel_all", clock.now),
    ]
    assert [tuple(row) for row in details] == [
        (o.client_order_id, {"broker": "simulated", "broker_order_id": o.broker_order_id}, "cancel_all", clock.now) for o in resting
    ]
    assert venue.cancel_open_orders() == []


def test_warming_up_the_cancel_changes_nothing(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    resting = venue.submit(buy("w-1", "1", limit="180"))
    before = count(sessions, OrderEvent)

    venue.warm_up()

    assert venue.open_orders() == [resting]
    assert count(sessions, OrderEvent) == before
    assert venue.cancel_open_orders() == [resting]


def test_cancel_open_orders_on_a_new_day_rolls_it_first_so_yesterday_s_orders_expire_rather_than_cancel(make, quote, sessions, clock) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    venue.submit(buy("d-1", "1", limit="150"))
    clock.now = datetime(2026, 3, 10, 14, 35, tzinfo=UTC)

    assert venue.cancel_open_orders() == []

    assert account_row(sessions).day == date(2026, 3, 10)
    assert events(sessions, "d-1")[-1] == ("expired", None)


def test_close_all_cancels_resting_orders_and_flattens_long_and_short_at_the_quote(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    quote("MSFT", "410.00", "410.10")
    venue.submit(buy("o-1", "10"))
    venue.submit(sell("o-2", "3", "MSFT"))
    venue.submit(buy("o-3", "5", limit="150"))

    closing = venue.close_all()

    assert sorted((o.symbol, o.side, o.qty, o.status, o.avg_fill_price) for o in closing) == [
        ("AAPL", "sell", D(10), "filled", D("187.20")),
        ("MSFT", "buy", D(3), "filled", D("410.10")),
    ]
    assert all(o.client_order_id.startswith("close-") for o in closing)
    assert venue.positions() == []
    assert venue.open_orders() == []
    # Round trips cost the spread: AAPL 10 x 0.05, MSFT 3 x 0.10
    assert account_row(sessions).cash == START - D("0.50") - D("0.30")
    assert venue.close_all() == []


def test_close_all_without_a_fresh_quote_rejects_that_close_and_flattens_the_rest(make, quote, sessions, clock) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    quote("MSFT", "410.00", "410.10")
    venue.submit(buy("o-1", "10"))
    venue.submit(buy("o-2", "2", "MSFT"))
    clock.now += timedelta(seconds=30)
    quote("AAPL", "187.00", "187.05")  # MSFT's quote is now 30 s old

    closing = {o.symbol: o for o in venue.close_all()}

    assert closing["AAPL"].status == "filled"
    assert closing["MSFT"].status == "rejected"
    assert closing["MSFT"].reason is not None
    assert "MSFT" in closing["MSFT"].reason
    assert [(p.symbol, p.qty) for p in venue.positions()] == [("MSFT", D(2))]


def test_day_rolls_at_the_first_call_of_a_new_new_york_date_with_the_equity_then(make, quote, sessions, clock, redis_client) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    venue.submit(buy("d-1", "10"))  # cash 98127.50
    venue.submit(buy("d-2", "1", limit="150"))
    assert account_row(sessions).day == date(2026, 3, 9)

    clock.now = datetime(2026, 3, 10, 3, 30, tzinfo=UTC)  # 23:30 on the 9th in New York: the same trading day
    quote("AAPL", "189.00", "189.10")
    view = venue.account()
    assert (view.extra["day"], view.day_start_equity) == ("2026-03-09", START)

    clock.now = datetime(2026, 3, 10, 14, 35, tzinfo=UTC)  # 10:35 on the 10th
    quote("AAPL", "190.00", "190.10")
    view = venue.account()

    # 98127.50 + 10 x 190.05 (the fresh mid)
    assert (view.extra["day"], view.day_start_equity, view.equity) == ("2026-03-10", D("100028.00"), D("100028.00"))
    assert view.peak_equity == D("100028.00")
    assert venue.open_orders() == []
    with sessions() as session:
        assert session.execute(select(Order.status).where(Order.client_order_id == "d-2")).scalar_one() == "expired"
    book = read_book(redis_client)
    assert book is not None
    assert (book.day, book.day_start_equity) == (date(2026, 3, 10), D("100028.00"))

    quote("AAPL", "180.00", "180.10")
    later = venue.account()
    assert (later.day_start_equity, later.equity) == (D("100028.00"), D("98127.50") + 10 * D("180.05"))


def test_day_roll_without_a_fresh_quote_marks_at_the_average_price(make, quote, sessions, clock) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    venue.submit(buy("d-1", "10"))
    clock.now = datetime(2026, 3, 10, 14, 35, tzinfo=UTC)

    view = venue.account()

    assert view.day_start_equity == D("98127.50") + 10 * D("187.25") == START
    assert (view.extra["marks"], view.extra["marked_by_avg_price"]) == ("avg_price", "AAPL")


# ---- the guard -----------------------------------------------------------------------------------


def test_guard_block_raises_records_the_rejection_and_fills_nothing(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    seen: list[OrderRequest] = []

    def halted(request: OrderRequest) -> None:
        seen.append(request)
        raise OrderBlocked("kill switch engaged (HALTED) by operator:alice")

    venue = make(guard=halted)
    quote("AAPL", "187.20", "187.25")

    with pytest.raises(OrderBlocked, match="kill switch engaged"):
        venue.submit(buy("g-1", "10"))

    assert seen == [buy("g-1", "10")]
    with sessions() as session:
        row = session.execute(select(Order).where(Order.client_order_id == "g-1")).scalar_one()
    assert (row.status, row.reason) == ("rejected", "kill switch engaged (HALTED) by operator:alice")
    assert events(sessions, "g-1") == [("rejected", "guard")]
    assert count(sessions, Fill) == 0
    assert account_row(sessions).cash == START
    resent = venue.submit(buy("g-1", "10"))
    assert (resent.status, count(sessions, Fill)) == ("rejected", 0)


def test_a_guard_that_fails_blocks_the_order(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    def broken(_request: OrderRequest) -> None:
        raise ConnectionError("redis down")

    venue = make(guard=broken)
    quote("AAPL", "187.20", "187.25")

    with pytest.raises(OrderBlocked, match="guard failed .ConnectionError: redis down"):
        venue.submit(buy("g-2", "1"))
    assert count(sessions, Fill) == 0


def test_a_resting_order_is_not_filled_while_the_guard_refuses(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    halted = threading.Event()

    def guard(_request: OrderRequest) -> None:
        if halted.is_set():
            raise OrderBlocked("kill switch engaged")

    venue = make(guard=guard)
    quote("AAPL", "187.20", "187.25")
    venue.submit(buy("rest-1", "5", limit="187.00"))
    halted.set()

    quote("AAPL", "186.90", "186.95")
    assert [o.client_order_id for o in venue.open_orders()] == ["rest-1"]
    assert count(sessions, Fill) == 0

    halted.clear()
    assert venue.open_orders() == []
    assert count(sessions, Fill) == 1


# ---- the book, equity, failures ------------------------------------------------------------------


def test_the_book_in_redis_matches_the_ledger_after_every_change(make, quote, sessions, redis_client) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    quote("MSFT", "410.00", "410.10")
    for request in (buy("k-1", "10"), sell("k-2", "3", "MSFT"), sell("k-3", "10")):
        venue.submit(request)
        book = read_book(redis_client)
        row = account_row(sessions)
        with sessions() as session:
            ledger = {p.symbol: (p.qty, p.avg_price) for p in session.execute(select(Position).where(Position.qty != 0)).scalars()}
        assert book is not None
        assert (book.broker, book.cash, book.day, book.day_start_equity, book.peak_equity) == (
            "simulated",
            row.cash,
            row.day,
            row.day_start_equity,
            row.peak_equity,
        )
        assert {s: (p.qty, p.avg_price) for s, p in book.positions.items()} == ledger
    assert set(read_book(redis_client).positions) == {"MSFT"}  # type: ignore[union-attr]  # AAPL is flat again
    assert redis_client.ttl(TRADING_BOOK_KEY) == -1  # no expiry: true until the next change


def test_refresh_book_republishes_the_simulated_ledger_after_redis_lost_it(make, quote, sessions, redis_client) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    venue.submit(buy("rb-1", "10"))
    redis_client.delete(TRADING_BOOK_KEY)

    book = refresh_book(venue, redis_client)

    assert read_book(redis_client) == book
    assert (book.cash, {s: p.qty for s, p in book.positions.items()}) == (account_row(sessions).cash, {"AAPL": D(10)})


def test_account_equity_marks_fresh_quotes_at_the_mid_else_the_average_price(make, quote, clock) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    quote("AAPL", "187.20", "187.25")
    quote("MSFT", "410.00", "410.10")
    venue.submit(buy("e-1", "10"))
    venue.submit(buy("e-2", "2", "MSFT"))
    clock.now += timedelta(seconds=20)
    quote("AAPL", "188.00", "188.10")  # MSFT's quote is 20 s old now

    view = venue.account()

    cash = START - D("1872.50") - D("820.20")
    assert view.cash == cash
    assert view.equity == cash + 10 * D("188.05") + 2 * D("410.10")
    assert (view.extra["marks"], view.extra["marked_by_quote"], view.extra["marked_by_avg_price"]) == ("mixed", "AAPL", "MSFT")
    assert view.peak_equity == max(START, view.equity)
    assert {p.symbol: p.market_price for p in venue.positions()} == {"AAPL": D("188.05"), "MSFT": None}


def test_quotes_unreadable_is_a_retryable_error_and_records_nothing(sessions, clock) -> None:  # type: ignore[no-untyped-def]
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5)
    venue = SimulatedVenue(sessions, dead, starting_cash=START, quote_max_age_s=5.0, clock=clock)

    with pytest.raises(VenueError, match="quotes unreadable") as caught:
        venue.submit(buy("x-1", "1"))

    assert caught.value.retryable is True
    assert count(sessions, Order) == 0


def test_malformed_requests_are_refused_before_anything_is_recorded(make, sessions) -> None:  # type: ignore[no-untyped-def]
    venue = make()
    for bad, field in [
        (OrderRequest("ok-1", "aapl", "buy", D(1)), "symbol"),
        (OrderRequest("ok-2", "AAPL", "buy", D(0)), "qty"),
        (OrderRequest("ok-3", "AAPL", "buy", D("0.000000001")), "qty"),
        (OrderRequest("ok-4", "AAPL", "buy", D(1), "limit", None), "limit_price"),
        (OrderRequest("bad id", "AAPL", "buy", D(1)), "client_order_id"),
    ]:
        with pytest.raises(InvalidOrder, match=field):
            venue.submit(bad)
    assert count(sessions, Order) == 0


def test_submit_and_cancel_all_latency(make, quote, sessions) -> None:  # type: ignore[no-untyped-def]
    """Figures for the order path's 10 ms budget and the kill switch's cancel step (printed with their N)."""
    venue = make()
    quote("AAPL", "187.20", "187.25")
    timings = []
    for i in range(100):
        started = time.perf_counter()
        venue.submit(buy(f"lat-{i}", "1") if i % 2 else sell(f"lat-{i}", "1"))
        timings.append((time.perf_counter() - started) * 1000)
    for i in range(100):
        venue.submit(buy(f"rest-{i}", "1", limit="100"))
    started = time.perf_counter()
    cancelled = venue.cancel_all()
    cancel_ms = (time.perf_counter() - started) * 1000
    dialect = sessions.kw["bind"].dialect.name
    p99 = statistics.quantiles(timings, n=100)[98]
    print(
        f"\nsimulated venue on {dialect}: market submit p50 {statistics.median(timings):.2f} ms, p99 {p99:.2f} ms (N=100); "
        f"cancel_all of {len(cancelled)} resting orders {cancel_ms:.1f} ms"
    )
    assert len(cancelled) == 100
    assert venue.open_orders() == []


def test_publish_book_never_replaces_a_newer_book(redis_client: redis.Redis) -> None:
    newer = VenueAccountView(D("900"), D("900"), D("1000"), D("1000"), extra={"day": "2026-03-09"})
    older = VenueAccountView(D("950"), D("950"), D("1000"), D("1000"), extra={"day": "2026-03-09"})

    assert publish_book(redis_client, "simulated", newer, [VenuePosition("AAPL", D(1), D(100))], updated_ns=2_000_000_000) is True
    assert publish_book(redis_client, "simulated", older, [], updated_ns=1_000_000_000) is False

    book = read_book(redis_client)
    assert book is not None
    assert (book.cash, set(book.positions), book.updated_ns) == (D("900"), {"AAPL"}, 2_000_000_000)
    assert publish_book(redis_client, "simulated", older, [], updated_ns=3_000_000_000) is True
    assert read_book(redis_client).cash == D("950")  # type: ignore[union-attr]
    redis_client.set(TRADING_BOOK_KEY, b"garbage")
    assert publish_book(redis_client, "simulated", newer, [], updated_ns=1) is True  # an unreadable book is replaced


def test_make_venue_guards_with_the_kill_switch_so_nothing_fills_while_halted(engine, redis_url, redis_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from omni_tasks.core.keys import TRADING_STATE_KEY
    from omni_tasks.core.runtime import Runtime
    from omni_tasks.safety.state_rule import TradingState, format_value
    from omni_tasks.settings import load_settings
    from omni_tasks.trading.wiring import make_venue

    settings = load_settings(
        {
            "OMNI_BROKER_URL": redis_url,
            "OMNI_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "OMNI_DATA_DIR": str(tmp_path),
        }
    )
    runtime = Runtime(settings)
    venue = make_venue(runtime)
    sessions = runtime.sessions
    write_quote(redis_client, "AAPL", "187.20", "187.25", ts_ns=time.time_ns())
    assert venue.submit(buy("k-1", "1")).status == "filled"
    venue.submit(buy("k-2", "1", limit="180"))

    redis_client.set(TRADING_STATE_KEY, format_value(TradingState.HALTED, 7))
    with pytest.raises(OrderBlocked, match="HALTED"):
        venue.submit(buy("k-3", "1"))
    write_quote(redis_client, "AAPL", "179.90", "179.95", ts_ns=time.time_ns())  # crosses the resting limit

    assert [o.client_order_id for o in venue.open_orders()] == ["k-2"]  # the kill switch's own read fills nothing
    assert count(sessions, Fill) == 1
    assert len(venue.cancel_all()) == 1
    assert venue.open_orders() == []
    runtime.engine.dispose()
