"""The portfolio book in Redis: what the streaming worker needs to price the day's P&L on every quote.

One JSON value at ``omni:trading:book`` (no expiry: the book is true until the
next change; ``updated_ns`` says when it was)::

    {"broker": "simulated", "cash": "98123.45", "day": "2026-03-09",
     "day_start_equity": "100000", "peak_equity": "100250.5",
     "positions": {"AAPL": {"qty": "10", "avg_price": "187.65"}}, "updated_ns": 1773066600000000000}

Money is decimal text (exact). The simulated broker publishes after every change
to its cash or positions; a broker that keeps no ledger of its own (Alpaca paper)
is published by :func:`refresh_book`, which the risk task calls. A publish never
replaces a book with a newer ``updated_ns`` (two processes publishing after their
commits may finish in either order). :func:`parse_book` is one ``json.loads`` and
a few ``Decimal`` conversions, cheap enough for every quote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Protocol, cast
from zoneinfo import ZoneInfo

import structlog

from omni_tasks.contracts.venue import LedgerVenue, Venue, VenueAccountView
from omni_tasks.core.keys import TRADING_BOOK_KEY

_log = structlog.get_logger("omni.trading.book")

EXCHANGE_TZ: Final = ZoneInfo("America/New_York")

# Replace the book only when ours is at least as new as the one there (cjson reads numbers as doubles:
# ~256 ns granularity at today's epoch, finer than two commits of one broker can be apart).
_PUBLISH_IF_NEWER: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, book = pcall(cjson.decode, current)
  if ok and type(book) == 'table' and tonumber(book['updated_ns']) and tonumber(book['updated_ns']) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class BookPosition:
    """A signed quantity (short is negative) and its average price."""

    qty: Decimal
    avg_price: Decimal


@dataclass(frozen=True)
class PortfolioBook:
    """The book as published: cash, the day's marks and the positions (exact decimals)."""

    broker: str
    cash: Decimal
    day: date
    day_start_equity: Decimal
    peak_equity: Decimal
    positions: Mapping[str, BookPosition]
    updated_ns: int

    def equity(self, marks: Mapping[str, Decimal]) -> Decimal:
        """Cash plus every position at its mark (a symbol without a mark at its average price)."""
        total = self.cash
        for symbol, position in self.positions.items():
            total += position.qty * marks.get(symbol, position.avg_price)
        return total

    def day_pnl(self, marks: Mapping[str, Decimal]) -> Decimal:
        """Equity at these marks minus the equity the day started with (negative is a loss)."""
        return self.equity(marks) - self.day_start_equity

    def age_s(self, now_ns: int | None = None) -> float:
        """Seconds since the state this book shows."""
        return ((now_ns if now_ns is not None else time.time_ns()) - self.updated_ns) / 1e9


class _AccountLike(Protocol):
    """A ledger row, a VenueAccountView, or any object with these."""

    @property
    def cash(self) -> Decimal: ...
    @property
    def day_start_equity(self) -> Decimal: ...
    @property
    def peak_equity(self) -> Decimal: ...


class _PositionLike(Protocol):
    """A ledger row or a VenuePosition."""

    @property
    def symbol(self) -> str: ...
    @property
    def qty(self) -> Decimal: ...
    @property
    def avg_price(self) -> Decimal: ...


def decimal_text(value: Decimal) -> str:
    """Plain decimal text, never exponent notation (``0E-8`` reads as ``0.00000000``)."""
    return format(value, "f")


def exchange_day(now: datetime | None = None) -> date:
    """The trading day (New York date) at ``now`` (aware; default: the current time)."""
    return (now or datetime.now(UTC)).astimezone(EXCHANGE_TZ).date()


def book_json(
    broker_name: str,
    account: _AccountLike,
    positions: Iterable[_PositionLike],
    *,
    day: date | None = None,
    updated_ns: int | None = None,
) -> str:
    """The JSON text of a book; ``day`` defaults to the account's ``day`` (a ledger row), ``extra["day"]`` (a view), else today."""
    if day is None:
        day = _day_of(account)
    book = {
        "broker": broker_name,
        "cash": decimal_text(account.cash),
        "day": day.isoformat(),
        "day_start_equity": decimal_text(account.day_start_equity),
        "peak_equity": decimal_text(account.peak_equity),
        "positions": {p.symbol: {"qty": decimal_text(p.qty), "avg_price": decimal_text(p.avg_price)} for p in positions if p.qty != 0},
        "updated_ns": int(updated_ns if updated_ns is not None else time.time_ns()),
    }
    return json.dumps(book, separators=(",", ":"))


