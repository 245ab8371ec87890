"""Alpaca's market-data websocket format: frames in, messages out (and back, for tests, replays and benches).

A frame is one websocket message: a msgpack array (binary frame, when the
client asked for ``application/msgpack``) or a JSON array (text frame) of
message maps. ``T`` names the message: ``success``, ``error``,
``subscription`` (control); ``q`` quote, ``t`` trade, ``b``/``u``/``d`` bars
(market data); ``s`` trading status (halts and resumes), ``l`` LULD price
bands, ``c`` trade correction, ``x`` trade cancel/error, ``i`` order
imbalance. Every message is counted by kind (:data:`KINDS`; anything else is
``unknown``). Timestamps (``t``) are msgpack Timestamps
or RFC 3339 strings with up to nanoseconds; both decode to int ns since the
epoch, the one unit the path uses.

:func:`decode_frame` raises :class:`GarbageFrame` for anything that is not an
array of maps in either encoding; a bad message inside a good frame is the
book's business (it is counted there, not here).
"""

from __future__ import annotations

import calendar as _calendar
import json
from datetime import UTC, datetime
from typing import Any, Final

import msgpack

from omni_tasks.core.errors import OmniError

CONTROL_TYPES: Final = frozenset({"success", "error", "subscription"})
#: Every message kind counted by name (Alpaca's documented ``T`` values); any other ``T`` counts as ``unknown``.
KINDS: Final = ("q", "t", "b", "u", "d", "s", "l", "c", "x", "i", "success", "error", "subscription", "unknown")

# Trading status codes (``sc``), as Alpaca documents them per tape.
# CTA (tapes A and B): 2 trading halt, 3 resume; 5-9, A-F are indications, imbalances, SSR and LULD notices.
# UTP (tapes C and O): H trading halt, P volatility trading pause, Q quotation resumption, T trading resumption.
HALT_STATUS_CODES: Final = frozenset({"2", "H", "P"})
RESUME_STATUS_CODES: Final = frozenset({"3", "T"})
#: Quotation resumption: quotes are back but trading is not yet (the reopening auction's quote-only period).
QUOTING_STATUS_CODES: Final = frozenset({"Q"})

# Alpaca's stream error codes (docs: "Real-time Stock Pricing Data", errors).
AUTH_FAILED_CODES: Final = frozenset({401, 402, 404})  # not authenticated, auth failed, auth timeout
CONNECTION_LIMIT_CODE: Final = 406
INSUFFICIENT_SUBSCRIPTION_CODE: Final = 409


class GarbageFrame(OmniError, ValueError):
    """A frame that is not an Alpaca message array; the text says what was wrong."""


_unpackb = msgpack.unpackb
_loads = json.loads
_second_cache: dict[str, int] = {}


def rfc3339_ns(text: str) -> int:
    """``2024-03-01T14:30:00.123456789Z`` (or ``+00:00``, or no fraction) as int ns since the epoch."""
    head = text[:19]
    base = _second_cache.get(head)
    if base is None:
        try:
            parsed = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S")  # noqa: DTZ007 - the offset is applied below
        except ValueError:
            raise GarbageFrame(f"bad timestamp {text!r}") from None
        base = _calendar.timegm(parsed.timetuple()) * 1_000_000_000
        if len(_second_cache) > 100_000:
            _second_cache.clear()
        _second_cache[head] = base
    rest = text[19:]
    frac_ns = 0
    if rest.startswith("."):
        end = 1
        while end < len(rest) and rest[end].isdigit():
            end += 1
        digits = rest[1:end]
        frac_ns = int((digits + "000000000")[:9]) if digits else 0
        rest = rest[end:]
    if rest in ("Z", "z", "", "+00:00", "-00:00"):
        return base + frac_ns
    if len(rest) != 6 or rest[0] not in "+-" or rest[3] != ":" or not (rest[1:3] + rest[4:6]).isdigit():
        raise GarbageFrame(f"bad timestamp {text!r}: the offset must be Z or +HH:MM / -HH:MM")
    sign = 1 if rest[0] == "+" else -1
    hours, minutes = int(rest[1:3]), int(rest[4:6])
    return base + frac_ns - sign * (hours * 3600 + minutes * 60) * 1_000_000_000


