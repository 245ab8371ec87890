"""The streaming worker against a local stand-in of Alpaca's websocket, writing to a real Redis.

In-process tests run StreamWorker on a thread's event loop with our lean
client; the process tests run the real `omni stream` command.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
import redis.asyncio as aioredis

from omni_tasks.contracts.quotes import read_latest, read_profile
from omni_tasks.core.keys import STREAM_CONTROL_KEY
from omni_tasks.pipeline import heartbeats
from omni_tasks.stream import wire
from omni_tasks.stream.config import StreamConfig
from omni_tasks.stream.connlock import key_fingerprint
from omni_tasks.stream.feeds import AlpacaFeed
from omni_tasks.stream.standin import StandinServer
from omni_tasks.stream.status import read_status
from omni_tasks.stream.worker import EXIT_AUTH, StreamWorker
from tests.conftest import OmniProcess, service_env, wait_for

pytestmark = pytest.mark.services

KEY, SECRET = "test-key-id", "test-secret-value"


@pytest.fixture
def standin() -> Iterator[StandinServer]:
    with StandinServer(keys={KEY: SECRET}) as server:
        yield server


class RunningWorker:
    """A StreamWorker on its own thread and event loop (the test thread drives the stand-in)."""

    def __init__(self, worker_args: dict[str, Any], redis_url: str) -> None:
        self.args = worker_args
        self.redis_url = redis_url
        self.worker: StreamWorker | None = None
        self.exit_code: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        async def main() -> int:
            client = aioredis.Redis.from_url(self.redis_url)
            self.worker = StreamWorker(redis=client, sync_redis=redis.Redis.from_url(self.redis_url), **self.args)
            self._loop = asyncio.get_running_loop()
            self._started.set()
            try:
                return await self.worker.run()
            finally:
                await client.aclose()

        self.exit_code = asyncio.run(main())

    def start(self) -> RunningWorker:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self.worker is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.worker.stop, "test done")
        self._thread.join(15)

    def join(self, timeout_s: float) -> int | None:
        self._thread.join(timeout_s)
        return self.exit_code


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


@pytest.fixture
def run_worker(redis_url: str, standin: StandinServer) -> Iterator[Any]:
    running: list[RunningWorker] = []

    def start(
        config: StreamConfig | None = None, *, key: str = KEY, secret: str = SECRET, binary: bool = True, **extra: Any
    ) -> RunningWorker:
        args = {"config": config or _config(), "feed_factory": lambda: AlpacaFeed(standin.url, key, secret, binary=binary), **extra}
        worker = RunningWorker(args, redis_url).start()
        running.append(worker)
        return worker

    yield start
    for worker in running:
        worker.stop()


def _quote(
    symbol: str, bid: float, ask: float, *, ts_ns: int | None = None, bid_size: float = 100, ask_size: float = 200
) -> dict[str, Any]:
    return wire.quote_message(symbol, ts_ns if ts_ns is not None else time.time_ns(), bid, bid_size, ask, ask_size)


def _served(client: redis.Redis, symbol: str) -> Any:
    return read_latest(client, [symbol]).get(symbol)


@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
def test_quotes_trades_and_bars_arrive_in_redis(standin: StandinServer, run_worker: Any, redis_client: redis.Redis, binary: bool) -> None:
    worker = run_worker(binary=binary)
    assert standin.wait_for_clients(1)
    wait_for(lambda: standin.subscriptions() and standin.subscriptions()[0]["quotes"] == {"AAPL", "MSFT"}, 5, message="subscription")
    now = time.time_ns()
    standin.send(
        [
            _quote("AAPL", 189.50, 189.52, ts_ns=now),
            wire.trade_message("AAPL", now + 1, 189.51, 300, 1),
            wire.trade_message("AAPL", now + 2, 189.53, 100, 2),
            wire.bar_message("AAPL", now - 60_000_000_000, 189.0, 189.6, 188.9, 189.5, 12_000),
        ]
    )
    wait_for(lambda: _served(redis_client, "AAPL") is not None, 5, message="AAPL quote in Redis")
    quote = _served(redis_client, "AAPL")
    assert (str(quote.bid), str(quote.ask), quote.ts_ns) == ("189.5", "189.52", now)
    assert str(quote.mid) == "189.51"
    assert quote.spread_bps == pytest.approx(0.02 / 189.51 * 1e4, abs=1e-4)
    assert 0 < redis_client.ttl("omni:quote:AAPL") <= 30
    wait_for(lambda: redis_client.exists("omni:bar:AAPL"), 5, message="bar in Redis")
    assert redis_client.hget("omni:bar:AAPL", "c") == b"189.5"
    entries = redis_client.xrange("omni:quotes")
    assert entries
    assert entries[-1][1][b"S"] == b"AAPL"
    # The VWAP of the trades reaches Redis with the next quote.
    standin.send([_quote("AAPL", 189.51, 189.53)])
    wait_for(lambda: _served(redis_client, "AAPL").vwap is not None, 5, message="vwap")
    assert _served(redis_client, "AAPL").vwap == pytest.approx((189.51 * 300 + 189.53 * 100) / 400, abs=1e-6)
    # The day's volume profile is served too (about once a second): both prints in one 5 bp bucket from 189.51.
    wait_for(lambda: read_profile(redis_client, "AAPL") is not None, 5, message="the volume profile")
    profile = read_profile(redis_client, "AAPL")
    assert profile is not None
    assert (profile["trades"], profile["volume"]) == (2, 400.0)
    assert profile["poc"] == pytest.approx(189.51, abs=1e-6)
    assert profile["levels"] == [pytest.approx((189.51, 400.0), abs=1e-6)]
    assert 0 < redis_client.ttl("omni:profile:AAPL") <= 86_400
    # Heartbeat (kind stream) and status: what `omni status` and /health read.
    wait_for(lambda: any(w.kind == "stream" for w in heartbeats.workers(redis_client)), 5, message="stream heartbeat")
    wait_for(lambda: read_status(redis_client).get("connected") == 1, 5, message="status")
    assert worker.worker is not None
    assert worker.worker.path.latency["e2e"].total >= 1


def test_crossed_zero_size_and_out_of_order_quotes_are_never_served(
    standin: StandinServer, run_worker: Any, redis_client: redis.Redis
) -> None:
    run_worker()
    assert standin.wait_for_clients(1)
    now = time.time_ns()
    standin.send([_quote("MSFT", 410.00, 410.05, ts_ns=now)])
    wait_for(lambda: _served(redis_client, "MSFT") is not None, 5, message="first quote")
    standin.send(
        [
            _quote("MSFT", 410.10, 410.00, ts_ns=now + 10),  # crossed
            _quote("MSFT", 410.01, 410.04, ts_ns=now + 20, bid_size=0),  # zero size
            _quote("MSFT", 409.00, 409.10, ts_ns=now - 10),  # older than the served one
        ]
    )
    standin.send([_quote("AAPL", 1.0, 1.01, ts_ns=now)])  # a marker: everything before it was processed
    wait_for(lambda: _served(redis_client, "AAPL") is not None, 5, message="marker")
    quote = _served(redis_client, "MSFT")
    assert (str(quote.bid), str(quote.ask), quote.ts_ns) == ("410.0", "410.05", now)
    wait_for(lambda: read_status(redis_client).get("counts", {}).get("crossed") == 1, 5, message="status counts")
    counts = read_status(redis_client)["counts"]
    assert (counts["crossed"], counts["zero_size"], counts["out_of_order"]) == (1, 1, 1)
    print("crossed served: 0 of 1, zero-size served: 0 of 1, stale served: 0 of 1")


def test_dropped_connection_reconnects_and_resubscribes(standin: StandinServer, run_worker: Any, redis_client: redis.Redis) -> None:
    worker = run_worker()
    assert standin.wait_for_clients(1)
    wait_for(lambda: any(m.get("action") == "subscribe" for m in standin.received), 5, message="first subscribe")
    assert standin.drop() == 1
    started = time.monotonic()
    assert standin.wait_for_clients(1, timeout_s=10)
    wait_for(lambda: sum(1 for m in standin.received if m.get("action") == "subscribe") >= 2, 5, message="second subscribe")
    took = time.monotonic() - started
    subscribes = [m for m in standin.received if m.get("action") == "subscribe"]
    assert sorted(subscribes[-1]["quotes"]) == ["AAPL", "MSFT"]
    standin.send([_quote("AAPL", 100.0, 100.01)])
    wait_for(lambda: _served(redis_client, "AAPL") is not None, 5, message="quote after reconnect")
    assert worker.worker is not None
    assert worker.worker.counters.reconnects == 1
    print(f"reconnected and re-subscribed {took * 1000:.0f} ms after the drop")


def test_mute_socket_is_detected_and_reconnected(standin: StandinServer, run_worker: Any) -> None:
    worker = run_worker(_config(mute_after_s=0.6))
    assert standin.wait_for_clients(1)
    standin.send([_quote("AAPL", 100.0, 100.01)])
    standin.mute = True  # connected, but nothing more
    wait_for(lambda: standin.connections >= 2, 5, message="a reconnect forced by the mute check")
    assert worker.worker is not None
    assert worker.worker.counters.mute_reconnects >= 1
    standin.mute = False


def test_mute_check_sleeps_outside_market_hours(standin: StandinServer, run_worker: Any) -> None:
    rounds: list[int] = []  # wall ns of each housekeeping round (the mute check runs first in a round)
    config = _config(mute_after_s=0.3, market_hours="calendar")
    worker = run_worker(config, is_open=lambda _now: False, on_housekeeping=lambda _w: rounds.append(time.time_ns()))
    assert standin.wait_for_clients(1)
    assert worker.worker is not None
    connected = worker.worker
    # Silent for twice mute_after_s by a check's own clock: an open market would have forced a reconnect by then.
    wait_for(
        lambda: connected.connected_at_ns > 0 and any(t - connected.connected_at_ns > 2 * 0.3e9 for t in rounds),
        10,
        message="a mute check twice mute_after_s into the silence",
    )
    assert standin.connections == 1
    assert worker.worker.counters.mute_reconnects == 0


def test_connection_limit_means_a_cooldown_not_a_tight_loop(standin: StandinServer, run_worker: Any) -> None:
    standin.connection_limit_always = True
    worker = run_worker(_config(connection_limit_cooldown_s=1.0))
    assert worker.worker is not None
    counters = worker.worker.counters
    wait_for(lambda: counters.connection_limit >= 1, 10, interval_s=0.01, message="the first 406")
    gap_s = wait_for(lambda: counters.connection_limit >= 2, 10, interval_s=0.01, message="the attempt after the cooldown")
    attempts = standin.connections
    # One attempt, then a 1.0-1.2 s cooldown before the next (a tight loop makes hundreds).
    assert gap_s >= 0.9, f"the second attempt came {gap_s:.2f} s after the first 406"
    assert attempts == 2, attempts
    assert counters.connection_limit == attempts
    standin.connection_limit_always = False
    assert standin.wait_for_clients(1, timeout_s=5)
    print(f"406 answers: the next connection attempt {gap_s:.2f} s after the first with a 1 s cooldown")


def test_bad_key_stops_cleanly_with_exit_code_3(standin: StandinServer, run_worker: Any) -> None:
    worker = run_worker(secret="wrong-secret")  # noqa: S106 - a wrong secret on purpose
    assert worker.join(10) == EXIT_AUTH
    assert standin.auth_failures == 1, "an auth failure is not retried"
    assert worker.worker is not None
    assert "auth failed" in worker.worker.exit_reason


def test_insufficient_subscription_stops_cleanly_with_exit_code_3(standin: StandinServer, run_worker: Any) -> None:
    worker = run_worker()
    assert standin.wait_for_clients(1)
    standin.send([wire.control("error", code=409, msg="insufficient subscription")])
    assert worker.join(10) == EXIT_AUTH
    assert standin.connections == 1, "no reconnect: reconnecting cannot fix the data plan"
    assert worker.worker is not None
    assert "subscription refused" in worker.worker.exit_reason


def test_garbage_frames_are_counted_and_skipped(standin: StandinServer, run_worker: Any, redis_client: redis.Redis) -> None:
    worker = run_worker()
    assert standin.wait_for_clients(1)
    standin.send_raw(b"\xc1\xc1\xc1")  # not msgpack
    standin.send_raw("{not json")  # not JSON
    standin.send_raw(msgpack.packb({"T": "q"}))  # a map, not an array of maps
    standin.send_raw(json.dumps([{"T": "q", "S": "AAPL", "t": "yesterday"}]))  # a bad timestamp
    standin.send([_quote("AAPL", 50.0, 50.01)])
    wait_for(lambda: _served(redis_client, "AAPL") is not None, 5, message="quote after garbage")
    assert worker.worker is not None
    assert worker.worker.path.garbage_frames == 4
    print("garbage frames: 4 counted and skipped, 0 fatal")


def test_one_connection_per_key(standin: StandinServer, run_worker: Any, redis_client: redis.Redis) -> None:
    fingerprint = key_fingerprint(KEY)
    first = run_worker(_config(lock_fingerprint=fingerprint, lock_ttl_s=1.0))
    assert standin.wait_for_clients(1)
    held_since_ns = time.time_ns()  # the first took the lock before it connected
    second = run_worker(_config(lock_fingerprint=fingerprint, lock_ttl_s=1.0))
    assert second.worker is not None
    waiting = second.worker
    # Refused again after the first's TTL would have run out unrenewed: the first renews, the second keeps waiting.
    wait_for(
        lambda: "holds this API key" in waiting.last_error and waiting.last_error_ns > held_since_ns + 1.2e9,
        10,
        message="the second worker refused the lock past one TTL",
    )
    assert standin.connections == 1, "the second worker must not even try while the lock is held"
    assert standin.limit_refusals == 0
    assert second.worker is not None
    assert "holds this API key" in second.worker.last_error
    assert KEY not in str(redis_client.keys("omni:stream:connlock:*")), "the lock key must not reveal the API key"
    first.stop()
    assert standin.wait_for_clients(1, timeout_s=10), "the second takes over once the first lets go"
    assert standin.connections == 2


def test_remote_control_subscribe_unsubscribe_stop(standin: StandinServer, run_worker: Any, redis_client: redis.Redis) -> None:
    worker = run_worker()
    assert standin.wait_for_clients(1)
    key = STREAM_CONTROL_KEY.format(name="stream")
    redis_client.rpush(key, json.dumps({"cmd": "subscribe", "symbols": ["NVDA"]}))
    wait_for(lambda: "NVDA" in standin.subscriptions()[0]["quotes"], 5, message="NVDA subscribed")
    redis_client.rpush(key, json.dumps({"cmd": "unsubscribe", "symbols": ["MSFT"]}))
    wait_for(lambda: "MSFT" not in standin.subscriptions()[0]["quotes"], 5, message="MSFT unsubscribed")
    redis_client.rpush(key, "not json")
    redis_client.rpush(key, json.dumps({"cmd": "stop", "by": "test"}))
    assert worker.join(10) == 0
    assert worker.worker is not None
    assert worker.worker.subscribed == ["AAPL", "NVDA"]
    assert "unreadable control command" in worker.worker.last_error or worker.worker.counters.control_commands == 4


def _omni_stream(tmp_path: Path, redis_url: str, pg_url: str, url: str, *args: str, **env: str) -> OmniProcess:
    settings = {
        "OMNI_STREAM_FEED": "alpaca",
        "OMNI_STREAM_URL": url,
        "OMNI_STREAM_SYMBOLS": "AAPL,MSFT",
        "OMNI_STREAM_MARKET_HOURS": "always",
        "OMNI_ALPACA_API_KEY": KEY,
        "OMNI_ALPACA_SECRET_KEY": SECRET,
    }
    environment = service_env(redis_url=redis_url, database_url=pg_url, data_dir=tmp_path / "data", **(settings | env))
    return OmniProcess(["stream", *args], environment, tmp_path / "stream.log").start()


def test_omni_stream_records_and_the_replay_reproduces_redis(
    tmp_path: Path,
    standin: StandinServer,
    redis_url: str,
    migrated_pg_url: str,
    redis_client: redis.Redis,
    omni_processes: list[OmniProcess],
) -> None:
    recording = tmp_path / "session.omnirec"
    proc = _omni_stream(tmp_path, redis_url, migrated_pg_url, standin.url, "--record", str(recording))
    omni_processes.append(proc)
    assert standin.wait_for_clients(1, timeout_s=30), proc.log_text()[-2000:]
    wait_for(lambda: {"AAPL", "MSFT"} <= set((standin.subscriptions() or [{}])[0].get("quotes", ())), 10, message="the symbols subscribed")
    base = time.time_ns()
    for i in range(20):
        standin.send(
            [
                _quote("AAPL", 100 + i / 100, 100.01 + i / 100, ts_ns=base + i),
                _quote("MSFT", 400 + i / 100, 400.02 + i / 100, ts_ns=base + i),
            ]
        )
    wait_for(
        lambda: _served(redis_client, "AAPL") is not None and _served(redis_client, "AAPL").ts_ns == base + 19,
        10,
        message="last live quote",
    )
    live = {s: (q.bid, q.ask, q.ts_ns) for s, q in read_latest(redis_client, ["AAPL", "MSFT"]).items()}
    proc.stop()
    assert proc.process is not None
    assert proc.process.returncode == 0, proc.log_text()[-2000:]
    assert recording.stat().st_size > 0
    redis_client.delete("omni:quote:AAPL", "omni:quote:MSFT")
    environment = service_env(redis_url=redis_url, database_url=migrated_pg_url, data_dir=tmp_path / "data")
    replay = OmniProcess(["stream", "--replay", str(recording), "--speed", "0"], environment, tmp_path / "replay.log").start()
    omni_processes.append(replay)
    assert replay.process is not None
    assert replay.process.wait(60) == 0, replay.log_text()[-2000:]
    replayed = {s: (q.bid, q.ask, q.ts_ns) for s, q in read_latest(redis_client, ["AAPL", "MSFT"]).items()}
    assert replayed == live


def test_omni_stream_bad_key_exits_3_with_a_clear_message(
    tmp_path: Path, standin: StandinServer, redis_url: str, migrated_pg_url: str, omni_processes: list[OmniProcess]
) -> None:
    proc = _omni_stream(tmp_path, redis_url, migrated_pg_url, standin.url, OMNI_ALPACA_SECRET_KEY="not-the-secret")  # noqa: S106 - wrong on purpose
    omni_processes.append(proc)
    assert proc.process is not None
    assert proc.process.wait(30) == EXIT_AUTH
    log = proc.log_text()
    assert "refused the credentials" in log
    assert "OMNI_ALPACA_API_KEY" in log
    assert "not-the-secret" not in log
    assert SECRET not in log
