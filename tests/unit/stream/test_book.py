"""The per-symbol book against hand-computed values, every reject reason, trading days, bars, the Redis
row, and a property test over shuffled streams: a crossed, zero-size or stale quote is never served."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_tasks.stream.book import Books
from omni_tasks.stream.microstructure import MAX_PRICE, REJECT_REASONS, quote_row
from omni_tasks.stream.wire import decode_frame, encode_frame

S = 1_000_000_000  # one second in ns
T0 = 1_709_303_400 * S  # 2024-03-01T14:30:00Z, the US open (09:30 New York)
NEXT_DAY_SPLIT = 1_709_352_000 * S  # 2024-03-02T04:00:00Z: trading days split at 04:00 UTC
RECV = T0 + 500_000_000


def q(ts: Any, bid: Any, bid_size: Any, ask: Any, ask_size: Any, symbol: Any = "XYZ", **extra: Any) -> dict[str, Any]:
    message = {
        "T": "q",
        "S": symbol,
        "bx": "V",
        "bp": bid,
        "bs": bid_size,
        "ax": "V",
        "ap": ask,
        "as": ask_size,
        "c": ["R"],
        "z": "C",
        "t": ts,
    }
    message.update(extra)
    return message


def trade(ts: Any, price: Any, size: Any, symbol: str = "XYZ") -> dict[str, Any]:
    return {"T": "t", "S": symbol, "i": 1, "x": "V", "p": price, "s": size, "c": ["@"], "z": "C", "t": ts}


def bar(ts: Any, close: float, kind: str = "b", symbol: str = "XYZ") -> dict[str, Any]:
    return {"T": kind, "S": symbol, "o": close - 1, "h": close + 1, "l": close - 2, "c": close, "v": 1000, "n": 10, "vw": close, "t": ts}


def no_rejects(**counts: int) -> dict[str, int]:
    return {reason: counts.get(reason, 0) for reason in REJECT_REASONS}


def test_hand_computed_sequence_for_one_symbol() -> None:
    books = Books()

    # 1. A sane quote: served.
    #    mid = (249.95 + 250.05) / 2 = 250.00; spread = 0.10 / 250.00 * 10,000 = 4.0 bp
    #    spread part = 1 / (1 + 4.0 / 10) = 1 / 1.4 = 0.7142857
    #    notional at the touch = 249.95 * 400 + 250.05 * 400 = 99,980 + 100,020 = 200,000
    #    depth part = ln(1 + 200,000) / ln(1 + 1,000,000) = 12.2060776 / 13.8155116 = 0.8835053
    #    liquidity = 0.7142857 * 0.8835053 = 0.6310752
    assert books.apply([q(T0, 249.95, 400, 250.05, 400)], RECV) == []
    book = books.books["XYZ"]
    assert (book.bid, book.ask, book.bid_size, book.ask_size, book.ts, book.recv) == (249.95, 250.05, 400, 400, T0, RECV)
    assert book.mid == 250.0
    assert book.spread_bps == pytest.approx(4.0, abs=1e-9)
    assert book.liquidity == pytest.approx(0.6310752, abs=1e-7)
    assert [b.symbol for b in books.take_dirty()] == ["XYZ"]
    assert books.take_dirty() == []

    # 2-4. Crossed (250.10 > 250.00) and zero / negative sizes: counted, not served, even though newer.
    books.apply([q(T0 + S, 250.10, 100, 250.00, 100), q(T0 + S, 249.98, 0, 250.02, 100), q(T0 + S, 249.98, 100, 250.02, -5)], RECV)
    assert (book.bid, book.ask, book.ts) == (249.95, 250.05, T0)
    assert books.take_dirty() == []

    # 5. A locked market (bid == ask) is served.
    #    mid = 250.00, spread = 0 bp, spread part = 1 / (1 + 0) = 1
    #    notional = 250 * 100 + 250 * 100 = 50,000; depth part = ln(50,001) / ln(1,000,001) = 10.8197983 / 13.8155116 = 0.7831631
    #    liquidity = 1 * 0.7831631 = 0.7831631
    books.apply([q(T0 + 2 * S, 250.00, 100, 250.00, 100)], RECV + 1)
    assert (book.bid, book.ask, book.ts, book.recv) == (250.0, 250.0, T0 + 2 * S, RECV + 1)
    assert book.mid == 250.0
    assert book.spread_bps == 0.0
    assert book.liquidity == pytest.approx(0.7831631, abs=1e-7)

    # 6. A sane quote older than the served one: out of order, not served.
    books.apply([q(T0 + S, 249.90, 100, 250.10, 100)], RECV + 2)
    assert (book.bid, book.ask, book.ts, book.recv) == (250.0, 250.0, T0 + 2 * S, RECV + 1)

    # 7-10. Zero, negative, NaN and infinite prices; 11-13. malformed: a missing field, a string price, a float timestamp.
    books.apply(
        [
            q(T0 + 3 * S, 0.0, 100, 250.02, 100),
            q(T0 + 3 * S, 249.98, 100, -250.0, 100),
            q(T0 + 3 * S, math.nan, 100, 250.02, 100),
            q(T0 + 3 * S, 249.98, 100, math.inf, 100),
            {k: v for k, v in q(T0 + 3 * S, 249.98, 100, 250.02, 100).items() if k != "as"},
            q(T0 + 3 * S, "249.98", 100, 250.02, 100),
            q(float(T0 + 3 * S), 249.98, 100, 250.02, 100),
        ],
        RECV + 3,
    )
    assert (book.bid, book.ask, book.ts) == (250.0, 250.0, T0 + 2 * S)

    # 14. The last sane quote: served.
    #    mid = (249.99 + 250.01) / 2 = 250.00; spread = 0.02 / 250.00 * 10,000 = 0.8 bp
    #    spread part = 1 / (1 + 0.8 / 10) = 1 / 1.08 = 0.9259259
    #    notional = 249.99 * 300 + 250.01 * 500 = 74,997 + 125,005 = 200,002
    #    depth part = ln(200,003) / ln(1,000,001) = 12.2060876 / 13.8155116 = 0.8835060
    #    liquidity = 0.9259259 * 0.8835060 = 0.8180611
    books.apply([q(T0 + 3 * S, 249.99, 300, 250.01, 500)], RECV + 4)

    # Trades of the day. The profile's bucket is 5 bp of the day's first price: 250.00 * 0.0005 = 0.125.
    #    250.00 x 100 -> bucket [250.000, 250.125)    250.10 x 300 -> [250.000, 250.125)
    #    249.90 x 200 -> bucket [249.875, 250.000)    250.20 x 500 -> [250.125, 250.250)
    #    VWAP = (25,000 + 75,030 + 49,980 + 125,100) / (100 + 300 + 200 + 500) = 275,110 / 1,100 = 250.10
    #    profile: 250.125 -> 500, 250.000 -> 400, 249.875 -> 200; point of control 250.125
    books.apply(
        [trade(T0 + 4 * S, 250.00, 100), trade(T0 + 5 * S, 250.10, 300), trade(T0 + 7 * S, 249.90, 200), trade(T0 + 6 * S, 250.20, 500)],
        RECV + 5,
    )

    assert (book.bid, book.ask, book.bid_size, book.ask_size, book.ts, book.recv) == (249.99, 250.01, 300, 500, T0 + 3 * S, RECV + 4)
    assert book.mid == 250.0
    assert book.spread_bps == pytest.approx(0.8, abs=1e-9)
    assert book.liquidity == pytest.approx(0.8180611, abs=1e-7)
    assert book.vwap == pytest.approx(250.10, abs=1e-9)
    assert book.trades == 4
    assert book.profile_width == 0.125
    assert book.volume_profile() == [(250.125, 500.0), (250.0, 400.0), (249.875, 200.0)]
    assert book.volume_profile(levels=1) == [(250.125, 500.0)]
    assert book.point_of_control == 250.125
    assert (book.last_trade_price, book.last_trade_ts) == (249.90, T0 + 7 * S)  # the latest print, not the last applied

    assert book.rejected == {"crossed": 1, "zero_size": 2, "bad_price": 4, "out_of_order": 1, "malformed": 3}
    assert books.counts == {
        "messages": 18,
        "quotes": 14,
        "served": 3,
        "trades": 4,
        "bars": 0,
        "statuses": 0,
        "lulds": 0,
        "corrections": 0,
        "cancels": 0,
        "unknown_trade": 0,
        "repeats": 0,
        "ignored": 0,
        "crossed": 1,
        "zero_size": 2,
        "bad_price": 4,
        "out_of_order": 1,
        "malformed": 3,
    }

    assert quote_row(book) == f"249.99|250.01|300|500|{T0 + 3 * S}|{RECV + 4}|250.0|0.8000|250.100000|0.8181"


def test_quote_row_follows_the_latest_contract_field_order_and_leaves_vwap_empty_without_trades() -> None:
    books = Books()
    # mid = 100.00; spread = 0.10 / 100 * 10,000 = 10 bp -> spread part 1 / (1 + 1) = 0.5;
    # notional = 99.95 * 5,000 + 100.05 * 5,000 = 1,000,000 -> depth part 1 (capped); liquidity 0.5.
    books.apply([q(T0, 99.95, 5000, 100.05, 5000, symbol="DEEP")], RECV)
    book = books.books["DEEP"]
    assert book.vwap is None
    assert book.point_of_control is None
    assert book.volume_profile() == []
    # The ten fields of omni_tasks.contracts.quotes in its order, joined by "|" (one script argument per symbol).
    assert quote_row(book) == f"99.95|100.05|5000|5000|{T0}|{RECV}|100.0|10.0000||0.5000"


def test_liquidity_falls_with_a_wider_spread_and_a_thinner_touch() -> None:
    books = Books()
    books.apply(
        [
            q(T0, 99.95, 5000, 100.05, 5000, symbol="TIGHT_DEEP"),
            q(T0, 99.50, 5000, 100.50, 5000, symbol="WIDE_DEEP"),  # 100 bp: spread part 1 / 11
            q(T0, 99.95, 1, 100.05, 1, symbol="TIGHT_THIN"),  # $200 shown: depth part ln(201) / ln(1,000,001) = 5.3033 / 13.8155 = 0.38387
        ],
        RECV,
    )
    liq = {s: b.liquidity for s, b in books.books.items()}
    assert liq["TIGHT_DEEP"] == pytest.approx(0.5, abs=1e-9)
    assert liq["WIDE_DEEP"] == pytest.approx(1 / 11, abs=1e-9)
    assert liq["TIGHT_THIN"] == pytest.approx(0.5 * 0.383866, abs=1e-6)
    assert Books().book("NONE").liquidity == 0.0


SERVED = q(T0, 249.95, 400, 250.05, 400)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (q(T0 + S, 250.10, 100, 250.00, 100), "crossed"),
        (q(T0 + S, 250.0000001, 100, 250.0, 100), "crossed"),
        (q(T0 + S, 249.98, 0, 250.02, 100), "zero_size"),
        (q(T0 + S, 249.98, 100, 250.02, 0.0), "zero_size"),
        (q(T0 + S, 249.98, -1, 250.02, 100), "zero_size"),
        (q(T0 + S, 249.98, math.nan, 250.02, 100), "zero_size"),
        (q(T0 + S, 0.0, 100, 250.02, 100), "bad_price"),
        (q(T0 + S, 249.98, 100, 0, 100), "bad_price"),
        (q(T0 + S, -249.98, 100, 250.02, 100), "bad_price"),
        (q(T0 + S, math.nan, 100, 250.02, 100), "bad_price"),
        (q(T0 + S, 249.98, 100, math.nan, 100), "bad_price"),
        (q(T0 + S, 249.98, 100, math.inf, 100), "bad_price"),
        (q(T0 + S, -math.inf, 100, 250.02, 100), "bad_price"),
        (q(T0 + S, 249.98, 100, MAX_PRICE * 2, 100), "bad_price"),
        (q(T0 - 1, 249.98, 100, 250.02, 100), "out_of_order"),
        ({k: v for k, v in q(T0 + S, 249.98, 100, 250.02, 100).items() if k != "bp"}, "malformed"),
        ({k: v for k, v in q(T0 + S, 249.98, 100, 250.02, 100).items() if k != "t"}, "malformed"),
        (q(T0 + S, "249.98", 100, 250.02, 100), "malformed"),
        (q(T0 + S, 249.98, "100", 250.02, 100), "malformed"),
        (q(T0 + S, None, 100, 250.02, 100), "malformed"),
        (q(float(T0 + S), 249.98, 100, 250.02, 100), "malformed"),
        (q("2024-03-01T14:30:01Z", 249.98, 100, 250.02, 100), "malformed"),  # a timestamp the wire did not convert
    ],
)
def test_each_reject_reason_is_counted_and_never_served(message: dict[str, Any], reason: str) -> None:
    books = Books()
    books.apply([SERVED], RECV)
    books.take_dirty()
    book = books.books["XYZ"]
    books.apply([message], RECV + 1)

    assert (book.bid, book.ask, book.bid_size, book.ask_size, book.ts, book.recv) == (249.95, 250.05, 400, 400, T0, RECV)
    assert book.rejected == no_rejects(**{reason: 1})
    assert {r: books.counts[r] for r in REJECT_REASONS} == no_rejects(**{reason: 1})
    assert books.counts["served"] == 1
    assert books.take_dirty() == []


def test_every_quote_of_a_known_symbol_counts_in_its_book() -> None:
    books = Books()
    books.apply([SERVED, {k: v for k, v in q(T0 + S, 249.98, 100, 250.02, 100).items() if k != "as"}, q(T0 + S, "x", 1, 1.0, 1)], RECV)
    book = books.books["XYZ"]
    assert book.rejected["malformed"] == 2
    assert book.quotes == 3


@pytest.mark.parametrize(
    "message",
    [
        q(T0, 250.10, 100, 250.00, 100),
        q(T0, 249.98, 0, 250.02, 100),
        q(T0, math.inf, 100, 250.02, 100),
        q(1.5, 249.98, 100, 250.02, 100),
    ],
)
def test_a_rejected_first_quote_leaves_the_symbol_without_a_served_quote(message: dict[str, Any]) -> None:
    books = Books()
    books.apply([message], RECV)
    assert not books.book("XYZ").has_quote
    assert books.take_dirty() == []
    assert books.counts["served"] == 0


@pytest.mark.parametrize("symbol", [None, 42, ["XYZ"]])
def test_quote_without_a_usable_symbol_is_malformed_and_creates_no_book(symbol: Any) -> None:
    books = Books()
    books.apply([q(T0, 249.98, 100, 250.02, 100, symbol=symbol)], RECV)
    assert books.counts["malformed"] == 1
    assert books.books == {}
    assert books.take_dirty() == []


def test_equal_timestamps_serve_the_later_applied_quote() -> None:
    books = Books()
    books.apply([q(T0, 249.95, 400, 250.05, 400), q(T0, 249.96, 100, 250.04, 200)], RECV)
    book = books.books["XYZ"]
    assert (book.bid, book.ask, book.bid_size, book.ask_size) == (249.96, 250.04, 100, 200)
    assert books.counts["served"] == 2
    assert book.rejected == no_rejects()


def test_control_messages_are_returned_in_order_and_every_kind_is_counted() -> None:
    books = Books()
    controls = books.apply(
        [
            {"T": "success", "msg": "authenticated"},
            {"T": "s", "S": "XYZ", "sc": "H", "t": T0},
            q(T0, 249.95, 400, 250.05, 400),
            {"T": "subscription", "quotes": ["XYZ"]},
            {"T": "l", "S": "XYZ", "u": 260.0, "d": 240.0, "t": T0},
            {"T": "c", "S": "XYZ", "t": T0},
            {"T": "x", "S": "XYZ", "t": T0},
            {"T": "error", "code": 406, "msg": "connection limit exceeded"},
            {"no": "type"},
        ],
        RECV,
    )
    assert controls == [
        {"T": "success", "msg": "authenticated"},
        {"T": "subscription", "quotes": ["XYZ"]},
        {"T": "error", "code": 406, "msg": "connection limit exceeded"},
    ]
    # The halt and the band apply; a correction and a cancel without their fields are malformed; no T is unknown.
    assert (books.counts["statuses"], books.counts["lulds"], books.counts["malformed"], books.counts["ignored"]) == (1, 1, 2, 1)
    assert books.statuses["XYZ"].state == "HALTED"
    assert {k: v for k, v in books.kinds.items() if v} == {
        "success": 1, "s": 1, "q": 1, "subscription": 1, "l": 1, "c": 1, "x": 1, "error": 1, "unknown": 1,
    }  # fmt: skip
    assert books.counts["messages"] == 9
    assert books.counts["served"] == 1


# --- trades: trading days, VWAP and the profile


def test_trade_from_an_earlier_trading_day_is_rejected_and_leaves_the_vwap_alone() -> None:
    books = Books()
    books.apply([trade(T0, 250.00, 100), trade(T0 + S, 250.20, 100)], RECV)
    book = books.books["XYZ"]
    assert book.vwap == pytest.approx(250.10, abs=1e-9)  # (25,000 + 25,020) / 200

    books.apply([trade(T0 - 20 * 3600 * S, 200.00, 1000)], RECV)  # 2024-02-29T18:30Z: the previous trading day
    assert book.vwap == pytest.approx(250.10, abs=1e-9)
    assert (book.trades, book.trade_volume) == (2, 200)
    assert books.counts["out_of_order"] == 1
    assert books.counts["trades"] == 3  # received, whatever became of it


def test_trading_day_splits_at_0400_utc_and_resets_vwap_and_profile() -> None:
    books = Books()
    books.apply([trade(T0, 250.00, 100), trade(T0 + S, 250.20, 100)], RECV)
    book = books.books["XYZ"]

    # 03:59:59.999999999 UTC on the next calendar day is still the same trading day (the evening session's end).
    books.apply([trade(NEXT_DAY_SPLIT - 1, 250.30, 200)], RECV)
    assert book.vwap == pytest.approx(250.20, abs=1e-9)  # (25,000 + 25,020 + 50,060) / 400 = 100,080 / 400
    assert book.trade_volume == 400

    # 04:00:00 UTC: a new trading day; the VWAP restarts, the profile restarts with a width from the new first price
    # (5 bp of 500.00 = 0.25).
    books.apply([trade(NEXT_DAY_SPLIT, 500.00, 10)], RECV)
    assert book.vwap == 500.0
    assert book.trade_volume == 10
    assert book.profile_width == 0.25
    assert book.volume_profile() == [(500.0, 10.0)]
    assert book.point_of_control == 500.0

    # And the day just finished is closed for late prints.
    books.apply([trade(NEXT_DAY_SPLIT - 1, 250.30, 200)], RECV)
    assert book.vwap == 500.0
    assert books.counts["out_of_order"] == 1


def test_profile_width_is_at_least_one_cent() -> None:
    books = Books()
    books.apply([trade(T0, 4.00, 100)], RECV)  # 5 bp of $4 is 0.2 cents
    assert books.books["XYZ"].profile_width == 0.01


@pytest.mark.parametrize(
    "message",
    [
        {k: v for k, v in trade(T0, 250.0, 100).items() if k != "p"},
        trade(T0, "250.0", 100),
        trade(T0, 250.0, 0),
        trade(T0, 0.0, 100),
        trade(T0, math.nan, 100),
        trade(T0, math.inf, 100),
        trade(float(T0), 250.0, 100),
    ],
)
def test_malformed_or_insane_trade_is_counted_and_not_in_the_vwap(message: dict[str, Any]) -> None:
    books = Books()
    books.apply([trade(T0, 100.0, 10), message], RECV)
    book = books.books["XYZ"]
    assert book.vwap == 100.0
    assert book.trades == 1
    assert books.counts["malformed"] == 1


@pytest.mark.parametrize(
    ("prints", "expected"),
    [
        # width 5 bp of 100.00 = 0.05: both prints fall in [100.00, 100.05)
        ([(100.00, 100), (100.03, 50)], [(100.0, 150.0)]),
        # width one cent (5 bp of 10.00 is half a cent): each print is its own bucket
        ([(10.00, 100), (10.03, 50)], [(10.0, 100.0), (10.03, 50.0)]),
    ],
)
def test_print_on_a_bucket_edge_counts_in_that_bucket(prints: list[tuple[float, int]], expected: list[tuple[float, float]]) -> None:
    books = Books()
    books.apply([trade(T0 + i, price, size) for i, (price, size) in enumerate(prints)], RECV)
    book = books.books["XYZ"]
    assert book.volume_profile() == expected
    assert book.point_of_control == expected[0][0]


# --- bars


def test_bars_are_stored_newest_first_and_older_bars_rejected() -> None:
    books = Books()
    books.apply([bar(T0, 250.0)], RECV)
    book = books.books["XYZ"]
    assert book.bar == {"t": T0, "o": 249.0, "h": 251.0, "l": 248.0, "c": 250.0, "v": 1000}
    assert [b.symbol for b in books.take_dirty_bars()] == ["XYZ"]
    assert books.take_dirty() == []  # a bar is not a quote

    books.apply([bar(T0 - 60 * S, 240.0)], RECV)  # the previous minute's bar, late
    assert book.bar["c"] == 250.0
    assert books.counts["out_of_order"] == 1
    assert books.take_dirty_bars() == []

    books.apply([bar(T0, 250.5, kind="u")], RECV)  # an updated bar for the same minute replaces it
    assert book.bar["c"] == 250.5
    books.apply([bar(T0 + 60 * S, 251.0, kind="d")], RECV)  # a daily bar is not a minute bar: not stored there
    assert book.bar["c"] == 250.5
    assert books.counts["ignored"] == 1
    books.apply([bar(T0 + 60 * S, 251.0)], RECV)  # the next minute
    assert book.bar["c"] == 251.0
    assert books.counts["bars"] == 3

    books.apply([{k: v for k, v in bar(T0 + 120 * S, 252.0).items() if k != "v"}, bar(float(T0 + 120 * S), 252.0)], RECV)
    assert book.bar["c"] == 251.0
    assert books.counts["malformed"] == 2


# --- shuffled streams: crossed, zero-size or stale quotes are never served

SYMBOLS = ("AAA", "BBB", "CCC")
LOW, HIGH = (99.98, 99.99, 100.00), (100.00, 100.01, 100.02)  # bid from LOW and ask from HIGH: never crossed


@st.composite
def one_quote(draw: st.DrawFn, symbol: str, ts: int) -> dict[str, Any]:
    """A sane quote half the time (locked when both are 100.00), else crossed, zero-size or with a bad price."""
    kind = draw(st.sampled_from(("sane", "sane", "sane", "crossed", "zero_size", "bad_price")))
    bid, ask = draw(st.sampled_from(LOW)), draw(st.sampled_from(HIGH))
    bid_size, ask_size = draw(st.sampled_from((1, 100, 300))), draw(st.sampled_from((100, 500)))
    if kind == "crossed":
        bid, ask = draw(st.sampled_from(HIGH[1:])), draw(st.sampled_from(LOW))
    elif kind == "zero_size":
        if draw(st.booleans()):
            bid_size = draw(st.sampled_from((0, -1, math.nan)))
        else:
            ask_size = 0.0
    elif kind == "bad_price":
        bad = draw(st.sampled_from((0.0, -100.0, math.nan, math.inf, MAX_PRICE * 10)))
        if draw(st.booleans()):
            bid = bad
        else:
            ask = bad
    return q(ts, bid, bid_size, ask, ask_size, symbol=symbol)


@st.composite
def quote_stream(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Per-symbol quote sequences in time order, ties in time included, concatenated (shuffled by the test)."""
    stream = []
    for symbol in SYMBOLS:
        for offset in sorted(draw(st.lists(st.integers(min_value=1, max_value=40), max_size=25))):
            stream.append(draw(one_quote(symbol, T0 + offset * S)))
    return stream