def decode_frame(data: bytes | bytearray | memoryview | str) -> list[dict[str, Any]]:
    """The messages of one frame; ``t`` fields as int ns. Raises :class:`GarbageFrame`."""
    if isinstance(data, str):
        try:
            messages = _loads(data)
        except ValueError as exc:
            raise GarbageFrame(f"not JSON: {exc}") from None
        except RecursionError:
            raise GarbageFrame("not an Alpaca frame: JSON nested too deeply") from None
        if type(messages) is not list:
            raise GarbageFrame(f"expected an array of messages, got {type(messages).__name__}")
        for message in messages:
            if type(message) is not dict:
                raise GarbageFrame(f"expected message maps, got {type(message).__name__}")
            ts = message.get("t")
            if type(ts) is str:
                message["t"] = rfc3339_ns(ts)
        return messages
    try:
        messages = _unpackb(data, timestamp=2)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types for bad input
        raise GarbageFrame(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if type(messages) is not list:
        raise GarbageFrame(f"expected an array of messages, got {type(messages).__name__}")
    for message in messages:
        if type(message) is not dict:
            raise GarbageFrame(f"expected message maps, got {type(message).__name__}")
    return messages


# --- Encoding (the local test server, the synthetic feed, replays and benchmarks speak the same format).


def _ts_value(ts_ns: int, binary: bool) -> Any:
    if binary:
        return msgpack.Timestamp.from_unix_nano(ts_ns)
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def quote_message(
    symbol: str, ts_ns: int, bid: float, bid_size: float, ask: float, ask_size: float, *, binary: bool = True
) -> dict[str, Any]:
    """One quote in Alpaca's shape (exchange codes and conditions as the IEX feed sends them)."""
    return {
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
        "t": _ts_value(ts_ns, binary),
    }


def trade_message(symbol: str, ts_ns: int, price: float, size: float, trade_id: int, *, binary: bool = True) -> dict[str, Any]:
    return {"T": "t", "S": symbol, "i": trade_id, "x": "V", "p": price, "s": size, "c": ["@"], "z": "C", "t": _ts_value(ts_ns, binary)}


def bar_message(symbol: str, ts_ns: int, o: float, h: float, low: float, c: float, v: float, *, binary: bool = True) -> dict[str, Any]:
    return {"T": "b", "S": symbol, "o": o, "h": h, "l": low, "c": c, "v": v, "n": 1, "vw": c, "t": _ts_value(ts_ns, binary)}


def status_message(
    symbol: str, ts_ns: int, code: str, message: str, reason: str = "", reason_message: str = "", *, tape: str = "C", binary: bool = True
) -> dict[str, Any]:
    """A trading status (``T: "s"``): halts (``sc`` H / 2 / P), resumes (T / 3), with the reason (``rc``, e.g. T1, LUDP)."""
    return {"T": "s", "S": symbol, "sc": code, "sm": message, "rc": reason, "rm": reason_message, "t": _ts_value(ts_ns, binary), "z": tape}


def luld_message(
    symbol: str, ts_ns: int, up: float, down: float, indicator: str = "B", *, tape: str = "C", binary: bool = True
) -> dict[str, Any]:
    """Limit Up - Limit Down price bands (``T: "l"``): ``u`` limit up, ``d`` limit down, ``i`` indicator."""
    return {"T": "l", "S": symbol, "u": up, "d": down, "i": indicator, "t": _ts_value(ts_ns, binary), "z": tape}


def correction_message(
    symbol: str,
    ts_ns: int,
    original_id: int,
    original_price: float,
    original_size: float,
    corrected_id: int,
    corrected_price: float,
    corrected_size: float,
    *,
    binary: bool = True,
) -> dict[str, Any]:
    """A trade correction (``T: "c"``): trade ``oi`` (``op`` x ``os``) becomes ``ci`` (``cp`` x ``cs``)."""
    return {
        "T": "c",
        "S": symbol,
        "x": "V",
        "oi": original_id,
        "op": original_price,
        "os": original_size,
        "oc": [" "],
        "ci": corrected_id,
        "cp": corrected_price,
        "cs": corrected_size,
        "cc": [" "],
        "z": "C",
        "t": _ts_value(ts_ns, binary),
    }


def cancel_message(
    symbol: str, ts_ns: int, trade_id: int, price: float, size: float, action: str = "C", *, binary: bool = True
) -> dict[str, Any]:
    """A trade cancel or error (``T: "x"``, ``a`` "C" cancel / "E" error): trade ``i`` no longer counts."""
    return {"T": "x", "S": symbol, "i": trade_id, "x": "V", "p": price, "s": size, "a": action, "z": "C", "t": _ts_value(ts_ns, binary)}


def encode_frame(messages: list[dict[str, Any]], *, binary: bool = True) -> bytes | str:
    """Messages built with ``binary`` matching: msgpack bytes, or JSON text."""
    if binary:
        return msgpack.packb(messages)
    return json.dumps(messages, separators=(",", ":"))


def control(kind: str, **fields: Any) -> dict[str, Any]:
    """A control message: ``control("success", msg="connected")``, ``control("error", code=406, msg=...)``."""
    return {"T": kind, **fields}
