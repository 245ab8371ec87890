"""The streaming worker: one asyncio loop, three coroutines, no threads.

- receive: ``await feed.recv()`` -> record (optional) -> :meth:`QuotePath.on_frame`
  -> start a write if a slot is free (:meth:`StreamWorker._kick`), and give
  the loop one turn while a write is in flight.
- flush: whenever something changed, one Redis round trip writes it
  (frames keep arriving while it is in flight; the next flush takes them all).
  The same round trip reads the trading state: that is how the kill switch
  reaches this process, with no listener thread competing for the GIL.
- housekeeping (every ``housekeeping_s``): remote control commands, status and
  heartbeat, latency publication, the connection lock, mute-socket and
  stale-symbol checks.

Resilience: reconnect with jittered exponential backoff and replay the
subscriptions; a socket that is connected but mute (no market data for
``mute_after_s`` while the market is open) is closed and reconnected; one
connection per API key, held by a Redis lock; Alpaca's 406 "connection limit
exceeded" means a cooldown; an auth failure stops the worker (exit code 3).

Visibility: the worker is not a Celery worker (a bootstep would put the quote
loop inside Celery's consumer and its threads); it writes the same heartbeats
as the Celery workers (kind ``stream``), so ``omni status``, ``/health`` and
the watchdog see it, plus a status hash with its feed, counts and latencies.

Rooms beside this loop: :mod:`~omni_tasks.stream.config` (what it is told and
counts), :mod:`~omni_tasks.stream.connlock` (the connection lock),
:mod:`~omni_tasks.stream.control` (remote control),
:mod:`~omni_tasks.stream.liveness` (mute-socket and stale-symbol checks),
:mod:`~omni_tasks.stream.subscriptions` (one request at a time; a subscribe refused
with 405 or 400 asked again in halves, the symbols not served named),
:mod:`~omni_tasks.stream.publish` (status and heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from omni_tasks.core.gcfreeze import freeze_startup_objects
from omni_tasks.pipeline import heartbeats
from omni_tasks.stream.config import Counters, StreamConfig
from omni_tasks.stream.connlock import ConnectionLock
from omni_tasks.stream.control import apply_commands
from omni_tasks.stream.feeds import (
    OPTIONAL_CHANNELS,
    AuthFailed,
    ConnectionLimit,
    Feed,
    FeedClosed,
    FeedExhausted,
    SubscriptionRefused,
    raise_for_error,
)
from omni_tasks.stream.liveness import Liveness
from omni_tasks.stream.path import FlushResult, QuotePath
from omni_tasks.stream.publish import StatusPublisher
from omni_tasks.stream.recording import Recorder
from omni_tasks.stream.subscriptions import REFUSING_CODES, Subscriptions

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_AUTH: Final = 3
EXIT_FATAL: Final = 4


class StreamWorker:
    """Runs a feed through a :class:`QuotePath` until told to stop (see the module docstring)."""

    def __init__(
        self,
        config: StreamConfig,
        *,
        redis: Any,
        sync_redis: Any,
        feed_factory: Callable[[], Feed],
        recorder: Recorder | None = None,
        on_flush: Callable[[FlushResult, QuotePath], None] | None = None,
        on_housekeeping: Callable[[StreamWorker], Any] | None = None,
        run_for_s: float | None = None,
        is_open: Callable[[datetime], bool] | None = None,
    ) -> None:
        """``is_open``: whether the exchange is open at a UTC moment, for ``market_hours="calendar"`` (default: the XNYS calendar)."""
        self.config = config
        self.redis = redis
        self.sync_redis = sync_redis
        self.feed_factory = feed_factory
        self.recorder = recorder
        self.on_flush = on_flush
        self.on_housekeeping = on_housekeeping
        self.run_for_s = run_for_s
        self.is_open = is_open
        self.path = QuotePath(redis, quote_ttl_s=config.quote_ttl_s, stream_maxlen=config.stream_maxlen, on_garbage=self._garbage)
        self.subscribed: list[str] = list(dict.fromkeys(config.symbols))
        self.counters = Counters()
        self.instance = f"stream@{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.started_at = time.time()
        self.connected = False
        self.connected_at_ns = 0
        self.exit_reason = ""
        self.last_error = ""
        self.last_error_ns = 0  # when last_error was set (wall ns)
        self.recovered_ns = 0  # when market data flowed again on a connection after last_error (0: not since)
        self.feed: Feed | None = None
        self._stop = asyncio.Event()
        self._dirty = asyncio.Event()  # asks the flush loop to start a write (a drain, stopping)
        self._in_flight = 0  # writes running (at most config.flushes_in_flight)
        self._flushing: set[asyncio.Task[None]] = set()
        self._force_close_reason = ""
        self._open_cache: tuple[int, bool] = (-1, False)
        self._garbage_logged = 0.0
        self.connlock = ConnectionLock(redis, config.lock_fingerprint, token=self.instance, ttl_s=config.lock_ttl_s)
        self.publisher = StatusPublisher(self)
        self.liveness = Liveness(self)
        self.subs = Subscriptions(self)

    # --- errors

    def set_error(self, text: str) -> None:
        """Note the latest error and when; `omni status` shows it until data flows again, then as recovered."""
        self.last_error = text
        self.last_error_ns = time.time_ns()
        self.recovered_ns = 0

    def note_recovery(self) -> None:
        if self.last_error_ns and not self.recovered_ns and self.connected and self.path.last_data_ns > self.last_error_ns:
            self.recovered_ns = self.path.last_data_ns

    # --- public control

    def stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self.exit_reason = reason
            log.info("stream worker stopping: %s", reason)
        self._stop.set()
        feed = self.feed
        if feed is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(feed.close())

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        freeze_startup_objects()  # no full collection pass over the start-up objects in the middle of a flush
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")
        housekeeping = asyncio.create_task(self._housekeeping_loop(), name="stream-housekeeping")
        flusher = asyncio.create_task(self._flush_loop(), name="stream-flush")
        if self.run_for_s is not None:
            loop.call_later(self.run_for_s, self.stop, f"ran for {self.run_for_s:g} s")
        code = EXIT_OK
        try:
            code = await self._connection_loop()
        finally:
            self._stop.set()
            self._dirty.set()
            await self._close_feed()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(flusher, 5.0)
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await housekeeping
            with contextlib.suppress(Exception):
                await self._final_flush()
            await self.connlock.release()
            with contextlib.suppress(Exception):
                heartbeats.leave(self.sync_redis, self.instance)
            if self.recorder is not None:
                self.recorder.close()
        return code

    async def add_symbols(self, symbols: list[str], *, why: str) -> list[str]:
        """Subscribe to the symbols not yet subscribed (now, when connected; at every reconnect after). Returns them."""
        new = [s for s in dict.fromkeys(symbols) if s not in self.subscribed]
        if not new:
            return []
        self.subscribed.extend(new)
        self.subs.subscribe(new)
        if self.feed is not None and self.connected:
            await self.subs.pump(self.feed)
        log.info("stream: subscribed %s (%s)", new, why)
        return new

    async def remove_symbols(self, symbols: list[str], *, why: str) -> list[str]:
        """Unsubscribe from those of the symbols subscribed (now, when connected; for good). Returns them."""
        gone = [s for s in symbols if s in self.subscribed]
        self.subscribed = [s for s in self.subscribed if s not in gone]
        if gone:
            self.subs.unsubscribe(gone)
        if gone and self.feed is not None and self.connected:
            await self.subs.pump(self.feed)
        log.info("stream: unsubscribed %s by %s", gone, why)
        return gone

    # --- the connection loop

    def _backoff(self, attempt: int) -> float:
        cap = min(self.config.reconnect_max_s, self.config.reconnect_min_s * (2 ** max(0, attempt - 1)))
        return cap / 2 + random.uniform(0, cap / 2)  # noqa: S311 - jitter, not cryptography

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _connection_loop(self) -> int:
        attempt = 0
        while not self._stop.is_set():
            if not await self.connlock.acquire():
                if self.connlock.other_holder:
                    self.set_error(f"another stream worker ({self.connlock.other_holder}) holds this API key's only connection")
                    log.warning("stream: %s; waiting", self.last_error)
                await self._sleep(min(5.0, self.config.lock_ttl_s / 3))
                continue
            feed = self.feed_factory()
            self.feed = feed
            data_before = self._data_count()
            try:
                await feed.connect()
                self._count_handshake(feed)
                self.counters.connects += 1
                if self.counters.connects > 1:
                    self.counters.reconnects += 1
                self.subs.connected()
                await self.subs.pump(feed)  # the rest of the requests (if any) follow their answers
                self.connected = True
                self.connected_at_ns = time.time_ns()
                self.liveness.stale_resubscribed.clear()
                log.info("stream connected to %s, subscribed to %d symbols", feed.name, len(self.subscribed))
                await self._receive(feed)
            except SubscriptionRefused as exc:
                self.set_error(str(exc))
                log.error(
                    "stream: the provider refused the subscription (%s): the account's data plan does not include this feed; "
                    "stopping. Check OMNI_ALPACA_FEED (iex is free; sip needs a subscription)%s.",
                    exc,
                    "; if the plan lacks trading statuses or LULD bands, leave them out: OMNI_STREAM_CHANNELS=quotes,trades,bars"
                    if OPTIONAL_CHANNELS.intersection(self.config.channels)
                    else "",
                )
                self.exit_reason = f"subscription refused: {exc}"
                return EXIT_AUTH
            except AuthFailed as exc:
                self.set_error(str(exc))
                log.error(
                    "stream: the provider refused the credentials (%s); stopping. Check OMNI_ALPACA_API_KEY and OMNI_ALPACA_SECRET_KEY.",
                    exc,
                )
                self.exit_reason = f"auth failed: {exc}"
                return EXIT_AUTH
            except ConnectionLimit as exc:
                self.counters.connection_limit += 1
                self.set_error(str(exc))
                cooldown = self.config.connection_limit_cooldown_s * random.uniform(1.0, 1.2)  # noqa: S311 - jitter
                log.warning(
                    "stream: %s: another connection holds this key's only slot; cooling down %.0f s before trying again", exc, cooldown
                )
                await self._close_feed()
                await self._sleep(cooldown)
                continue
            except FeedExhausted as exc:
                self.exit_reason = str(exc)
                log.info("stream: %s", exc)
                await self._drain()
                return EXIT_OK
            except FeedClosed as exc:
                if not self._stop.is_set():  # closed because we are stopping: not an error
                    self.set_error(self._force_close_reason or str(exc))
            except Exception as exc:  # a bug or a surprise from a client library: reconnect, loudly
                self.set_error(f"{type(exc).__name__}: {exc}")
                log.exception("stream: unexpected error on the %s connection; reconnecting", feed.name)
            finally:
                self.connected = False
                self._count_handshake(feed)
                await self._close_feed()
            if self._stop.is_set():
                break
            if self._force_close_reason:
                log.warning("stream: reconnecting: %s", self._force_close_reason)
                self._force_close_reason = ""
            attempt = 1 if self._data_count() > data_before else attempt + 1
            delay = self._backoff(attempt)
            log.warning("stream: connection lost (%s); reconnecting in %.2f s (attempt %d)", self.last_error, delay, attempt)
            await self._sleep(delay)
        return EXIT_OK

    async def _receive(self, feed: Feed) -> None:
        path = self.path
        recorder = self.recorder
        kick = self._kick
        perf_ns = time.perf_counter_ns
        wall_ns = time.time_ns
        while not self._stop.is_set():
            frame = await feed.recv()
            recv_perf = perf_ns()
            recv_wall = wall_ns()
            if recorder is not None:
                recorder.write(frame, recv_wall)
            controls = path.on_frame(frame, recv_perf, recv_wall)
            if controls:
                self._on_controls(controls)
                await self.subs.pump(feed)
            if (path.dirty and kick()) or self._in_flight:
                # One turn of the loop before the next frame: the write just started goes out now, and a reply
                # already in is read, so its write completes (and the next starts) now. Without it, a client that
                # has frames buffered hands them over without suspending, and a write is not seen to complete
                # until the backlog is drained: under load, 150 ms flushes instead of 20 ms.
                await asyncio.sleep(0)

    def _count_handshake(self, feed: Feed) -> None:
        """Count the messages a client read during its handshake (they never reach the path) by kind."""
        seen = getattr(feed, "handshake_kinds", None)
        if not seen:
            return
        kinds = self.path.books.kinds
        for kind in seen:
            kinds[kind if isinstance(kind, str) and kind in kinds else "unknown"] += 1
        seen.clear()

    def _data_count(self) -> int:
        counts = self.path.books.counts
        return counts["quotes"] + counts["trades"] + counts["bars"]

    def _on_controls(self, controls: list[dict[str, Any]]) -> None:
        for message in controls:
            kind = message.get("T")
            if kind == "error":
                self.counters.provider_errors += 1
                code = message.get("code")
                if code in (401, 402, 404, 406, 409):
                    raise_for_error(message)
                if code in REFUSING_CODES and self.subs.on_error(message, self.feed):
                    continue  # a subscribe refused whole: asked again in halves, or the refused symbols named (set_error)
                self.set_error(f"{message.get('msg')} (code {code})")
                log.error("stream: provider error %s", self.last_error)
            elif kind == "subscription":
                self.subs.on_subscription(message)
                log.info("stream: subscription now %s", {k: len(v) for k, v in message.items() if isinstance(v, list)})

    def channels_for(self, symbols: list[str]) -> dict[str, list[str]]:
        return {channel: list(symbols) for channel in self.config.channels}

    def close_feed_soon(self, reason: str) -> None:
        self._force_close_reason = self._force_close_reason or reason
        feed = self.feed
        if feed is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(feed.close())

    async def _close_feed(self) -> None:
        feed, self.feed = self.feed, None
        if feed is not None:
            with contextlib.suppress(Exception):
                await feed.close()

    async def _drain(self) -> None:
        """Let the writer catch up before a finite feed's worker exits."""
        for _ in range(200):
            if not self.path.dirty:
                return
            self._dirty.set()
            await asyncio.sleep(0.01)

    # --- writing

    def _kick(self) -> bool:
        """Start a write now if something changed and a slot is free (``flushes_in_flight`` at once); whether it did.

        Called by the receive loop in the turn that applied the frame, so the
        write starts in the next turn of the loop, not after a flusher task
        has been woken, taken a slot and started another. With more than one
        in flight, their order at Redis does not matter: the script never
        lets an older quote replace a newer one.
        """
        if self._in_flight >= self.config.flushes_in_flight:
            return False  # a write in flight takes whatever accumulated when it finishes
        path = self.path
        if not path.dirty and not path.books.dirty:
            return False
        self._in_flight += 1
        task = asyncio.create_task(self._flush_while_dirty(), name="stream-flush")
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)
        return True

    async def _flush_loop(self) -> None:
        """Starts a write when asked through ``_dirty`` (the receive loop starts its own: :meth:`_kick`);
        once stopping, waits for the writes in flight."""
        while not self._stop.is_set():
            await self._dirty.wait()
            self._dirty.clear()
            self._kick()
        while self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    async def _flush_while_dirty(self) -> None:
        """Write, then again while something changed during the write (it all goes in the next one)."""
        path = self.path
        try:
            while True:
                try:
                    result = await path.flush()
                except Exception as exc:  # noqa: BLE001 - Redis down: keep the books, count, retry after a pause
                    self.counters.flush_errors += 1
                    path.trading_state = "UNREADABLE"
                    if self.counters.flush_errors in (1, 10) or self.counters.flush_errors % 100 == 0:
                        log.error("stream: cannot write quotes to Redis (%s: %s); retrying", type(exc).__name__, exc)
                    await asyncio.sleep(min(1.0, 0.05 * self.counters.flush_errors))
                    if self._stop.is_set():
                        return
                    continue
                if self.on_flush is not None and result.changed:
                    self.on_flush(result, path)
                if self._stop.is_set() or not (path.dirty or path.books.dirty):
                    return
        finally:
            self._in_flight -= 1

    async def _final_flush(self) -> None:
        if self.path.dirty or self.path.books.dirty:
            await self.path.flush()
        await self.publisher.publish(force=True)

    # --- housekeeping

    async def _housekeeping_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self._housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis hiccups must not kill the quote loop
                log.warning("stream housekeeping failed: %s: %s", type(exc).__name__, exc)
            await self._sleep(self.config.housekeeping_s)

    async def _housekeeping(self) -> None:
        await apply_commands(self)
        if self.connected:
            await self.subs.pump(self.feed)
        if not await self.connlock.renew():
            self.close_feed_soon("lost the connection lock")
        self.liveness.check()
        if self.recorder is not None:
            self.recorder.flush()
        await self.publisher.publish()
        if self.on_housekeeping is not None:
            outcome = self.on_housekeeping(self)
            if asyncio.iscoroutine(outcome):
                await outcome

    def market_open(self, now: datetime | None = None) -> bool:
        if self.config.market_hours in ("always", "never"):
            return self.config.market_hours == "always"
        now = now or datetime.now(tz=UTC)
        minute = int(now.timestamp() // 60)
        if self._open_cache[0] != minute:
            is_open = self.is_open
            if is_open is None:
                from omni_tasks.marketdata import calendar  # exchange_calendars: loaded only by feeds that keep hours

                is_open = calendar.is_open
            self._open_cache = (minute, is_open(now))
        return self._open_cache[1]

    def _garbage(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._garbage_logged > 5.0:
            self._garbage_logged = now
            log.warning("stream: skipped a garbage frame (%s); %d so far", reason, self.path.garbage_frames)
