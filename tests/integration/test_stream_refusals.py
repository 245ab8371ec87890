"""Alpaca refusing a subscription (405 symbol limit exceeded, 400 invalid syntax) through both stream clients.

The local Alpaca stand-in answers as Alpaca documents: a subscribe that would
pass the plan's symbol limit gets ``[{"T":"error","code":405,"msg":"symbol
limit exceeded"}]``, one naming a badly formatted symbol gets ``[{"T":"error",
"code":400,"msg":"invalid syntax"}]``, and either leaves the subscription as
it was. The real StreamWorker runs on our lean client (msgpack and JSON) and
on alpaca-py's StockDataStream, writing to a real Redis. Checked: the worker
keeps its connection (no reconnect, no mute-socket loop), subscribes as many
symbols as the plan allows, names the symbols not served with the provider's
words and code (worker, status hash, `omni status`'s view), streams the
accepted ones, and asks again for the refused ones when an unsubscribe frees
room.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from omni_tasks.contracts.quotes import read_latest
from omni_tasks.stream import wire
from omni_tasks.stream.standin import StandinServer
from omni_tasks.stream.status import read_status
from tests.conftest import service_env, wait_for
from tests.integration.test_stream_halts import KEY, SECRET, RunningWorker, config, feed_for, send

pytestmark = pytest.mark.services

CLIENTS = ("lean-msgpack", "lean-json", "alpaca-py")


@pytest.fixture
def standin() -> Iterator[StandinServer]:
    with StandinServer(keys={KEY: SECRET}) as server:
        yield server


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield c
    c.close()


def _health_detail(client: redis.Redis, redis_url: str, tmp_path: Path) -> str:
    """The /health payload's stream check, computed as the health server does."""
    from omni_tasks.ops import health
    from omni_tasks.settings import load_settings
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import make_engine

    url = f"sqlite:///{tmp_path / 'health.sqlite3'}"
    engine = make_engine(url)
    migrations.upgrade(engine)
    settings = load_settings(service_env(redis_url=redis_url, database_url=url, data_dir=tmp_path / "data"))
    try:
        _code, payload = health.check_health(
            engine=engine, client=client, broker_url=settings.broker_url, worker_kinds=[],
            dead_after_s=settings.broker.dead_after_s, watchdog_interval_s=settings.watchdog.interval_s, settings=settings,
        )
    finally:
        engine.dispose()
    stream = payload["checks"]["stream"]
    assert stream["status"] == "ok", stream
    return str(stream.get("detail", ""))


def _status_text(client: redis.Redis) -> str:
    from omni_tasks.cli import status_view
    from omni_tasks.cli.ops import stream_view

    view = stream_view(client)
    assert view is not None
    buffer = io.StringIO()
    console = status_view.console
    saved = console.file
    console.file = buffer
    try:
        status_view.print_stream(view)
    finally:
        console.file = saved
    return buffer.getvalue()


