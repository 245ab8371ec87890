"""alpaca-py's real stream client against the local Alpaca stand-in, writing to a real Redis.

First plain alpaca-py (parsed mode) proves the stand-in speaks its protocol;
then the StreamWorker runs on :class:`AlpacaSdkFeed` (alpaca-py in raw mode)
through the resilience cases of issue 5: drop, mute socket, 406, bad key,
garbage frames, and subscribing while running. Each worker runs in the
test's own event loop (``asyncio.run``) with ``run_for_s`` as a safety net;
the stand-in's controls are synchronous, so async code calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
import redis
import redis.asyncio as aioredis
from alpaca.data.live.stock import StockDataStream

from omni_tasks.contracts.quotes import read_latest
from omni_tasks.core.keys import STREAM_CONTROL_KEY
from omni_tasks.stream import wire
from omni_tasks.stream.config import StreamConfig
from omni_tasks.stream.feeds import FeedClosed
from omni_tasks.stream.sdk_feed import AlpacaSdkFeed
from omni_tasks.stream.standin import StandinServer
from omni_tasks.stream.status import read_status
from omni_tasks.stream.worker import EXIT_AUTH, StreamWorker

pytestmark = pytest.mark.services


@pytest.fixture
def keys() -> tuple[str, str]:
    return f"PK{secrets.token_hex(8).upper()}", secrets.token_urlsafe(24)


@pytest.fixture
def standin(keys: tuple[str, str]) -> Iterator[StandinServer]:
    with StandinServer(keys={keys[0]: keys[1]}) as server:
        yield server


def _config(**overrides: Any) -> StreamConfig:
    base: dict[str, Any] = {
        "symbols": ["AAPL", "MSFT"],
        "market_hours": "always",
        "mute_after_s": 30.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "housekeeping_s": 0.05,
        "heartbeat_s": 0.2,
    }
    base.update(overrides)
    return StreamConfig(**base)


async def _until(predicate: Callable[[], Any], timeout_s: float, message: str) -> Any:
    """Poll ``predicate`` in a thread (it may block on Redis or the stand-in) until truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {message}")
        await asyncio.sleep(0.02)


def _quote(symbol: str, bid: float, ask: float, ts_ns: int | None = None) -> dict[str, Any]:
    return wire.quote_message(symbol, ts_ns if ts_ns is not None else time.time_ns(), bid, 100.0, ask, 200.0)


def _served(client: redis.Redis, symbol: str) -> Any:
    return read_latest(client, [symbol]).get(symbol)


def _subscribes(server: StandinServer) -> list[dict[str, Any]]:
    return [m for m in server.received if m.get("action") == "subscribe"]


Body = Callable[[StreamWorker, "asyncio.Task[int]"], Awaitable[None]]


def _run(redis_url: str, server: StandinServer, keys: tuple[str, str], config: StreamConfig, body: Body, run_for_s: float = 40.0) -> int:
    """Run a StreamWorker on AlpacaSdkFeed in this thread's own event loop while ``body`` drives the test; its exit code."""

    async def main() -> int:
        client = aioredis.Redis.from_url(redis_url)
        sync_client = redis.Redis.from_url(redis_url)
        worker = StreamWorker(
            config,
            redis=client,
            sync_redis=sync_client,
            feed_factory=lambda: AlpacaSdkFeed(server.url, keys[0], keys[1]),
            run_for_s=run_for_s,
        )
        task = asyncio.create_task(worker.run())
        try:
            await body(worker, task)
        finally:
            worker.stop("test done")
            code = await asyncio.wait_for(task, 15)
            await client.aclose()
            sync_client.close()
        return code

    return asyncio.run(main())


