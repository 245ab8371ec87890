"""The day's loss, checked on every quote that moves a held symbol, raised as an alarm the moment it passes the limit.

The book (cash, the day's starting equity, positions) is what the broker
publishes to Redis (:mod:`omni_tasks.contracts.portfolio`); the guard re-reads it on
every housekeeping pass (a GET) and subscribes to any held symbol the stream
does not watch yet, so no position is marked at its cost. After each flush that changed a held
symbol it marks the positions at the served mids (a symbol without a quote at
its average price) and, when the day's loss exceeds
``OMNI_RISK_MAX_DAILY_LOSS_USD``, publishes one critical ``daily_loss`` alarm
(:mod:`omni_tasks.safety.alarms`); the watchdog's listener engages the kill
switch. One alarm per book day and breach: the next comes after the loss
recovers below the limit, or on a new day. A HALTED desk needs no alarm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

from omni_tasks.contracts.portfolio import PortfolioBook, parse_book
from omni_tasks.core.keys import TRADING_BOOK_KEY
from omni_tasks.settings import Settings
from omni_tasks.stream.path import FlushResult, QuotePath

log = logging.getLogger(__name__)


class LossGuard:
    """Marks the published book on every relevant flush; see the module docstring."""

    def __init__(self, redis: Any, *, max_daily_loss: Decimal, publish: Any) -> None:
        self.redis = redis
        self.max_daily_loss = max_daily_loss
        self._publish = publish
        self.book: PortfolioBook | None = None
        self._raw: bytes | None = None
        self._alarmed_day: Any = None
        self.alarms = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def on_housekeeping(self, worker: Any) -> None:
        raw = await self.redis.get(TRADING_BOOK_KEY)
        if raw != self._raw:
            self._raw = raw
            self.book = parse_book(raw)
            if self.book is not None and self.book.positions:
                # A held symbol the stream does not watch would be marked at its cost: watch it.
                await worker.add_symbols(sorted(self.book.positions), why="held in the published book")

    def marks(self, path: QuotePath) -> dict[str, Decimal]:
        books = path.books.books
        out = {}
        for symbol in self.book.positions if self.book else ():
            book = books.get(symbol)
            if book is not None and book.has_quote:
                out[symbol] = Decimal(repr(book.mid))
        return out

    def on_flush(self, result: FlushResult, path: QuotePath) -> None:
        book = self.book
        if book is None or not book.positions or result.trading_state == "HALTED":
            return
        if not any(b.symbol in book.positions for b in result.changed):
            return
        pnl = book.day_pnl(self.marks(path))
        loss = -pnl
        if loss <= self.max_daily_loss:
            if self._alarmed_day == book.day:
                self._alarmed_day = None  # recovered: a new breach alarms again
            return
        if self._alarmed_day == book.day:
            return
        self._alarmed_day = book.day
        self.alarms += 1
        trigger = max(result.changed, key=lambda b: b.recv)
        alarm = {
            "kind": "daily_loss",
            "severity": "critical",
            "source": "stream",
            "value": float(loss),
            "limit": float(self.max_daily_loss),
            "ts_ns": time.time_ns(),
            "detail": {
                "day": book.day.isoformat(),
                "broker": book.broker,
                "trigger_recv_ns": trigger.recv,
                "equity": str(book.equity(self.marks(path))),
            },
        }
        log.error("stream: the day's loss %.2f passed the limit %.2f; alarm raised", loss, self.max_daily_loss)
        task = asyncio.get_running_loop().create_task(self._send(alarm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, alarm: dict[str, Any]) -> None:
        try:
            await self._publish(alarm)
        except Exception as exc:  # noqa: BLE001 - retried by the next breaching flush
            log.error("stream: could not publish the daily-loss alarm (%s); will retry", exc)
            self._alarmed_day = None


def build_guard(settings: Settings, redis: Any) -> LossGuard:
    """The guard wired to the alarm channel of :mod:`omni_tasks.safety.alarms`."""
    from omni_tasks.safety import alarms

    async def publish(alarm: dict[str, Any]) -> None:
        pipe = redis.pipeline(transaction=False)
        alarms.queue_alarm(pipe, alarm)
        await pipe.execute()

    return LossGuard(redis, max_daily_loss=settings.risk.max_daily_loss_usd, publish=publish)
