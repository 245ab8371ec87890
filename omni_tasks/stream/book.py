"""Every symbol's book, updated message by message: quotes (served only when sane), trades, bars, trading status.

A quote is *served* (becomes the symbol's latest quote) only when both
prices are positive and finite, both sizes positive, the market is not
crossed (bid > ask) and its timestamp is not older than the quote already
served; every other quote is counted by reason (``crossed``, ``zero_size``,
``bad_price``, ``out_of_order``, ``malformed``) and never served. A locked
market (bid == ask) is served: consolidated feeds show it briefly.

Trading status (``s``) and LULD bands (``l``) are kept per symbol
(:class:`StatusBook`): a halt code (CTA ``2``, UTP ``H``, ``P``) makes the
symbol HALTED since that message's time, a quotation resumption (``Q``) makes
it QUOTING (still not trading), a resume code (CTA ``3``, UTP ``T``) makes it
TRADING; other codes (indications, imbalances, short-sale restriction) are
kept as information and change nothing. An older status than the one held is
``out_of_order``.

Every message is counted by kind (:data:`omni_tasks.stream.wire.KINDS`).

Rooms beside this one: :mod:`~omni_tasks.stream.microstructure` (the served
quote and its microstructure) and :mod:`~omni_tasks.stream.corrections` (trade
corrections and cancels, and the memory of counted trades).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from omni_tasks.contracts.quotes import DAY_NS, DAY_SPLIT_NS
from omni_tasks.stream.corrections import EXCHANGE_BITS, MAX_TRADES_REMEMBERED, TradeCorrections
from omni_tasks.stream.microstructure import MAX_PRICE, MAX_SIZE, PROFILE_BUCKET_BP, REJECT_REASONS, SymbolBook
from omni_tasks.stream.wire import HALT_STATUS_CODES, KINDS, QUOTING_STATUS_CODES, RESUME_STATUS_CODES

log = logging.getLogger(__name__)

#: Counts besides the quote rejections: what the books did with every message.
COUNT_NAMES: Final = (
    "messages", "quotes", "served", "trades", "bars", "statuses", "lulds", "corrections", "cancels",
    "unknown_trade", "repeats", "ignored", *REJECT_REASONS,
)  # fmt: skip
_KIND_SET: Final = frozenset(KINDS)
HALTED, QUOTING, TRADING = "HALTED", "QUOTING", "TRADING"


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


@dataclass
class Books(TradeCorrections):
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
            key = (trade_id << 7) | (EXCHANGE_BITS.get(exchange, 0) if type(exchange) is str else 0)
            ids = book.trade_ids
            ids.add(key)
            if len(ids) >= self._generation:
                self._rotate(book)

    def __post_init__(self) -> None:
        self._generation = max(1, self.max_trades_remembered // 2)  # trades per generation of the trade memory

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
