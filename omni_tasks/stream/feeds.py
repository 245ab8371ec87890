"""Feeds: where frames come from. Every feed hands the worker raw frames in Alpaca's wire format.

- :class:`AlpacaFeed` speaks Alpaca's market-data websocket protocol itself
  (connect, ``success``/``connected``, auth, subscribe; msgpack frames) with
  the ``websockets`` library, so raw frames reach the path untouched (the
  recorder keeps them byte for byte). alpaca-py's own client is supported too
  (:mod:`omni_tasks.stream.sdk_feed`); the benchmark compares both.
- :class:`SyntheticFeed`: random-walk quotes, trades and bars for the
  configured symbols, encoded as Alpaca frames (the embedded default).
- :class:`~omni_tasks.stream.recording.ReplayFeed`: a file written by
  ``omni stream --record`` played back at 1x, Nx or full speed (with the
  recorder, in :mod:`omni_tasks.stream.recording`).

A feed raises :class:`AuthFailed` (stop: retrying a bad key helps no one),
:class:`ConnectionLimit` (Alpaca's 406: cool down), :class:`FeedClosed`
(reconnect with backoff) or :class:`FeedExhausted` (a replay reached its end).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import Any, Final, Protocol

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from omni_tasks.core.errors import OmniError
from omni_tasks.stream import wire

#: Trade corrections and cancels come with "trades" (Alpaca subscribes them with it); statuses and LULD bands are
#: channels of their own, which an account's data plan may refuse (409: the worker stops and says how to leave them out).
CHANNELS: Final = ("quotes", "trades", "bars", "statuses", "lulds")
OPTIONAL_CHANNELS: Final = frozenset({"statuses", "lulds"})


class FeedError(OmniError):
    """A feed failed; subclasses say what the worker should do about it."""


class AuthFailed(FeedError):
    """The provider refused the credentials (or never saw them in time)."""


class SubscriptionRefused(FeedError):
    """The account's market-data plan does not include what was asked (Alpaca error 409): reconnecting will not help."""


class ConnectionLimit(FeedError):
    """The provider allows no more connections for this key (Alpaca error 406)."""


class FeedClosed(FeedError):
    """The connection dropped or could not be made; reconnect."""


class FeedExhausted(FeedError):
    """A finite feed (a replay) has nothing more to give."""


class Feed(Protocol):
    name: str

    async def connect(self) -> None: ...

    async def subscribe(self, channels: dict[str, list[str]]) -> None: ...

    async def unsubscribe(self, channels: dict[str, list[str]]) -> None: ...

    async def recv(self) -> bytes | str | list[dict[str, Any]]:
        """One raw frame (bytes: msgpack, str: JSON), or a list of decoded messages (a client that decodes itself)."""
        ...

    async def close(self) -> None: ...


