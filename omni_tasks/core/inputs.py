"""Strict parsing of what users type: symbols, decimals, whole numbers, dates, instants, durations, names, reasons.

One home for every rule about user input (the CLI, task arguments from users,
the HTTP endpoint). Each parser takes text and returns a typed value or raises
:class:`InputError` whose message names the field and what was wrong, in one
line, with the offending text shown escaped and shortened (control characters
and very long strings never reach a terminal or a log as they were typed).

What is refused, everywhere:

* digits other than ASCII 0-9 (``"١٠"``, ``"１０"``), underscores (``"1_0"``, which
  ``int`` and ``Decimal`` accept), exponents (``"1e3"``), signs where none belong,
  ``nan``/``inf``, empty or blank text, text longer than the field can hold;
* dates before :data:`EARLIEST_DATE` (the first day of the exchange calendar)
  or more than :data:`MAX_DAYS_AHEAD` days ahead (the calendar's last day);
* instants without a time zone (unless the caller allows UTC to be assumed) or
  later than now plus :data:`MAX_CLOCK_SKEW_S`.

Plain Python with no import beyond the standard library: ``omni --help`` stays light.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, TypeVar

from omni_tasks.core import operators
from omni_tasks.core.errors import OmniError

#: A ticker: 1-10 of A-Z, 0-9, '.', '-', starting with a letter. The one home of this rule (frames, the broker
#: and the settings import it). Anchored with ``\Z``: ``$`` would let "AAPL\n" through.
SYMBOL_PATTERN: Final = re.compile(r"^[A-Z][A-Z0-9.\-]{0,9}\Z", re.ASCII)
#: The first session exchange_calendars knows for XNYS (omni_tasks.marketdata.calendar widens to it on
#: demand); no date before it is accepted. A backfill's own earliest date (OMNI_BACKFILL_EARLIEST_DATE,
#: default 1962-01-02) is checked again by the backfill request (omni_tasks.marketdata.backfill).
EARLIEST_DATE: Final = date(1885, 1, 2)
#: The calendar is built to a year ahead: a date beyond that has no sessions to plan or check.
MAX_DAYS_AHEAD: Final = 366
#: An as-of instant may be this far ahead of this machine's clock (clocks of two hosts differ a little).
MAX_CLOCK_SKEW_S: Final = 300.0

_DECIMAL: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_INTEGER: Final = re.compile(r"[0-9]+", re.ASCII)
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_INSTANT: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?", re.ASCII
)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_TEXT: Final = 64

T = TypeVar("T")


class InputError(OmniError, ValueError):
    """User input that is refused; the message names the field and what was wrong (one line)."""


def shown(value: object, limit: int = 40) -> str:
    """The value as it may be printed in an error: escaped (repr) and shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


#: Surrounding blanks a shell or a paste may leave: ASCII space and tab only. A newline, a no-break
#: space or another Unicode space is not trimmed away: the value is refused for it.
_BLANKS = " \t"


def _text(value: object, what: str, *, max_len: int = _MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} {shown(value)}: expected text")
    stripped = value.strip(_BLANKS)
    if not stripped:
        raise InputError(f"{what} must not be empty")
    if len(stripped) > max_len:
        raise InputError(f"{what} {shown(value)} is too long ({len(stripped)} characters; at most {max_len})")
    return stripped


def symbol(value: object, *, what: str = "symbol") -> str:
    """A ticker, upper-cased: 1-10 of A-Z, 0-9, '.', '-' starting with a letter (ASCII only: 'ß' is not 'SS')."""
    text = value.strip(_BLANKS) if isinstance(value, str) else ""
    if not isinstance(value, str) or len(text) > 32 or not text.isascii() or not SYMBOL_PATTERN.match(text.upper()):
        raise InputError(f"{shown(value)} is not a ticker symbol (1-10 of A-Z, 0-9, '.', '-', starting with a letter)")
    return text.upper()


def symbols(value: object, *, what: str = "symbols", max_count: int = 10_000) -> list[str]:
    """Comma-separated tickers, upper-cased, in order, without repeats; at least one."""
    text = _text(value, what, max_len=max_count * 11)
    out: list[str] = []
    for part in text.split(","):
        if not part.strip(_BLANKS):
            continue
        cleaned = symbol(part, what=what)
        if cleaned not in out:
            out.append(cleaned)
    if not out:
        raise InputError(f"{what}: no symbols given")
    if len(out) > max_count:
        raise InputError(f"{what}: {len(out)} symbols; at most {max_count}")
    return out


