"""The trading-status checks: a halted symbol is denied with its code, reason and since; a limit price outside
today's LULD band is denied (inclusive band); a market order only in a limit state; the order of the checks."""

from __future__ import annotations

from decimal import Decimal

from omni_tasks.contracts.quotes import LatestQuote, TradingStatus, parse_trading_status
from omni_tasks.contracts.venue import OrderRequest
from omni_tasks.settings import RiskSettings
from omni_tasks.trading.checks import BreakerReading, CheckContext, check_luld_band, check_symbol_halted, run_checks

D = Decimal
NOW_NS = 1_750_000_000_000_000_000  # 2025-06-15T15:06:40Z
HALT_NS = NOW_NS - 60 * 1_000_000_000  # 15:05:40Z
CLOSED = BreakerReading("broker:simulated", readable=True, allowed=True, state="closed")


def quote(bid: str = "99.95", ask: str = "100.05", symbol: str = "AAPL") -> LatestQuote:
    b, a = D(bid), D(ask)
    return LatestQuote(symbol, b, a, 100.0, 100.0, NOW_NS, NOW_NS, (b + a) / 2, 10.0, None, None)


def status(state: str = "HALTED", *, symbol: str = "AAPL", up: str = "0", down: str = "0", luld_ns: int = 0) -> TradingStatus:
    return TradingStatus(
        symbol=symbol, state=state, code="H", message="Trading Halt", reason="T1", reason_message="Halt News Pending",
        since_ns=HALT_NS, ts_ns=HALT_NS, tape="C", luld_up=D(up), luld_down=D(down), luld_indicator="B", luld_ts_ns=luld_ns,
    )  # fmt: skip


def ctx(
    st: TradingStatus | None, *, side: str = "buy", order_type: str = "limit", limit: str | None = "100", q: LatestQuote | None = None
) -> CheckContext:
    request = OrderRequest(
        client_order_id="c-1", symbol="AAPL", side=side, qty=D(10),  # type: ignore[arg-type]
        order_type=order_type, limit_price=None if limit is None else D(limit),  # type: ignore[arg-type]
    )  # fmt: skip
    return CheckContext(
        request=request, trading_state="ACTIVE", breaker=CLOSED, position_qty=D(0), equity=D(100_000), day_start_equity=D(100_000),
        daily_pnl=D(0), trades_today=0, market_values={}, quote=q if q is not None else quote(), limits=RiskSettings(), now_ns=NOW_NS,
        symbol_status=st,
    )  # fmt: skip


def test_a_halted_symbol_is_denied_naming_code_reason_and_since() -> None:
    decision = check_symbol_halted(ctx(status("HALTED")))
    assert not decision.allowed
    assert decision.reason == "AAPL is halted: status H, reason T1 (Trading Halt; Halt News Pending) since 2025-06-15T15:05:40Z"


def test_quotation_only_still_denies_and_trading_or_unknown_passes() -> None:
    quoting = check_symbol_halted(ctx(status("QUOTING")))
    assert not quoting.allowed
    assert "quotation only" in quoting.reason
    assert check_symbol_halted(ctx(status("TRADING"))).allowed
    assert check_symbol_halted(ctx(status(""))).allowed  # only a LULD band was ever seen
    assert check_symbol_halted(ctx(None)).reason == "no trading status seen for AAPL: trading assumed"
    assert check_symbol_halted(ctx(status("HALTED", symbol="MSFT"))).allowed  # another symbol's status does not apply


def test_an_unreadable_stored_status_counts_as_halted() -> None:
    unreadable = parse_trading_status("AAPL", {b"state": b"HALTED", b"since": b"not-a-number"})
    assert unreadable is not None
    assert unreadable.state == "UNREADABLE"
    assert unreadable.halted
    decision = check_symbol_halted(ctx(unreadable))
    assert not decision.allowed
    assert "cannot be read" in decision.reason
    assert parse_trading_status("AAPL", {}) is None


def test_a_halt_denies_before_the_collar_even_without_a_quote() -> None:
    """A halted symbol gets no quotes (its quote expired): the denial names the halt, not the missing quote."""
    c = ctx(status("HALTED"))
    c = CheckContext(**{**c.__dict__, "quote": None})
    decision = run_checks(c)
    assert (decision.allowed, decision.check) == (False, "symbol_halted")


def test_limit_prices_against_the_band_are_inclusive() -> None:
    st = status("TRADING", up="105.00", down="95.00", luld_ns=NOW_NS - 1_000_000_000)
    assert check_luld_band(ctx(st, limit="105.00")).allowed
    assert check_luld_band(ctx(st, limit="95.00", side="sell")).allowed
    over = check_luld_band(ctx(st, limit="105.01"))
    assert not over.allowed
    assert over.reason.startswith("limit price 105.01 is above limit up 105")
    under = check_luld_band(ctx(st, limit="94.99", side="sell"))
    assert not under.allowed
    assert "below limit down 95" in under.reason
    # run_checks: the band denies before the collar would (105.01 is also 5% from the mid)
    assert run_checks(ctx(st, limit="105.01")).check == "luld_band"


def test_a_band_from_another_day_or_no_band_is_not_applied() -> None:
    yesterday = status("TRADING", up="105", down="95", luld_ns=NOW_NS - 86_400 * 1_000_000_000)
    assert check_luld_band(ctx(yesterday, limit="200")).allowed
    assert check_luld_band(ctx(status("TRADING"), limit="200")).allowed  # bands 0: none seen
    assert check_luld_band(ctx(None, limit="200")).allowed


def test_market_orders_pass_the_band_except_into_a_limit_state() -> None:
    st = status("TRADING", up="105.00", down="95.00", luld_ns=NOW_NS)
    assert check_luld_band(ctx(st, order_type="market", limit=None)).allowed
    limit_up = check_luld_band(ctx(st, order_type="market", limit=None, q=quote("105.00", "105.00")))
    assert not limit_up.allowed
    assert limit_up.reason.startswith("limit-up state")
    assert check_luld_band(ctx(st, order_type="market", limit=None, side="sell", q=quote("105.00", "105.00"))).allowed
    limit_down = check_luld_band(ctx(st, order_type="market", limit=None, side="sell", q=quote("95.00", "95.00")))
    assert not limit_down.allowed
    assert limit_down.reason.startswith("limit-down state")
