"""Trade corrections and cancels against hand-computed VWAP, volume and profile (idempotent, bounded, unknown ids
counted), the trading-status state machine (halt, indication, quotation resumption, resume, out of order), LULD bands,
and both encodings of the new messages."""

from __future__ import annotations

from typing import Any

import pytest

from omni_tasks.stream import wire
from omni_tasks.stream.book import Books
from omni_tasks.stream.wire import decode_frame, encode_frame

S = 1_000_000_000
T0 = 1_709_303_400 * S  # 2024-03-01T14:30:00Z
NEXT_DAY = 1_709_352_000 * S + S  # just after the 04:00 UTC split


def decoded(*messages: dict[str, Any], binary: bool = True) -> list[dict[str, Any]]:
    """Through the real encoder and decoder, as the path gets them."""
    return decode_frame(encode_frame(list(messages), binary=binary))


def apply(books: Books, *messages: dict[str, Any]) -> None:
    books.apply(decoded(*messages), T0)


def trade(
    trade_id: int, price: float, size: float, ts: int = T0, exchange: str = "V", symbol: str = "XYZ", *, binary: bool = True
) -> dict[str, Any]:
    return {**wire.trade_message(symbol, ts, price, size, trade_id, binary=binary), "x": exchange}


@pytest.mark.parametrize("binary", [True, False])
def test_correction_then_cancel_against_hand_computed_values(binary: bool) -> None:
    books = Books()
    # 100.00 x 100 + 101.00 x 200 + 102.00 x 300 = 10,000 + 20,200 + 30,600 = 60,800 over 600 -> VWAP 101.3333
    books.apply(
        decoded(*(trade(i, p, n, binary=binary) for i, p, n in ((1, 100.0, 100), (2, 101.0, 200), (3, 102.0, 300))), binary=binary), T0
    )
    book = books.books["XYZ"]
    assert (book.vwap, book.trade_volume, book.trades) == (pytest.approx(60_800 / 600), 600, 3)
    # Profile buckets of 5 bp of 100.00 = 0.05: 100.00 -> 2000, 101.00 -> 2020, 102.00 -> 2040.
    assert book.profile == {2000: 100, 2020: 200, 2040: 300}

    # Trade 2 was 101.50 x 200 (new id 4): 10,000 + 20,300 + 30,600 = 60,900 over 600 -> 101.50
    books.apply(decoded(wire.correction_message("XYZ", T0 + S, 2, 101.0, 200, 4, 101.5, 200, binary=binary), binary=binary), T0)
    assert (book.vwap, book.trade_volume, book.trades) == (pytest.approx(101.5), 600, 3)
    assert book.profile == {2000: 100, 2030: 200, 2040: 300}
    assert books.take_dirty_vwap() == [book]

    # Trade 3 cancelled: 10,000 + 20,300 = 30,300 over 300 -> 101.00
    books.apply(decoded(wire.cancel_message("XYZ", T0 + 2 * S, 3, 102.0, 300, binary=binary), binary=binary), T0)
    assert (book.vwap, book.trade_volume, book.trades) == (pytest.approx(101.0), 300, 2)
    assert book.profile == {2000: 100, 2030: 200}
    assert (books.counts["corrections"], books.counts["cancels"], books.counts["repeats"], books.counts["unknown_trade"]) == (1, 1, 0, 0)
    assert books.kinds["c"] == 1
    assert books.kinds["x"] == 1
    assert books.kinds["t"] == 3


def test_repeated_corrections_and_cancels_change_nothing_and_are_counted() -> None:
    books = Books()
    apply(books, trade(1, 100.0, 100), trade(2, 101.0, 200), trade(3, 102.0, 300))
    correction = wire.correction_message("XYZ", T0, 2, 101.0, 200, 4, 101.5, 200)
    cancel = wire.cancel_message("XYZ", T0, 3, 102.0, 300, "E")  # an error takes the trade out like a cancel
    apply(books, correction, cancel)
    book = books.books["XYZ"]
    before = (book.vwap, book.trade_volume, dict(book.profile), book.trades)
    rev = book.trade_rev
    apply(books, correction, cancel, correction)
    assert (book.vwap, book.trade_volume, dict(book.profile), book.trades) == before
    assert book.trade_rev == rev
    assert books.counts["repeats"] == 3


def test_a_cancel_by_the_id_before_its_correction_takes_out_the_corrected_trade() -> None:
    books = Books()
    apply(books, trade(1, 100.0, 100), trade(2, 101.0, 200))
    apply(books, wire.correction_message("XYZ", T0, 2, 101.0, 200, 9, 101.5, 250))
    apply(books, wire.cancel_message("XYZ", T0, 2, 101.0, 200))  # the trade is gone, whatever id it has now
    book = books.books["XYZ"]
    assert (book.vwap, book.trade_volume) == (pytest.approx(100.0), 100)
    apply(books, wire.cancel_message("XYZ", T0, 9, 101.5, 250))
    assert books.counts["repeats"] == 1
    assert book.trade_volume == 100


