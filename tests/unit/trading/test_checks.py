"""Each pre-trade check denies exactly when it should: at, just under and just over every limit, in exact decimals."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from omni_tasks.contracts.quotes import LatestQuote
from omni_tasks.contracts.venue import OrderRequest
from omni_tasks.settings import RiskSettings
from omni_tasks.trading.checks import (
    CHECK_NAMES,
    CHECKS,
    BreakerReading,
    CheckContext,
    check_broker_breaker,
    check_concentration,
    check_daily_loss,
    check_gross_leverage,
    check_kill_switch,
    check_position_size,
    check_price_collar,
    check_trades_per_day,
    check_trading_state,
    run_checks,
)

D = Decimal
NOW_NS = 1_750_000_000_000_000_000
CLOSED = BreakerReading("broker:simulated", readable=True, allowed=True, state="closed")


def quote(bid: str = "99.95", ask: str = "100.05", *, symbol: str = "AAPL", age_s: float = 0.1) -> LatestQuote:
    b, a = D(bid), D(ask)
    ts = NOW_NS - int(age_s * 1e9)
    return LatestQuote(symbol, b, a, 100.0, 100.0, ts, ts, (b + a) / 2, 10.0, None, None)


def ctx(
    *,
    side: str = "buy",
    qty: str = "10",
    order_type: str = "limit",
    limit_price: str | None = "100",
    symbol: str = "AAPL",
    position: str = "0",
    state: str | None = "ACTIVE",
    breaker: BreakerReading = CLOSED,
    equity: str = "100000",
    daily_pnl: str = "0",
    trades_today: int = 0,
    market_values: dict[str, str] | None = None,
    latest: LatestQuote | None | str = "default",
    limits: dict[str, Any] | None = None,
) -> CheckContext:
    request = OrderRequest(
        client_order_id="c-1", symbol=symbol, side=side, qty=D(qty),  # type: ignore[arg-type]
        order_type=order_type, limit_price=None if limit_price is None else D(limit_price),  # type: ignore[arg-type]
    )  # fmt: skip
    return CheckContext(
        request=request,
        trading_state=state,
        breaker=breaker,
        position_qty=D(position),
        equity=D(equity),
        day_start_equity=D(equity) - D(daily_pnl),
        daily_pnl=D(daily_pnl),
        trades_today=trades_today,
        market_values={k: D(v) for k, v in (market_values or {}).items()},
        quote=quote(symbol=symbol) if latest == "default" else latest,  # type: ignore[arg-type]
        limits=RiskSettings(**(limits or {})),
        now_ns=NOW_NS,
    )


# ---- kill switch and breaker -----------------------------------------------------


@pytest.mark.parametrize(
    ("state", "allowed"),
    [("ACTIVE", True), ("REDUCING", True), ("HALTED", False), (None, False)],
)
def test_kill_switch_denies_halted_and_unreadable(state: str | None, allowed: bool) -> None:
    decision = check_kill_switch(ctx(state=state))
    assert decision.allowed is allowed
    assert decision.check == "kill_switch"
    if state is None:
        assert "unreadable" in decision.reason


@pytest.mark.parametrize(
    ("reading", "allowed", "words"),
    [
        (CLOSED, True, "closed"),
        (BreakerReading("broker:x", readable=True, allowed=True, state="half_open"), True, "half_open"),
        (BreakerReading("broker:x", readable=True, allowed=True, state="open", forced="closed"), True, "forced closed"),
        (BreakerReading("broker:x", readable=True, allowed=False, state="open"), False, "is open"),
        (BreakerReading("broker:x", readable=True, allowed=False, state="half_open"), False, "is half_open"),
        (BreakerReading("broker:x", readable=True, allowed=False, state="closed", forced="open"), False, "forced open"),
        (BreakerReading("broker:x", readable=False, allowed=True, state="unknown"), False, "unreadable"),
    ],
)
def test_broker_breaker_denies_open_forced_open_and_unreadable(reading: BreakerReading, allowed: bool, words: str) -> None:
    decision = check_broker_breaker(ctx(breaker=reading))
    assert decision.allowed is allowed
    assert words in decision.reason


# ---- trading state ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "side", "qty", "allowed"),
    [
        ("10", "sell", "5", True),  # shrinks a long
        ("10", "sell", "10", True),  # to flat
        ("10", "sell", "10.00000001", False),  # flips short by the smallest amount
        ("10", "buy", "1", False),  # grows
        ("0", "sell", "1", False),  # opens
        ("0", "buy", "1", False),
        ("-10", "buy", "3", True),  # shrinks a short
        ("-10", "buy", "10", True),
        ("-10", "buy", "11", False),
        ("-10", "sell", "1", False),
    ],
)
def test_reducing_passes_only_orders_that_shrink_a_position(position: str, side: str, qty: str, allowed: bool) -> None:
    decision = check_trading_state(ctx(state="REDUCING", position=position, side=side, qty=qty))
    assert decision.allowed is allowed, decision.reason


def test_active_passes_and_halted_is_denied_by_trading_state_too() -> None:
    assert check_trading_state(ctx(state="ACTIVE")).allowed
    assert not check_trading_state(ctx(state="HALTED")).allowed


# ---- price collar ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "limit_price", "allowed"),
    [
        ("buy", "101.00", True),  # exactly 1% above the mid of 100
        ("buy", "100.99", True),
        ("buy", "101.01", False),
        ("buy", "101.0000001", False),
        ("sell", "99.00", True),  # exactly 1% below
        ("sell", "98.99", False),
        ("sell", "99.01", True),
        ("buy", "99.00", True),  # a buy limit far below the mid is still inside the band
        ("buy", "98.99", False),
    ],
)
def test_price_collar_on_limit_prices_around_the_mid(side: str, limit_price: str, allowed: bool) -> None:
    decision = check_price_collar(ctx(side=side, limit_price=limit_price))
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert "collar 1.0%" in decision.reason
        assert limit_price in decision.reason


@pytest.mark.parametrize(
    ("side", "bid", "ask", "allowed"),
    [
        ("buy", "99.95", "100.05", True),
        ("buy", "99", "101", True),  # the ask is exactly 1% from the mid
        ("buy", "98.99", "101.01", False),  # the far side is 1.01% away
        ("sell", "99", "101", True),
        ("sell", "98.98", "101.02", False),
    ],
)
def test_price_collar_prices_market_orders_at_the_far_side(side: str, bid: str, ask: str, allowed: bool) -> None:
    decision = check_price_collar(ctx(side=side, order_type="market", limit_price=None, latest=quote(bid, ask)))
    assert decision.allowed is allowed, decision.reason
    assert ("ask" if side == "buy" else "bid") in decision.reason


@pytest.mark.parametrize(
    ("latest", "allowed", "words"),
    [
        (None, False, "no quote"),
        (quote(symbol="MSFT"), False, "no quote for AAPL"),
        (quote(age_s=5.0), True, ""),  # exactly the maximum age
        (quote(age_s=5.001), False, "old"),
        (quote("100.06", "100.05"), False, "crossed"),
        (quote("100", "100"), True, ""),  # locked, not crossed
        (quote("0", "100.05"), False, "non-positive"),
    ],
)
def test_price_collar_needs_a_fresh_uncrossed_quote_for_the_symbol(latest: LatestQuote | None, allowed: bool, words: str) -> None:
    decision = check_price_collar(ctx(latest=latest))
    assert decision.allowed is allowed, decision.reason
    assert words in decision.reason


def test_price_collar_setting_is_honoured() -> None:
    assert check_price_collar(ctx(limit_price="100.50", limits={"price_collar_pct": D("0.5")})).allowed
    assert not check_price_collar(ctx(limit_price="100.51", limits={"price_collar_pct": D("0.5")})).allowed


# ---- position size ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "side", "qty", "price", "allowed"),
    [
        ("0", "buy", "100", "100", True),  # $10,000.00: at the limit
        ("0", "buy", "100", "99.99", True),
        ("0", "buy", "100", "100.01", False),  # $10,001
        ("0", "buy", "100.0001", "100", False),  # $10,000.01
        ("50", "buy", "50", "100", True),
        ("50", "buy", "51", "100", False),
        ("-50", "sell", "50", "100", True),  # a short counts by its size
        ("-50", "sell", "51", "100", False),
        ("10", "sell", "110", "100", True),  # flips to -100: $10,000
        ("10", "sell", "111", "100", False),
        ("200", "sell", "50", "100", True),  # still over the limit, but shrinking
        ("0", "buy", "100000", "0.1", True),  # exactly $10,000 in decimals (0.1 x 100000 in floats is 10000.000000000002)
    ],
)
def test_position_size_after_the_trade(position: str, side: str, qty: str, price: str, allowed: bool) -> None:
    decision = check_position_size(ctx(position=position, side=side, qty=qty, limit_price=price))
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert "> limit $10,000.00" in decision.reason


def test_position_size_of_a_market_order_uses_the_ask_and_needs_a_quote() -> None:
    at_ask = ctx(qty="99", order_type="market", limit_price=None, latest=quote("101", "101.0101"))
    assert check_position_size(at_ask).allowed  # 99 x 101.0101 = 9999.9999
    over = ctx(qty="99", order_type="market", limit_price=None, latest=quote("101", "101.0102"))
    assert not check_position_size(over).allowed  # 10000.0098
    assert not check_position_size(ctx(order_type="market", limit_price=None, latest=None)).allowed


# ---- trades per day ---------------------------------------------------------------------


@pytest.mark.parametrize(("trades_today", "allowed"), [(0, True), (98, True), (99, True), (100, False), (250, False)])
def test_trades_per_day(trades_today: int, allowed: bool) -> None:
    decision = check_trades_per_day(ctx(trades_today=trades_today))
    assert decision.allowed is allowed, decision.reason


def test_trades_per_day_of_zero_allows_nothing() -> None:
    assert not check_trades_per_day(ctx(trades_today=0, limits={"max_trades_per_day": 0})).allowed


# ---- daily loss -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("daily_pnl", "position", "side", "allowed"),
    [
        ("250", "0", "buy", True),
        ("-999.99", "0", "buy", True),
        ("-1000.00", "0", "buy", True),  # exactly at the limit
        ("-1000.00000001", "0", "buy", False),
        ("-1000.01", "0", "buy", False),
        ("-5000", "0", "sell", False),  # opening a short is opening too
        ("-5000", "20", "sell", True),  # shrinking is always allowed
        ("-5000", "20", "buy", False),
    ],
)
def test_daily_loss_denies_opening_orders_once_past_the_limit(daily_pnl: str, position: str, side: str, allowed: bool) -> None:
    decision = check_daily_loss(ctx(daily_pnl=daily_pnl, position=position, side=side, qty="10"))
    assert decision.allowed is allowed, decision.reason


# ---- concentration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "qty", "allowed"),
    [
        ("0", "300", True),  # $30,000 of $100,000: exactly 30%
        ("0", "299.99", True),
        ("0", "300.01", False),
        ("100", "200", True),
        ("100", "200.0001", False),
    ],
)
def test_concentration_after_the_trade(position: str, qty: str, allowed: bool) -> None:
    decision = check_concentration(ctx(position=position, qty=qty, limit_price="100"))
    assert decision.allowed is allowed, decision.reason


def test_concentration_limit_from_a_float_setting_is_exact() -> None:
    # 0.7 as a binary float is 0.6999...; the limit must be 0.7% exactly: $0.70 of $100 passes, $0.7001 does not.
    limits = {"max_concentration_pct": 0.7}
    assert check_concentration(ctx(qty="7", limit_price="0.1", equity="100", limits=limits)).allowed
    assert not check_concentration(ctx(qty="7.001", limit_price="0.1", equity="100", limits=limits)).allowed


def test_concentration_with_no_equity_denies_opening_and_allows_shrinking() -> None:
    assert not check_concentration(ctx(equity="0")).allowed
    assert check_concentration(ctx(equity="0", position="20", side="sell", qty="5")).allowed


# ---- gross leverage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qty", "allowed"),
    [("100", True), ("99.99", True), ("100.01", False)],
)
def test_gross_leverage_after_the_trade_counts_every_position_by_its_size(qty: str, allowed: bool) -> None:
    # equity $10,000 x 2 = $20,000: MSFT long $5,000 + TSLA short $5,000 + AAPL 100 x $100 = $20,000.
    decision = check_gross_leverage(ctx(qty=qty, limit_price="100", equity="10000", market_values={"MSFT": "5000", "TSLA": "-5000"}))
    assert decision.allowed is allowed, decision.reason


def test_gross_leverage_replaces_the_symbols_own_market_value_with_its_value_after() -> None:
    # Held AAPL is $5,000 before; after buying 50 more at $100 it is $10,000 (not $15,000).
    context = ctx(position="50", qty="50", limit_price="100", equity="10000", market_values={"AAPL": "5000", "MSFT": "10000"})
    assert check_gross_leverage(context).allowed
    assert not check_gross_leverage(
        ctx(position="50", qty="50.01", limit_price="100", equity="10000", market_values={"AAPL": "5000", "MSFT": "10000"})
    ).allowed


# ---- the whole run ------------------------------------------------------------------------


def test_run_checks_passes_a_plain_order() -> None:
    decision = run_checks(ctx())
    assert decision.allowed
    assert decision.check == "all"


def test_run_checks_reports_the_first_denial_in_order() -> None:
    # Halted, breaker open, no quote, oversized: the kill switch is reported.
    everything_wrong = ctx(
        state="HALTED", breaker=BreakerReading("broker:x", readable=True, allowed=False, state="open"),
        latest=None, qty="1000", trades_today=500, daily_pnl="-99999",
    )  # fmt: skip
    assert run_checks(everything_wrong).check == "kill_switch"
    assert (
        run_checks(ctx(breaker=BreakerReading("broker:x", readable=False, allowed=True, state="unknown"), latest=None)).check
        == "broker_breaker"
    )
    assert run_checks(ctx(latest=None, qty="1000")).check == "price_collar"
    assert run_checks(ctx(qty="1000", trades_today=500)).check == "position_size"
    assert run_checks(ctx(trades_today=500, daily_pnl="-99999")).check == "trades_per_day"
    assert run_checks(ctx(daily_pnl="-99999", qty="99", equity="20000")).check == "daily_loss"
    assert run_checks(ctx(qty="99", equity="20000")).check == "concentration"
    assert run_checks(ctx(qty="99", equity="40000", market_values={"MSFT": "75000"})).check == "gross_leverage"


def test_check_names_match_the_functions_in_order() -> None:
    names = [check(ctx()).check for check in CHECKS]
    assert names == list(CHECK_NAMES)
    assert len(set(names)) == len(names) == 11
