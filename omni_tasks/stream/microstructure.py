"""One symbol's served quote and its microstructure: what a symbol's latest-quote row says.

Microstructure, computed when a symbol is written out (:func:`quote_row`),
not per message:

- mid = (bid + ask) / 2; spread in basis points = (ask - bid) / mid * 10,000.
- VWAP of the session's trades (sum price*size / sum size), reset when the
  trading day changes (days split at 04:00 UTC, outside every US session).
- volume profile: traded size per price bucket of 5 bp of the day's first
  price (at least one cent); the point of control is the fullest bucket.
- liquidity score in 0..1 = spread part * depth part, where spread part =
  1 / (1 + spread_bps / 10) (1 when locked, 0.5 at 10 bp) and depth part =
  min(1, log1p(displayed notional) / log1p(1,000,000)) (1 from $1M shown at
  the touch). Tight and deep scores near 1; wide or thin near 0.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Final

MAX_PRICE: Final = 1e9  # finite and sane; NaN fails every comparison, inf fails this one
MAX_SIZE: Final = 1e12
PROFILE_BUCKET_BP: Final = 5.0
_LOG_DEPTH_REF: Final = math.log1p(1_000_000.0)

REJECT_REASONS: Final = ("crossed", "zero_size", "bad_price", "out_of_order", "malformed")


class SymbolBook:
    """One symbol's served quote, its rejection counts, and its trade statistics."""

    __slots__ = (
        "symbol",
        "bid",
        "ask",
        "bid_size",
        "ask_size",
        "ts",
        "recv",
        "quotes",
        "rejected",
        "trade_day",
        "trade_pv",
        "trade_volume",
        "trades",
        "last_trade_price",
        "last_trade_ts",
        "profile_width",
        "profile",
        "bar",
        "trade_rev",
        "trade_ids",
        "trade_ids_old",
        "revised",
        "gone_ids",
        "gone_order",
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bid = self.ask = self.bid_size = self.ask_size = 0.0
        self.ts = 0  # exchange ns of the served quote; 0: none served yet
        self.recv = 0
        self.quotes = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.trade_day = -1
        self.trade_pv = 0.0
        self.trade_volume = 0.0
        self.trades = 0
        self.last_trade_price = 0.0
        self.last_trade_ts = 0
        self.profile_width = 0.0
        self.profile: dict[int, float] = {}
        self.bar: dict[str, Any] | None = None
        self.trade_rev = 0  # changes whenever the day's trade statistics change (trades, corrections, cancels)
        self.trade_ids: set[int] = set()  # the day's counted trades (trade_key): the current generation
        self.trade_ids_old: set[int] = set()  # and the one before it
        self.revised: dict[int, complex] = {}  # trades put in by a correction: key -> complex(price, size)
        # Trades taken out by a correction (-> the key it became) or a cancel (-> None): a repeat is recognised,
        # and a cancel naming a trade by its id before a correction reaches the corrected trade.
        self.gone_ids: dict[int, int | None] = {}
        self.gone_order: deque[int] = deque()

    # --- microstructure (computed on demand)

    @property
    def has_quote(self) -> bool:
        return self.ts > 0

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2.0

    @property
    def spread_bps(self) -> float:
        mid = self.mid
        return (self.ask - self.bid) / mid * 10_000.0 if mid > 0 else math.inf

    @property
    def vwap(self) -> float | None:
        return self.trade_pv / self.trade_volume if self.trade_volume > 0 else None

    @property
    def liquidity(self) -> float:
        if not self.has_quote:
            return 0.0
        return _liquidity(self.bid, self.ask, self.bid_size, self.ask_size, self.spread_bps)

    def volume_profile(self, levels: int = 10) -> list[tuple[float, float]]:
        """The ``levels`` fullest price buckets as (bucket low price, volume), fullest first."""
        width = self.profile_width
        top = sorted(self.profile.items(), key=lambda kv: (-kv[1], kv[0]))[:levels]
        return [(round(bucket * width, 6), volume) for bucket, volume in top]

    @property
    def point_of_control(self) -> float | None:
        profile = self.volume_profile(1)
        return profile[0][0] if profile else None


def _liquidity(bid: float, ask: float, bid_size: float, ask_size: float, spread_bps: float) -> float:
    """:attr:`SymbolBook.liquidity` from values already at hand (the same expression, so the same float)."""
    spread_part = 1.0 / (1.0 + spread_bps / 10.0)
    depth_part = min(1.0, math.log1p(bid * bid_size + ask * ask_size) / _LOG_DEPTH_REF)
    return spread_part * depth_part


def quote_fields(book: SymbolBook) -> tuple[str, str, str, str, str, str, str, str, str, str]:
    """The latest-quote fields in :mod:`omni_tasks.contracts.quotes`'s order, as the text Redis keeps
    (bid ask bid_size ask_size ts recv mid spread_bps vwap liq; vwap empty when no trades yet)."""
    bid, ask = book.bid, book.ask
    mid = (bid + ask) / 2.0
    spread_bps = (ask - bid) / mid * 10_000.0
    volume = book.trade_volume
    liquidity = _liquidity(bid, ask, book.bid_size, book.ask_size, spread_bps) if book.ts > 0 else 0.0
    return (
        repr(bid),
        repr(ask),
        repr(book.bid_size),
        repr(book.ask_size),
        str(book.ts),
        str(book.recv),
        repr(round(mid, 6)),
        f"{spread_bps:.4f}",
        f"{book.trade_pv / volume:.6f}" if volume > 0 else "",
        f"{liquidity:.4f}",
    )


def quote_row(book: SymbolBook) -> str:
    """:func:`quote_fields` joined by ``|``."""
    return "|".join(quote_fields(book))


#: Floats as RESP bulk strings of their repr, and mids as those of ``repr(round(mid, 6))``: prices and sizes
#: repeat (a price moves by ticks, sizes come in lots), and a lookup is a fraction of a repr.
_BULK: dict[float, str] = {}
_MID_BULK: dict[float, str] = {}
_BULK_CACHE_MAX: Final = 200_000


def _bulk(value: float) -> str:
    """``repr(value)`` as a RESP bulk string, remembered for floats (not for ints: ``2 == 2.0`` as a key)."""
    text = repr(value)
    bulk = f"${len(text)}\r\n{text}\r\n"
    if type(value) is float:
        if len(_BULK) >= _BULK_CACHE_MAX:
            _BULK.clear()
        _BULK[value] = bulk
    return bulk


def _mid_bulk(mid: float) -> str:
    text = repr(round(mid, 6))
    bulk = _MID_BULK[mid] = f"${len(text)}\r\n{text}\r\n"
    if len(_MID_BULK) >= _BULK_CACHE_MAX:
        _MID_BULK.clear()
    return bulk


def quote_resp(book: SymbolBook, head: str) -> str:
    """The symbol (``head``: its RESP bulk string, see :func:`resp_bulk`) and :func:`quote_fields` as RESP bulk
    strings, the arguments :data:`omni_tasks.stream.path.WRITE_QUOTES_LUA` takes for one symbol.

    Built as text (every field is ASCII, so its length in characters is its length in bytes): the flush
    encodes the whole command once instead of handing eleven arguments per symbol to the client's
    per-argument encoder. The same text as :func:`quote_fields`, which the tests hold it to."""
    bid, ask, bid_size, ask_size = book.bid, book.ask, book.bid_size, book.ask_size
    bulk = _BULK
    mid = (bid + ask) / 2.0
    spread_bps = (ask - bid) / mid * 10_000.0
    volume = book.trade_volume
    liquidity = _liquidity(bid, ask, bid_size, ask_size, spread_bps) if book.ts > 0 else 0.0
    ts, recv = str(book.ts), str(book.recv)
    vwap = f"{book.trade_pv / volume:.6f}" if volume > 0 else ""
    sp, liq = f"{spread_bps:.4f}", f"{liquidity:.4f}"
    return (
        f"{head}{(type(bid) is float and bulk.get(bid)) or _bulk(bid)}{(type(ask) is float and bulk.get(ask)) or _bulk(ask)}"
        f"{(type(bid_size) is float and bulk.get(bid_size)) or _bulk(bid_size)}"
        f"{(type(ask_size) is float and bulk.get(ask_size)) or _bulk(ask_size)}"
        f"${len(ts)}\r\n{ts}\r\n${len(recv)}\r\n{recv}\r\n{_MID_BULK.get(mid) or _mid_bulk(mid)}"
        f"${len(sp)}\r\n{sp}\r\n${len(vwap)}\r\n{vwap}\r\n${len(liq)}\r\n{liq}\r\n"
    )


def resp_bulk(text: str) -> str:
    """``text`` as a RESP bulk string (its length counted in UTF-8 bytes, as it will be sent)."""
    return f"${len(text.encode())}\r\n{text}\r\n"