def test_a_correction_keeping_its_id_is_idempotent_and_one_to_size_zero_takes_the_trade_out() -> None:
    books = Books()
    apply(books, trade(1, 100.0, 100), trade(2, 101.0, 200))
    same_id = wire.correction_message("XYZ", T0, 2, 101.0, 200, 2, 100.0, 300)
    apply(books, same_id, same_id)
    book = books.books["XYZ"]
    assert (book.vwap, book.trade_volume) == (pytest.approx(100.0), 400)
    apply(books, wire.correction_message("XYZ", T0, 1, 100.0, 100, 1, 100.0, 0))
    assert (book.vwap, book.trade_volume, book.trades) == (pytest.approx(100.0), 300, 1)


def test_unknown_trades_other_exchanges_and_other_days_change_nothing() -> None:
    books = Books()
    apply(books, trade(1, 100.0, 100, exchange="V"), trade(1, 110.0, 100, exchange="K"))
    book = books.books["XYZ"]
    # Trade ids are per exchange: cancelling K's trade 1 leaves V's.
    apply(books, {**wire.cancel_message("XYZ", T0, 1, 110.0, 100), "x": "K"})
    assert (book.vwap, book.trade_volume) == (pytest.approx(100.0), 100)
    apply(books, wire.cancel_message("XYZ", T0, 77, 100.0, 5), wire.correction_message("NEVER", T0, 1, 1.0, 1, 2, 2.0, 1))
    assert books.counts["unknown_trade"] == 2
    assert book.trade_volume == 100
    # The next day forgets yesterday's trades: a late cancel of one is unknown, today's VWAP untouched.
    apply(books, trade(5, 120.0, 10, ts=NEXT_DAY))
    apply(books, wire.cancel_message("XYZ", NEXT_DAY, 1, 100.0, 100))
    assert (book.vwap, book.trade_volume, books.counts["unknown_trade"]) == (pytest.approx(120.0), 10, 3)


def test_trade_memory_is_bounded_per_symbol() -> None:
    """Bound 4: two generations of 2. After trades 1-5: {1, 2} dropped, {3, 4} old, {5} current."""
    books = Books(max_trades_remembered=4)
    apply(books, *(trade(i, 100.0 + i, 10) for i in range(1, 6)))
    book = books.books["XYZ"]
    assert len(book.trade_ids) + len(book.trade_ids_old) == 3
    cancels = [wire.cancel_message("XYZ", T0, i, 100.0 + i, 10) for i in (1, 2, 3, 5)]
    apply(books, *cancels)
    assert books.counts["unknown_trade"] == 2  # trades 1 and 2 were forgotten: their cancels cannot be applied
    assert book.trade_volume == 30  # 1, 2 and 4 still count: 50 - 3 and 5
    assert book.vwap == pytest.approx((101.0 + 102.0 + 104.0) / 3)


def test_malformed_corrections_and_cancels_are_counted_not_applied() -> None:
    books = Books()
    apply(books, trade(1, 100.0, 100))
    bad = [
        {"T": "c", "S": "XYZ", "oi": 1, "ci": 2, "cp": "x", "cs": 10},
        {"T": "c", "S": "XYZ", "oi": "1", "ci": 2, "cp": 100.0, "cs": 10},
        {"T": "x", "S": "XYZ", "i": 1, "a": "Z"},
        {"T": "x", "S": 5, "i": 1},
        {"T": "s", "S": "XYZ", "sc": None, "t": T0},
        {"T": "l", "S": "XYZ", "u": "high", "d": 1.0, "t": T0},
    ]
    books.apply(bad, T0)  # already decoded (t as int ns)
    assert books.counts["malformed"] == 6
    assert books.books["XYZ"].trade_volume == 100
    assert "XYZ" not in {s for s, b in books.statuses.items() if b.state}


def test_status_state_machine_halt_indication_quoting_resume_and_out_of_order() -> None:
    books = Books()
    books.apply(decoded(wire.status_message("XYZ", T0, "H", "Trading Halt", "T1", "Halt News Pending")), T0)
    st = books.statuses["XYZ"]
    assert (st.state, st.code, st.reason, st.since, st.halted) == ("HALTED", "H", "T1", T0, True)
    # A CTA price indication during the halt is information: the halt and its since stay.
    books.apply(decoded(wire.status_message("XYZ", T0 + S, "5", "Price Indication")), T0)
    assert (st.state, st.code, st.since, st.info) == ("HALTED", "H", T0, "5 Price Indication")
    # Quotation resumption: quotes are back, trading is not; the same halt goes on.
    books.apply(decoded(wire.status_message("XYZ", T0 + 2 * S, "Q", "Quotation Resumption")), T0)
    assert (st.state, st.since, st.halted) == ("QUOTING", T0, True)
    books.apply(decoded(wire.status_message("XYZ", T0 + 3 * S, "T", "Trading Resumption")), T0)
    assert (st.state, st.since, st.halted) == ("TRADING", T0 + 3 * S, False)
    # An older halt arriving late does not halt a resumed symbol.
    books.apply(decoded(wire.status_message("XYZ", T0 + S, "H", "Trading Halt")), T0)
    assert (st.state, books.counts["out_of_order"]) == ("TRADING", 1)
    # CTA codes: 2 halt, 3 resume; a volatility pause (UTP P) halts too.
    apply(books, wire.status_message("ABC", T0, "2", "Trading Halt", "M", "LULD Trading Pause"))
    assert books.statuses["ABC"].halted
    apply(books, wire.status_message("ABC", T0 + S, "3", "Resume"))
    assert not books.statuses["ABC"].halted
    apply(books, wire.status_message("DEF", T0, "P", "Volatility Trading Pause", "LUDP"))
    assert books.statuses["DEF"].state == "HALTED"
    assert sorted(s.symbol for s in books.take_dirty_status()) == ["ABC", "DEF", "XYZ"]
    assert books.counts["statuses"] == 7
    assert books.kinds["s"] == 8


