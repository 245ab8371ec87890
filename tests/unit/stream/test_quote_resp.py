"""The flush's RESP text for a symbol says exactly what quote_fields says (the text the readers parse)."""

from __future__ import annotations

import pytest

from omni_tasks.stream.microstructure import SymbolBook, quote_fields, quote_resp, quote_row, resp_bulk


def parse_bulks(text: str) -> list[str]:
    """RESP bulk strings back into their texts (lengths checked in UTF-8 bytes, as Redis reads them)."""
    data, out, pos = text.encode(), [], 0
    while pos < len(data):
        assert data[pos : pos + 1] == b"$"
        end = data.index(b"\r\n", pos)
        length = int(data[pos + 1 : end])
        value = data[end + 2 : end + 2 + length]
        assert data[end + 2 + length : end + 4 + length] == b"\r\n"
        out.append(value.decode())
        pos = end + 4 + length
    return out


def book(symbol: str, bid: float, ask: float, bid_size: float, ask_size: float, ts: int = 1_709_303_400_123_456_789) -> SymbolBook:
    b = SymbolBook(symbol)
    b.bid, b.ask, b.bid_size, b.ask_size, b.ts, b.recv = bid, ask, bid_size, ask_size, ts, ts + 250_000_000
    return b


@pytest.mark.parametrize(
    "made",
    [
        book("AAA", 187.23, 187.25, 2, 3),  # int sizes, as Alpaca sends them: "2", not "2.0"
        book("PENNY", 0.0101, 0.0102, 50_000, 70_000),
        book("LOCK", 100.0, 100.0, 1, 1),
        book("INTP", 100, 101, 1, 1),  # int prices
        book("ZERO", 10.0, 10.01, 1, 1, ts=0),  # no exchange time: liquidity 0, as SymbolBook.liquidity says
        book("ÜNI", 10.0, 10.01, 1, 1),  # a symbol that is not ASCII: its length is counted in bytes
    ],
)
def test_quote_resp_carries_the_symbol_and_quote_fields(made: SymbolBook) -> None:
    for _ in range(2):  # the second time from the caches
        assert parse_bulks(quote_resp(made, resp_bulk(made.symbol))) == [made.symbol, *quote_fields(made)]
    assert quote_row(made) == "|".join(quote_fields(made))


def test_quote_fields_match_the_books_microstructure_with_trades() -> None:
    made = book("AAA", 187.23, 187.25, 2, 3)
    made.trade_pv, made.trade_volume = 187.24 * 100 + 187.26 * 300, 400.0
    fields = quote_fields(made)
    assert fields[6] == repr(round(made.mid, 6)) == "187.24"
    assert fields[7] == f"{made.spread_bps:.4f}"
    assert fields[8] == f"{made.vwap:.6f}" == "187.255000"
    assert fields[9] == f"{made.liquidity:.4f}"
    assert parse_bulks(quote_resp(made, resp_bulk("AAA")))[1:] == list(fields)


def test_ints_and_floats_of_equal_value_keep_their_own_text() -> None:
    """2 == 2.0 as a dict key: the cache of floats' texts must never answer for an int, nor the other way."""
    as_float, as_int = book("AAA", 100.0, 101.0, 2.0, 3.0), book("AAA", 100, 101, 2, 3)
    for made in (as_float, as_int, as_float, as_int):
        assert parse_bulks(quote_resp(made, resp_bulk("AAA")))[1:5] == list(quote_fields(made)[:4])
    assert quote_fields(as_float)[:4] == ("100.0", "101.0", "2.0", "3.0")
    assert quote_fields(as_int)[:4] == ("100", "101", "2", "3")
