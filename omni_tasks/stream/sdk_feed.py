"""Alpaca's market-data stream through alpaca-py's own client (``OMNI_STREAM_CLIENT=alpaca-py``).

:class:`AlpacaSdkFeed` implements the :class:`~omni_tasks.stream.feeds.Feed`
protocol with alpaca-py's ``StockDataStream`` in raw mode: alpaca-py opens the
websocket, authenticates, subscribes, reads and decodes the msgpack frames and
dispatches each message to our handler, which appends it (``t`` converted from
a msgpack Timestamp to int ns) to a buffer; :meth:`AlpacaSdkFeed.recv` hands
the buffer to the worker as one already-decoded frame (a list of message
maps, which :meth:`QuotePath.on_frame` takes as is).

The worker, not alpaca-py, owns the connection's life, so a small subclass
changes what alpaca-py would otherwise do on its own (line numbers are
alpaca-py 0.44's ``alpaca/data/live/websocket.py``):

- **No reconnect of its own.** On a websocket error ``_run_forever`` closes
  and reconnects with its own backoff, re-subscribing itself (lines 468-475);
  after a failed connect or auth it retries forever (476-488). Our ``close``
  override ends its loop instead (``_should_run`` false, the backoff wait cut
  short) and the feed raises :class:`FeedClosed`, so the worker's backoff, lock
  and re-subscription apply.
- **Handshake errors keep their meaning.** ``_auth`` turns Alpaca's error
  message into ``ValueError(msg)`` and drops the code (lines 198-199);
  :meth:`AlpacaSdkFeed.connect` runs alpaca-py's ``_start_ws`` (connect,
  ``connected``, auth) itself and maps the documented texts back to their codes:
  402 ``auth failed`` -> :class:`AuthFailed` (stop), 406 ``connection limit
  exceeded`` -> :class:`ConnectionLimit` (cool down), anything else ->
  :class:`FeedClosed`. ``_run_forever``'s own ``_start_ws`` call then finds
  the connection made.
- **Control messages reach the worker.** ``_dispatch`` only logs ``error`` and
  ``subscription`` messages (lines 331-338); the subclass passes them on too, so
  a mid-stream 406 still means a cooldown and provider errors are counted,
  and a subscribe refused whole (405, 400) is split by the worker
  (:mod:`omni_tasks.stream.subscriptions`); :meth:`AlpacaSdkFeed.forget` drops
  the refused symbols' handlers, which alpaca-py would otherwise send again.
- **Every message kind reaches the path.** Trade corrections and cancels
  come with the trades subscription; alpaca-py hands them to the handlers of
  ``register_trade_corrections`` / ``register_trade_cancels``, which we set to
  the same buffer. Statuses go through ``subscribe_trading_statuses``; LULD
  bands through the ``lulds`` channel alpaca-py keeps but has no public method
  for (its handlers are set directly; ``_send_subscribe_msg`` sends them). A
  kind alpaca-py does not know (``i`` imbalances, anything new) it drops in
  ``_dispatch``; the subclass passes those on so the path counts them. A
  market-data message without ``S`` is skipped by alpaca-py's ``_consume``
  before any hook (lines 262-274): that one the path never sees.
- **Unreadable frames are counted.** ``_consume`` decodes with
  ``msgpack.unpackb`` and dispatches inside ``_run_forever``'s ``except
  Exception``, which logs the traceback and reads on from the same socket
  (lines 262-274, 476-490). The subclass notes each such error and
  :meth:`recv` hands the worker one :data:`UNREADABLE_FRAME` for it, which the
  path counts as a garbage frame like any other.
- **Subscribing while running does not deadlock.** alpaca-py's
  ``subscribe_*``/``unsubscribe_*`` block on
  ``run_coroutine_threadsafe(...).result()`` (lines 383-386, 403-406), which
  never returns when called from the loop thread that must run the coroutine.
  Before the stream runs we use the public ``subscribe_*`` (they only record
  handlers then); once it runs we record handlers and await its own
  ``_send_subscribe_msg`` / ``_send_unsubscribe_msg``.

``data_timeout`` stays off: the worker's mute check, aware of market hours,
decides when a silent socket is dead. The worker's receive timestamp is taken
when :meth:`recv` returns, after alpaca-py has decoded the frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Final

import msgpack
import websockets
from alpaca.data.live.stock import StockDataStream
from msgpack import Timestamp

from omni_tasks.stream.feeds import FeedClosed, FeedError, raise_for_error

log = logging.getLogger(__name__)

# A frame the path cannot decode (0xc1 is never used in msgpack): stands for one frame alpaca-py could not read.
UNREADABLE_FRAME: Final = b"\xc1"

# alpaca-py keeps only the text of a handshake error (websocket.py:199); Alpaca's documented texts and codes.
_ERROR_CODES: Final = {
    "invalid syntax": 400,
    "not authenticated": 401,
    "auth failed": 402,
    "already authenticated": 403,
    "auth timeout": 404,
    "symbol limit exceeded": 405,
    "connection limit exceeded": 406,
    "slow client": 407,
    "insufficient subscription": 409,
    "internal error": 500,
}

# The worker's channel names -> StockDataStream's public subscribe and unsubscribe methods.
_SUBSCRIBE: Final = {
    "quotes": ("subscribe_quotes", "unsubscribe_quotes"),
    "trades": ("subscribe_trades", "unsubscribe_trades"),
    "bars": ("subscribe_bars", "unsubscribe_bars"),
    "updatedBars": ("subscribe_updated_bars", "unsubscribe_updated_bars"),
    "dailyBars": ("subscribe_daily_bars", "unsubscribe_daily_bars"),
    "statuses": ("subscribe_trading_statuses", "unsubscribe_trading_statuses"),
    "lulds": ("", ""),  # StockDataStream has a "lulds" channel but no public method for it: its handlers are set directly
}
_CONTROL: Final = frozenset({"success", "error", "subscription"})
# The kinds alpaca-py dispatches to handlers (websocket.py _CHANNEL_TYPES); it drops any other kind unseen.
_SDK_KINDS: Final = frozenset({"t", "q", "o", "b", "u", "d", "s", "l", "n", "c", "x"})


class _SdkStream(StockDataStream):
    """StockDataStream in raw mode that never reconnects by itself and tells its feed what happens (module docstring)."""

    def __init__(self, url: str, api_key: str, secret_key: str, feed: AlpacaSdkFeed) -> None:
        super().__init__(api_key, secret_key, raw_data=True, url_override=url)
        self._feed = feed
        self._connected_by_feed = False
        self.loop_error = ""

    async def handshake(self) -> None:
        """alpaca-py's own connect, greeting and auth (``DataStream._start_ws``), called by :meth:`AlpacaSdkFeed.connect`."""
        await super()._start_ws()
        self._connected_by_feed = True
        self._feed.handshake_kinds.extend(("success", "success"))  # alpaca-py returns only after `connected` and `authenticated`

    async def _start_ws(self) -> None:
        if self._connected_by_feed:  # _run_forever's first call: connect() made the connection
            self._connected_by_feed = False
            return
        self._should_run = False
        raise FeedClosed("alpaca-py tried to reconnect by itself; the stream worker reconnects")

    async def _auth(self) -> None:
        try:
            await super()._auth()
        except websockets.ConnectionClosed:
            # Closed while alpaca-py wrote its auth: the server may have said why just before (406, 404).
            error = await self._error_sent_before_close()
            if error is not None:
                self._feed.handshake_kinds.append("error")
                raise_for_error(error)
            raise
        except ValueError as exc:
            text = str(exc)
            code = _ERROR_CODES.get(text.strip().lower())
            self._feed.handshake_kinds.append("error")
            if code is None:
                raise FeedClosed(f"alpaca-py could not authenticate: {text}") from None
            raise_for_error({"T": "error", "code": code, "msg": text})

    async def _error_sent_before_close(self) -> dict[str, Any] | None:
        ws = self._ws
        while ws is not None:
            try:
                frame = await asyncio.wait_for(ws.recv(), 1.0)
                messages = msgpack.unpackb(frame)
            except (websockets.ConnectionClosed, TimeoutError):
                return None
            except Exception:  # noqa: BLE001, S112 - an unreadable frame says nothing about why it closed
                continue
            for message in messages if isinstance(messages, list) else []:
                if isinstance(message, dict) and message.get("T") == "error":
                    return message
        return None

    async def _consume(self) -> bool:
        self._feed._on_running()
        try:
            return await super()._consume()
        except websockets.WebSocketException as exc:
            self.loop_error = f"connection closed: {type(exc).__name__}: {exc}"
            raise
        except Exception as exc:  # noted, then re-raised for alpaca-py's own handling (it reads on)
            self._feed._on_unreadable(exc)
            raise

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("T")
        if kind in _CONTROL or kind not in _SDK_KINDS:  # controls, and kinds alpaca-py would drop uncounted
            self._feed._on_control(msg)
        await super()._dispatch(msg)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._should_run = False  # _run_forever returns at its next turn instead of reconnecting
            if self._stop_stream_event is not None:
                self._stop_stream_event.set()  # and skips its backoff wait
            self._feed._on_closed(self.loop_error or "connection closed")


