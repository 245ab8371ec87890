"""The broker adapter contract every broker implements (simulated, Alpaca paper).

Values are exact :class:`~decimal.Decimal`; symbols are checked upper-case
tickers. ``submit`` calls the ``guard`` the broker was built with right before the
order leaves, so an order racing the kill switch is stopped at the last step;
the guard raises :class:`OrderBlocked`. Cancels, reads and ``close_all`` (the
kill switch's own flattening step, which only shrinks positions) are not
guarded: the kill switch must be able to cancel, to look and to flatten.

What ``submit`` returns or raises:

* the order in its broker state (``new`` resting, ``filled``...), also for a
  resubmit of a known ``client_order_id`` (never a second order);
* a ``rejected`` order with its ``reason`` when the broker recorded the order and
  refused it (the simulated broker without a fresh quote, the guard's refusal);
* :class:`OrderBlocked` when the guard stopped it (the broker records it as
  rejected first when it keeps a ledger);
* :class:`InvalidOrder` for a malformed request (nothing recorded);
* :class:`VenueError` when the broker could not be reached or refused before
  recording anything; ``retryable`` says whether the same request may succeed
  later (resending it with the same ``client_order_id`` is always safe).

The implementations: :mod:`omni_tasks.trading.simulated` (the embedded default),
:mod:`omni_tasks.trading.alpaca_paper`; :func:`omni_tasks.trading.wiring.make_venue`
chooses one from the settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from omni_tasks.core import inputs
from omni_tasks.core.errors import OmniError

if TYPE_CHECKING:
    from omni_tasks.core.redis_batch import RedisBatch

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
OPEN_STATUSES = frozenset({"pending", "new", "accepted", "partially_filled"})
#: Decimal places kept for quantities and prices (the ledger's Numeric(24, 8)).
MONEY_PLACES = 8
SYMBOL_PATTERN = inputs.SYMBOL_PATTERN
CLIENT_ORDER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


class VenueError(OmniError):
    """The venue failed or refused; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False, http_status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.http_status = http_status


class OrderBlocked(VenueError):
    """The last-step guard (kill switch, trading state) stopped an order before it left."""


class InvalidOrder(VenueError):
    """The request itself is malformed (bad symbol, quantity, price or id); the message names the field."""


@dataclass(frozen=True)
class OrderRequest:
    """An order to send. ``client_order_id`` makes submission idempotent: a second submit returns the first order."""

    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType = "market"
    limit_price: Decimal | None = None
    requested_by: str = "unknown"  # who asked (recorded with the order): a task, "operator:<name>", "close_all"


def _places_ok(value: Decimal) -> bool:
    exponent = value.as_tuple().exponent
    return isinstance(exponent, int) and exponent >= -MONEY_PLACES


def check_order_request(request: OrderRequest) -> None:
    """Raise :class:`InvalidOrder` naming the first malformed field; brokers call it before anything else."""
    if not isinstance(request.client_order_id, str) or not CLIENT_ORDER_ID_PATTERN.match(request.client_order_id):
        raise InvalidOrder(f"client_order_id {request.client_order_id!r}: 1-64 of letters, digits, '_', '.', ':', '-'")
    if not isinstance(request.symbol, str) or not SYMBOL_PATTERN.match(request.symbol):
        raise InvalidOrder(f"symbol {request.symbol!r} is not an upper-case ticker (1-10 of A-Z, 0-9, '.', '-')")
    if request.side not in ("buy", "sell"):
        raise InvalidOrder(f"side {request.side!r}: must be 'buy' or 'sell'")
    if request.order_type not in ("market", "limit"):
        raise InvalidOrder(f"order_type {request.order_type!r}: must be 'market' or 'limit'")
    if not isinstance(request.qty, Decimal) or not request.qty.is_finite() or request.qty <= 0:
        raise InvalidOrder(f"qty {request.qty!r}: must be a positive Decimal")
    if not _places_ok(request.qty):
        raise InvalidOrder(f"qty {request.qty}: at most {MONEY_PLACES} decimal places")
    if request.order_type == "limit":
        price = request.limit_price
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise InvalidOrder(f"limit_price {price!r}: a limit order needs a positive Decimal limit price")
        if not _places_ok(price):
            raise InvalidOrder(f"limit_price {price}: at most {MONEY_PLACES} decimal places")
    elif request.limit_price is not None:
        raise InvalidOrder(f"limit_price {request.limit_price}: a market order takes no limit price")