def test_luld_bands_are_kept_newest_first_in_both_encodings() -> None:
    books = Books()
    books.apply(decoded(wire.luld_message("XYZ", T0, 105.0, 95.0, "B", binary=False), binary=False), T0)
    st = books.statuses["XYZ"]
    assert (st.luld_up, st.luld_down, st.luld_indicator, st.luld_ts, st.state) == (105.0, 95.0, "B", T0, "")
    books.apply(decoded(wire.luld_message("XYZ", T0 - S, 110.0, 90.0)), T0)  # older: ignored
    assert (st.luld_up, books.counts["out_of_order"]) == (105.0, 1)
    assert st.row()[10:14] == ["105.0", "95.0", "B", str(T0)]


def test_alpacas_documented_examples_decode_and_apply() -> None:
    """The JSON examples of Alpaca's stock stream page, as text frames."""
    frame = (
        '[{"T":"t","i":52983525033527,"S":"EEM","x":"M","p":39.1582,"s":440000,"t":"2023-04-06T14:25:06.542305024Z","c":[" ","7"],"z":"B"},'
        '{"T":"c","S":"EEM","x":"M","oi":52983525033527,"op":39.1582,"os":440000,"oc":[" ","7"],"ci":52983525034326,"cp":39.1809,'
        '"cs":440000,"cc":[" ","7"],"z":"B","t":"2023-04-06T14:25:06.542305024Z"},'
        '{"T":"l","S":"IONM","u":3.24,"d":2.65,"i":"B","t":"2023-04-06T13:34:45.565004401Z","z":"C"},'
        '{"T":"s","S":"AAPL","sc":"H","sm":"Trading Halt","rc":"T12","rm":"Trading Halted; For information requested by NASDAQ",'
        '"t":"2021-02-22T19:15:00Z","z":"C"},'
        '{"T":"x","S":"GOOGL","i":465,"x":"D","p":105.31,"s":300,"a":"C","z":"C","t":"2023-04-06T13:15:42.83540958Z"},'
        '{"T":"i","S":"INAQU","p":9.12,"z":"C","t":"2024-12-13T19:58:09.242138635Z"}]'
    )
    books = Books()
    books.apply(decode_frame(frame), T0)
    assert books.books["EEM"].vwap == pytest.approx(39.1809)
    assert books.statuses["AAPL"].reason == "T12"
    assert books.statuses["AAPL"].halted
    assert books.statuses["IONM"].luld_down == 2.65
    assert books.counts["unknown_trade"] == 1  # GOOGL's trade 465 was never seen
    assert {k: v for k, v in books.kinds.items() if v} == {"t": 1, "c": 1, "l": 1, "s": 1, "x": 1, "i": 1}


def test_the_synthetic_feed_halts_and_resumes_a_symbol_with_no_quotes_in_between() -> None:
    import asyncio

    from omni_tasks.stream.feeds import SyntheticFeed

    async def pull() -> list[dict[str, Any]]:
        feed = SyntheticFeed(rate=2_000.0, tick_s=0.005, halt_every_s=0.1, halt_for_s=0.15)
        await feed.connect()
        await feed.subscribe({"quotes": ["AAA", "BBB", "CCC"], "trades": ["AAA", "BBB", "CCC"]})
        messages: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + 0.6
        while asyncio.get_running_loop().time() < deadline:
            messages.extend(decode_frame(await feed.recv()))
        await feed.close()
        return messages

    messages = asyncio.run(pull())
    halts = [m for m in messages if m["T"] == "s" and m["sc"] == "H"]
    assert halts, "no halt in 0.6 s with a halt every 0.1 s"
    first = halts[0]
    assert first["rc"] in ("T1", "LUDP")
    resume = next((m for m in messages if m["T"] == "s" and m["sc"] == "T" and m["S"] == first["S"] and m["t"] > first["t"]), None)
    assert resume is not None, "the halted symbol was not resumed"
    between = [m for m in messages if m["T"] in ("q", "t") and m["S"] == first["S"] and first["t"] <= m["t"] < resume["t"]]
    assert between == []
    assert {m["S"] for m in messages if m["T"] == "l"} == {"AAA", "BBB", "CCC"}  # a band for every symbol
    books = Books()
    books.apply(messages, 0)
    assert books.counts["statuses"] == sum(1 for m in messages if m["T"] == "s")
