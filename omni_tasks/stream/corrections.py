"""The trade-correction memory: which trades a book counted, and corrections and cancels applied to them.

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
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Final

from omni_tasks.stream.microstructure import MAX_PRICE, MAX_SIZE

if TYPE_CHECKING:
    from omni_tasks.stream.microstructure import SymbolBook

log = logging.getLogger(__name__)

MAX_TRADES_REMEMBERED: Final = 100_000
EXCHANGE_BITS: Final = {chr(c): c for c in range(1, 128)}  # one-letter exchange codes; anything else: 0


def trade_key(trade_id: Any, exchange: Any) -> int:
    """One int per (exchange, trade id): trade ids are unique per exchange, not across them. Raises TypeError."""
    if type(trade_id) is not int:
        raise TypeError("trade id")
    return (trade_id << 7) | (EXCHANGE_BITS.get(exchange, 0) if type(exchange) is str else 0)


class TradeCorrections:
    """The corrections-and-cancels half of :class:`omni_tasks.stream.book.Books` (a mixin: it works on the books' state)."""

    books: dict[str, SymbolBook]
    counts: dict[str, int]
    dirty_vwap: set[str]
    max_trades_remembered: int
    events: int
    _unknown_logged: int
    _generation: int

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
