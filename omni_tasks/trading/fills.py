"""Fill and position math of the simulated venue: pure functions of decimals and quotes, no database, no Redis.

* a market buy fills at the ask, a market sell at the bid; a limit order fills at the
  quote when marketable (buy: ask <= limit, sell: bid >= limit), else not at all;
* no fill on a quote that is missing, older than the venue's ``quote_max_age_s``,
  crossed or not positive (:func:`quote_problem` says why);
* positions are signed (short is negative); adding averages the price, reducing
  realises P&L at the fill price, crossing zero closes one side and opens the other;
* exact decimals with 8 places, the ledger columns' scale (:func:`q8` rounds half-even);
  cash moves by qty x price; equity is cash plus each position at its mark.

:mod:`omni_tasks.trading.ledger` applies these to the ledger's rows under its lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from omni_tasks.contracts.quotes import LatestQuote
from omni_tasks.contracts.venue import Side

ZERO: Final = Decimal(0)
_PLACES: Final = Decimal("1e-8")


def q8(value: Decimal) -> Decimal:
    """Round to the ledger's 8 decimal places (half-even)."""
    return value.quantize(_PLACES, rounding=ROUND_HALF_EVEN)


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


def side_of(text: str) -> Side:
    """A stored side as the contract's literal ("buy" or "sell")."""
    return "buy" if text == "buy" else "sell"


def ns_of(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (exact to the microsecond)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
