"""The latest quotes the streaming worker serves in Redis, and how every other part reads them.

One hash per symbol, ``omni:quote:<SYMBOL>``, expiring ``quote_ttl_s`` after its
last write so a quote that stopped updating disappears rather than misleads.
Only sane quotes are ever written (uncrossed, positive prices and sizes, never
older than the one already served). Fields (strings, as Redis keeps them):

``bid ask bid_size ask_size``  the quote
``ts``                          the exchange timestamp, ns since the epoch
``recv``                        when the worker received the frame, ns (wall clock)
``mid spread_bps``              microstructure at that quote
``vwap liq``                    the session VWAP from trades and the 0..1 liquidity score ("" when unknown)

The day's volume profile per symbol, ``omni:profile:<SYMBOL>`` (written about once a second
when trades arrived or were corrected or cancelled, kept a day): ``day`` (days since the epoch, split at
04:00 UTC), ``trades`` (counted in the VWAP), ``volume``, ``vwap`` and ``poc`` (the fullest price bucket;
both "" when no trade counts any more) and ``levels`` (JSON
``[[bucket low price, volume], ...]``, fullest first). Read it with :func:`read_profile`.

The trading status per symbol, ``omni:tradingstatus:<SYMBOL>``, beside the quote
but in its own hash: a halted symbol gets no quotes, so its quote expires while
the halt must not. A HALTED or QUOTING status never expires; any other expires
:data:`TRADING_STATUS_TTL_S` after its last write. No hash means no status was
ever seen: trading is assumed. Fields: ``state`` (HALTED, QUOTING: quotes back
but no trading yet, TRADING, or "" when only a LULD band was seen), ``code`` and
``message`` (Alpaca's ``sc``/``sm`` of the message that set the state), ``reason``
and ``reason_message`` (``rc``/``rm``), ``since`` (ns: when that state began),
``ts`` (ns: the last status message), ``tape``, ``info`` (the last other status
code and text: an indication, an imbalance, SSR), ``luld_up``, ``luld_down``,
``luld_indicator``, ``luld_ts`` (ns; 0.0 bands: none seen), ``recv``. Read it with
:func:`read_trading_status`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, TypeVar

from omni_tasks.core.keys import PROFILE_KEY_PREFIX, QUOTE_KEY_PREFIX, TRADING_STATUS_KEY_PREFIX

#: Trading days split at 04:00 UTC, outside every US session (the stream's day-VWAP reset, the LULD bands' day).
DAY_NS: Final = 86_400 * 1_000_000_000
DAY_SPLIT_NS: Final = 4 * 3_600 * 1_000_000_000
PROFILE_TTL_S: Final = 86_400
TRADING_STATUS_TTL_S: Final = 86_400


def quote_key(symbol: str) -> str:
    return QUOTE_KEY_PREFIX + symbol


@dataclass(frozen=True)
class LatestQuote:
    """A served quote. Prices as Decimal (parsed from the stored text), times in ns."""

    symbol: str
    bid: Decimal
    ask: Decimal
    bid_size: float
    ask_size: float
    ts_ns: int
    recv_ns: int
    mid: Decimal
    spread_bps: float
    vwap: float | None
    liquidity: float | None

    def age_s(self, now_ns: int | None = None) -> float:
        """Seconds since the exchange timestamp."""
        return ((now_ns if now_ns is not None else time.time_ns()) - self.ts_ns) / 1e9

    def is_fresh(self, max_age_s: float, now_ns: int | None = None) -> bool:
        return self.age_s(now_ns) <= max_age_s


def trading_status_key(symbol: str) -> str:
    return TRADING_STATUS_KEY_PREFIX + symbol


@dataclass(frozen=True)
class TradingStatus:
    """A symbol's trading status as served (see the module docstring). Times in ns; bands 0.0 when none seen."""

    symbol: str
    state: str
    code: str = ""
    message: str = ""
    reason: str = ""
    reason_message: str = ""
    since_ns: int = 0
    ts_ns: int = 0
    tape: str = ""
    info: str = ""
    luld_up: Decimal = Decimal(0)
    luld_down: Decimal = Decimal(0)
    luld_indicator: str = ""
    luld_ts_ns: int = 0

    @property
    def halted(self) -> bool:
        """HALTED, QUOTING (no trading yet) or UNREADABLE (a stored status that cannot be read counts as halted)."""
        return self.state in ("HALTED", "QUOTING", "UNREADABLE")

    @property
    def has_band(self) -> bool:
        return self.luld_ts_ns > 0 and self.luld_up > 0 and self.luld_down > 0 and self.luld_down <= self.luld_up

    def describe(self) -> str:
        """One line: ``HALTED H T1 (Halt News Pending) since 14:30:05Z``, ``LULD 95.00-105.00``, or both."""
        parts = []
        if self.halted:
            since = time.strftime("%H:%M:%SZ", time.gmtime(self.since_ns / 1e9)) if self.since_ns else "?"
            why = f" ({self.reason_message or self.message})" if (self.reason_message or self.message) else ""
            parts.append(f"{self.state} {self.code} {self.reason}{why} since {since}".replace("  ", " "))
        elif self.state == "TRADING" and self.since_ns:
            parts.append(f"resumed {time.strftime('%H:%M:%SZ', time.gmtime(self.since_ns / 1e9))}")
        if self.has_band:
            parts.append(f"LULD {self.luld_down}-{self.luld_up}")
        return "; ".join(parts)