def _error_of(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((m for m in messages if m.get("T") == "error"), None)


def raise_for_error(message: dict[str, Any]) -> None:
    """Turn an Alpaca ``error`` message into the exception the worker acts on."""
    code = message.get("code")
    text = f"{message.get('msg', 'error')} (code {code})"
    if code in wire.AUTH_FAILED_CODES:
        raise AuthFailed(text)
    if code == wire.CONNECTION_LIMIT_CODE:
        raise ConnectionLimit(text)
    if code == wire.INSUFFICIENT_SUBSCRIPTION_CODE:
        raise SubscriptionRefused(text)
    raise FeedClosed(text)


class AlpacaFeed:
    """Alpaca's market-data stream at ``url`` (``wss://stream.data.alpaca.markets/v2/iex`` by default)."""

    def __init__(self, url: str, api_key: str, secret_key: str, *, binary: bool = True, handshake_timeout_s: float = 10.0) -> None:
        self.name = "alpaca"
        self.url = url
        self._key = api_key
        self._secret = secret_key
        self._binary = binary
        self._timeout = handshake_timeout_s
        self._ws: ClientConnection | None = None
        self.handshake_kinds: list[Any] = []  # the T of every message read during the handshake (the worker counts them)

    def _encode(self, message: dict[str, Any]) -> bytes | str:
        return msgpack.packb(message) if self._binary else json.dumps(message)

    async def _recv_messages(self) -> list[dict[str, Any]]:
        assert self._ws is not None
        try:
            frame = await asyncio.wait_for(self._ws.recv(), self._timeout)
        except TimeoutError:
            raise FeedClosed(f"no answer from {self.url} within {self._timeout:.0f} s") from None
        except ConnectionClosed as exc:
            raise FeedClosed(f"connection closed during the handshake: {exc}") from None
        try:
            messages = wire.decode_frame(frame)
        except wire.GarbageFrame as exc:
            raise FeedClosed(f"unreadable handshake frame: {exc}") from None
        self.handshake_kinds.extend(m.get("T") for m in messages)
        return messages

    async def connect(self) -> None:
        headers = {"Content-Type": "application/msgpack"} if self._binary else {}
        try:
            self._ws = await asyncio.wait_for(
                connect(self.url, additional_headers=headers, max_size=2**24, max_queue=4096, ping_interval=10, ping_timeout=30),
                self._timeout,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise FeedClosed(f"cannot connect to {self.url}: {type(exc).__name__}: {exc}") from None
        messages = await self._recv_messages()
        error = _error_of(messages)
        if error is not None:
            await self.close()
            raise_for_error(error)
        if not any(m.get("T") == "success" and m.get("msg") == "connected" for m in messages):
            await self.close()
            raise FeedClosed(f"unexpected greeting {messages!r:.200}")
        try:
            await self._send({"action": "auth", "key": self._key, "secret": self._secret})
        except FeedClosed:
            # The server may have said why and closed while our auth was on its way (406, 404): read what it sent.
            error = await self._error_sent_before_close()
            if error is not None:
                raise_for_error(error)
            raise
        messages = await self._recv_messages()
        error = _error_of(messages)
        if error is not None:
            await self.close()
            raise_for_error(error)
        if not any(m.get("T") == "success" and m.get("msg") == "authenticated" for m in messages):
            await self.close()
            raise FeedClosed(f"unexpected answer to auth {messages!r:.200}")

    async def _error_sent_before_close(self) -> dict[str, Any] | None:
        """The first error message among the frames received before the connection closed (None: there was none)."""
        ws = self._ws
        while ws is not None:
            try:
                frame = await asyncio.wait_for(ws.recv(), 1.0)
            except (ConnectionClosed, TimeoutError):
                return None
            try:
                messages = wire.decode_frame(frame)
            except wire.GarbageFrame:
                continue
            self.handshake_kinds.extend(m.get("T") for m in messages)
            error = _error_of(messages)
            if error is not None:
                return error
        return None

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None:
            raise FeedClosed("not connected")
        try:
            await self._ws.send(self._encode(message))
        except ConnectionClosed as exc:
            raise FeedClosed(f"connection closed: {exc}") from None

    async def subscribe(self, channels: dict[str, list[str]]) -> None:
        body = {k: v for k, v in channels.items() if v}
        if body:
            await self._send({"action": "subscribe", **body})

    async def unsubscribe(self, channels: dict[str, list[str]]) -> None:
        body = {k: v for k, v in channels.items() if v}
        if body:
            await self._send({"action": "unsubscribe", **body})

    async def recv(self) -> bytes | str:
        if self._ws is None:
            raise FeedClosed("not connected")
        try:
            return await self._ws.recv()
        except ConnectionClosed as exc:
            raise FeedClosed(f"connection closed: {exc}") from None

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 2.0)
            except (TimeoutError, OSError, ConnectionClosed):
                ws.transport.abort()


class SyntheticFeed:
    """Random-walk quotes (and trades and minute bars) for the subscribed symbols, as msgpack Alpaca frames.

    ``rate`` quotes per second in all, sent in frames every ``tick_s``; prices
    start near 100 and move a few basis points per quote; a trade follows
    every tenth quote. Deterministic for a given ``seed``.

    LULD bands (``T: "l"``) of 5% around the mid are sent for each symbol when
    it is subscribed and every ``luld_every_s``. With ``halt_every_s`` > 0 one
    trading symbol is halted that often (a UTP ``H`` status, reason ``T1``
    "Halt News Pending" or ``LUDP`` "Volatility Trading Pause", as Alpaca sends
    it), gets no quotes or trades for ``halt_for_s``, then resumes (``T``); with
    halts on, every symbol is resumed when subscribed, so a synthetic halt an
    earlier run left in Redis does not outlive it.
    """

    def __init__(
        self,
        *,
        rate: float = 200.0,
        tick_s: float = 0.01,
        seed: int = 7,
        halt_every_s: float = 0.0,
        halt_for_s: float = 10.0,
        luld_every_s: float = 30.0,
    ) -> None:
        self.name = "synthetic"
        self.rate = rate
        self.tick_s = tick_s
        self._rng = random.Random(seed)  # noqa: S311 - synthetic prices, not cryptography
        self._mids: dict[str, float] = {}
        self._symbols: list[str] = []
        self._connected = False
        self._next_at = 0.0
        self._carry = 0.0
        self._trade_id = 0
        self._bar_minute: dict[str, int] = {}
        self._pending: list[bytes | str] = []
        self.halt_every_s = halt_every_s
        self.halt_for_s = halt_for_s
        self.luld_every_s = luld_every_s
        self._halt_rng = random.Random(seed + 1)  # noqa: S311 - apart, so halts leave the price sequence as it was
        self._halted: dict[str, int] = {}  # symbol -> when it resumes (wall ns)
        self._next_halt_ns = 0
        self._luld_at: dict[str, int] = {}  # symbol -> when its band was last sent (wall ns)
        self.halts = 0

    async def connect(self) -> None:
        self._connected = True
        self._next_at = time.monotonic()
        self._pending.append(wire.encode_frame([wire.control("success", msg="connected")]))
        self._pending.append(wire.encode_frame([wire.control("success", msg="authenticated")]))

    async def subscribe(self, channels: dict[str, list[str]]) -> None:
        opened = []
        for symbol in channels.get("quotes", []):
            if symbol not in self._mids:
                self._mids[symbol] = 50.0 + 100.0 * self._rng.random()
                self._symbols.append(symbol)
                opened.append(symbol)
        if self.halt_every_s > 0 and opened:
            # A synthetic halt left in Redis by an earlier run would never be resumed: this market opens trading.
            now_ns = time.time_ns()
            self._pending.append(wire.encode_frame([wire.status_message(s, now_ns, "T", "Trading Resumption") for s in opened]))
        self._pending.append(
            wire.encode_frame([wire.control("subscription", quotes=list(self._symbols), trades=list(self._symbols), bars=[])])
        )

    async def unsubscribe(self, channels: dict[str, list[str]]) -> None:
        gone = set(channels.get("quotes", []))
        self._symbols = [s for s in self._symbols if s not in gone]

    def _status_messages(self, now_ns: int) -> list[dict[str, Any]]:
        """Resumes that are due, a new halt when one is due, and LULD bands that are due."""
        messages: list[dict[str, Any]] = []
        for symbol, resume_ns in list(self._halted.items()):
            if now_ns >= resume_ns:
                del self._halted[symbol]
                messages.append(wire.status_message(symbol, now_ns, "T", "Trading Resumption"))
        if self.halt_every_s > 0:
            if self._next_halt_ns == 0:
                self._next_halt_ns = now_ns + int(self.halt_every_s * 1e9)
            elif now_ns >= self._next_halt_ns:
                self._next_halt_ns = now_ns + int(self.halt_every_s * 1e9)
                trading = [s for s in self._symbols if s not in self._halted]
                if len(trading) > 1:  # keep one symbol trading: the feed never goes wholly silent
                    symbol = trading[self._halt_rng.randrange(len(trading))]
                    reason = ("T1", "Halt News Pending") if self._halt_rng.random() < 0.5 else ("LUDP", "Volatility Trading Pause")
                    self._halted[symbol] = now_ns + int(self.halt_for_s * 1e9)
                    self.halts += 1
                    messages.append(wire.status_message(symbol, now_ns, "H", "Trading Halt", *reason))
        for symbol in self._symbols:
            if symbol not in self._halted and now_ns - self._luld_at.get(symbol, 0) >= self.luld_every_s * 1e9:
                self._luld_at[symbol] = now_ns
                mid = self._mids[symbol]
                messages.append(wire.luld_message(symbol, now_ns, round(mid * 1.05, 2), round(mid * 0.95, 2), "B"))
        return messages

    def _frame(self, count: int) -> bytes:
        rng = self._rng
        now_ns = time.time_ns()
        messages = self._status_messages(now_ns)
        halted = self._halted
        for i in range(count):
            symbol = self._symbols[rng.randrange(len(self._symbols))]
            if halted and symbol in halted:
                continue  # a halted symbol gets no quotes and no trades
            mid = self._mids[symbol] * math.exp(rng.gauss(0.0, 0.0003))
            self._mids[symbol] = mid
            half = max(0.005, round(mid * 0.0002, 2))
            bid, ask = round(mid - half, 2), round(mid + half, 2)
            ts = now_ns + i
            messages.append(wire.quote_message(symbol, ts, bid, float(rng.randint(1, 20) * 100), ask, float(rng.randint(1, 20) * 100)))
            if rng.random() < 0.1:
                self._trade_id += 1
                price = bid if rng.random() < 0.5 else ask
                messages.append(wire.trade_message(symbol, ts, price, float(rng.randint(1, 5) * 100), self._trade_id))
        minute = now_ns // 60_000_000_000
        for symbol in self._symbols:
            if self._bar_minute.get(symbol, minute) != minute and symbol not in halted:
                mid = round(self._mids[symbol], 2)
                messages.append(wire.bar_message(symbol, (minute - 1) * 60_000_000_000, mid, mid, mid, mid, 1000.0))
            self._bar_minute[symbol] = minute
        return msgpack.packb(messages)

    async def recv(self) -> bytes | str:
        if not self._connected:
            raise FeedClosed("not connected")
        if self._pending:
            return self._pending.pop(0)
        while not self._symbols:
            await asyncio.sleep(self.tick_s)
            if not self._connected:
                raise FeedClosed("closed")
        delay = self._next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not self._connected:
            raise FeedClosed("closed")
        self._next_at = max(self._next_at + self.tick_s, time.monotonic() - 1.0)
        self._carry += self.rate * self.tick_s
        count = int(self._carry)
        self._carry -= count
        return self._frame(max(1, count))

    async def close(self) -> None:
        self._connected = False