def _day_of(account: _AccountLike) -> date:
    value = getattr(account, "day", None)
    if isinstance(value, date):
        return value
    if isinstance(account, VenueAccountView) and "day" in account.extra:
        return date.fromisoformat(account.extra["day"])
    return exchange_day()


def publish_book(
    redis: Any,
    broker_name: str,
    account_row_or_view: _AccountLike,
    positions: Iterable[_PositionLike],
    *,
    day: date | None = None,
    updated_ns: int | None = None,
) -> bool:
    """Write the book to ``omni:trading:book`` unless a newer one is there; True when written.

    ``account_row_or_view`` is a :class:`~omni_tasks.storage.models.BrokerAccount` row or a
    :class:`~omni_tasks.contracts.venue.VenueAccountView`; ``positions`` are ledger rows or
    :class:`~omni_tasks.contracts.venue.VenuePosition` (flat ones are left out).
    ``updated_ns`` is when that state was true (default: now). Redis errors propagate.
    """
    return bool(redis.eval(*publish_book_args(broker_name, account_row_or_view, positions, day=day, updated_ns=updated_ns)))


def publish_book_args(
    broker_name: str,
    account_row_or_view: _AccountLike,
    positions: Iterable[_PositionLike],
    *,
    day: date | None = None,
    updated_ns: int | None = None,
) -> tuple[Any, ...]:
    """The ``EVAL`` arguments of :func:`publish_book` (to queue it in a pipeline with other writes); its reply is 1 when written."""
    text = book_json(broker_name, account_row_or_view, positions, day=day, updated_ns=updated_ns)
    stamp = json.loads(text)["updated_ns"]
    return (_PUBLISH_IF_NEWER, 1, TRADING_BOOK_KEY, text, str(stamp))


def parse_book(raw: bytes | str | None) -> PortfolioBook | None:
    """The book in ``raw`` (as stored), or None when it is missing or not a well-formed book."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        positions = {
            str(symbol): BookPosition(qty=Decimal(entry["qty"]), avg_price=Decimal(entry["avg_price"]))
            for symbol, entry in data["positions"].items()
        }
        book = PortfolioBook(
            broker=str(data["broker"]),
            cash=Decimal(data["cash"]),
            day=date.fromisoformat(data["day"]),
            day_start_equity=Decimal(data["day_start_equity"]),
            peak_equity=Decimal(data["peak_equity"]),
            positions=positions,
            updated_ns=int(data["updated_ns"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError, InvalidOperation):
        return None
    numbers = [book.cash, book.day_start_equity, book.peak_equity, *(v for p in positions.values() for v in (p.qty, p.avg_price))]
    if not all(value.is_finite() for value in numbers):
        return None
    return book


def read_book(redis: Any) -> PortfolioBook | None:
    """The published book, or None when there is none (or it is unreadable). Redis errors propagate."""
    return parse_book(redis.get(TRADING_BOOK_KEY))


def refresh_book(broker: Venue, redis: Any) -> PortfolioBook:
    """Publish the broker's book now and return it.

    A broker that publishes its own book (the simulated one: ``publish_book()``) republishes it from its
    ledger, in order with its other changes. For the others (Alpaca paper) the book is built from
    ``account()`` and ``positions()``, stamped with the time before they were read (so a change published
    meanwhile is never overwritten by this older view), and its peak never goes below the peak of the
    book already there for the same broker, so a broker that only knows today's equity still has a running peak.
    """
    if broker.keeps_ledger:
        cast(LedgerVenue, broker).publish_book()
        published = read_book(redis)
        if published is None or published.broker != broker.name:
            raise RuntimeError(f"broker {broker.name!r} published its book, but {TRADING_BOOK_KEY} does not hold it")
        return published
    updated_ns = time.time_ns()
    view = broker.account()
    positions = broker.positions()
    previous = read_book(redis)
    if previous is not None and previous.broker == broker.name and previous.peak_equity > view.peak_equity:
        view = VenueAccountView(
            cash=view.cash,
            equity=view.equity,
            day_start_equity=view.day_start_equity,
            peak_equity=previous.peak_equity,
            extra=view.extra,
        )
    book = PortfolioBook(
        broker=broker.name,
        cash=view.cash,
        day=_day_of(view),
        day_start_equity=view.day_start_equity,
        peak_equity=view.peak_equity,
        positions={p.symbol: BookPosition(p.qty, p.avg_price) for p in positions if p.qty != 0},
        updated_ns=updated_ns,
    )
    if not publish_book(redis, broker.name, view, positions, day=book.day, updated_ns=updated_ns):
        newer = read_book(redis)  # changed while we read: the newer book stands
        if newer is not None:
            return newer
    _log.debug("book refreshed", broker=broker.name, positions=len(book.positions))
    return book