def test_plain_alpaca_py_parses_a_quote_a_trade_and_a_bar_from_the_standin(standin: StandinServer, keys: tuple[str, str]) -> None:
    """alpaca-py's own StockDataStream, parsed mode, public API, not our adapter: the stand-in speaks its protocol."""
    received: dict[str, Any] = {}
    got_all = threading.Event()

    async def on_any(item: Any) -> None:
        received[type(item).__name__] = item
        if len(received) == 3:
            got_all.set()

    stream = StockDataStream(keys[0], keys[1], url_override=standin.url)
    stream.subscribe_quotes(on_any, "AAPL")
    stream.subscribe_trades(on_any, "AAPL")
    stream.subscribe_bars(on_any, "AAPL")
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        assert standin.wait_for_clients(1)
        deadline = time.monotonic() + 5
        while not (standin.subscriptions() and standin.subscriptions()[0]["bars"] == {"AAPL"}) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert standin.subscriptions()[0] == {"quotes": {"AAPL"}, "trades": {"AAPL"}, "bars": {"AAPL"}}
        ts = 1_709_303_400_123_456_789  # 2024-03-01 14:30:00.123456789 UTC
        standin.send(
            [
                _quote("AAPL", 189.50, 189.52, ts_ns=ts),
                wire.trade_message("AAPL", ts + 1_000, 189.51, 300.0, 42),
                wire.bar_message("AAPL", ts - 123_456_789, 189.0, 189.6, 188.9, 189.5, 12_000.0),
            ]
        )
        assert got_all.wait(5), f"alpaca-py delivered only {sorted(received)}"
    finally:
        stream.stop()  # alpaca-py notices the stop at its next receive (up to 5 s); the drop ends it at once
        standin.drop()
        thread.join(10)
    assert not thread.is_alive(), "alpaca-py's run() did not return after stop()"
    quote, trade, bar = received["Quote"], received["Trade"], received["Bar"]
    stamp = datetime(2024, 3, 1, 14, 30, 0, 123456, tzinfo=UTC)  # alpaca-py keeps microseconds
    assert (quote.symbol, quote.bid_price, quote.bid_size, quote.ask_price, quote.ask_size) == ("AAPL", 189.50, 100.0, 189.52, 200.0)
    assert (quote.bid_exchange, quote.ask_exchange, quote.conditions, quote.tape, quote.timestamp) == ("V", "V", ["R"], "C", stamp)
    assert (trade.symbol, trade.price, trade.size, trade.id, trade.exchange, trade.conditions) == ("AAPL", 189.51, 300.0, 42, "V", ["@"])
    assert trade.timestamp == datetime(2024, 3, 1, 14, 30, 0, 123457, tzinfo=UTC)
    assert (bar.symbol, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trade_count, bar.vwap) == (
        "AAPL",
        189.0,
        189.6,
        188.9,
        189.5,
        12_000.0,
        1,
        189.5,
    )
    assert bar.timestamp == datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


def test_quotes_arrive_and_a_dropped_connection_is_reconnected_and_resubscribed(
    standin: StandinServer, keys: tuple[str, str], redis_url: str, redis_client: redis.Redis
) -> None:
    async def body(worker: StreamWorker, _task: asyncio.Task[int]) -> None:
        await _until(lambda: _subscribes(standin), 10, "the first subscribe")
        assert sorted(_subscribes(standin)[0]["quotes"]) == ["AAPL", "MSFT"]
        now = time.time_ns()
        await asyncio.to_thread(
            standin.send,
            [
                _quote("AAPL", 189.50, 189.52, ts_ns=now),
                wire.trade_message("AAPL", now + 1, 189.51, 300.0, 1),
                _quote("MSFT", 410.0, 410.05, now),
            ],
        )
        quote = await _until(lambda: _served(redis_client, "AAPL"), 5, "the AAPL quote in Redis")
        assert (str(quote.bid), str(quote.ask), quote.ts_ns, str(quote.mid)) == ("189.5", "189.52", now, "189.51")
        assert isinstance(worker.feed, AlpacaSdkFeed)
        assert await asyncio.to_thread(standin.drop) == 1
        dropped = time.monotonic()
        await _until(lambda: len(_subscribes(standin)) >= 2, 10, "a second subscribe after the drop")
        took = time.monotonic() - dropped
        assert sorted(_subscribes(standin)[1]["quotes"]) == ["AAPL", "MSFT"]
        assert sorted(_subscribes(standin)[1]["trades"]) == ["AAPL", "MSFT"]
        later = time.time_ns()
        await asyncio.to_thread(standin.send, [_quote("AAPL", 190.00, 190.03, ts_ns=later)])
        quote = await _until(
            lambda: (q := _served(redis_client, "AAPL")) is not None and q.ts_ns == later and q, 5, "a quote after the reconnect"
        )
        assert (str(quote.bid), str(quote.ask)) == ("190.0", "190.03")
        assert (worker.counters.connects, worker.counters.reconnects) == (2, 1)
        assert standin.connections == 2, "alpaca-py must not reconnect by itself next to the worker"
        status = await _until(lambda: (s := read_status(redis_client)).get("connected") == 1 and s, 5, "status")
        assert status["feed"] == "alpaca-py"
        print(f"alpaca-py feed: reconnected and re-subscribed {took * 1000:.0f} ms after the drop; connections 2 of 2 expected")

    assert _run(redis_url, standin, keys, _config(), body) == 0


