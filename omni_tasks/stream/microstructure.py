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


def quote_row(book: SymbolBook) -> str:
    """The latest-quote fields in :mod:`omni_tasks.contracts.quotes`'s order, joined by ``|``
    (bid ask bid_size ask_size ts recv mid spread_bps vwap liq; vwap empty when no trades yet)."""
    vwap = book.vwap
    bid, ask = book.bid, book.ask
    mid = (bid + ask) / 2.0
    return (
        f"{bid!r}|{ask!r}|{book.bid_size!r}|{book.ask_size!r}|{book.ts}|{book.recv}|{round(mid, 6)!r}|"
        f"{(ask - bid) / mid * 10_000.0:.4f}|{'' if vwap is None else f'{vwap:.6f}'}|{book.liquidity:.4f}"
    )
