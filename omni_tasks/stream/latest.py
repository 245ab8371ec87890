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
when trades arrived, kept a day): ``day`` (days since the epoch, split at 04:00 UTC), ``trades``,
``volume``, ``vwap``, ``poc`` (the fullest price bucket) and ``levels`` (JSON
``[[bucket low price, volume], ...]``, fullest first). Read it with :func:`read_profile`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

QUOTE_KEY_PREFIX: Final = "omni:quote:"
QUOTE_STREAM_KEY: Final = "omni:quotes"
PROFILE_KEY_PREFIX: Final = "omni:profile:"
PROFILE_TTL_S: Final = 86_400


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
    names = list(symbols)
    if not names:
        return {}
    pipe = redis.pipeline(transaction=False)
    for symbol in names:
        pipe.hgetall(quote_key(symbol))
    quotes = {}
    for symbol, fields in zip(names, pipe.execute(), strict=True):
        quote = parse_quote(symbol, fields)
        if quote is not None:
            quotes[symbol] = quote
    return quotes


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
            "vwap": float(data["vwap"]),
            "poc": float(data["poc"]),
            "levels": [(float(price), float(volume)) for price, volume in json.loads(data["levels"])],
        }
    except (KeyError, ValueError, TypeError):
        return None