class AlpacaSdkFeed:
    """Alpaca's market-data stream at ``url`` through alpaca-py's ``StockDataStream`` (one connection per instance).

    ``connect`` authenticates (raising :class:`AuthFailed`,
    :class:`ConnectionLimit` or :class:`FeedClosed`); the first ``subscribe``
    starts alpaca-py's receive loop and returns once it runs; ``recv`` returns
    the messages received since the last call as one list, and raises
    :class:`FeedClosed` once the connection is gone and the buffer is empty.
    """

    def __init__(self, url: str, api_key: str, secret_key: str, *, handshake_timeout_s: float = 10.0, close_timeout_s: float = 2.0) -> None:
        if not api_key or not secret_key:
            raise ValueError("AlpacaSdkFeed needs an API key and a secret key")
        self.name = "alpaca-py"
        self.url = url
        self._key = api_key
        self._secret = secret_key
        self._timeout = handshake_timeout_s
        self._close_timeout = close_timeout_s
        self._stream: _SdkStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._buffer: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._started = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = ""
        self._closing = False
        self._unreadable_pending = 0
        self.unreadable_frames = 0  # frames alpaca-py could not read (it logged and skipped them)
        self.handshake_kinds: list[Any] = []  # the kinds alpaca-py read during its handshake (the worker counts them)
        self.last_unreadable = ""
        self.last_messages = 0  # messages the last subscribe/unsubscribe sent (the server answers each)

    # --- the Feed protocol

    async def connect(self) -> None:
        if self._stream is not None:
            raise RuntimeError("an AlpacaSdkFeed connects once; the worker makes a fresh feed for each connection")
        stream = _SdkStream(self.url, self._key, self._secret, self)
        self._stream = stream
        try:
            await asyncio.wait_for(stream.handshake(), self._timeout)
        except FeedError:
            await self._abort()
            raise
        except TimeoutError:
            await self._abort()
            raise FeedClosed(f"no connection and authentication at {self.url} within {self._timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - alpaca-py's connect raises OSError, websockets, msgpack, ValueError, KeyError...
            await self._abort()
            raise FeedClosed(f"cannot connect to {self.url}: {type(exc).__name__}: {exc}") from None
        ws = stream._ws
        self._watcher = asyncio.create_task(self._watch(ws), name="alpaca-py-watch")

    async def subscribe(self, channels: dict[str, list[str]]) -> None:
        wanted = self._wanted(channels)
        self.last_messages = 1 if wanted else 0  # one subscribe message (every symbol held), answered once
        if not wanted:
            return
        async with self._lock:
            stream = self._open_stream()
            if not stream._running:
                for channel, symbols in wanted.items():  # the public API only records handlers while not running
                    if _SUBSCRIBE[channel][0]:
                        getattr(stream, _SUBSCRIBE[channel][0])(self._on_data, *symbols)
                    else:
                        stream._handlers[channel].update(dict.fromkeys(symbols, self._on_data))
                if "trades" in wanted:  # corrections and cancels come with trades; alpaca-py routes them to one handler each
                    stream.register_trade_corrections(self._on_data)  # type: ignore[arg-type]  # raw mode hands dicts
                    stream.register_trade_cancels(self._on_data)  # type: ignore[arg-type]  # raw mode hands dicts
                if self._task is None:
                    await self._start()
                return
            for channel, symbols in wanted.items():
                stream._handlers[channel].update(dict.fromkeys(symbols, self._on_data))
            if "trades" in wanted:
                stream.register_trade_corrections(self._on_data)  # type: ignore[arg-type]  # raw mode hands dicts
                stream.register_trade_cancels(self._on_data)  # type: ignore[arg-type]  # raw mode hands dicts
            await self._send(stream._send_subscribe_msg())  # every subscribed symbol, as alpaca-py always sends

    async def unsubscribe(self, channels: dict[str, list[str]]) -> None:
        wanted = self._wanted(channels)
        self.last_messages = 0
        async with self._lock:
            stream = self._open_stream()
            for channel, symbols in wanted.items():
                present = [s for s in symbols if s in stream._handlers[channel]]
                if not present:
                    continue
                if stream._running:
                    await self._send(stream._send_unsubscribe_msg(channel, present))
                    self.last_messages += 1  # alpaca-py unsubscribes one channel per message: one answer each
                    for symbol in present:
                        del stream._handlers[channel][symbol]
                elif _SUBSCRIBE[channel][1]:
                    getattr(stream, _SUBSCRIBE[channel][1])(*present)
                else:
                    for symbol in present:
                        del stream._handlers[channel][symbol]

    def forget(self, channels: dict[str, list[str]]) -> None:
        """Drop the handlers of symbols the server refused (405, 400), sending nothing: ``_send_subscribe_msg`` sends
        every symbol it holds a handler for, so a refused symbol kept would be asked for again with every request."""
        stream = self._stream
        if stream is None:
            return
        for channel, symbols in self._wanted(channels).items():
            for symbol in symbols:
                stream._handlers[channel].pop(symbol, None)

    async def recv(self) -> list[dict[str, Any]] | bytes:
        while True:
            if self._buffer:
                frame, self._buffer = self._buffer, []
                return frame
            if self._unreadable_pending:
                self._unreadable_pending -= 1
                return UNREADABLE_FRAME
            if self._closed:
                raise FeedClosed(self._closed)
            if self._stream is None:
                raise FeedClosed("not connected")
            self._wake.clear()
            await self._wake.wait()

    async def close(self) -> None:
        self._on_closed("closed by the stream worker")
        if self._closing:
            return
        self._closing = True
        for task in (self._watcher, self._task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=self._close_timeout)
        stream = self._stream
        if stream is not None:
            await stream.stop_ws()  # alpaca-py's own stop flags, in case anything still looks at them
            await self._close_socket(stream)

    # --- what the subclass reports

    async def _on_data(self, msg: dict[str, Any]) -> None:
        """The handler alpaca-py calls for every quote, trade and bar (raw mode: the decoded msgpack map)."""
        ts = msg.get("t")
        if isinstance(ts, Timestamp):
            msg["t"] = ts.to_unix_nano()
        self._buffer.append(msg)
        self._wake.set()

    def _on_control(self, msg: dict[str, Any]) -> None:
        self._buffer.append(msg)
        self._wake.set()

    def _on_running(self) -> None:
        self._started.set()

    def _on_unreadable(self, exc: Exception) -> None:
        self.unreadable_frames += 1
        self._unreadable_pending += 1
        self.last_unreadable = f"{type(exc).__name__}: {exc}"[:200]
        self._wake.set()

    def _on_closed(self, reason: str) -> None:
        if not self._closed:
            self._closed = reason
        self._wake.set()

    # --- internals

    def _wanted(self, channels: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(c for c in channels if c not in _SUBSCRIBE)
        if unknown:
            raise ValueError(f"alpaca-py's stock stream has no channel {unknown} (known: {sorted(_SUBSCRIBE)})")
        return {channel: list(dict.fromkeys(symbols)) for channel, symbols in channels.items() if symbols}

    def _open_stream(self) -> _SdkStream:
        if self._closed:
            raise FeedClosed(self._closed)
        if self._stream is None:
            raise FeedClosed("not connected")
        return self._stream

    async def _start(self) -> None:
        """Start alpaca-py's ``_run_forever`` and wait until it has subscribed and reads (or has ended)."""
        stream = self._open_stream()
        if self._watcher is not None:
            self._watcher.cancel()  # from here on alpaca-py's loop notices a closed connection itself
        self._task = asyncio.create_task(stream._run_forever(), name="alpaca-py-stream")
        self._task.add_done_callback(self._on_task_done)
        started = asyncio.create_task(self._started.wait())
        try:
            await asyncio.wait({self._task, started}, timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if not self._started.is_set():
            raise FeedClosed(self._closed or f"alpaca-py did not start reading within {self._timeout:g} s")

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self._on_closed("alpaca-py's stream loop was cancelled")
            return
        exc = task.exception()
        self._on_closed(f"alpaca-py's stream loop failed: {type(exc).__name__}: {exc}" if exc else "alpaca-py's stream loop ended")

    async def _send(self, sending: Awaitable[None]) -> None:
        try:
            await sending
        except (websockets.WebSocketException, AttributeError) as exc:  # AttributeError: its _ws is None once closed
            self._on_closed(f"connection closed while sending: {type(exc).__name__}: {exc}")
            raise FeedClosed(self._closed) from None

    async def _watch(self, ws: Any) -> None:
        """Before alpaca-py's loop runs nobody reads the socket: notice it closing."""
        await ws.wait_closed()
        self._on_closed(f"connection closed (code {ws.close_code})")

    async def _abort(self) -> None:
        self._closed = self._closed or "connection attempt failed"
        if self._stream is not None:
            await self._close_socket(self._stream)

    async def _close_socket(self, stream: _SdkStream) -> None:
        ws = stream._ws
        stream._ws = None
        stream._running = False
        if ws is None:
            return
        try:
            await asyncio.wait_for(ws.close(), self._close_timeout)
        except (TimeoutError, OSError, websockets.WebSocketException):
            ws.transport.abort()
