"""The broker adapter contract every broker implements (simulated, Alpaca paper).

Values are exact :class:`~decimal.Decimal`; symbols are checked upper-case
tickers. ``submit`` calls the ``guard`` the broker was built with right before the
order leaves, so an order racing the kill switch is stopped at the last step;
the guard raises :class:`OrderBlocked`. Cancels, reads and ``close_all`` (the
kill switch's own flattening step, which only shrinks positions) are not
guarded: the kill switch must be able to cancel, to look and to flatten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol, runtime_checkable

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
OPEN_STATUSES = frozenset({"pending", "new", "accepted", "partially_filled"})


class BrokerError(Exception):
    """The broker failed or refused; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class OrderBlocked(BrokerError):
    """The last-step guard (kill switch, trading state) stopped an order before it left."""


@dataclass(frozen=True)
class OrderRequest:
    """An order to send. ``client_order_id`` makes submission idempotent: a second submit returns the first order."""

    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType = "market"
    limit_price: Decimal | None = None


@dataclass(frozen=True)
class BrokerOrder:
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

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class BrokerPosition:
    """A signed position (short is negative) and its mark."""

    symbol: str
    qty: Decimal
    avg_price: Decimal
    market_price: Decimal | None = None

    @property
    def market_value(self) -> Decimal | None:
        return None if self.market_price is None else self.qty * self.market_price


@dataclass(frozen=True)
class BrokerAccountView:
    """Cash and equity, and the marks the daily-loss and drawdown limits are measured from."""

    cash: Decimal
    equity: Decimal
    day_start_equity: Decimal
    peak_equity: Decimal
    extra: dict[str, str] = field(default_factory=dict)


Guard = Callable[[OrderRequest], None]


@runtime_checkable
class Broker(Protocol):
    """What the orders path and the kill switch need of a broker."""

    name: str

    def account(self) -> BrokerAccountView: ...

    def positions(self) -> list[BrokerPosition]: ...

    def open_orders(self) -> list[BrokerOrder]: ...

    def submit(self, request: OrderRequest) -> BrokerOrder:
        """Send one order (the guard runs first); idempotent on ``client_order_id``."""
        ...

    def cancel_all(self) -> list[str]:
        """Ask the broker to cancel every open order; returns the broker ids asked. Confirm with :meth:`open_orders`."""
        ...

    def close_all(self) -> list[BrokerOrder]:
        """Flatten: one market order against every position, each only shrinking it (not guarded)."""
        ...