def parse_trading_status(symbol: str, fields: dict[Any, Any]) -> TradingStatus | None:
    """A stored hash as a :class:`TradingStatus`; None when absent; state UNREADABLE when it cannot be read."""
    if not fields:
        return None
    data = {_text(k): _text(v) for k, v in fields.items()}
    try:
        state = data.get("state", "")
        if state not in ("", "HALTED", "QUOTING", "TRADING"):
            raise ValueError(state)
        return TradingStatus(
            symbol=symbol,
            state=state,
            code=data.get("code", ""),
            message=data.get("message", ""),
            reason=data.get("reason", ""),
            reason_message=data.get("reason_message", ""),
            since_ns=int(data.get("since") or 0),
            ts_ns=int(data.get("ts") or 0),
            tape=data.get("tape", ""),
            info=data.get("info", ""),
            luld_up=Decimal(data.get("luld_up") or 0),
            luld_down=Decimal(data.get("luld_down") or 0),
            luld_indicator=data.get("luld_indicator", ""),
            luld_ts_ns=int(data.get("luld_ts") or 0),
        )
    except (ValueError, ArithmeticError):
        return TradingStatus(symbol=symbol, state="UNREADABLE", message=f"stored status unreadable: {sorted(data.items())!r:.120}")


def read_trading_status(redis: Any, symbols: Iterable[str]) -> dict[str, TradingStatus]:
    """The trading status of each symbol that has one (one round trip); symbols never seen in a status are left out."""
    return _read_hashes(redis, symbols, trading_status_key, parse_trading_status)


T = TypeVar("T")


def _read_hashes(redis: Any, symbols: Iterable[str], key: Callable[[str], str], parse: Callable[[str, Any], T | None]) -> dict[str, T]:
    """One pipelined HGETALL per symbol, each parsed; symbols whose hash is absent or unreadable are left out."""
    names = list(symbols)
    if not names:
        return {}
    pipe = redis.pipeline(transaction=False)
    for symbol in names:
        pipe.hgetall(key(symbol))
    found: dict[str, T] = {}
    for symbol, fields in zip(names, pipe.execute(), strict=True):
        parsed = parse(symbol, fields)
        if parsed is not None:
            found[symbol] = parsed
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_quote(symbol: str, fields: dict[Any, Any]) -> LatestQuote | None:
    """A stored hash as a :class:`LatestQuote`; None when absent, incomplete or unreadable."""
    if not fields:
        return None
    data = {_text(k): _text(v) for k, v in fields.items()}
    try:
        vwap, liq = data.get("vwap", ""), data.get("liq", "")
        return LatestQuote(
            symbol=symbol,
            bid=Decimal(data["bid"]),
            ask=Decimal(data["ask"]),
            bid_size=float(data["bid_size"]),
            ask_size=float(data["ask_size"]),
            ts_ns=int(data["ts"]),
            recv_ns=int(data["recv"]),
            mid=Decimal(data["mid"]),
            spread_bps=float(data["spread_bps"]),
            vwap=float(vwap) if vwap else None,
            liquidity=float(liq) if liq else None,
        )
    except (KeyError, ValueError, ArithmeticError):
        return None


def read_latest(redis: Any, symbols: Iterable[str]) -> dict[str, LatestQuote]:
    """The served quote of each symbol that has one (one round trip); missing symbols are left out."""
    return _read_hashes(redis, symbols, quote_key, parse_quote)


def read_profile(redis: Any, symbol: str) -> dict[str, Any] | None:
    """The served volume profile of ``symbol`` (see the module docstring); None when absent or unreadable."""
    data = {_text(k): _text(v) for k, v in redis.hgetall(PROFILE_KEY_PREFIX + symbol).items()}
    if not data:
        return None
    try:
        return {
            "day": int(data["day"]),
            "trades": int(data["trades"]),
            "volume": float(data["volume"]),
            "vwap": float(data["vwap"]) if data["vwap"] else None,  # "": every trade of the day was cancelled
            "poc": float(data["poc"]) if data["poc"] not in ("", "None") else None,
            "levels": [(float(price), float(volume)) for price, volume in json.loads(data["levels"])],
        }
    except (KeyError, ValueError, TypeError):
        return None
