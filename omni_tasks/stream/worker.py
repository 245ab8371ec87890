"""The streaming worker: one asyncio loop, three coroutines, no threads.

- receive: ``await feed.recv()`` -> record (optional) -> :meth:`QuotePath.on_frame`.
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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from omni_tasks.core.keys import STREAM_CONNLOCK_KEY, STREAM_CONTROL_KEY, STREAM_STATUS_KEY
from omni_tasks.pipeline import heartbeats
from omni_tasks.stream.feeds import (
    CHANNELS,
    OPTIONAL_CHANNELS,
    AuthFailed,
    ConnectionLimit,
    Feed,
    FeedClosed,
    FeedExhausted,
    Recorder,
    SubscriptionRefused,
    raise_for_error,
)
from omni_tasks.stream.path import FlushResult, QuotePath

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_AUTH: Final = 3
EXIT_FATAL: Final = 4

_RELEASE_LOCK_LUA: Final = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW_LOCK_LUA: Final = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


@dataclass
class StreamConfig:
    """What the worker needs from the settings (built by :func:`omni_tasks.stream.wiring.stream_config`)."""

    name: str = "stream"
    symbols: list[str] = field(default_factory=list)
    channels: tuple[str, ...] = CHANNELS
    quote_ttl_s: int = 30
    stale_after_s: float = 10.0
    mute_after_s: float = 15.0
    market_hours: str = "calendar"  # calendar: checks only while XNYS is open; always: a 24-hour feed; never: no checks
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connection_limit_cooldown_s: float = 60.0
    stream_maxlen: int = 100_000
    housekeeping_s: float = 0.25
    flushes_in_flight: int = 2  # writes in flight at once (order at Redis does not matter: see _flush_loop)
    heartbeat_s: float = 2.0
    lock_fingerprint: str | None = None  # set for feeds that allow one connection per key
    lock_ttl_s: float = 15.0


@dataclass
class Counters:
    connects: int = 0
    reconnects: int = 0
    mute_reconnects: int = 0
    connection_limit: int = 0
    flush_errors: int = 0
    stale_resubscribes: int = 0
    provider_errors: int = 0
    control_commands: int = 0


def key_fingerprint(api_key: str) -> str:
    """A stable, non-reversible name for an API key (the lock key must not reveal the key)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


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
        self._dirty = asyncio.Event()
        self._force_close_reason = ""
        self._stale_resubscribed: set[str] = set()
        self._last_heartbeat = 0.0
        self._last_profiles = 0.0
        self._open_cache: tuple[int, bool] = (-1, False)
        self._garbage_logged = 0.0
        self._lock_token = self.instance
        self._holds_lock = config.lock_fingerprint is None

    # --- errors

    def _set_error(self, text: str) -> None:
        """Note the latest error and when; `omni status` shows it until data flows again, then as recovered."""
        self.last_error = text
        self.last_error_ns = time.time_ns()
        self.recovered_ns = 0

    def _note_recovery(self) -> None:
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
            await self._release_lock()
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
        if self.feed is not None and self.connected:
            await self.feed.subscribe(self._channels(new))
        log.info("stream: subscribed %s (%s)", new, why)
        return new

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
            if not await self._acquire_lock():
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
                await feed.subscribe(self._channels(self.subscribed))
                self.connected = True
                self.connected_at_ns = time.time_ns()
                self._stale_resubscribed.clear()
                log.info("stream connected to %s, subscribed to %d symbols", feed.name, len(self.subscribed))
                await self._receive(feed)
            except SubscriptionRefused as exc:
                self._set_error(str(exc))
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
                self._set_error(str(exc))
                log.error(
                    "stream: the provider refused the credentials (%s); stopping. Check OMNI_ALPACA_API_KEY and OMNI_ALPACA_SECRET_KEY.",
                    exc,
                )
                self.exit_reason = f"auth failed: {exc}"
                return EXIT_AUTH
            except ConnectionLimit as exc:
                self.counters.connection_limit += 1
                self._set_error(str(exc))
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
                    self._set_error(self._force_close_reason or str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug or a surprise from a client library: reconnect, loudly
                self._set_error(f"{type(exc).__name__}: {exc}")
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
        dirty = self._dirty
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
            if path.dirty:
                dirty.set()

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
                self._set_error(f"{message.get('msg')} (code {code})")
                log.error("stream: provider error %s", self.last_error)
            elif kind == "subscription":
                log.info("stream: subscription now %s", {k: len(v) for k, v in message.items() if isinstance(v, list)})

    def _channels(self, symbols: list[str]) -> dict[str, list[str]]:
        return {channel: list(symbols) for channel in self.config.channels}

    def _close_feed_soon(self, reason: str) -> None:
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

    async def _flush_loop(self) -> None:
        """Start a flush whenever something changed and a slot is free (``flushes_in_flight`` at once).

        Two writes may be in flight together: a frame then waits for at most
        the write ahead of it, not for a whole write to finish and another to
        run. Their order at Redis does not matter: the script never lets an
        older quote replace a newer one.
        """
        path = self.path
        slots = asyncio.Semaphore(self.config.flushes_in_flight)
        running: set[asyncio.Task[None]] = set()
        while True:
            await self._dirty.wait()
            await slots.acquire()
            self._dirty.clear()
            if not path.dirty and not path.books.dirty:
                slots.release()
                if self._stop.is_set():
                    if running:
                        await asyncio.gather(*running, return_exceptions=True)
                    return
                continue
            task = asyncio.create_task(self._flush_once(slots))
            running.add(task)
            task.add_done_callback(running.discard)

    async def _flush_once(self, slots: asyncio.Semaphore) -> None:
        path = self.path
        try:
            result = await path.flush()
        except Exception as exc:  # noqa: BLE001 - Redis down: keep the books, count, retry after a pause
            self.counters.flush_errors += 1
            path.trading_state = "UNREADABLE"
            if self.counters.flush_errors in (1, 10) or self.counters.flush_errors % 100 == 0:
                log.error("stream: cannot write quotes to Redis (%s: %s); retrying", type(exc).__name__, exc)
            await asyncio.sleep(min(1.0, 0.05 * self.counters.flush_errors))
            self._dirty.set()
            return
        finally:
            slots.release()
        if self.on_flush is not None and result.changed:
            self.on_flush(result, path)

    async def _final_flush(self) -> None:
        if self.path.dirty or self.path.books.dirty:
            await self.path.flush()
        await self._publish(force=True)

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
        await self._control()
        await self._renew_lock()
        self._mute_check()
        if self.recorder is not None:
            self.recorder.flush()
        await self._publish()
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

    def _mute_check(self) -> None:
        if not self.connected or not self.market_open():
            return
        now = time.time_ns()
        last = max(self.path.last_data_ns, self.connected_at_ns)
        silent_s = (now - last) / 1e9
        if silent_s > self.config.mute_after_s:
            self.counters.mute_reconnects += 1
            self._close_feed_soon(f"mute socket: connected but no market data for {silent_s:.1f} s while the market is open")
            return
        if silent_s < self.config.stale_after_s and (now - self.connected_at_ns) / 1e9 < self.config.stale_after_s:
            return  # connected too recently for any symbol to be called stale
        stale = self.path.stale_symbols(self.subscribed, now, self.config.stale_after_s)
        fresh_since_connect = [s for s in stale if s not in self._stale_resubscribed]
        if fresh_since_connect and len(stale) < len(self.subscribed) and self.feed is not None:
            self._stale_resubscribed.update(fresh_since_connect)
            self.counters.stale_resubscribes += 1
            feed = self.feed
            channels = self._channels(fresh_since_connect)

            async def resubscribe() -> None:
                with contextlib.suppress(Exception):
                    await feed.unsubscribe(channels)
                    await feed.subscribe(channels)

            asyncio.get_running_loop().create_task(resubscribe())

    async def _control(self) -> None:
        key = STREAM_CONTROL_KEY.format(name=self.config.name)
        raw = await self.redis.lpop(key, 20)
        for item in raw or []:
            self.counters.control_commands += 1
            try:
                command = json.loads(item)
                cmd = command["cmd"]
            except (ValueError, KeyError, TypeError):
                self._set_error(f"unreadable control command {item!r:.80}")
                log.error("stream: %s", self.last_error)
                continue
            symbols = [s for s in command.get("symbols", []) if isinstance(s, str)]
            if cmd == "subscribe":
                await self.add_symbols(symbols, why="remote control")
            elif cmd == "unsubscribe":
                gone = [s for s in symbols if s in self.subscribed]
                self.subscribed = [s for s in self.subscribed if s not in gone]
                if gone and self.feed is not None and self.connected:
                    await self.feed.unsubscribe(self._channels(gone))
                log.info("stream: unsubscribed %s by remote control", gone)
            elif cmd == "stop":
                self.stop(f"stop by remote control ({command.get('by', 'unknown')})")
            else:
                self._set_error(f"unknown control command {cmd!r}")
                log.error("stream: %s", self.last_error)

    # --- the one-connection-per-key lock

    def _lock_key(self) -> str:
        return STREAM_CONNLOCK_KEY.format(fingerprint=self.config.lock_fingerprint)

    async def _acquire_lock(self) -> bool:
        if self.config.lock_fingerprint is None:
            return True
        ttl_ms = int(self.config.lock_ttl_s * 1000)
        try:
            if await self.redis.set(self._lock_key(), self._lock_token, nx=True, px=ttl_ms):
                self._holds_lock = True
                return True
            holder = await self.redis.get(self._lock_key())
        except Exception as exc:  # noqa: BLE001 - without Redis the lock cannot be proven free: do not connect
            log.warning("stream: cannot take the connection lock (%s); waiting", exc)
            return False
        holder_text = holder.decode() if isinstance(holder, bytes) else holder
        if holder_text == self._lock_token:
            self._holds_lock = True
            return True
        self._set_error(f"another stream worker ({holder_text}) holds this API key's only connection")
        log.warning("stream: %s; waiting", self.last_error)
        return False

    async def _renew_lock(self) -> None:
        if self.config.lock_fingerprint is None or not self._holds_lock:
            return
        ttl_ms = int(self.config.lock_ttl_s * 1000)
        renewed = await self.redis.eval(_RENEW_LOCK_LUA, 1, self._lock_key(), self._lock_token, ttl_ms)
        if not renewed:
            self._holds_lock = False
            log.error("stream: lost the connection lock for this API key; disconnecting")
            self._close_feed_soon("lost the connection lock")

    async def _release_lock(self) -> None:
        if self.config.lock_fingerprint is None:
            return
        with contextlib.suppress(Exception):
            await self.redis.eval(_RELEASE_LOCK_LUA, 1, self._lock_key(), self._lock_token)
        self._holds_lock = False

    # --- status, heartbeat, latency

    def status(self) -> dict[str, Any]:
        now = time.time_ns()
        counts = self.path.books.counts
        return {
            "worker": self.instance,
            "name": self.config.name,
            "feed": self.feed.name if self.feed is not None else "",
            "connected": int(self.connected),
            "trading_state": self.path.trading_state,
            "symbols": json.dumps(self.subscribed),
            "stale_symbols": json.dumps(
                self.path.stale_symbols(self.subscribed, now, self.config.stale_after_s) if self.market_open() else []
            ),
            "market_open": int(self.market_open()),
            "last_msg_ns": self.path.last_msg_ns,
            "last_quote_ns": self.path.last_data_ns,
            "frames": self.path.frames,
            "flushes": self.path.flushes,
            "garbage_frames": self.path.garbage_frames,
            "counts": json.dumps(counts),
            "kinds": json.dumps(self.path.books.kinds),
            "channels": json.dumps(list(self.config.channels)),
            "counters": json.dumps(self.counters.__dict__),
            "last_error": self.last_error,
            "last_error_ns": self.last_error_ns,
            "recovered_ns": self.recovered_ns,
            "updated_ns": now,
        }

    async def _publish(self, *, force: bool = False) -> None:
        self._note_recovery()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(STREAM_STATUS_KEY, mapping=self.status())
        pipe.expire(STREAM_STATUS_KEY, 300)
        self.path.latency.publish(pipe)
        now = time.time()
        if force or now - self._last_profiles >= 1.0:
            self._last_profiles = now
            self.path.queue_profiles(pipe)
        await pipe.execute()
        if force or now - self._last_heartbeat >= self.config.heartbeat_s:
            self._last_heartbeat = now
            latency = self.path.latency.summary()
            info = heartbeats.WorkerInfo(
                instance=self.instance,
                hostname=self.instance,
                kind="stream",
                queues=[],
                pid=os.getpid(),
                started_at=self.started_at,
                last_seen=now,
                processed=self.path.books.counts["quotes"],
                extra={
                    "feed": self.feed.name if self.feed is not None else "",
                    "connected": self.connected,
                    "symbols": len(self.subscribed),
                    "process_p99_us": latency["process"]["p99_ns"] / 1000,
                    "e2e_p99_us": latency["e2e"]["p99_ns"] / 1000,
                },
            )
            heartbeats.beat(self.sync_redis, info)  # a blocking ~0.3 ms every few seconds: cheaper than a thread

    def _garbage(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._garbage_logged > 5.0:
            self._garbage_logged = now
            log.warning("stream: skipped a garbage frame (%s); %d so far", reason, self.path.garbage_frames)