def test_after_a_drop_the_feed_ends_and_alpaca_py_does_not_reconnect_by_itself(standin: StandinServer, keys: tuple[str, str]) -> None:
    """Left alone (no worker closing it), alpaca-py would reconnect with its own backoff; the feed must end instead."""

    async def main() -> None:
        feed = AlpacaSdkFeed(standin.url, keys[0], keys[1])
        await feed.connect()
        await feed.subscribe({"quotes": ["AAPL"], "trades": [], "bars": []})
        assert [m["T"] for m in await feed.recv()] == ["subscription"]
        await asyncio.to_thread(standin.send, [_quote("AAPL", 10.0, 10.01)])
        await asyncio.to_thread(standin.drop)
        frame = await asyncio.wait_for(feed.recv(), 5)  # what arrived before the drop is still handed over
        assert [(m["T"], m["S"], type(m["t"])) for m in frame] == [("q", "AAPL", int)]
        with pytest.raises(FeedClosed, match="connection closed"):
            await asyncio.wait_for(feed.recv(), 5)
        # The observation window is the action here: alpaca-py's own backoff starts at 1 s (websocket.py:112,
        # 143-152) and it keeps no event to wait on; 2.5 s covers its first two retries, neither of which may happen.
        await asyncio.sleep(2.5)
        assert (standin.connections, standin.clients) == (1, 0)
        with pytest.raises(FeedClosed):
            await feed.subscribe({"quotes": ["MSFT"]})
        await feed.close()

    asyncio.run(main())


def test_a_mute_socket_is_reconnected_by_the_worker(
    standin: StandinServer, keys: tuple[str, str], redis_url: str, redis_client: redis.Redis
) -> None:
    async def body(worker: StreamWorker, _task: asyncio.Task[int]) -> None:
        await _until(lambda: _subscribes(standin), 10, "the first subscribe")
        await asyncio.to_thread(standin.send, [_quote("AAPL", 100.0, 100.01)])
        await _until(lambda: _served(redis_client, "AAPL"), 5, "the first quote")
        standin.mute = True  # connected, acknowledging, but no market data
        muted = time.monotonic()
        await _until(lambda: standin.connections >= 2, 6, "a reconnect forced by the mute check")
        took = time.monotonic() - muted
        assert worker.counters.mute_reconnects >= 1
        assert 0.9 <= took < 4.0, f"mute_after_s=1 but the reconnect came after {took:.2f} s"
        standin.mute = False
        later = time.time_ns()
        await _until(lambda: standin.clients == 1 and len(_subscribes(standin)) >= 2, 5, "the new connection subscribed")
        await asyncio.to_thread(standin.send, [_quote("AAPL", 101.0, 101.02, ts_ns=later)])
        await _until(lambda: (q := _served(redis_client, "AAPL")) is not None and q.ts_ns == later, 5, "a quote on the new connection")
        print(f"mute socket: reconnected {took:.2f} s after the stand-in went silent (mute_after_s=1)")

    assert _run(redis_url, standin, keys, _config(mute_after_s=1.0), body) == 0


