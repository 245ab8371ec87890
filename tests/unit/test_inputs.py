"""omni_tasks.core.inputs: what users type is parsed strictly, refusals name the field and the text (escaped)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omni_tasks.core import inputs
from omni_tasks.core.inputs import InputError

TODAY = date(2025, 6, 30)
NOW = datetime(2025, 6, 30, 21, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["1_0", "١٠", "１０", "1e3", "NaN", "inf", "-5", "+5", "", "  ", "1.2.3", "0x10", "10 5", "1,000", "∞"])
def test_decimal_refuses_what_decimal_accepts_leniently(text: str) -> None:
    with pytest.raises(InputError, match="^qty "):
        inputs.decimal(text, what="qty")


@pytest.mark.parametrize(
    ("text", "value"),
    [("10", Decimal(10)), ("0.5", Decimal("0.5")), (".5", Decimal("0.5")), (" 7 ", Decimal(7)), ("1.000000000", Decimal(1))],
)
def test_decimal_accepts_plain_ascii_numbers(text: str, value: Decimal) -> None:
    assert inputs.decimal(text, what="qty") == value


def test_decimal_bounds_digits_and_places() -> None:
    with pytest.raises(InputError, match="too large"):
        inputs.decimal("1" * 17, what="qty")
    with pytest.raises(InputError, match="too many decimal places"):
        inputs.decimal("1.123456789", what="qty")
    with pytest.raises(InputError, match="must be positive"):
        inputs.decimal("0.000", what="qty")


@given(st.text(max_size=30))
def test_decimal_never_accepts_a_non_ascii_digit(text: str) -> None:
    try:
        value = inputs.decimal(text, what="qty")
    except InputError:
        return
    assert text.strip().replace(".", "", 1).isascii()
    assert value.is_finite()
    assert value > 0


@pytest.mark.parametrize("text", ["1_0", "١", "-1", "0", "1e3", "", "99999999999999999999"])
def test_integer_refuses_lenient_and_out_of_range_text(text: str) -> None:
    with pytest.raises(InputError, match="^--top "):
        inputs.integer(text, what="--top", lo=1, hi=10_000)


@pytest.mark.parametrize("text", ["AAPL\x00", "ß", "aﬁ", "A" * 11, "1AB", "A B", "", "AAPL;DROP"])
def test_symbol_is_ascii_and_anchored(text: str) -> None:
    with pytest.raises(InputError):
        inputs.symbol(text)


def test_symbols_keep_order_without_repeats() -> None:
    assert inputs.symbols(" aapl, msft,AAPL,,brk.b ") == ["AAPL", "MSFT", "BRK.B"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1800-01-01", "before 1885-01-02"),
        ("3000-01-01", "after 2026-07-01"),
        ("2024-02-30", "is not a date"),
        ("２０２４-01-01", r"is not a date \(YYYY-MM-DD\)"),
        ("20240101", r"is not a date \(YYYY-MM-DD\)"),
    ],
)
def test_day_is_within_the_calendar(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        inputs.day(text, what="--start", today=TODAY)


def test_date_range_refuses_reversed_and_empty_ranges() -> None:
    with pytest.raises(InputError, match="impossible date range"):
        inputs.date_range(date(2024, 5, 1), date(2024, 5, 1))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2025-06-30T21:00:00", "needs a time zone"),
        ("2025-07-01T00:00:00Z", "in the future"),
        ("1884-12-31T00:00:00Z", "before 1885-01-02"),
        ("soon", "not an ISO 8601"),
    ],
)
def test_instant_needs_a_zone_and_no_future(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        inputs.instant(text, what="--as-of", now=NOW)


def test_instant_within_the_skew_and_assumed_utc() -> None:
    assert inputs.instant("2025-06-30T21:04:00+00:00", what="--as-of", now=NOW).minute == 4
    assert inputs.instant("2025-06-30T20:00:00", what="--as-of", now=NOW, assume_utc=True).tzinfo is UTC


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "0", "1_0", "90000"])
def test_seconds_are_finite_positive_and_bounded(text: str) -> None:
    with pytest.raises(InputError):
        inputs.seconds(text, what="--timeout", hi=3600.0)


def test_reason_refuses_control_characters_and_errors_show_input_escaped() -> None:
    with pytest.raises(InputError) as refused:
        inputs.reason("ok\x1b[31m\nforged")
    assert "\x1b" not in str(refused.value)
    assert "\n" not in str(refused.value)
    assert len(inputs.shown("x" * 5000)) <= 40


@pytest.mark.parametrize(
    ("parse", "value", "options"),
    [
        (inputs.symbol, "AAPL\n", {}),
        (inputs.symbol, "\u00a0AAPL", {}),
        (inputs.decimal, "1\u00a0", {"what": "--qty"}),
        (inputs.decimal, "10\u2003", {"what": "--qty"}),
        (inputs.integer, "-0", {"what": "--count"}),
        (inputs.integer, "-3", {"what": "--count"}),
    ],
)
def test_only_ascii_blanks_are_trimmed_and_a_sign_needs_a_signed_range(parse: Any, value: str, options: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        parse(value, **options)


def test_ascii_blanks_around_a_value_are_trimmed() -> None:
    assert inputs.symbol(" aapl\t") == "AAPL"
    assert inputs.decimal(" 10 ", what="--qty") == Decimal("10")
    assert inputs.integer("-3", what="--offset", lo=-10) == -3


def test_an_offset_beyond_a_day_is_named_in_plain_words() -> None:
    with pytest.raises(InputError) as refused:
        inputs.instant("2025-06-30T21:00:00+99:00", what="--as-of")
    assert "UTC offset must be between -23:59 and +23:59" in str(refused.value)
    assert "timedelta" not in str(refused.value)