@dataclass(frozen=True)
class VenueOrder:
    """An order as the broker reports it."""

    client_order_id: str
    broker_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    status: str
    filled_qty: Decimal
    avg_fill_price: Decimal | None
    submitted_at: datetime | None
    reason: str | None = None  # why it was rejected or cancelled, when the broker says

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class VenuePosition:
    """A signed position (short is negative) and its mark."""

    symbol: str
    qty: Decimal
    avg_price: Decimal
    market_price: Decimal | None = None

    @property
    def market_value(self) -> Decimal | None:
        return None if self.market_price is None else self.qty * self.market_price


@dataclass(frozen=True)
class VenueAccountView:
    """Cash and equity, and the marks the daily-loss and drawdown limits are measured from."""

    cash: Decimal
    equity: Decimal
    day_start_equity: Decimal
    peak_equity: Decimal
    extra: dict[str, str] = field(default_factory=dict)


#: Called with the request right before the broker accepts it; raises OrderBlocked to stop it.
#: It only reads (state in Redis or the database): the simulated broker holds its ledger lock while
#: it runs, and on SQLite that is the database's write lock, so a guard that writes would wait on it.
Guard = Callable[[OrderRequest], None]


@runtime_checkable
class Venue(Protocol):
    """What the orders path and the kill switch need of a broker."""

    name: str
    #: True when the venue itself records every order, fill and position in our database (the ledger) and
    #: publishes the portfolio book after each change (:meth:`LedgerVenue.publish_book`): the simulated venue.
    #: False when the venue keeps them on its side (Alpaca paper): we mirror its orders and rebuild its book.
    keeps_ledger: bool

    def account(self) -> VenueAccountView: ...

    def positions(self) -> list[VenuePosition]: ...

    def open_orders(self) -> list[VenueOrder]: ...

    def submit(self, request: OrderRequest) -> VenueOrder:
        """Send one order (the guard runs first); idempotent on ``client_order_id``."""
        ...

    def cancel_all(self) -> list[str]:
        """Ask the broker to cancel every open order; returns the broker ids asked. Confirm with :meth:`open_orders`."""
        ...

    def close_all(self) -> list[VenueOrder]:
        """Flatten: cancel the open orders, then one market order against every position, each only shrinking it (not guarded).

        Orders are cancelled first because a resting order could re-open a position, and a real broker
        refuses to sell shares held for open orders.
        """
        ...



@runtime_checkable
class CancelsOpenOrders(Venue, Protocol):
    """A venue whose cancel reports what it cancelled: the kill switch sends it first and reads nothing before it."""

    def cancel_open_orders(self) -> list[VenueOrder]:
        """Cancel every open order at once, as :meth:`Venue.cancel_all`; returns them as they were open (status before the cancel), oldest first."""
        ...

    def warm_up(self) -> None:
        """Prepare the cancel so the first one is as fast as the next (the kill switch's runs once, when it matters); changes nothing."""
        ...


@runtime_checkable
class LedgerVenue(Venue, Protocol):
    """A venue that keeps our ledger (``keeps_ledger`` is true) and can republish its book from it."""

    def publish_book(self) -> None:
        """Publish the portfolio book from the ledger now, in order with the venue's other changes."""
        ...

    def submit_batched(self, request: OrderRequest, batch: RedisBatch | None) -> VenueOrder:
        """:meth:`submit`, with the book's publication after the commit queued in ``batch`` (the caller sends it with its
        own writes right after, one round trip; None: published at once). Queued even when the order is refused."""
        ...