def test_connection_limit_406_means_a_cooldown_not_a_tight_loop(standin: StandinServer, keys: tuple[str, str], redis_url: str) -> None:
    standin.connection_limit_always = True

    async def body(worker: StreamWorker, _task: asyncio.Task[int]) -> None:
        await _until(lambda: worker.counters.connection_limit >= 1, 10, "the first 406")
        first = time.monotonic()
        await _until(lambda: worker.counters.connection_limit >= 2, 10, "the attempt after the cooldown")
        gap_s = time.monotonic() - first
        attempts = standin.connections
        # The next attempt after 1.5-1.8 s of cooldown. alpaca-py retrying by itself (1 s backoff)
        # or a tight loop would have made more attempts by then.
        assert gap_s >= 1.4, f"the second attempt came {gap_s:.2f} s after the first 406"
        assert attempts == 2, attempts
        assert standin.limit_refusals == attempts
        assert worker.counters.connection_limit == attempts
        assert "connection limit exceeded" in worker.last_error
        standin.connection_limit_always = False
        await _until(lambda: standin.clients == 1, 5, "a connection once the limit lifts")
        print(f"406 through alpaca-py: the next connection attempt {gap_s:.2f} s after the first with a 1.5 s cooldown")

    assert _run(redis_url, standin, keys, _config(connection_limit_cooldown_s=1.5), body) == 0


def test_insufficient_subscription_mid_stream_stops_the_worker_with_exit_code_3(
    standin: StandinServer, keys: tuple[str, str], redis_url: str
) -> None:
    """alpaca-py only logs a 409 after the handshake; the feed passes it on, and the worker stops: the plan lacks the feed."""

    async def body(worker: StreamWorker, task: asyncio.Task[int]) -> None:
        await _until(lambda: _subscribes(standin), 10, "the first subscribe")
        await asyncio.to_thread(standin.send, [wire.control("error", code=409, msg="insufficient subscription")])
        assert await asyncio.wait_for(task, 10) == EXIT_AUTH
        assert worker.counters.provider_errors == 1
        assert "insufficient subscription (code 409)" in worker.exit_reason
        assert standin.connections == 1, "no reconnect: reconnecting cannot fix the plan"

    assert _run(redis_url, standin, keys, _config(), body) == EXIT_AUTH


def test_provider_errors_mid_stream_reach_the_worker(standin: StandinServer, keys: tuple[str, str], redis_url: str) -> None:
    """alpaca-py only logs error messages after the handshake; the feed passes them on, so a late 406 still cools down."""

    async def body(worker: StreamWorker, _task: asyncio.Task[int]) -> None:
        await _until(lambda: _subscribes(standin), 10, "the first subscribe")
        await asyncio.to_thread(standin.send, [wire.control("error", code=405, msg="symbol limit exceeded")])
        await _until(lambda: worker.counters.provider_errors == 1, 5, "the 405 counted")
        assert "symbol limit exceeded (code 405)" in worker.last_error
        assert (worker.connected, standin.connections) == (True, 1), "a 405 keeps the connection (the other symbols flow)"
        await asyncio.to_thread(standin.send, [wire.control("error", code=406, msg="connection limit exceeded")])
        await _until(lambda: worker.counters.connection_limit == 1, 5, "the 406 acted on")
        acted = time.monotonic()
        await _until(lambda: standin.connections == 2 and standin.clients == 1, 5, "a connection after the cooldown")
        assert time.monotonic() - acted >= 0.9, "a 406 means a cooldown (1 s here) before the next attempt"

    assert _run(redis_url, standin, keys, _config(connection_limit_cooldown_s=1.0), body) == 0


def test_a_bad_key_stops_the_worker_with_exit_code_3(standin: StandinServer, keys: tuple[str, str], redis_url: str) -> None:
    wrong = (keys[0], secrets.token_urlsafe(24))
    seen: dict[str, Any] = {}

    async def body(worker: StreamWorker, task: asyncio.Task[int]) -> None:
        started = time.monotonic()
        await asyncio.wait({task}, timeout=5)
        assert task.done(), "the worker kept going after the provider refused the key"
        seen["took"] = time.monotonic() - started
        seen["reason"] = worker.exit_reason

    assert _run(redis_url, standin, wrong, _config(), body) == EXIT_AUTH
    assert standin.auth_failures == 1, "an auth failure is neither retried by alpaca-py nor by the worker"
    assert standin.connections == 1
    assert "auth failed" in seen["reason"]
    print(f"bad key: exit code 3 after {seen['took'] * 1000:.0f} ms, 1 attempt of 1")


