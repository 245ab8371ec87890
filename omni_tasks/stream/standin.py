"""A local stand-in for Alpaca's market-data websocket, for tests, drills and benchmarks.

It speaks the protocol as Alpaca documents it and as alpaca-py expects it:
``[{"T":"success","msg":"connected"}]`` on connect; ``{"action":"auth"}`` ->
``authenticated`` or error 402 (bad key), 406 (connection limit exceeded, one
connection per key), 404 (no auth in time); ``subscribe``/``unsubscribe`` ->
a ``subscription`` message listing every channel; an unknown action -> 400.
With :attr:`symbol_limit`, a subscribe that would leave a client with more
symbols than that (over all channels) gets 405 "symbol limit exceeded"; a
subscribe naming a badly formatted symbol gets 400 "invalid syntax"; either
leaves the client's subscription as it was (Alpaca's documented behaviour).
Frames are msgpack when the client sent ``Content-Type: application/msgpack``
(alpaca-py and our client do), JSON text otherwise.

Tests drive it from their own thread: :meth:`StandinServer.send` pushes
messages to every authenticated client, :meth:`drop` cuts connections,
:attr:`mute` keeps sockets open but silent, :meth:`send_raw` injects garbage.
Trading statuses, LULD bands, trade corrections and cancels are built with
:func:`~omni_tasks.stream.wire.status_message`, :func:`~omni_tasks.stream.wire.luld_message`,
:func:`~omni_tasks.stream.wire.correction_message` and
:func:`~omni_tasks.stream.wire.cancel_message` and sent like any message, in
msgpack or JSON as the client asked. :attr:`error_before_auth` makes the server
answer a connection with ``connected`` and at once an error (e.g. 406) and a
close, without waiting for the client's auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from omni_tasks.stream import wire

#: The channels a client may subscribe (Alpaca's stock stream); corrections and cancelErrors follow trades.
CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
#: A well-formed stock symbol for the stand-in (upper-case letters and digits, a class suffix after "." or "/"), or "*".
VALID_SYMBOL = re.compile(r"^(\*|[A-Z][A-Z0-9]{0,9}([./][A-Z0-9]{1,4})?)$")


@dataclass
class _Client:
    ws: ServerConnection
    binary: bool
    key: str | None = None
    subscriptions: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in CHANNELS})


class StandinServer:
    """Runs on 127.0.0.1 in a background thread with its own event loop. Use as a context manager."""

    def __init__(self, *, keys: dict[str, str] | None = None, max_connections_per_key: int = 1, auth_timeout_s: float = 10.0) -> None:
        self.keys = dict(keys or {})
        self.max_connections_per_key = max_connections_per_key
        self.auth_timeout_s = auth_timeout_s
        self.mute = False
        #: True: a message naming a symbol ("S") goes only to the clients subscribed to it on its channel, as Alpaca sends
        #: (False, the default: every client gets every frame, which single-connection tests rely on).
        self.routed = False
        self.connection_limit_always = False
        self.symbol_limit: int | None = None  # distinct symbols a client may hold over all channels (None: no limit)
        self.symbol_refusals = 0  # 405 answers
        self.syntax_refusals = 0  # 400 answers to a badly formatted symbol
        self.error_before_auth: tuple[int, str] | None = None
        self.received: list[dict[str, Any]] = []  # every client message, in order (secrets replaced)
        self.connections = 0
        self.auth_failures = 0
        self.limit_refusals = 0
        self._clients: list[_Client] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._ready = threading.Event()
        self.port = 0

    # --- lifecycle

    def __enter__(self) -> StandinServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v2/iex"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alpaca-standin", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the stand-in server did not start")

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, max_size=2**24, compression=None) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopped.wait()

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(5)

    def call(self, fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Run a coroutine function on the server's loop and wait for it."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout_s)

    # --- the protocol

    def _encode(self, client: _Client, messages: list[dict[str, Any]]) -> bytes | str:
        return wire.encode_frame(messages, binary=client.binary)

    async def _send(self, client: _Client, messages: list[dict[str, Any]]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await client.ws.send(self._encode(client, messages))

    def _decode(self, frame: bytes | str) -> Any:
        return json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame)

    async def _handle(self, ws: ServerConnection) -> None:
        content_type = ws.request.headers.get("Content-Type", "") if ws.request is not None else ""
        client = _Client(ws=ws, binary="msgpack" in content_type)
        self.connections += 1
        await self._send(client, [wire.control("success", msg="connected")])
        if self.error_before_auth is not None:
            code, text = self.error_before_auth
            await self._send(client, [wire.control("error", code=code, msg=text)])
            await ws.close()
            return
        try:
            frame = await asyncio.wait_for(ws.recv(), self.auth_timeout_s)
        except TimeoutError:
            await self._send(client, [wire.control("error", code=404, msg="auth timeout")])
            await ws.close()
            return
        except ConnectionClosed:
            return
        try:
            message = self._decode(frame)
        except Exception:  # noqa: BLE001 - a client sending garbage gets Alpaca's answer
            await self._send(client, [wire.control("error", code=400, msg="invalid syntax")])
            await ws.close()
            return
        self.received.append(
            {k: ("***" if k == "secret" else v) for k, v in message.items()} if isinstance(message, dict) else {"raw": message}
        )
        if not isinstance(message, dict) or message.get("action") != "auth":
            await self._send(client, [wire.control("error", code=401, msg="not authenticated")])
            await ws.close()
            return
        key, secret = message.get("key"), message.get("secret")
        if (self.keys.get(key) if isinstance(key, str) else None) != secret:
            self.auth_failures += 1
            await self._send(client, [wire.control("error", code=402, msg="auth failed")])
            await ws.close()
            return
        live = sum(1 for c in self._clients if c.key == key)
        if self.connection_limit_always or live >= self.max_connections_per_key:
            self.limit_refusals += 1
            await self._send(client, [wire.control("error", code=406, msg="connection limit exceeded")])
            await ws.close()
            return
        client.key = key
        self._clients.append(client)
        await self._send(client, [wire.control("success", msg="authenticated")])
        try:
            async for frame in ws:
                try:
                    message = self._decode(frame)
                except Exception:  # noqa: BLE001 - any frame the decoder cannot read gets the invalid-syntax error, as Alpaca answers
                    await self._send(client, [wire.control("error", code=400, msg="invalid syntax")])
                    continue
                self.received.append(message if isinstance(message, dict) else {"raw": message})
                await self._on_action(client, message)
        except ConnectionClosed:
            pass
        finally:
            if client in self._clients:
                self._clients.remove(client)

    async def _on_action(self, client: _Client, message: Any) -> None:
        action = message.get("action") if isinstance(message, dict) else None
        if action not in ("subscribe", "unsubscribe"):
            await self._send(client, [wire.control("error", code=400, msg="invalid syntax")])
            return
        asked = {channel: set(message.get(channel) or []) for channel in CHANNELS}
        if action == "subscribe":
            if any(not isinstance(s, str) or not VALID_SYMBOL.match(s) for symbols in asked.values() for s in symbols):
                self.syntax_refusals += 1
                await self._send(client, [wire.control("error", code=400, msg="invalid syntax")])
                return
            held = set().union(*(client.subscriptions[c] | asked[c] for c in CHANNELS)) - {"*"}
            if self.symbol_limit is not None and len(held) > self.symbol_limit:
                self.symbol_refusals += 1
                await self._send(client, [wire.control("error", code=405, msg="symbol limit exceeded")])
                return
        for channel in CHANNELS:
            if action == "subscribe":
                client.subscriptions[channel] |= asked[channel]
            else:
                client.subscriptions[channel] -= asked[channel]
        body = {channel: sorted(symbols) for channel, symbols in client.subscriptions.items()}
        await self._send(
            client,
            [
                wire.control(
                    "subscription",
                    **body,
                    corrections=body["trades"],
                    cancelErrors=body["trades"],
                )
            ],
        )

    # --- test controls (call from any thread)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def subscriptions(self) -> list[dict[str, set[str]]]:
        """Per client: trades, quotes and bars, and every other channel it subscribed something on."""
        return [{k: v for k, v in c.subscriptions.items() if v or k in ("trades", "quotes", "bars")} for c in self._clients]

    def subscriptions_by_key(self) -> dict[str, set[str]]:
        """The quote subscriptions of each authenticated key (one connection per key)."""
        return {c.key: set(c.subscriptions["quotes"]) for c in self._clients if c.key is not None}

    def send(self, messages: list[dict[str, Any]]) -> int:
        """Send one frame of messages (built with ``binary=True``; re-encoded per client) to every client; returns how many got it.

        With :attr:`routed`, each client gets only the messages of the symbols it subscribed (a client left with none gets no frame).
        """

        async def go() -> int:
            if self.mute:
                return 0
            sent = 0
            for client in list(self._clients):
                chosen = [m for m in messages if _wanted(client, m)] if self.routed else messages
                if not chosen:
                    continue
                payload = chosen if client.binary else [_as_json(m) for m in chosen]
                await self._send(client, payload)
                sent += 1
            return sent

        return self.call(go)

    def send_raw(self, frame: bytes | str) -> None:
        async def go() -> None:
            for client in list(self._clients):
                with contextlib.suppress(ConnectionClosed):
                    await client.ws.send(frame)

        self.call(go)

    def drop(self) -> int:
        """Cut every connection abruptly (no close handshake), as a network failure would."""

        async def go() -> int:
            dropped = 0
            for client in list(self._clients):
                client.ws.transport.abort()
                self._clients.remove(client)
                dropped += 1
            return dropped

        return self.call(go)

    def wait_for_clients(self, count: int, timeout_s: float = 10.0) -> bool:
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.clients >= count:
                return True
            time.sleep(0.01)
        return False

    def stream_frames(self, frames: Iterable[bytes], *, interval_s: float) -> Callable[[], Any]:
        """Send pre-encoded binary frames to every client, one every ``interval_s`` (on the server's loop)."""

        async def go() -> int:
            loop = asyncio.get_running_loop()
            start = loop.time()
            sent = 0
            for i, frame in enumerate(frames):
                due = start + i * interval_s
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                for client in list(self._clients):
                    with contextlib.suppress(ConnectionClosed):
                        await client.ws.send(frame)
                sent += 1
            return sent

        return go


_CHANNEL_OF = {"q": "quotes", "t": "trades", "b": "bars", "u": "updatedBars", "d": "dailyBars", "s": "statuses", "l": "lulds"}


def _wanted(client: _Client, message: dict[str, Any]) -> bool:
    """Whether a routed message goes to this client: control messages always; market data when its symbol is subscribed."""
    channel = _CHANNEL_OF.get(str(message.get("T")))
    if channel is None or "S" not in message:
        return True
    return message["S"] in client.subscriptions[channel]


def _as_json(message: dict[str, Any]) -> dict[str, Any]:
    ts = message.get("t")
    if isinstance(ts, msgpack.Timestamp):
        return {**message, "t": wire._ts_value(ts.to_unix_nano(), False)}
    return message
