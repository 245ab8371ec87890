"""Per-symbol book and microstructure, updated message by message, served only when sane.

A quote is *served* (becomes the symbol's latest quote) only when both
prices are positive and finite, both sizes positive, the market is not
crossed (bid > ask) and its timestamp is not older than the quote already
served; every other quote is counted by reason (``crossed``, ``zero_size``,
``bad_price``, ``out_of_order``, ``malformed``) and never served. A locked
market (bid == ask) is served: consolidated feeds show it briefly.

Microstructure, computed when a symbol is written out (:meth:`Books.row`),
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
from dataclasses import dataclass, field
from typing import Any, Final

MAX_PRICE: Final = 1e9  # finite and sane; NaN fails every comparison, inf fails this one
MAX_SIZE: Final = 1e12
DAY_NS: Final = 86_400 * 1_000_000_000
DAY_SPLIT_NS: Final = 4 * 3_600 * 1_000_000_000
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
        spread_part = 1.0 / (1.0 + self.spread_bps / 10.0)
        notional = self.bid * self.bid_size + self.ask * self.ask_size
        depth_part = min(1.0, math.log1p(notional) / _LOG_DEPTH_REF)
        return spread_part * depth_part

    def volume_profile(self, levels: int = 10) -> list[tuple[float, float]]:
        """The ``levels`` fullest price buckets as (bucket low price, volume), fullest first."""
        width = self.profile_width
        top = sorted(self.profile.items(), key=lambda kv: (-kv[1], kv[0]))[:levels]
        return [(round(bucket * width, 6), volume) for bucket, volume in top]

    @property
    def point_of_control(self) -> float | None:
        profile = self.volume_profile(1)
        return profile[0][0] if profile else None


@dataclass
class Books:
    """Every symbol's :class:`SymbolBook`, the symbols changed since the last write, and the totals."""

    books: dict[str, SymbolBook] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    dirty_bars: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("messages", "quotes", "served", "trades", "bars", "ignored", *REJECT_REASONS), 0)
    )

    def book(self, symbol: str) -> SymbolBook:
        found = self.books.get(symbol)
        if found is None:
            found = self.books[symbol] = SymbolBook(symbol)
        return found

    def apply(self, messages: list[dict[str, Any]], recv_ns: int) -> list[dict[str, Any]]:
        """Apply one frame's messages; returns its control messages (success, error, subscription) in order."""
        books = self.books
        dirty_add = self.dirty.add
        counts = self.counts
        controls: list[dict[str, Any]] = []
        served = quotes = trades = 0
        for message in messages:
            kind = message.get("T")
            if kind == "q":
                quotes += 1
                book = None
                try:
                    symbol = message["S"]
                    book = books.get(symbol)
                    if book is None:
                        if type(symbol) is not str:
                            raise TypeError
                        book = self.book(symbol)
                    book.quotes += 1
                    bid = message["bp"]
                    ask = message["ap"]
                    bid_size = message["bs"]
                    ask_size = message["as"]
                    ts = message["t"]
                    if type(ts) is not int or bid is True or ask is True or bid_size is True or ask_size is True:
                        raise TypeError
                    if not (0.0 < bid < MAX_PRICE and 0.0 < ask < MAX_PRICE):
                        reason = "bad_price"
                    elif not (0.0 < bid_size < MAX_SIZE and 0.0 < ask_size < MAX_SIZE):
                        reason = "zero_size"
                    elif bid > ask:
                        reason = "crossed"
                    elif ts < book.ts:
                        reason = "out_of_order"
                    else:
                        book.bid = bid
                        book.ask = ask
                        book.bid_size = bid_size
                        book.ask_size = ask_size
                        book.ts = ts
                        book.recv = recv_ns
                        dirty_add(symbol)
                        served += 1
                        continue
                except (KeyError, TypeError):
                    reason = "malformed"
                counts[reason] += 1
                if book is not None:
                    book.rejected[reason] += 1
            elif kind == "t":
                trades += 1
                self._trade(message)
            elif kind in ("b", "u"):  # minute bars and their late updates; daily bars ("d") are not subscribed
                self._bar(message)
            elif kind in ("success", "error", "subscription"):
                controls.append(message)
            else:
                counts["ignored"] += 1
        counts["messages"] += len(messages)
        counts["quotes"] += quotes
        counts["served"] += served
        counts["trades"] += trades
        return controls

    def _trade(self, message: dict[str, Any]) -> None:
        try:
            symbol, price, size, ts = message["S"], message["p"], message["s"], message["t"]
            if type(symbol) is not str or type(ts) is not int or not (0.0 < price < MAX_PRICE and size > 0):
                raise TypeError
        except (KeyError, TypeError):
            self.counts["malformed"] += 1
            return
        book = self.book(symbol)
        day = (ts - DAY_SPLIT_NS) // DAY_NS
        if day != book.trade_day:
            if day < book.trade_day:  # a print from a finished day: too late for its VWAP
                self.counts["out_of_order"] += 1
                return
            book.trade_day = day
            book.trade_pv = book.trade_volume = 0.0
            book.profile = {}
            book.profile_width = max(0.01, price * PROFILE_BUCKET_BP / 10_000.0)
        book.trade_pv += price * size
        book.trade_volume += size
        book.trades += 1
        bucket = math.floor(price / book.profile_width + 1e-9)  # not //: 100.00 // 0.05 is 1999.0 in binary floats
        book.profile[bucket] = book.profile.get(bucket, 0.0) + size
        if ts >= book.last_trade_ts:
            book.last_trade_ts = ts
            book.last_trade_price = price

    def _bar(self, message: dict[str, Any]) -> None:
        symbol = message.get("S")
        ts = message.get("t")
        if type(symbol) is not str or type(ts) is not int or not all(k in message for k in ("o", "h", "l", "c", "v")):
            self.counts["malformed"] += 1
            return
        book = self.book(symbol)
        if book.bar is not None and ts < book.bar["t"]:
            self.counts["out_of_order"] += 1
            return
        book.bar = {k: message[k] for k in ("t", "o", "h", "l", "c", "v") if k in message}
        self.dirty_bars.add(symbol)
        self.counts["bars"] += 1

    def take_dirty(self) -> list[SymbolBook]:
        """The books with a newly served quote since the last call (and forget them)."""
        if not self.dirty:
            return []
        books = self.books
        changed = [books[s] for s in self.dirty]
        self.dirty = set()
        return changed

    def take_dirty_bars(self) -> list[SymbolBook]:
        if not self.dirty_bars:
            return []
        changed = [self.books[s] for s in self.dirty_bars]
        self.dirty_bars = set()
        return changed


def quote_row(book: SymbolBook) -> str:
    """The latest-quote fields in :mod:`omni_tasks.stream.latest`'s order, joined by ``|``
    (bid ask bid_size ask_size ts recv mid spread_bps vwap liq; vwap empty when no trades yet)."""
    vwap = book.vwap
    bid, ask = book.bid, book.ask
    mid = (bid + ask) / 2.0
    return (
        f"{bid!r}|{ask!r}|{book.bid_size!r}|{book.ask_size!r}|{book.ts}|{book.recv}|{round(mid, 6)!r}|"
        f"{(ask - bid) / mid * 10_000.0:.4f}|{'' if vwap is None else f'{vwap:.6f}'}|{book.liquidity:.4f}"
    )