def test_garbage_frames_are_survived_and_counted(
    standin: StandinServer, keys: tuple[str, str], redis_url: str, redis_client: redis.Redis
) -> None:
    async def body(worker: StreamWorker, _task: asyncio.Task[int]) -> None:
        await _until(lambda: _subscribes(standin), 10, "the first subscribe")
        feed = worker.feed
        assert isinstance(feed, AlpacaSdkFeed)
        garbage: list[bytes | str] = [
            b"\xc1\xc1\xc1",  # not msgpack: msgpack.unpackb raises FormatError inside alpaca-py's _consume
            msgpack.packb({"T": "q"}),  # a map, not an array: alpaca-py iterates its keys and fails on str.get
            msgpack.packb([1, 2]),  # an array of numbers
            "[not msgpack]",  # a text frame: alpaca-py's unpackb refuses str
        ]
        for frame in garbage:
            await asyncio.to_thread(standin.send_raw, frame)
        await asyncio.to_thread(standin.send, [_quote("AAPL", 50.0, 50.01)])
        await _until(lambda: _served(redis_client, "AAPL"), 5, "a quote after the garbage")
        await _until(lambda: worker.path.garbage_frames == len(garbage), 5, "the garbage frames counted")
        assert feed.unreadable_frames == len(garbage)
        assert worker.feed is feed, "garbage must not cost the connection"
        assert (worker.counters.connects, standin.connections) == (1, 1)
        status = await _until(lambda: (s := read_status(redis_client)).get("garbage_frames") == len(garbage) and s, 5, "status")
        assert status["connected"] == 1
        print(f"garbage frames through alpaca-py: {len(garbage)} of {len(garbage)} counted and skipped, 0 reconnects")

    assert _run(redis_url, standin, keys, _config(), body) == 0


def test_remote_subscribe_and_unsubscribe_while_alpaca_py_runs(
    standin: StandinServer, keys: tuple[str, str], redis_url: str, redis_client: redis.Redis
) -> None:
    """alpaca-py's subscribe_* would block its own loop thread here; the feed sends through its async methods."""
    key = STREAM_CONTROL_KEY.format(name="stream")

    async def body(worker: StreamWorker, _task: asyncio.Task[int]) -> None:
        await _until(lambda: standin.subscriptions() and standin.subscriptions()[0]["quotes"] == {"AAPL", "MSFT"}, 10, "subscribed")
        await asyncio.to_thread(redis_client.rpush, key, json.dumps({"cmd": "subscribe", "symbols": ["NVDA"]}))
        await _until(lambda: "NVDA" in standin.subscriptions()[0]["quotes"], 5, "NVDA subscribed")
        await asyncio.to_thread(redis_client.rpush, key, json.dumps({"cmd": "unsubscribe", "symbols": ["MSFT"]}))
        await _until(lambda: "MSFT" not in standin.subscriptions()[0]["quotes"], 5, "MSFT unsubscribed")
        assert standin.subscriptions()[0]["quotes"] == {"AAPL", "NVDA"}
        assert standin.subscriptions()[0]["trades"] == {"AAPL", "NVDA"}
        now = time.time_ns()
        await asyncio.to_thread(standin.send, [_quote("NVDA", 900.0, 900.1, now), _quote("MSFT", 410.0, 410.05, now)])
        await _until(lambda: _served(redis_client, "NVDA"), 5, "the NVDA quote")
        assert _served(redis_client, "MSFT") is None, "alpaca-py has no handler for an unsubscribed symbol"
        assert worker.subscribed == ["AAPL", "NVDA"]

    assert _run(redis_url, standin, keys, _config(), body) == 0