def decimal(value: object, *, what: str, max_integer_digits: int = 16, max_places: int = 8, allow_zero: bool = False) -> Decimal:
    """A non-negative exact decimal from plain text such as ``10``, ``0.5`` or ``187.25``.

    ASCII digits and one point only: no sign, exponent, underscore, space inside,
    ``nan`` or ``inf``. Zero is refused unless ``allow_zero``. A money amount (a
    quantity, a price) never needs an exponent, and refusing it keeps ``1e9``
    typed by mistake from becoming a billion.
    """
    if isinstance(value, Decimal | int | float) and not isinstance(value, bool):
        raise InputError(f"{what} {shown(value)}: pass decimal text such as '10' or '187.25' (never a float)")
    text = _text(value, what, max_len=max_integer_digits + max_places + 1)
    if not _DECIMAL.fullmatch(text):
        raise InputError(f"{what} {shown(value)} is not a plain decimal number (ASCII digits and at most one '.', e.g. 10 or 187.25)")
    whole, _, fraction = text.partition(".")
    if len(whole.lstrip("0")) > max_integer_digits:
        raise InputError(f"{what} {shown(value)} is too large (at most {max_integer_digits} digits before the point)")
    if len(fraction.rstrip("0")) > max_places:
        raise InputError(f"{what} {shown(value)} has too many decimal places: at most {max_places} decimal places")
    # Zeros past the last allowed place carry no value: "1.000000000" is 1.00000000, not a ninth place.
    number = Decimal(f"{whole or '0'}.{fraction[:max_places]}" if len(fraction) > max_places else text)
    if number == 0 and not allow_zero:
        raise InputError(f"{what} {shown(value)} must be positive")
    return number


def integer(value: object, *, what: str, lo: int = 0, hi: int = 1_000_000_000) -> int:
    """A whole number in [lo, hi] from ASCII digits (a leading '-' only when ``lo`` is negative)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = _text(value, what, max_len=19)
        negative = text.startswith("-")
        body = text[1:] if negative else text
        if negative and lo >= 0:
            raise InputError(f"{what} {shown(value)} must not have a sign ({lo} to {hi})")
        if not _INTEGER.fullmatch(body):
            raise InputError(f"{what} {shown(value)} is not a whole number (ASCII digits only)")
        number = -int(body) if negative else int(body)
    if not lo <= number <= hi:
        raise InputError(f"{what} {shown(value)} is out of range ({lo} to {hi})")
    return number


def seconds(value: object, *, what: str, lo: float = 0.0, hi: float = 86_400.0, allow_zero: bool = False) -> float:
    """A duration in seconds (plain decimal text, e.g. 30 or 0.5) in [lo, hi]; zero only when ``allow_zero``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise InputError(f"{what} {shown(value)} is not a finite number")
    else:
        number = float(decimal(value, what=what, max_integer_digits=9, max_places=6, allow_zero=True))
    if number == 0 and not allow_zero:
        raise InputError(f"{what} {shown(value)} must be more than 0 seconds")
    if not lo <= number <= hi:
        raise InputError(f"{what} {shown(value)} is out of range ({lo:g} to {hi:g} seconds)")
    return number


def latest_date(today: date) -> date:
    """The last date accepted for ``today`` (the calendar's last day)."""
    return today + timedelta(days=MAX_DAYS_AHEAD)