@pytest.mark.parametrize("client_kind", CLIENTS)
def test_symbol_limit_exceeded_keeps_what_the_plan_allows_and_names_the_rest(
    client_kind: str, standin: StandinServer, client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    prefix = {"lean-msgpack": "LM", "lean-json": "LJ", "alpaca-py": "LP"}[client_kind]
    symbols = [f"{prefix}{chr(ord('A') + i)}" for i in range(10)]
    standin.symbol_limit = 6
    cfg = config(symbols, stale_after_s=60.0)
    with RunningWorker(cfg, feed_for(client_kind, standin.url), redis_url) as running:
        assert standin.wait_for_clients(1, 15)
        wait_for(lambda: running.worker is not None and len(running.worker.subs.refused) == 4, 15, message="4 symbols refused")
        worker = running.worker
        assert worker is not None
        served = set(standin.subscriptions()[0]["quotes"])
        assert served == set(symbols[:6]), "as many symbols as the plan allows, in the configured order"
        assert set(worker.subs.refused) == set(symbols[6:])
        assert all(reason == "symbol limit exceeded (code 405)" for reason in worker.subs.refused.values())
        assert "symbol limit exceeded (code 405)" in worker.last_error
        assert all(s in worker.last_error for s in symbols[6:]), worker.last_error
        # Market data flows for the accepted symbols; the connection is kept: no reconnect, no mute loop.
        for _ in range(8):
            send(standin, client_kind, wire.quote_message(symbols[0], time.time_ns(), 10.0, 100.0, 10.01, 100.0))
            time.sleep(0.25)
        wait_for(lambda: read_latest(client, symbols[0]) is not None, 10, message="a quote of an accepted symbol")
        assert worker.counters.connects == 1
        assert worker.counters.reconnects == 0
        wait_for(lambda: set(read_status(client).get("refused") or {}) == set(symbols[6:]), 10, message="refused in the status")
        status = read_status(client)
        assert "code 405" in status["last_error"]
        shown = _status_text(client)
        assert "not served" in shown
        assert "symbol limit exceeded (code 405)" in shown
        assert all(s in shown for s in symbols[6:]), shown
        detail = _health_detail(client, redis_url, tmp_path)
        assert f"not served: {', '.join(symbols[6:])} (symbol limit exceeded (code 405))" in detail, detail
        refusals_before = standin.symbol_refusals
        # An unsubscribe frees room: the refused symbols are asked for again, and two of them now fit.
        assert running._loop is not None
        asyncio.run_coroutine_threadsafe(worker.remove_symbols(symbols[:2], why="test"), running._loop).result(10)
        wait_for(lambda: len(worker.subs.refused) == 2, 15, message="two refused symbols taken once room was freed")
        assert standin.subscriptions()[0]["quotes"] == set(symbols[2:8])
        assert set(worker.subs.refused) == set(symbols[8:])
        # A new connection (the network dropped): the symbols served before are asked for first, the rest after them.
        assert standin.drop() == 1
        wait_for(lambda: worker.counters.connects == 2 and standin.clients == 1, 15, message="a reconnect")
        wait_for(lambda: len(worker.subs.refused) == 2 and standin.subscriptions()[0]["quotes"] == set(symbols[2:8]), 15, message="the same served")
        assert set(worker.subs.refused) == set(symbols[8:])
        print(
            f"{client_kind}: limit 6 of 10 symbols: served {sorted(served)}, not served {sorted(symbols[6:])}; "
            f"{standin.symbol_refusals} 405 answers ({refusals_before} at the start), {worker.subs.requests} requests, "
            f"{worker.subs.splits} splits; connects {worker.counters.connects}, mute reconnects {worker.counters.mute_reconnects}; "
            f"after unsubscribing 2: served {sorted(standin.subscriptions()[0]['quotes'])}, the same after a reconnect"
        )


@pytest.mark.parametrize("client_kind", CLIENTS)
def test_invalid_syntax_names_the_badly_formatted_symbols_and_serves_the_others(
    client_kind: str, standin: StandinServer, client: redis.Redis, redis_url: str
) -> None:
    prefix = {"lean-msgpack": "SM", "lean-json": "SJ", "alpaca-py": "SP"}[client_kind]
    good = [f"{prefix}A", f"{prefix}B", "BRK.B", f"{prefix}C"]
    bad = [f"{prefix.lower()}$x", f"{prefix} Y"]
    symbols = [good[0], bad[0], good[1], good[2], bad[1], good[3]]
    cfg = config(symbols, stale_after_s=60.0)
    with RunningWorker(cfg, feed_for(client_kind, standin.url), redis_url) as running:
        assert standin.wait_for_clients(1, 15)
        wait_for(lambda: running.worker is not None and len(running.worker.subs.refused) == 2, 15, message="2 symbols refused")
        worker = running.worker
        assert worker is not None
        wait_for(lambda: standin.subscriptions()[0]["quotes"] == set(good), 10, message="the well-formed symbols subscribed")
        assert set(worker.subs.refused) == set(bad)
        assert all(reason == "invalid syntax (code 400)" for reason in worker.subs.refused.values())
        assert "invalid syntax (code 400)" in worker.last_error
        assert all(s in worker.last_error for s in bad), worker.last_error
        send(standin, client_kind, wire.quote_message("BRK.B", time.time_ns(), 10.0, 100.0, 10.01, 100.0))
        wait_for(lambda: read_latest(client, "BRK.B") is not None, 10, message="a quote of a served symbol")
        wait_for(lambda: set(read_status(client).get("refused") or {}) == set(bad), 10, message="refused in the status")
        shown = _status_text(client)
        assert "invalid syntax (code 400)" in shown
        assert all(s in shown for s in bad), shown
        assert worker.counters.connects == 1
        print(
            f"{client_kind}: 400 for {bad}: served {sorted(standin.subscriptions()[0]['quotes'])}; "
            f"{standin.syntax_refusals} 400 answers, {worker.subs.requests} requests, {worker.subs.splits} splits"
        )


@pytest.mark.parametrize("client_kind", ["lean-msgpack", "alpaca-py"])
def test_every_symbol_refused_is_no_mute_socket_reconnect_loop(
    client_kind: str, standin: StandinServer, client: redis.Redis, redis_url: str
) -> None:
    """Market open, nothing may flow: before, the mute check reconnected every mute_after_s into the same refusal."""
    standin.symbol_limit = 0
    symbols = {"lean-msgpack": ["NMA", "NMB", "NMC"], "alpaca-py": ["NPA", "NPB", "NPC"]}[client_kind]
    cfg = config(symbols, mute_after_s=0.3, stale_after_s=0.3)
    with RunningWorker(cfg, feed_for(client_kind, standin.url), redis_url) as running:
        assert standin.wait_for_clients(1, 15)
        wait_for(lambda: running.worker is not None and len(running.worker.subs.refused) == 3, 15, message="every symbol refused")
        worker = running.worker
        assert worker is not None
        time.sleep(2.0)  # more than 6 mute periods
        assert worker.counters.mute_reconnects == 0
        assert worker.counters.connects == 1
        assert worker.connected
        wait_for(lambda: read_status(client).get("connected") == 1 and len(read_status(client).get("refused") or {}) == 3, 10, message="status")
        refused = read_status(client)["refused"]
        assert refused == dict.fromkeys(symbols, "symbol limit exceeded (code 405)")
        assert read_status(client)["stale_symbols"] == [], "a refused symbol is not served, not stale"
        print(f"{client_kind}: every symbol refused ({refused}); connects {worker.counters.connects}, mute reconnects 0 in 2 s")
