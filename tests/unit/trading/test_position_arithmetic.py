"""The simulated broker's ledger arithmetic against hand-computed decimals: averages, realised P&L, flips, cash."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from omni_tasks.contracts.quotes import LatestQuote
from omni_tasks.trading.simulated import PositionState, apply_fill, cash_after, equity_at, fill_price, q8, quote_problem

NOW_NS = 1_773_066_600_000_000_000  # 2026-03-09 14:30 UTC


def quote(bid: str, ask: str, *, age_s: float = 0.0, symbol: str = "AAPL") -> LatestQuote:
    ts = NOW_NS - int(age_s * 1e9)
    mid = (D(bid) + D(ask)) / 2
    return LatestQuote(symbol, D(bid), D(ask), 100.0, 100.0, ts, ts, mid, 1.0, None, None)


def test_buy_from_flat_opens_at_the_fill_price_with_nothing_realised() -> None:
    assert apply_fill(PositionState(), D(10), D("100")) == PositionState(D(10), D("100"), D(0))


def test_add_to_long_averages_by_quantity() -> None:
    # (10 x 100 + 5 x 106) / 15 = 1530 / 15 = 102
    assert apply_fill(PositionState(D(10), D(100)), D(5), D(106)) == PositionState(D(15), D(102), D(0))


def test_partial_reduce_realises_on_the_closed_part_and_keeps_the_average() -> None:
    # sell 6 of 15 @ 110 against avg 102: 6 x 8 = 48
    assert apply_fill(PositionState(D(15), D(102)), D(-6), D(110)) == PositionState(D(9), D(102), D(48))


def test_flip_long_to_short_closes_at_the_price_and_opens_the_rest_there() -> None:
    # sell 14 @ 95 against 9 long @ 102: 9 x (95 - 102) = -63 realised on top of 48 -> -15; 5 short @ 95
    assert apply_fill(PositionState(D(9), D(102), D(48)), D(-14), D(95)) == PositionState(D(-5), D(95), D(-15))


def test_add_to_short_averages_and_cover_realises_reversed() -> None:
    # sell 5 more @ 97: (5 x 95 + 5 x 97) / 10 = 96
    short = apply_fill(PositionState(D(-5), D(95), D(-15)), D(-5), D(97))
    assert short == PositionState(D(-10), D(96), D(-15))
    # buy 4 @ 90 covers 4 of a short at 96: 4 x (96 - 90) = +24 -> 9
    assert apply_fill(short, D(4), D(90)) == PositionState(D(-6), D(96), D(9))


def test_flip_short_to_long_realises_the_cover_and_opens_long_at_the_price() -> None:
    # buy 10 @ 100 against 6 short @ 96: 6 x (96 - 100) = -24 -> 9 - 24 = -15; 4 long @ 100
    assert apply_fill(PositionState(D(-6), D(96), D(9)), D(10), D(100)) == PositionState(D(4), D(100), D(-15))


def test_closing_exactly_leaves_flat_with_a_zero_average() -> None:
    # sell 4 @ 101 against 4 @ 100: +4 -> -11
    assert apply_fill(PositionState(D(4), D(100), D(-15)), D(-4), D(101)) == PositionState(D(0), D(0), D(-11))


def test_a_repeating_average_is_rounded_half_even_to_eight_places() -> None:
    # (1 x 10 + 2 x 10.01) / 3 = 10.006666...
    assert apply_fill(PositionState(D(1), D(10)), D(2), D("10.01")).avg_price == D("10.00666667")


def test_fractional_quantities_stay_exact() -> None:
    state = apply_fill(PositionState(), D("0.5"), D("187.25"))
    state = apply_fill(state, D("0.25"), D("187.31"))
    # (0.5 x 187.25 + 0.25 x 187.31) / 0.75 = (93.625 + 46.8275) / 0.75 = 140.4525 / 0.75 = 187.27
    assert state == PositionState(D("0.75"), D("187.27"), D(0))


def test_zero_quantity_fill_changes_nothing() -> None:
    state = PositionState(D(3), D(50), D(7))
    assert apply_fill(state, D(0), D(60)) is state


@pytest.mark.parametrize(
    ("side", "qty", "price", "expected"),
    [("buy", "10", "187.25", "98127.50"), ("sell", "10", "187.25", "101872.50"), ("buy", "0.333", "101.01", "99966.36367")],
)
def test_cash_moves_by_exactly_qty_times_price(side: str, qty: str, price: str, expected: str) -> None:
    assert cash_after(D(100000), side, D(qty), D(price)) == D(expected)  # type: ignore[arg-type]


def test_ledger_identity_cash_plus_marked_positions_is_start_plus_realised_plus_unrealised() -> None:
    """Over a round trip through a flip, equity - start equals realised + unrealised P&L exactly."""
    start = D(100000)
    cash, state = start, PositionState()
    for side, qty, price in [("buy", 10, "100"), ("buy", 5, "106"), ("sell", 6, "110"), ("sell", 14, "95"), ("buy", 2, "93")]:
        signed = D(qty) if side == "buy" else -D(qty)
        state = apply_fill(state, signed, D(price))
        cash = cash_after(cash, side, D(qty), D(price))  # type: ignore[arg-type]
    mark = D("94")
    equity = equity_at(cash, [("AAPL", state.qty, state.avg_price)], {"AAPL": mark})
    unrealised = state.qty * (mark - state.avg_price)
    assert state == PositionState(D(-3), D(95), D(-15 + 2 * 2))  # the 2 covered at 93 against 95: +4
    assert equity - start == state.realized_pnl + unrealised == D(-8)


def test_equity_marks_a_symbol_without_a_mark_at_its_average_price() -> None:
    positions = [("AAPL", D(10), D(100)), ("MSFT", D(-2), D(400))]
    assert equity_at(D(1000), positions, {"AAPL": D("101.5")}) == D(1000) + D(1015) - D(800)


def test_q8_rounds_half_even() -> None:
    assert q8(D("1.000000005")) == D("1.00000000")
    assert q8(D("1.000000015")) == D("1.00000002")


# ---- quotes and fill prices ----------------------------------------------------------------------


def test_market_buy_fills_at_the_ask_and_sell_at_the_bid() -> None:
    q = quote("187.20", "187.25")
    assert fill_price("buy", "market", None, q) == D("187.25")
    assert fill_price("sell", "market", None, q) == D("187.20")


@pytest.mark.parametrize(
    ("side", "limit", "expected"),
    [
        ("buy", "187.25", D("187.25")),  # at the limit
        ("buy", "188", D("187.25")),  # better than the limit: the ask
        ("buy", "187.24", None),  # below the ask: rests
        ("sell", "187.20", D("187.20")),
        ("sell", "187", D("187.20")),
        ("sell", "187.21", None),
    ],
)
def test_limit_fills_only_when_marketable_at_the_quote(side: str, limit: str, expected: D | None) -> None:
    assert fill_price(side, "limit", D(limit), quote("187.20", "187.25")) == expected  # type: ignore[arg-type]


def test_quote_problem_missing_names_the_symbol() -> None:
    reason = quote_problem("AAPL", None, now_ns=NOW_NS, max_age_s=5)
    assert reason is not None
    assert "AAPL" in reason
    assert "no quote" in reason


def test_quote_problem_stale_names_the_symbol_and_the_age() -> None:
    reason = quote_problem("AAPL", quote("1", "2", age_s=12.5), now_ns=NOW_NS, max_age_s=5)
    assert reason is not None
    assert "AAPL" in reason
    assert "12.500 s old" in reason
    assert "max 5 s" in reason


def test_quote_problem_at_the_age_limit_is_fresh_and_crossed_is_refused() -> None:
    assert quote_problem("AAPL", quote("1", "2", age_s=5.0), now_ns=NOW_NS, max_age_s=5) is None
    crossed = quote_problem("AAPL", quote("2.5", "2"), now_ns=NOW_NS, max_age_s=5)
    assert crossed is not None
    assert "bid 2.5, ask 2" in crossed
