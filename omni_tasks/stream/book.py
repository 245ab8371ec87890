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

Trade corrections (``c``) and cancels/errors (``x``) adjust the day's VWAP,
volume and profile. Each book remembers which trades it counted by (exchange,
trade id), at least the most recent half of :data:`MAX_TRADES_REMEMBERED` and
at most all of them per symbol (two generations of int sets: the current one,
when full at half the bound, becomes the old one and the old one is dropped;
about 60 bytes a trade, at most ~6 MB for the busiest symbol; forgotten at the
day's split). A correction takes the
original out (at ``op`` x ``os``, as the message says) and puts the corrected
trade in (``cp`` x ``cs``, kept with its values, so a later cancel of it, by
either id, takes out what was put in); a cancel (action ``C``) or error
(``E``) takes the trade out at ``p`` x ``s``. Both are idempotent: the
ids they removed are remembered (bounded the same way), so a repeat is counted
(``repeats``) and changes nothing. A correction or cancel of a trade the book
never counted (before the worker connected, another day, beyond the memory) is
counted as ``unknown_trade`` and changes nothing.

Trading status (``s``) and LULD bands (``l``) are kept per symbol
(:class:`StatusBook`): a halt code (CTA ``2``, UTP ``H``, ``P``) makes the
symbol HALTED since that message's time, a quotation resumption (``Q``) makes
it QUOTING (still not trading), a resume code (CTA ``3``, UTP ``T``) makes it
TRADING; other codes (indications, imbalances, short-sale restriction) are
kept as information and change nothing. An older status than the one held is
``out_of_order``.

Every message is counted by kind (:data:`omni_tasks.stream.wire.KINDS`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from omni_tasks.contracts.quotes import DAY_NS, DAY_SPLIT_NS
from omni_tasks.stream.wire import HALT_STATUS_CODES, KINDS, QUOTING_STATUS_CODES, RESUME_STATUS_CODES

log = logging.getLogger(__name__)

MAX_PRICE: Final = 1e9  # finite and sane; NaN fails every comparison, inf fails this one
MAX_SIZE: Final = 1e12
PROFILE_BUCKET_BP: Final = 5.0
_LOG_DEPTH_REF: Final = math.log1p(1_000_000.0)

REJECT_REASONS: Final = ("crossed", "zero_size", "bad_price", "out_of_order", "malformed")
#: Counts besides the quote rejections: what the books did with every message.
COUNT_NAMES: Final = (
    "messages", "quotes", "served", "trades", "bars", "statuses", "lulds", "corrections", "cancels",
    "unknown_trade", "repeats", "ignored", *REJECT_REASONS,
)  # fmt: skip
MAX_TRADES_REMEMBERED: Final = 100_000
_KIND_SET: Final = frozenset(KINDS)
_EXCHANGE_BITS: Final = {chr(c): c for c in range(1, 128)}  # one-letter exchange codes; anything else: 0
HALTED, QUOTING, TRADING = "HALTED", "QUOTING", "TRADING"


def trade_key(trade_id: Any, exchange: Any) -> int:
    """One int per (exchange, trade id): trade ids are unique per exchange, not across them. Raises TypeError."""
    if type(trade_id) is not int:
        raise TypeError("trade id")
    return (trade_id << 7) | (_EXCHANGE_BITS.get(exchange, 0) if type(exchange) is str else 0)


class StatusBook:
    """One symbol's trading status and LULD band as the stream last said them (times in exchange ns)."""

    __slots__ = (
        "symbol", "state", "code", "message", "reason", "reason_message", "since", "ts", "tape", "info",
        "luld_up", "luld_down", "luld_indicator", "luld_ts", "recv",
    )  # fmt: skip

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.state = ""  # "": no status message yet (trading assumed); HALTED, QUOTING, TRADING
        self.code = self.message = self.reason = self.reason_message = self.tape = self.info = ""
        self.since = 0  # when the current state began
        self.ts = 0  # the last status message applied
        self.luld_up = self.luld_down = 0.0
        self.luld_indicator = ""
        self.luld_ts = 0
        self.recv = 0

    @property
    def halted(self) -> bool:
        return self.state in (HALTED, QUOTING)

    def row(self) -> list[str]:
        """The fields :data:`omni_tasks.stream.path.WRITE_STATUS_LUA` takes, in its order."""
        return [
            self.symbol, self.state, self.code, self.message, self.reason, self.reason_message, str(self.since), str(self.ts),
            self.tape, self.info, repr(self.luld_up), repr(self.luld_down), self.luld_indicator, str(self.luld_ts), str(self.recv),
        ]  # fmt: skip


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


@dataclass
class Books:
    """Every symbol's :class:`SymbolBook`, the symbols changed since the last write, and the totals."""

    books: dict[str, SymbolBook] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    dirty_bars: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_NAMES, 0))
    kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    statuses: dict[str, StatusBook] = field(default_factory=dict)
    dirty_status: set[str] = field(default_factory=set)
    dirty_vwap: set[str] = field(default_factory=set)  # VWAP changed by a correction or cancel (not by a trade)
    max_trades_remembered: int = MAX_TRADES_REMEMBERED
    events: int = 0  # status, LULD, correction and cancel messages applied (the path flushes after them)
    _unknown_logged: int = 0
    _generation: int = field(init=False, default=0)

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
            else:
                self._other(kind, message, recv_ns, controls)
        counts["messages"] += len(messages)
        counts["quotes"] += quotes
        counts["served"] += served
        counts["trades"] += trades
        kinds = self.kinds
        kinds["q"] += quotes
        kinds["t"] += trades
        return controls

    def _other(self, kind: Any, message: dict[str, Any], recv_ns: int, controls: list[dict[str, Any]]) -> None:
        """Every message that is neither a quote nor a trade (rarer: kept off the loop above)."""
        known = type(kind) is str and kind in _KIND_SET
        self.kinds[kind if known else "unknown"] += 1
        if kind in ("b", "u"):  # minute bars and their late updates; daily bars ("d") are not subscribed
            self._bar(message)
        elif kind in ("success", "error", "subscription"):
            controls.append(message)
        elif kind == "s":
            self._status(message, recv_ns)
        elif kind == "l":
            self._luld(message, recv_ns)
        elif kind == "c":
            self._correction(message)
        elif kind == "x":
            self._cancel(message)
        else:
            self.counts["ignored"] += 1

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
            book.trades = 0
            book.profile = {}
            book.profile_width = max(0.01, price * PROFILE_BUCKET_BP / 10_000.0)
            book.trade_ids = set()
            book.trade_ids_old = set()
            book.revised = {}
            book.gone_ids = {}
            book.gone_order = deque()
        book.trade_pv += price * size
        book.trade_volume += size
        book.trades += 1
        book.trade_rev += 1
        bucket = math.floor(price / book.profile_width + 1e-9)  # not //: 100.00 // 0.05 is 1999.0 in binary floats
        book.profile[bucket] = book.profile.get(bucket, 0.0) + size
        if ts >= book.last_trade_ts:
            book.last_trade_ts = ts
            book.last_trade_price = price
        trade_id = message.get("i")
        if type(trade_id) is int:
            exchange = message.get("x")
            key = (trade_id << 7) | (_EXCHANGE_BITS.get(exchange, 0) if type(exchange) is str else 0)
            ids = book.trade_ids
            ids.add(key)
            if len(ids) >= self._generation:
                self._rotate(book)

    # --- corrections and cancels

    def __post_init__(self) -> None:
        self._generation = max(1, self.max_trades_remembered // 2)  # trades per generation of the trade memory

    @staticmethod
    def _rotate(book: SymbolBook) -> None:
        """The current generation of remembered trades becomes the old one; the old one is forgotten."""
        book.trade_ids_old, book.trade_ids = book.trade_ids, set()
        if book.revised:
            book.revised = {k: v for k, v in book.revised.items() if k in book.trade_ids_old}

    @staticmethod
    def _counted(book: SymbolBook, key: int) -> bool:
        return key in book.trade_ids or key in book.trade_ids_old

    def _take_out(self, book: SymbolBook, key: int, price: Any, size: Any, successor: int | None = None) -> bool:
        """Remove a counted trade (at ``price`` x ``size``, or at its corrected values) from the day's statistics.
        False when it is not counted; TypeError when its price and size are needed and not numbers."""
        if not self._counted(book, key):
            return False
        revised = book.revised.pop(key, None)
        if revised is not None:
            price, size = revised.real, revised.imag
        elif price is True or size is True or not (0.0 < price < MAX_PRICE and 0.0 < size < MAX_SIZE):
            raise TypeError("price or size")
        book.trade_ids.discard(key)
        book.trade_ids_old.discard(key)
        book.trade_pv -= price * size
        book.trade_volume -= size
        book.trades -= 1
        if book.trade_volume <= 1e-9 or book.trades <= 0:  # nothing left: no float residue posing as a VWAP
            book.trade_pv = book.trade_volume = 0.0
        bucket = math.floor(price / book.profile_width + 1e-9)
        left = book.profile.get(bucket, 0.0) - size
        if left > 1e-9:
            book.profile[bucket] = left
        else:
            book.profile.pop(bucket, None)
        book.gone_ids[key] = successor
        book.gone_order.append(key)
        if len(book.gone_order) > self.max_trades_remembered:
            book.gone_ids.pop(book.gone_order.popleft(), None)
        return True

    def _put_in(self, book: SymbolBook, key: int, price: float, size: float) -> None:
        book.gone_ids.pop(key, None)
        book.trade_pv += price * size
        book.trade_volume += size
        book.trades += 1
        bucket = math.floor(price / book.profile_width + 1e-9)
        book.profile[bucket] = book.profile.get(bucket, 0.0) + size
        book.revised[key] = complex(price, size)
        book.trade_ids.add(key)
        if len(book.trade_ids) >= self._generation:
            self._rotate(book)

    def _unknown_trade(self, what: str, symbol: str, trade_id: Any) -> None:
        self.counts["unknown_trade"] += 1
        self._unknown_logged += 1
        if self._unknown_logged <= 10 or self._unknown_logged % 1000 == 0:
            log.warning(
                "stream: %s of trade %s of %s, which the day's VWAP never counted (before this connection, another day, "
                "or beyond the memory); nothing changed (%d so far)",
                what, trade_id, symbol, self.counts["unknown_trade"],
            )  # fmt: skip

    def _correction(self, message: dict[str, Any]) -> None:
        """``oi`` (``op`` x ``os``) was wrong: it is ``ci`` (``cp`` x ``cs``); size 0 takes it out."""
        try:
            symbol, price, size = message["S"], message["cp"], message["cs"]
            original = trade_key(message["oi"], message.get("x"))
            corrected = trade_key(message["ci"], message.get("x"))
            if type(symbol) is not str or price is True or size is True or not (0.0 <= size < MAX_SIZE):
                raise TypeError
            if size > 0 and not (0.0 < price < MAX_PRICE):
                raise TypeError
        except (KeyError, TypeError):
            self.counts["malformed"] += 1
            return
        self.counts["corrections"] += 1
        self.events += 1
        book = self.books.get(symbol)
        if book is None or (not self._counted(book, original) and original in book.gone_ids):
            if book is None:
                self._unknown_trade("a correction", symbol, message.get("oi"))
            else:
                self.counts["repeats"] += 1
            return
        try:
            taken = self._take_out(
                book, original, message.get("op"), message.get("os"), corrected if size > 0 and corrected != original else None
            )
        except TypeError:
            self.counts["malformed"] += 1
            return
        if not taken:
            self._unknown_trade("a correction", symbol, message.get("oi"))
            return
        if size > 0:
            self._put_in(book, corrected, float(price), float(size))
        book.trade_rev += 1
        self.dirty_vwap.add(symbol)

    def _cancel(self, message: dict[str, Any]) -> None:
        """Trade ``i`` was cancelled (``a`` "C") or an error (``a`` "E"): it no longer counts."""
        try:
            symbol, action = message["S"], message.get("a", "C")
            key = trade_key(message["i"], message.get("x"))
            if type(symbol) is not str or action not in ("C", "E"):
                raise TypeError
        except (KeyError, TypeError):
            self.counts["malformed"] += 1
            return
        self.counts["cancels"] += 1
        self.events += 1
        book = self.books.get(symbol)
        if book is not None:
            successor = None if self._counted(book, key) else book.gone_ids.get(key)
            for _ in range(16):  # a trade corrected into another id: the cancel is of what it became
                if successor is None:
                    break
                key = successor
                successor = None if self._counted(book, key) else book.gone_ids.get(key)
        try:
            taken = book is not None and self._take_out(book, key, message.get("p"), message.get("s"))
        except TypeError:
            self.counts["malformed"] += 1
            return
        if book is not None and taken:
            book.trade_rev += 1
            self.dirty_vwap.add(symbol)
        elif book is not None and key in book.gone_ids:
            self.counts["repeats"] += 1
        else:
            self._unknown_trade("a cancel" if action == "C" else "an error", symbol, message.get("i"))

    # --- trading status and LULD bands

    def status(self, symbol: str) -> StatusBook:
        found = self.statuses.get(symbol)
        if found is None:
            found = self.statuses[symbol] = StatusBook(symbol)
        return found

    def _status(self, message: dict[str, Any], recv_ns: int) -> None:
        try:
            symbol, code, ts = message["S"], message["sc"], message["t"]
            if type(symbol) is not str or type(code) is not str or type(ts) is not int:
                raise TypeError
        except (KeyError, TypeError):
            self.counts["malformed"] += 1
            return
        book = self.status(symbol)
        if ts < book.ts:
            self.counts["out_of_order"] += 1
            return
        self.counts["statuses"] += 1
        self.events += 1
        text = _text(message.get("sm"))
        if code in HALT_STATUS_CODES or code in QUOTING_STATUS_CODES or code in RESUME_STATUS_CODES:
            state = HALTED if code in HALT_STATUS_CODES else QUOTING if code in QUOTING_STATUS_CODES else TRADING
            was_halted = book.halted
            if (state == TRADING and (was_halted or book.state == "")) or (state != TRADING and not was_halted):
                book.since = ts  # a new state begins (HALTED -> QUOTING is the same halt going on)
            elif state == TRADING and book.since == 0:
                book.since = ts
            book.state = state
            book.code, book.message = code, text
            book.reason, book.reason_message = _text(message.get("rc")), _text(message.get("rm"))
        else:
            book.info = f"{code} {text}".strip()
        book.ts = ts
        book.tape = _text(message.get("z"))
        book.recv = recv_ns
        self.dirty_status.add(symbol)

    def _luld(self, message: dict[str, Any], recv_ns: int) -> None:
        try:
            symbol, up, down, ts = message["S"], message["u"], message["d"], message["t"]
            if type(symbol) is not str or type(ts) is not int or up is True or down is True:
                raise TypeError
            if not (0.0 <= down < MAX_PRICE and 0.0 <= up < MAX_PRICE):
                raise TypeError
        except (KeyError, TypeError):
            self.counts["malformed"] += 1
            return
        book = self.status(symbol)
        if ts < book.luld_ts:
            self.counts["out_of_order"] += 1
            return
        self.counts["lulds"] += 1
        self.events += 1
        book.luld_up, book.luld_down = float(up), float(down)
        book.luld_indicator = _text(message.get("i"))
        book.luld_ts = ts
        book.recv = recv_ns
        self.dirty_status.add(symbol)

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

    def take_dirty_status(self) -> list[StatusBook]:
        if not self.dirty_status:
            return []
        changed = [self.statuses[s] for s in self.dirty_status]
        self.dirty_status = set()
        return changed

    def take_dirty_vwap(self) -> list[SymbolBook]:
        if not self.dirty_vwap:
            return []
        changed = [self.books[s] for s in self.dirty_vwap]
        self.dirty_vwap = set()
        return changed


def _text(value: Any) -> str:
    """A wire string field as text ("" when absent; anything else as its str, cut short)."""
    if value is None:
        return ""
    return value if type(value) is str else str(value)[:200]


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
