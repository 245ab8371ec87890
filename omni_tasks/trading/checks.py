"""Pre-trade checks (DESIGN section 7): pure functions over one frozen snapshot of the desk.

Each check returns a :class:`Decision` whose reason names the numbers that
decided it; :func:`run_checks` runs them in :data:`CHECKS` order and the first
denial wins. A denial is recorded by the caller as an event, never raised.

The order (cheapest and most fundamental first):

1. ``kill_switch``     HALTED, or a state that could not be read, denies everything.
2. ``broker_breaker``  the venue's breaker open, forced open, or unreadable denies.
3. ``trading_state``   REDUCING lets through only orders that shrink a position
                       without flipping it.
4. ``symbol_halted``   the symbol's trading status (from the stream, beside its
                       quote) is HALTED, or QUOTING (quotes back, trading not yet),
                       or unreadable: denied, naming the code, reason and since when.
                       No status ever seen: trading is assumed. Before the
                       collar: a halted symbol gets no quotes, so its quote has
                       expired and the denial must name the halt, not the quote.
5. ``luld_band``       with today's LULD band known: a limit price above limit
                       up or below limit down is denied (the band is inclusive).
                       A market order cannot print outside the band, so it passes,
                       except in a limit state: a market buy while the bid has
                       reached limit up, or a market sell while the ask has reached
                       limit down (it would sit unfilled or trigger a pause).
6. ``price_collar``    needs a fresh, uncrossed quote for the symbol; a limit
                       price (a market order: the far side of the quote) further
                       than ``price_collar_pct`` from the mid denies.
7. ``position_size``   |position after| x price above ``max_position_notional_usd``.
8. ``trades_per_day``  this order would be trade number ``max_trades_per_day + 1``.
9. ``daily_loss``      the day's loss is already past ``max_daily_loss_usd``.
10. ``concentration``   |position after| x price / equity above ``max_concentration_pct``.
11. ``gross_leverage``  sum of |market values| after the trade / equity above ``max_gross_leverage``.

Limits are inclusive: a value exactly at its limit passes, a cent over denies.
Checks 7 and 9-11 only ever deny orders that grow a position (or flip it): an
order that shrinks a position lowers every one of those figures, and the desk
must always be able to get smaller. All money is exact :class:`~decimal.Decimal`;
the percentage and leverage limits are compared as decimals too (a float
setting is converted through its shortest decimal text, so 30.0 is 30).

The order is priced at its limit price, or for a market order at the far side of
the quote (ask to buy, bid to sell): the price it would most likely pay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from omni_tasks.contracts.quotes import DAY_NS, DAY_SPLIT_NS, LatestQuote, TradingStatus
from omni_tasks.contracts.venue import OrderRequest
from omni_tasks.settings import RiskSettings

ZERO: Final = Decimal(0)
HUNDRED: Final = Decimal(100)

#: Trading states as the kill switch names them (omni_tasks.safety.killswitch.TradingState values).
ACTIVE, REDUCING, HALTED = "ACTIVE", "REDUCING", "HALTED"


@dataclass(frozen=True)
class Decision:
    """The verdict of one check (or of :func:`run_checks`: the first denial, or the last pass)."""

    allowed: bool
    check: str
    reason: str


@dataclass(frozen=True)
class BreakerReading:
    """The venue's breaker as the order path saw it.

    ``readable`` False: Redis could not be read, which on the order path counts
    as open. ``allowed`` is the breaker's own answer (False while OPEN and
    cooling down, or while HALF_OPEN has no trial slot free).
    """

    name: str
    readable: bool
    allowed: bool
    state: str
    forced: str | None = None


@dataclass(frozen=True)
class CheckContext:
    """Everything the checks look at, read once before they run.

    ``trading_state`` is ACTIVE, REDUCING or HALTED, None when it could not be
    read. ``position_qty`` is the signed quantity held before the order.
    ``market_values`` are the signed market values of every held position
    before the order (the order's symbol included, if held). ``daily_pnl`` is
    equity now minus the day-start equity. ``now_ns`` is the wall clock in ns
    (quote freshness). ``symbol_status`` is the symbol's trading status from the
    stream (halts, LULD band); None when none was ever seen.
    """

    request: OrderRequest
    trading_state: str | None
    breaker: BreakerReading
    position_qty: Decimal
    equity: Decimal
    day_start_equity: Decimal
    daily_pnl: Decimal
    trades_today: int
    market_values: Mapping[str, Decimal]
    quote: LatestQuote | None
    limits: RiskSettings
    now_ns: int
    extra: Mapping[str, str] = field(default_factory=dict)
    symbol_status: TradingStatus | None = None

    @property
    def signed_qty(self) -> Decimal:
        """The order's quantity with the sign of its side (sells are negative)."""
        return self.request.qty if self.request.side == "buy" else -self.request.qty

    @property
    def position_after(self) -> Decimal:
        return self.position_qty + self.signed_qty

    @property
    def shrinks_position(self) -> bool:
        """True when the order reduces an existing position toward zero without crossing it."""
        before, after = self.position_qty, self.position_after
        if before == ZERO:
            return False
        same_side_or_flat = after == ZERO or (after > ZERO) == (before > ZERO)
        return same_side_or_flat and abs(after) < abs(before)

    @property
    def price(self) -> Decimal | None:
        """The price the order is valued at: its limit, or the far side of the quote for a market order."""
        if self.request.order_type == "limit" and self.request.limit_price is not None:
            return self.request.limit_price
        if self.quote is None:
            return None
        return self.quote.ask if self.request.side == "buy" else self.quote.bid


def _pct(value: float | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _n(value: Decimal) -> str:
    """A quantity or price as plain text without trailing zeros (10.00000000 -> 10)."""
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


def _usd(value: Decimal) -> str:
    return f"${value:,.2f}" if value == value.quantize(Decimal("0.01")) else f"${value:,}"


def _allow(check: str, reason: str) -> Decision:
    return Decision(True, check, reason)


def _deny(check: str, reason: str) -> Decision:
    return Decision(False, check, reason)


# ---- the checks -------------------------------------------------------------


def check_kill_switch(ctx: CheckContext) -> Decision:
    """HALTED or unreadable: nothing but cancels."""
    name = "kill_switch"
    if ctx.trading_state is None:
        return _deny(name, "trading state unreadable: counts as engaged")
    if ctx.trading_state == HALTED:
        return _deny(name, "kill switch engaged (trading state HALTED)")
    return _allow(name, f"trading state {ctx.trading_state}")


def check_venue_breaker(ctx: CheckContext) -> Decision:
    """The venue's breaker must be readable and let the call through."""
    name, breaker = "broker_breaker", ctx.breaker
    if not breaker.readable:
        return _deny(name, f"breaker {breaker.name} unreadable: counts as open")
    if breaker.forced == "open":
        return _deny(name, f"breaker {breaker.name} forced open by an operator")
    if not breaker.allowed:
        return _deny(name, f"breaker {breaker.name} is {breaker.state}")
    return _allow(name, f"breaker {breaker.name} {breaker.forced and 'forced ' + breaker.forced or breaker.state}")


def check_trading_state(ctx: CheckContext) -> Decision:
    """REDUCING: only orders that shrink an existing position (without flipping it) pass."""
    name = "trading_state"
    if ctx.trading_state == ACTIVE:
        return _allow(name, "ACTIVE")
    if ctx.trading_state == REDUCING:
        if ctx.shrinks_position:
            return _allow(name, f"REDUCING: position {_n(ctx.position_qty)} -> {_n(ctx.position_after)} shrinks")
        return _deny(
            name, f"REDUCING: only orders that shrink a position pass; position {_n(ctx.position_qty)} -> {_n(ctx.position_after)} does not"
        )
    return _deny(name, f"trading state {ctx.trading_state} lets no order through")


def _utc_time(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9)) if ns > 0 else "an unknown time"


def check_symbol_halted(ctx: CheckContext) -> Decision:
    """A halted symbol (HALTED, QUOTING, or a status that cannot be read) takes no order."""
    name, status, symbol = "symbol_halted", ctx.symbol_status, ctx.request.symbol
    if status is None or status.symbol != symbol:
        return _allow(name, f"no trading status seen for {symbol}: trading assumed")
    if status.state == "UNREADABLE":
        return _deny(name, f"{symbol}'s trading status cannot be read ({status.message}): counts as halted")
    if status.halted:
        what = "halted" if status.state == "HALTED" else "halted, quotation only (trading not resumed)"
        reason = f", reason {status.reason}" if status.reason else ""
        words = "; ".join(t for t in (status.message, status.reason_message) if t)
        return _deny(
            name,
            f"{symbol} is {what}: status {status.code}{reason}{f' ({words})' if words else ''} since {_utc_time(status.since_ns)}",
        )
    return _allow(name, f"{symbol} trading" + (f" (resumed {_utc_time(status.since_ns)})" if status.state == "TRADING" else ""))


def check_luld_band(ctx: CheckContext) -> Decision:
    """Today's LULD band: a limit price outside it, or a market order into a limit state, is denied."""
    name, status, symbol = "luld_band", ctx.symbol_status, ctx.request.symbol
    if status is None or status.symbol != symbol or not status.has_band:
        return _allow(name, f"no LULD band for {symbol}")
    if (status.luld_ts_ns - DAY_SPLIT_NS) // DAY_NS != (ctx.now_ns - DAY_SPLIT_NS) // DAY_NS:
        return _allow(name, f"{symbol}'s LULD band is from {_utc_time(status.luld_ts_ns)}, not today's: not applied")
    down, up = status.luld_down, status.luld_up
    band = f"LULD band {_n(down)} - {_n(up)} (indicator {status.luld_indicator or '-'}, at {_utc_time(status.luld_ts_ns)})"
    request = ctx.request
    if request.order_type == "limit" and request.limit_price is not None:
        price = request.limit_price
        if price > up:
            return _deny(name, f"limit price {_n(price)} is above limit up {_n(up)}: outside the {band}")
        if price < down:
            return _deny(name, f"limit price {_n(price)} is below limit down {_n(down)}: outside the {band}")
        return _allow(name, f"limit price {_n(price)} inside the {band}")
    quote = ctx.quote
    if quote is not None and quote.symbol == symbol:
        if request.side == "buy" and quote.bid >= up:
            return _deny(name, f"limit-up state: the bid {_n(quote.bid)} is at limit up {_n(up)}; a market buy would not fill ({band})")
        if request.side == "sell" and quote.ask <= down:
            return _deny(
                name, f"limit-down state: the ask {_n(quote.ask)} is at limit down {_n(down)}; a market sell would not fill ({band})"
            )
    return _allow(name, f"market order: cannot print outside the {band}")


def check_price_collar(ctx: CheckContext) -> Decision:
    """A fresh uncrossed quote exists, and the order's price is within the collar around its mid."""
    name, quote, limits = "price_collar", ctx.quote, ctx.limits
    symbol = ctx.request.symbol
    if quote is None or quote.symbol != symbol:
        return _deny(name, f"no quote for {symbol}: cannot collar the price")
    age_s = (ctx.now_ns - quote.ts_ns) / 1e9
    if age_s > limits.quote_max_age_s:
        return _deny(name, f"quote for {symbol} is {age_s:.3f} s old (max {limits.quote_max_age_s:g} s)")
    if quote.bid <= ZERO or quote.ask <= ZERO:
        return _deny(name, f"quote for {symbol} has a non-positive price (bid {quote.bid}, ask {quote.ask})")
    if quote.bid > quote.ask:
        return _deny(name, f"quote for {symbol} is crossed (bid {quote.bid} > ask {quote.ask})")
    price = ctx.price
    assert price is not None  # a quote exists, so a market order has a far side
    if price <= ZERO:
        return _deny(name, f"price {price} is not positive")
    mid = (quote.bid + quote.ask) / 2
    collar = _pct(limits.price_collar_pct)
    deviation = abs(price - mid)
    what = (
        "limit price" if ctx.request.order_type == "limit" else f"market order's far side ({'ask' if ctx.request.side == 'buy' else 'bid'})"
    )
    # |price - mid| / mid > collar% , without dividing: |price - mid| * 100 > collar * mid
    if deviation * HUNDRED > collar * mid:
        return _deny(name, f"{what} {price} is {deviation * HUNDRED / mid:.4f}% from the mid {mid} (collar {collar}%)")
    return _allow(name, f"{what} {price} within {collar}% of the mid {mid}")


def check_position_size(ctx: CheckContext) -> Decision:
    """|position after the trade| x price must not exceed the per-position notional limit."""
    name, limit = "position_size", ctx.limits.max_position_notional_usd
    if ctx.shrinks_position:
        return _allow(name, "shrinks the position")
    price = ctx.price
    if price is None:
        return _deny(name, f"no price for {ctx.request.symbol}: cannot size the position")
    notional = abs(ctx.position_after) * price
    if notional > limit:
        return _deny(
            name, f"position notional after the trade {_usd(notional)} > limit {_usd(limit)} ({_n(abs(ctx.position_after))} x {_n(price)})"
        )
    return _allow(name, f"position notional after the trade {_usd(notional)} <= {_usd(limit)}")


def check_trades_per_day(ctx: CheckContext) -> Decision:
    """At most ``max_trades_per_day`` orders reach the venue per exchange day.

    ``trades_today`` may be counted only up to the limit (the order path stops counting there: the
    decision needs no more), so at the limit the message says "at least".
    """
    name, limit = "trades_per_day", ctx.limits.max_trades_per_day
    if ctx.trades_today + 1 > limit:
        return _deny(name, f"at least {ctx.trades_today} trades today; one more would be over the limit of {limit}")
    return _allow(name, f"trade {ctx.trades_today + 1} of at most {limit} today")


def check_daily_loss(ctx: CheckContext) -> Decision:
    """A day already lost more than the limit opens nothing new."""
    name, limit = "daily_loss", ctx.limits.max_daily_loss_usd
    loss = -ctx.daily_pnl
    if loss > limit and not ctx.shrinks_position:
        return _deny(name, f"daily loss {_usd(loss)} already past the limit {_usd(limit)}: only orders that shrink a position pass")
    return _allow(name, f"daily P&L {_usd(ctx.daily_pnl)} (loss limit {_usd(limit)})")


def _market_value_after(ctx: CheckContext, price: Decimal) -> Decimal:
    return ctx.position_after * price


def check_concentration(ctx: CheckContext) -> Decision:
    """One position's |market value| after the trade, as a share of equity, within the limit."""
    name, limit = "concentration", _pct(ctx.limits.max_concentration_pct)
    if ctx.shrinks_position:
        return _allow(name, "shrinks the position")
    price = ctx.price
    if price is None:
        return _deny(name, f"no price for {ctx.request.symbol}: cannot measure concentration")
    if ctx.equity <= ZERO:
        return _deny(name, f"equity {_usd(ctx.equity)} is not positive: concentration is unbounded")
    value = abs(_market_value_after(ctx, price))
    if value * HUNDRED > limit * ctx.equity:
        return _deny(
            name,
            f"{ctx.request.symbol} after the trade {_usd(value)} is {value * HUNDRED / ctx.equity:.4f}% of equity {_usd(ctx.equity)} > {limit}%",
        )
    return _allow(name, f"{ctx.request.symbol} after the trade {_usd(value)} <= {limit}% of equity {_usd(ctx.equity)}")


def check_gross_leverage(ctx: CheckContext) -> Decision:
    """Gross exposure after the trade (sum of |market values|) / equity within the limit."""
    name, limit = "gross_leverage", _pct(ctx.limits.max_gross_leverage)
    if ctx.shrinks_position:
        return _allow(name, "shrinks the position")
    price = ctx.price
    if price is None:
        return _deny(name, f"no price for {ctx.request.symbol}: cannot measure leverage")
    if ctx.equity <= ZERO:
        return _deny(name, f"equity {_usd(ctx.equity)} is not positive: leverage is unbounded")
    others = sum((abs(v) for s, v in ctx.market_values.items() if s != ctx.request.symbol), ZERO)
    gross = others + abs(_market_value_after(ctx, price))
    if gross > limit * ctx.equity:
        return _deny(
            name, f"gross exposure after the trade {_usd(gross)} is {gross / ctx.equity:.4f}x equity {_usd(ctx.equity)} > {limit}x"
        )
    return _allow(name, f"gross exposure after the trade {_usd(gross)} <= {limit}x equity {_usd(ctx.equity)}")


Check = Callable[[CheckContext], Decision]

#: The fixed order in which :func:`run_checks` runs the checks.
CHECKS: Final[tuple[Check, ...]] = (
    check_kill_switch,
    check_venue_breaker,
    check_trading_state,
    check_symbol_halted,
    check_luld_band,
    check_price_collar,
    check_position_size,
    check_trades_per_day,
    check_daily_loss,
    check_concentration,
    check_gross_leverage,
)
CHECK_NAMES: Final[tuple[str, ...]] = (
    "kill_switch", "broker_breaker", "trading_state", "symbol_halted", "luld_band", "price_collar", "position_size",
    "trades_per_day", "daily_loss", "concentration", "gross_leverage",
)  # fmt: skip


def run_checks(ctx: CheckContext) -> Decision:
    """Every check in order; the first denial wins. All passing: allowed, check "all"."""
    for check in CHECKS:
        decision = check(ctx)
        if not decision.allowed:
            return decision
    return _allow("all", f"{len(CHECKS)} checks passed")