def to_wire(messages: list[dict[str, Any]], binary: bool) -> bytes | str:
    """The frame as Alpaca sends it: msgpack with Timestamp ext values, or JSON with RFC 3339 nanosecond strings."""
    if binary:
        return encode_frame([{**m, "t": msgpack.Timestamp.from_unix_nano(m["t"])} for m in messages])
    return encode_frame([{**m, "t": _rfc3339(m["t"])} for m in messages], binary=False)


def _rfc3339(ts_ns: int) -> str:
    seconds, nanos = divmod(ts_ns, S)
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", f".{nanos:09d}Z")


def sane(m: dict[str, Any]) -> bool:
    return 0 < m["bp"] < MAX_PRICE and 0 < m["ap"] < MAX_PRICE and m["bs"] > 0 and m["as"] > 0 and m["bp"] <= m["ap"]


def reason_of(m: dict[str, Any]) -> str:
    if not (0 < m["bp"] < MAX_PRICE and 0 < m["ap"] < MAX_PRICE):
        return "bad_price"
    if not (m["bs"] > 0 and m["as"] > 0):
        return "zero_size"
    return "crossed" if m["bp"] > m["ap"] else "ok"


TOTALS: Counter[str] = Counter()


@settings(max_examples=300, deadline=None)
@given(quote_stream(), st.randoms(use_true_random=False), st.lists(st.integers(min_value=1, max_value=8), min_size=1), st.booleans())
def check_shuffled_stream(stream: list[dict[str, Any]], rnd: random.Random, frame_sizes: list[int], binary: bool) -> None:
    rnd.shuffle(stream)
    books = Books()
    applied: list[dict[str, Any]] = []
    expected_rejects: dict[str, Counter[str]] = {s: Counter() for s in SYMBOLS}
    position = frame = 0
    while position < len(stream):
        chunk = stream[position : position + frame_sizes[frame % len(frame_sizes)]]
        position += len(chunk)
        frame += 1
        books.apply(decode_frame(to_wire(chunk, binary)), RECV + frame)

        for m in chunk:
            earlier_sane = [a["t"] for a in applied if a["S"] == m["S"] and sane(a)]
            reason = reason_of(m)
            if reason == "ok" and earlier_sane and m["t"] < max(earlier_sane):
                reason = "out_of_order"
            if reason != "ok":
                expected_rejects[m["S"]][reason] += 1
            applied.append(m)
            TOTALS["quotes"] += 1
            TOTALS[reason] += 1

        for symbol in SYMBOLS:
            book = books.books.get(symbol)
            if book is not None:
                assert book.rejected == {r: expected_rejects[symbol][r] for r in REJECT_REASONS}
            candidates = [a for a in applied if a["S"] == symbol and sane(a)]
            if not candidates:
                assert book is None or not book.has_quote
                continue
            assert book is not None
            TOTALS["observations"] += 1
            if not (0 < book.bid <= book.ask < MAX_PRICE):
                TOTALS["crossed_served"] += 1
            if not (book.bid_size > 0 and book.ask_size > 0):
                TOTALS["zero_size_served"] += 1
            latest = max(a["t"] for a in candidates)
            if book.ts < latest:
                TOTALS["stale_served"] += 1
            # The latest sane quote seen; among equal timestamps, the one applied last.
            want = [a for a in candidates if a["t"] == latest][-1]
            served = (book.bid, book.bid_size, book.ask, book.ask_size, book.ts)
            assert served == (want["bp"], want["bs"], want["ap"], want["as"], want["t"]), (symbol, served, want)
    TOTALS["frames"] += frame


def test_shuffled_streams_never_serve_a_crossed_zero_size_or_stale_quote() -> None:
    TOTALS.clear()
    check_shuffled_stream()
    n = TOTALS["observations"]
    print(
        f"\ncrossed served: {TOTALS['crossed_served']} of {n}, zero-size served: {TOTALS['zero_size_served']} of {n}, "
        f"stale served: {TOTALS['stale_served']} of {n} "
        f"(served quotes checked after each of {TOTALS['frames']} frames; {TOTALS['quotes']} quotes applied: "
        f"{TOTALS['crossed']} crossed, {TOTALS['zero_size']} zero size, {TOTALS['bad_price']} bad price, "
        f"{TOTALS['out_of_order']} out of order)"
    )
    assert TOTALS["crossed_served"] == 0
    assert TOTALS["zero_size_served"] == 0
    assert TOTALS["stale_served"] == 0
    # The streams did exercise every path.
    assert n > 1000
    assert min(TOTALS["crossed"], TOTALS["zero_size"], TOTALS["bad_price"], TOTALS["out_of_order"]) > 100
