"""Alpaca wire frames: msgpack and JSON decode to the same messages with ``t`` as int ns; garbage is a
:class:`GarbageFrame` naming the problem; encode -> decode round trips for any quote, trade or bar."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_tasks.stream.wire import GarbageFrame, bar_message, decode_frame, encode_frame, quote_message, rfc3339_ns, trade_message

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_of(dt: datetime, extra_ns: int = 0) -> int:
    """Nanoseconds since the epoch by datetime arithmetic (microsecond resolution) plus the sub-microsecond part."""
    return (dt - EPOCH) // timedelta(microseconds=1) * 1_000 + extra_ns


# 2024-03-01 14:30:00 UTC is 09:30:00 in New York (EST, -05:00): the US open.
OPEN_UTC = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [
        ("2024-03-01T14:30:00.123456789Z", ns_of(OPEN_UTC + timedelta(microseconds=123456), 789)),
        ("2024-03-01T14:30:00.123456Z", ns_of(OPEN_UTC + timedelta(microseconds=123456))),
        ("2024-03-01T14:30:00.123Z", ns_of(OPEN_UTC + timedelta(milliseconds=123))),
        ("2024-03-01T14:30:00Z", ns_of(OPEN_UTC)),
        ("2024-03-01T14:30:00.5+00:00", ns_of(OPEN_UTC + timedelta(milliseconds=500))),
        ("2024-03-01T14:30:00+00:00", ns_of(OPEN_UTC)),
        (
            "2024-03-01T09:30:00.000000001-05:00",
            ns_of(datetime(2024, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5))), 1),
        ),
        ("2024-03-01T20:00:00.25+05:30", ns_of(datetime(2024, 3, 1, 20, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=5, minutes=30))))),
    ],
)
def test_rfc3339_and_msgpack_timestamp_decode_to_the_same_int_ns(text: str, expected_ns: int) -> None:
    # The literal check that the datetime arithmetic agrees with the wall clock reading of the open.
    assert ns_of(OPEN_UTC) == 1_709_303_400_000_000_000
    assert rfc3339_ns(text) == expected_ns

    seconds, nanos = divmod(expected_ns, 1_000_000_000)
    fields = {"S": "AAPL", "bx": "V", "bp": 187.23, "bs": 2, "ax": "V", "ap": 187.25, "as": 3, "c": ["R"], "z": "C"}
    binary = msgpack.packb([{"T": "q", **fields, "t": msgpack.Timestamp(seconds, nanos)}])
    text_frame = json.dumps([{"T": "q", **fields, "t": text}])

    from_msgpack = decode_frame(binary)
    from_json = decode_frame(text_frame)
    assert from_msgpack == from_json == [{"T": "q", **fields, "t": expected_ns}]
    assert type(from_msgpack[0]["t"]) is int
    assert type(from_json[0]["t"]) is int


def test_mixed_frame_of_control_and_market_messages_decodes_identically_in_both_encodings() -> None:
    ts = 1_709_303_400_123_456_789
    messages_bin = [
        {"T": "success", "msg": "authenticated"},
        {"T": "subscription", "trades": ["AAPL"], "quotes": ["AAPL", "MSFT"], "bars": []},
        quote_message("AAPL", ts, 187.23, 2, 187.25, 3),
        trade_message("MSFT", ts + 1, 402.5, 100, 7),
        bar_message("AAPL", ts - 123_456_789, 187.0, 187.5, 186.9, 187.2, 12_345),
    ]
    messages_json = [
        {"T": "success", "msg": "authenticated"},
        {"T": "subscription", "trades": ["AAPL"], "quotes": ["AAPL", "MSFT"], "bars": []},
        quote_message("AAPL", ts, 187.23, 2, 187.25, 3, binary=False),
        trade_message("MSFT", ts + 1, 402.5, 100, 7, binary=False),
        bar_message("AAPL", ts - 123_456_789, 187.0, 187.5, 186.9, 187.2, 12_345, binary=False),
    ]
    assert messages_json[2]["t"] == "2024-03-01T14:30:00.123456789Z"
    decoded_bin = decode_frame(encode_frame(messages_bin))
    decoded_json = decode_frame(encode_frame(messages_json, binary=False))
    assert decoded_bin == decoded_json
    assert [m.get("t") for m in decoded_bin] == [None, None, ts, ts + 1, 1_709_303_400_000_000_000]


def test_json_frame_with_integer_timestamp_keeps_it() -> None:
    assert decode_frame('[{"T":"q","S":"X","t":1709303400000000000}]') == [{"T": "q", "S": "X", "t": 1_709_303_400_000_000_000}]


def test_frames_of_bytearray_and_memoryview_decode_like_bytes() -> None:
    frame = encode_frame([quote_message("AAPL", 5_000_000_001, 1.5, 1, 1.5, 1)])
    assert isinstance(frame, bytes)
    assert decode_frame(bytearray(frame)) == decode_frame(memoryview(frame)) == decode_frame(frame)
    assert decode_frame(frame)[0]["t"] == 5_000_000_001


_GOOD_BINARY = encode_frame([quote_message("AAPL", 1_709_303_400_000_000_000, 187.23, 2, 187.25, 3)])
assert isinstance(_GOOD_BINARY, bytes)


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"\xc1", "not msgpack"),  # 0xc1 is the one byte msgpack never uses
        (b"\xc1\x07\xff\x00\x13garbage", "not msgpack"),
        (_GOOD_BINARY[:-5], "not msgpack"),  # truncated mid-message
        (_GOOD_BINARY + b"\x00", "not msgpack"),  # a second object after the array
        (b"", "not msgpack"),
        (msgpack.packb({"T": "q"}), "expected an array of messages, got dict"),
        (msgpack.packb(42), "expected an array of messages, got int"),
        (msgpack.packb([{"T": "q"}, 1, "x"]), "expected message maps, got int"),
        (msgpack.packb([[{"T": "q"}]]), "expected message maps, got list"),
        ('[{"T":"q"', "not JSON"),
        ("", "not JSON"),
        ("hello", "not JSON"),
        ('{"T":"q","S":"AAPL"}', "expected an array of messages, got dict"),
        ('"just a string"', "expected an array of messages, got str"),
        ("[1, 2]", "expected message maps, got int"),
        ('[{"T":"q"}, null]', "expected message maps, got NoneType"),
        ('[["T","q"]]', "expected message maps, got list"),
    ],
)
def test_garbage_frame_raises_naming_the_problem(frame: bytes | str, problem: str) -> None:
    with pytest.raises(GarbageFrame) as raised:
        decode_frame(frame)
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    "bad",
    [
        "yesterday",
        "",
        "2024-13-01T00:00:00Z",  # month 13
        "2024-02-30T00:00:00Z",  # no such day
        "2024-03-01T25:00:00Z",  # hour 25
        "2024-03-01 14:30",  # too short for a time
        "2024-3-1T1:2:3Z",  # not zero padded
        "2024-03-01T14:30:00.123 Z",
        "2024-03-01T14:30:00Zjunk",
        "2024-03-01T14:30:00+05",  # offset without minutes
        "2024-03-01T14:30:00+5:00",
        pytest.param(
            "2024-03-01T14:30:00X05:00",
        ),
        pytest.param(
            "2024-03-01T14:30:00+05:00junk",
        ),
        pytest.param(
            "2024-03-01T14:30:00+0500",
        ),
    ],
)
def test_bad_timestamp_string_makes_the_frame_garbage(bad: str) -> None:
    frame = json.dumps([{"T": "q", "S": "AAPL", "bp": 1.0, "bs": 1, "ap": 1.0, "as": 1, "t": bad}])
    with pytest.raises(GarbageFrame, match="bad timestamp"):
        decode_frame(frame)


def test_deeply_nested_json_text_frame_is_garbage_not_a_crash() -> None:
    with pytest.raises(GarbageFrame):
        decode_frame("[" * 3000)


def test_deeply_nested_msgpack_frame_is_garbage() -> None:
    with pytest.raises(GarbageFrame, match="not msgpack"):
        decode_frame(b"\x91" * 3000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_decode_to_message_maps_or_raise_garbage(data: bytes) -> None:
    messages, problem = None, ""
    try:
        messages = decode_frame(data)
    except GarbageFrame as exc:
        problem = str(exc)
    if messages is None:
        assert problem, "a GarbageFrame always says what was wrong"
        return
    assert type(messages) is list
    assert all(type(m) is dict for m in messages)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=120),
        st.lists(st.dictionaries(st.sampled_from(["T", "S", "t", "bp"]), st.text(max_size=40), max_size=4), max_size=4).map(json.dumps),
    )
)
def test_arbitrary_text_either_decodes_with_int_timestamps_or_raises_garbage(text: str) -> None:
    messages, problem = None, ""
    try:
        messages = decode_frame(text)
    except GarbageFrame as exc:
        problem = str(exc)
    if messages is None:
        assert problem, "a GarbageFrame always says what was wrong"
        return
    assert type(messages) is list
    for message in messages:
        assert type(message) is dict
        assert "t" not in message or type(message["t"]) is not str


# --- hypothesis round trip

symbols = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.", min_size=1, max_size=6)
# 1900-01-01 .. 2100-01-01, whole ns, negative before the epoch.
timestamps = st.integers(min_value=-2_208_988_800 * 10**9, max_value=4_102_444_800 * 10**9)
prices = st.floats(min_value=0.0001, max_value=1e6, allow_nan=False, allow_infinity=False)
sizes = st.one_of(st.integers(min_value=0, max_value=10**9), st.floats(min_value=0, max_value=1e9, allow_nan=False))


@st.composite
def market_message(draw: st.DrawFn) -> tuple[str, tuple[Any, ...]]:
    kind = draw(st.sampled_from(["q", "t", "b"]))
    symbol, ts = draw(symbols), draw(timestamps)
    if kind == "q":
        return kind, (symbol, ts, draw(prices), draw(sizes), draw(prices), draw(sizes))
    if kind == "t":
        return kind, (symbol, ts, draw(prices), draw(sizes), draw(st.integers(min_value=0, max_value=2**62)))
    return kind, (symbol, ts, draw(prices), draw(prices), draw(prices), draw(prices), draw(sizes))


BUILDERS = {"q": quote_message, "t": trade_message, "b": bar_message}


@settings(max_examples=300, deadline=None)
@given(st.lists(market_message(), min_size=1, max_size=8))
def test_encode_then_decode_round_trips_in_both_encodings(specs: list[tuple[str, tuple[Any, ...]]]) -> None:
    for binary in (True, False):
        messages = [BUILDERS[kind](*args, binary=binary) for kind, args in specs]
        decoded = decode_frame(encode_frame(messages, binary=binary))
        assert len(decoded) == len(specs)
        for (kind, args), message in zip(specs, decoded, strict=True):
            expected = BUILDERS[kind](*args, binary=binary)
            expected["t"] = args[1]  # the timestamp comes back as int ns, exactly
            assert message == expected
            assert type(message["t"]) is int
