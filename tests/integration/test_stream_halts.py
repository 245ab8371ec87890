"""Halts, LULD bands, trade corrections and cancels through both stream clients, to Redis and the order path.

The local Alpaca stand-in sends each message exactly in Alpaca's documented
format (msgpack, or JSON text for the lean client's JSON mode); the real
StreamWorker runs on our lean client or on alpaca-py's StockDataStream and
writes to a real Redis. The sequence, per client:

    quote, trades 1-3 -> LULD band 95-105 -> halt (H, T1) -> correction 2->4,
    cancel 3 (each twice) -> resume (T)

checking at each point the trading status in Redis (a halt never expires),
the day's VWAP and volume against hand-computed values, the counts by kind,
and orders through the real order path (OrderSubmitter, the simulated venue
on SQLite, the kill switch and breakers on the same Redis): denied while
halted naming the halt, denied outside the band, filled inside it once
trading resumed. Then the 406 sent before the client's auth reaches both
clients, and `omni status`'s view says the stream recovered after it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from omni_tasks.contracts.quotes import quote_key, read_latest, read_profile, read_trading_status, trading_status_key
from omni_tasks.contracts.venue import OrderRequest
from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.settings import RiskSettings
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.stream import wire
from omni_tasks.stream.config import StreamConfig
from omni_tasks.stream.feeds import AlpacaFeed, Feed
from omni_tasks.stream.sdk_feed import AlpacaSdkFeed
from omni_tasks.stream.standin import StandinServer
from omni_tasks.stream.status import read_status
from omni_tasks.stream.worker import StreamWorker
from omni_tasks.trading.orders import OrderSubmitter
from omni_tasks.trading.simulated import SimulatedVenue
from tests.conftest import REPO_ROOT, service_env, wait_for

pytestmark = pytest.mark.services

KEY, SECRET = "halt-key-id", "halt-secret-value"
CLIENTS = ("lean-msgpack", "lean-json", "alpaca-py")


def feed_for(client: str, url: str) -> Callable[[], Feed]:
    if client == "alpaca-py":
        return lambda: AlpacaSdkFeed(url, KEY, SECRET)
    return lambda: AlpacaFeed(url, KEY, SECRET, binary=client == "lean-msgpack")


class RunningWorker:
    """A StreamWorker on its own thread and event loop (the test thread drives the stand-in and reads Redis)."""

    def __init__(self, config: StreamConfig, feed_factory: Callable[[], Feed], redis_url: str) -> None:
        self.config, self.feed_factory, self.redis_url = config, feed_factory, redis_url
        self.worker: StreamWorker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> int:
        client = aioredis.Redis.from_url(self.redis_url)
        sync_client = redis.Redis.from_url(self.redis_url)
        self.worker = StreamWorker(self.config, redis=client, sync_redis=sync_client, feed_factory=self.feed_factory, run_for_s=90)
        self._loop = asyncio.get_running_loop()
        self._started.set()
        try:
            return await self.worker.run()
        finally:
            await client.aclose()
            sync_client.close()

    def __enter__(self) -> RunningWorker:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self.worker is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.worker.stop, "test done")
        self._thread.join(15)


def config(symbols: list[str], **overrides: Any) -> StreamConfig:
    base: dict[str, Any] = {
        "symbols": symbols,
        "market_hours": "always",
        "mute_after_s": 60.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.3,
        "housekeeping_s": 0.05,
        "heartbeat_s": 0.5,
    }
    base.update(overrides)
    return StreamConfig(**base)


@pytest.fixture
def standin() -> Iterator[StandinServer]:
    with StandinServer(keys={KEY: SECRET}) as server:
        yield server


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield c
    c.close()


@pytest.fixture
def submitter(client: redis.Redis, tmp_path: Path) -> OrderSubmitter:
    """The real order path: the simulated broker's ledger on SQLite, the kill switch and breakers on the test's Redis."""
    engine = make_engine(f"sqlite:///{tmp_path / 'orders.sqlite3'}")
    migrations.upgrade(engine)
    sessions = session_factory(engine)
    client.delete(TRADING_STATE_KEY)  # this database's own (ACTIVE) state is published again on the first read
    venue = SimulatedVenue(sessions, client, name=f"sim-{uuid.uuid4().hex[:6]}", starting_cash=Decimal(100_000), quote_max_age_s=30.0)
    return OrderSubmitter(venue=venue, redis=client, sessions=sessions, limits=RiskSettings(quote_max_age_s=30.0))


def order(submitter: OrderSubmitter, symbol: str, side: str, limit: str | None) -> Any:
    request = OrderRequest(
        client_order_id=f"halt-{uuid.uuid4().hex[:12]}", symbol=symbol, side=side, qty=Decimal(10),  # type: ignore[arg-type]
        order_type="limit" if limit else "market", limit_price=Decimal(limit) if limit else None, requested_by="test",
    )  # fmt: skip
    return submitter.submit(request)


def status_hash(client: redis.Redis, symbol: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(trading_status_key(symbol)).items()}


def send(standin: StandinServer, client_kind: str, *messages: dict[str, Any]) -> None:
    """One frame, built in msgpack form (the stand-in re-encodes it as JSON for a JSON client)."""
    assert standin.send(list(messages)) == 1, f"the {client_kind} client is not connected"


@pytest.mark.parametrize("client_kind", CLIENTS)
def test_halt_luld_correction_cancel_resume_through_the_client_to_redis_and_the_order_path(
    client_kind: str, standin: StandinServer, client: redis.Redis, submitter: OrderSubmitter, redis_url: str, tmp_path: Path
) -> None:
    symbol = {"lean-msgpack": "HLTM", "lean-json": "HLTJ", "alpaca-py": "HLTP"}[client_kind]
    with RunningWorker(config([symbol]), feed_for(client_kind, standin.url), redis_url) as running:
        assert standin.wait_for_clients(1, 15)
        wait_for(
            lambda: any(m.get("action") == "subscribe" and symbol in (m.get("statuses") or []) for m in standin.received),
            10,
            message="a subscription to the symbol's statuses",
        )
        subscribed = [m for m in standin.received if m.get("action") == "subscribe"][-1]
        assert symbol in subscribed.get("lulds", []), subscribed  # LULD bands subscribed too (alpaca-py has no public method)
        t0 = time.time_ns()

        # 1. A quote and three trades: 100.00 x 100 + 101.00 x 200 + 102.00 x 300 = 60,800 / 600 = 101.333333
        send(standin, client_kind, wire.quote_message(symbol, t0, 100.00, 500.0, 100.10, 500.0))
        send(
            standin,
            client_kind,
            wire.trade_message(symbol, t0 + 1, 100.00, 100.0, 1),
            wire.trade_message(symbol, t0 + 2, 101.00, 200.0, 2),
            wire.trade_message(symbol, t0 + 3, 102.00, 300.0, 3),
        )
        wait_for(lambda: (p := read_profile(client, symbol)) is not None and p["volume"] == 600.0, 10, message="600 traded")
        assert read_profile(client, symbol)["vwap"] == pytest.approx(60_800 / 600, abs=1e-6)  # type: ignore[index]

        # 2. A LULD band, then a halt (UTP H, reason T1): HALTED since the halt's own time, the band kept.
        send(standin, client_kind, wire.luld_message(symbol, t0 + 10, 105.00, 95.00, "B"))
        wait_for(lambda: status_hash(client, symbol).get("luld_up") == "105.0", 10, message="the LULD band in Redis")
        halt_ns = t0 + 20
        send(standin, client_kind, wire.status_message(symbol, halt_ns, "H", "Trading Halt", "T1", "Halt News Pending"))
        wait_for(lambda: status_hash(client, symbol).get("state") == "HALTED", 10, message="HALTED in Redis")
        stored = status_hash(client, symbol)
        assert (stored["code"], stored["reason"], stored["reason_message"], int(stored["since"])) == (
            "H",
            "T1",
            "Halt News Pending",
            halt_ns,
        )
        assert (stored["luld_up"], stored["luld_down"], stored["luld_indicator"]) == ("105.0", "95.0", "B")
        assert client.ttl(trading_status_key(symbol)) == -1  # a halt never expires: no quote comes to refresh anything
        halted = read_trading_status(client, [symbol])[symbol]
        assert halted.halted
        assert halted.describe().startswith("HALTED H T1 (Halt News Pending) since ")

        # An order for the halted symbol: denied through the real order path, the reason naming the halt.
        denied = order(submitter, symbol, "buy", "100.05")
        assert (denied.status, denied.check) == ("denied", "symbol_halted")
        assert f"{symbol} is halted: status H, reason T1" in (denied.reason or "")
        # Its quote gone (expired during the halt): still the halt that denies, not the missing quote.
        client.delete(quote_key(symbol))
        assert order(submitter, symbol, "sell", None).check == "symbol_halted"
        print(f"{client_kind}: order for the halted symbol denied: {denied.reason}")

        # `omni status`'s stream view lists the halted symbol; `omni stream quotes` shows its status beside the quote.
        from omni_tasks.cli.ops import stream_view

        wait_for(lambda: symbol in ((stream_view(client) or {}).get("halted") or {}), 10, message="the halt in omni status's view")
        assert (stream_view(client) or {})["halted"][symbol].startswith("HALTED H T1 (Halt News Pending) since ")
        if client_kind == "lean-msgpack":
            env = service_env(redis_url=redis_url, database_url="sqlite:///" + str(tmp_path / "cli.sqlite3"), data_dir=tmp_path / "cli")
            shown = subprocess.run(  # fixed argv
                [sys.executable, "-m", "omni_tasks", "stream", "quotes", symbol, "--json"],
                env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert shown.returncode == 0, shown.stderr
            listed = json.loads(shown.stdout)["status"][symbol]
            assert (listed["state"], listed["code"], listed["reason"], listed["halted"]) == ("HALTED", "H", "T1", True), listed
            print(f"{client_kind}: omni stream quotes shows {symbol} {listed['state']} {listed['code']} {listed['reason']}")

        # 3. Trade 2 corrected to 101.50 x 200 (id 4), trade 3 cancelled; each sent twice (the repeats change nothing).
        #    10,000 + 20,300 = 30,300 over 300 -> VWAP 101.00, volume 300.
        correction = wire.correction_message(symbol, t0 + 30, 2, 101.00, 200.0, 4, 101.50, 200.0)
        cancel = wire.cancel_message(symbol, t0 + 31, 3, 102.00, 300.0, "C")
        send(standin, client_kind, correction, cancel)
        send(standin, client_kind, correction, cancel)
        wait_for(
            lambda: (p := read_profile(client, symbol)) is not None and p["volume"] == 300.0, 10, message="volume 300 after the cancel"
        )
        profile = read_profile(client, symbol)
        assert profile is not None
        assert profile["vwap"] == pytest.approx(101.0, abs=1e-6)
        assert profile["trades"] == 2
        assert sorted(profile["levels"]) == [(100.0, 100.0), (101.5, 200.0)]
        wait_for(lambda: read_status(client).get("counts", {}).get("repeats") == 2, 10, message="the repeats counted")
        counts = read_status(client)["counts"]
        assert (counts["corrections"], counts["cancels"], counts["unknown_trade"]) == (2, 2, 0)
        assert read_trading_status(client, [symbol])[symbol].state == "HALTED"  # corrections do not resume anything

        # 4. Resume (UTP T): TRADING since the resume, expiring again; a fresh quote after it.
        resume_ns = t0 + 40
        send(standin, client_kind, wire.status_message(symbol, resume_ns, "T", "Trading Resumption"))
        wait_for(lambda: status_hash(client, symbol).get("state") == "TRADING", 10, message="TRADING in Redis")
        assert int(status_hash(client, symbol)["since"]) == resume_ns
        assert 0 < client.ttl(trading_status_key(symbol)) <= 86_400
        send(standin, client_kind, wire.quote_message(symbol, time.time_ns(), 100.00, 500.0, 100.10, 500.0))
        wait_for(lambda: symbol in read_latest(client, [symbol]), 10, message="the quote after the resume")
        # The quote's VWAP is the corrected one too.
        assert read_latest(client, [symbol])[symbol].vwap == pytest.approx(101.0, abs=1e-6)

        outside = order(submitter, symbol, "buy", "105.50")
        assert (outside.status, outside.check) == ("denied", "luld_band")
        assert "above limit up 105" in (outside.reason or "")
        inside = order(submitter, symbol, "buy", "100.10")
        assert inside.status == "filled", inside
        print(f"{client_kind}: outside the band denied ({outside.reason}); inside filled at {inside.avg_fill_price}")

        # Every kind counted by the worker, with this client.
        expected = {"q": 2, "t": 3, "l": 1, "s": 2, "c": 2, "x": 2}

        def published_kinds() -> dict[str, int]:
            kinds = read_status(client).get("kinds", {})
            return {k: kinds.get(k, 0) for k in expected}

        # The status is published every housekeeping round: wait for the round after the last quote was counted.
        wait_for(lambda: published_kinds() == expected, 10, message=f"the kinds published ({expected})")
        kinds = read_status(client)["kinds"]
        assert kinds["success"] >= 2
        assert kinds["subscription"] >= 1
        print(f"{client_kind}: kinds {dict(sorted((k, v) for k, v in kinds.items() if v))}")
        assert running.worker is not None


@pytest.mark.parametrize("client_kind", CLIENTS)
def test_edge_messages_reach_the_path_and_are_counted(
    client_kind: str, standin: StandinServer, client: redis.Redis, redis_url: str
) -> None:
    """A kind alpaca-py does not know (imbalance ``i``, a made-up one), a CTA halt (2) with an indication (5), a status
    for an unsubscribed symbol, a cancel of an unknown trade: counted with either client, nothing breaks."""
    symbol = {"lean-msgpack": "EDGM", "lean-json": "EDGJ", "alpaca-py": "EDGP"}[client_kind]
    with RunningWorker(config([symbol]), feed_for(client_kind, standin.url), redis_url):
        assert standin.wait_for_clients(1, 15)
        wait_for(lambda: any(m.get("action") == "subscribe" for m in standin.received), 10, message="a subscription")
        t0 = time.time_ns()
        send(
            standin,
            client_kind,
            {"T": "i", "S": symbol, "p": 9.12, "z": "C", "t": wire._ts_value(t0, True)},
            {"T": "zz", "S": symbol, "t": wire._ts_value(t0, True)},
            wire.status_message(symbol, t0 + 1, "2", "Trading Halt", "M", "Limit Up-Limit Down (LULD) Trading Pause", tape="A"),
            wire.status_message(symbol, t0 + 2, "5", "Price Indication", tape="A"),
            wire.cancel_message(symbol, t0 + 3, 99, 10.0, 1.0, "E"),
        )
        wait_for(lambda: read_status(client).get("kinds", {}).get("x") == 1, 10, message="the cancel counted")
        wait_for(lambda: status_hash(client, symbol).get("info"), 10, message="the status in Redis")
        status = read_status(client)
        assert {k: status["kinds"][k] for k in ("i", "unknown", "s", "x")} == {"i": 1, "unknown": 1, "s": 2, "x": 1}
        assert status["counts"]["unknown_trade"] == 1
        stored = status_hash(client, symbol)
        assert (stored["state"], stored["code"], stored["reason"], stored["info"], stored["tape"]) == (
            "HALTED",
            "2",
            "M",
            "5 Price Indication",
            "A",
        )
        assert int(stored["since"]) == t0 + 1


@pytest.mark.parametrize("client_kind", ["lean-msgpack", "alpaca-py"])
def test_a_406_sent_before_auth_is_read_and_status_shows_recovery(
    client_kind: str, standin: StandinServer, client: redis.Redis, redis_url: str
) -> None:
    """The server answers `connected`, then at once 406 and a close while the client writes its auth: the client
    reads the 406 (a cooldown, counted), and once data flows again the status says it recovered."""
    from omni_tasks.cli.ops import stream_view

    symbol = {"lean-msgpack": "LIMM", "alpaca-py": "LIMP"}[client_kind]
    standin.error_before_auth = (406, "connection limit exceeded")
    cfg = config([symbol], connection_limit_cooldown_s=0.3)
    with RunningWorker(cfg, feed_for(client_kind, standin.url), redis_url) as running:
        wait_for(lambda: running.worker is not None and running.worker.counters.connection_limit >= 2, 15, message="two 406 cooldowns")
        worker = running.worker
        assert worker is not None
        assert "code 406" in worker.last_error
        assert worker.counters.reconnects == 0  # every attempt ended in the 406, none got further
        standin.error_before_auth = None
        assert standin.wait_for_clients(1, 15)
        wait_for(lambda: any(m.get("action") == "subscribe" for m in standin.received), 10, message="a subscription")
        send(standin, client_kind, wire.quote_message(symbol, time.time_ns(), 10.0, 100.0, 10.01, 100.0))
        wait_for(lambda: read_status(client).get("recovered_ns", 0) > 0, 10, message="recovered in the status")
        view = stream_view(client)
        assert view is not None
        assert "code 406" in view["last_error"]
        assert view["recovered_ns"] > view["last_error_ns"] > 0
        print(f"{client_kind}: 406 before auth read {worker.counters.connection_limit} times; recovered after it")