def day(value: object, *, what: str, today: date | None = None, earliest: date = EARLIEST_DATE, extra_days: int = 0) -> date:
    """A calendar date YYYY-MM-DD between ``earliest`` and the calendar's last day (plus ``extra_days``, e.g. 1 for an exclusive end)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        parsed = value
    else:
        text = _text(value, what, max_len=10)
        if not _DATE.fullmatch(text):
            raise InputError(f"{what} {shown(value)} is not a date (YYYY-MM-DD)")
        try:
            parsed = date.fromisoformat(text)
        except ValueError as exc:
            raise InputError(f"{what} {shown(value)} is not a date: {exc}") from None
    today = today or datetime.now(tz=UTC).date()
    last = latest_date(today) + timedelta(days=extra_days)
    if parsed < earliest:
        raise InputError(f"{what} {parsed.isoformat()} is before {earliest.isoformat()}, the first day of the exchange calendar")
    if parsed > last:
        raise InputError(f"{what} {parsed.isoformat()} is after {last.isoformat()}, the last day of the exchange calendar")
    return parsed


def date_range(start: date, end: date, *, start_what: str = "--start", end_what: str = "--end") -> tuple[date, date]:
    """[start, end) with end exclusive: refused unless end is after start."""
    if end <= start:
        raise InputError(
            f"impossible date range: {end_what} {end.isoformat()} is not after {start_what} {start.isoformat()} (the end is exclusive)"
        )
    return start, end


def instant(
    value: object,
    *,
    what: str,
    now: datetime | None = None,
    earliest: date = EARLIEST_DATE,
    max_skew_s: float = MAX_CLOCK_SKEW_S,
    assume_utc: bool = False,
) -> datetime:
    """An aware ISO 8601 instant, not in the future beyond ``max_skew_s`` nor before ``earliest``.

    Without a zone it is refused, unless ``assume_utc``: then it is read as UTC.
    """
    text = _text(value, what, max_len=40)
    if not _INSTANT.fullmatch(text):
        raise InputError(f"{what} {shown(value)} is not an ISO 8601 instant (e.g. 2025-06-30T21:00:00+00:00)")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        why = "its UTC offset must be between -23:59 and +23:59" if "offset" in str(exc) else str(exc)
        raise InputError(f"{what} {shown(value)} is not an instant: {why}") from None
    if parsed.tzinfo is None:
        if not assume_utc:
            raise InputError(f"{what} {shown(value)} needs a time zone, e.g. 2025-06-30T21:00:00+00:00")
        parsed = parsed.replace(tzinfo=UTC)
    now = now or datetime.now(tz=UTC)
    if parsed.astimezone(UTC).date() < earliest:
        raise InputError(f"{what} {shown(value)} is before {earliest.isoformat()}, the first day of the exchange calendar")
    if (parsed - now).total_seconds() > max_skew_s:
        raise InputError(f"{what} {shown(value)} is in the future (now is {now.astimezone(UTC).isoformat(timespec='seconds')})")
    return parsed


def choice(value: object, *, what: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case-insensitive); the message lists them."""
    text = _text(value, what, max_len=max(len(c) for c in choices) + 8)
    lowered = text.lower()
    for option in choices:
        if option.lower() == lowered:
            return option
    raise InputError(f"{what} {shown(value)}: choose one of {', '.join(choices)}")


def operator(value: object, *, what: str = "--operator") -> str:
    """An operator's name for the records (:mod:`omni_tasks.core.operators`: 1-60 of letters, digits, '_', '.', '@', '-')."""
    text = _text(value, what, max_len=60)
    if not operators.is_operator_name(text):
        raise InputError(f"{what} {shown(value)}: {operators.OPERATOR_RULE}")
    return text


def reason(value: object, *, what: str = "--reason", max_len: int = 500) -> str:
    """Free text kept in a record: not blank, no control characters (a newline would forge a log line), at most ``max_len``."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} must say why (it is kept in the records)")
    text = value.strip()
    if _CONTROL.search(text):
        raise InputError(f"{what} {shown(value)} contains control characters")
    if len(text) > max_len:
        raise InputError(f"{what} is too long ({len(text)} characters; at most {max_len})")
    return text


def name(value: object, *, what: str, pattern: re.Pattern[str] = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}", re.ASCII)) -> str:
    """An identifier (a breaker, a worker, a stream worker's name): ASCII letters, digits, '_', '.', ':', '-'."""
    text = _text(value, what, max_len=64)
    if not pattern.fullmatch(text):
        raise InputError(f"{what} {shown(value)}: 1-64 of letters, digits, '_', '.', ':', '-'")
    return text


def parser(parse: Callable[..., T], **options: Any) -> Callable[[Any], T]:
    """A one-argument parser for a CLI option (``typer.Option(parser=...)``) from one of the functions above."""

    def run(value: Any) -> T:
        return parse(value, **options)

    run.__name__ = getattr(parse, "__name__", "parse")
    return run
