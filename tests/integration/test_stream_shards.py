"""Sharded streaming end to end: two `omni stream --shard N` processes with two fake keys against the Alpaca stand-in.

Each shard connects with its own key, subscribes only its symbols, and writes
the same latest-quote keys; a second worker on a running shard's key is
refused by the connection lock; a shard SIGKILLed shows down in the
watchdog's rule, /metrics and `omni status` while the other keeps serving.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from omni_tasks.cli import status_view
from omni_tasks.cli.ops import stream_view
from omni_tasks.contracts.quotes import read_latest
from omni_tasks.ops.desk_collectors import StreamCollector
from omni_tasks.settings import load_settings
from omni_tasks.stream import wire
from omni_tasks.stream.latency import read_published
from omni_tasks.stream.shards import split
from omni_tasks.stream.standin import StandinServer
from omni_tasks.stream.status import read_shard_statuses, read_status
from omni_tasks.watchdog.gathering import gather
from omni_tasks.watchdog.rules import stale_stream
from tests.conftest import OmniProcess, service_env, wait_for

pytestmark = pytest.mark.services

# Obviously fake keys: the stand-in accepts exactly these.
KEYS = {"fake-key-0": "fake-secret-0", "fake-key-1": "fake-secret-1"}
SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "SPY", "META", "GOOGL", "TSLA", "JPM", "XOM", "IBM", "KO"]
STALE_S = 2.0  # the watchdog's stream_stale_s in this test


def _env(tmp_path: Path, redis_url: str, pg_url: str, url: str) -> dict[str, str]:
    settings = {
        "OMNI_STREAM_FEED": "alpaca",
        "OMNI_STREAM_URL": url,
        "OMNI_STREAM_SYMBOLS": ",".join(SYMBOLS),
        "OMNI_STREAM_MARKET_HOURS": "always",
        "OMNI_STREAM_KEYS": ",".join(f"{k}:{s}" for k, s in KEYS.items()),
        "OMNI_WATCHDOG_STREAM_STALE_S": str(STALE_S),
        "OMNI_STREAM_MUTE_AFTER_S": "300",  # a slow moment of a loaded machine must not read as a mute socket (a reconnect)
    }
    return service_env(redis_url=redis_url, database_url=pg_url, data_dir=tmp_path / "data", **settings)


def _quotes(symbols: list[str], bid: float) -> list[dict[str, object]]:
    now = time.time_ns()
    return [wire.quote_message(s, now + i, bid, 100, bid + 0.01, 100) for i, s in enumerate(symbols)]


def _scrape(source: object) -> str:
    registry = CollectorRegistry()
    registry.register(StreamCollector(source))  # type: ignore[arg-type]  # the test's source returns the real readers' values
    return generate_latest(registry).decode()


def test_two_shards_serve_their_symbols_one_killed_shows_down_and_a_duplicate_key_is_refused(
    tmp_path: Path, redis_url: str, migrated_pg_url: str, redis_client: redis.Redis, omni_processes: list[OmniProcess]
) -> None:
    started = time.monotonic()
    expected = split(SYMBOLS, 2)
    assert all(expected), f"both shards need symbols for this test: {expected}"
    with StandinServer(keys=KEYS) as standin:
        standin.routed = True  # as Alpaca: a connection gets only its subscribed symbols
        env = _env(tmp_path, redis_url, migrated_pg_url, standin.url)
        settings = load_settings(env, warn=lambda _m: None)
        shards = [OmniProcess(["stream", "--shard", str(i)], env, tmp_path / f"stream-{i}.log").start() for i in range(2)]
        omni_processes.extend(shards)
        assert standin.wait_for_clients(2, timeout_s=30), shards[0].log_text()[-2000:] + shards[1].log_text()[-2000:]
        wait_for(
            lambda: standin.subscriptions_by_key() == {f"fake-key-{i}": set(expected[i]) for i in range(2)},
            10,
            message="each key subscribed to its shard's symbols only",
        )
        # Both shards write the same latest-quote keys: every symbol is served, each by its own shard.
        rounds = 50
        for r in range(rounds):
            standin.send(_quotes(SYMBOLS, 100 + r / 100))
        last_bid = 100 + (rounds - 1) / 100
        wait_for(
            lambda: (
                all(float(q.bid) == pytest.approx(last_bid) for q in read_latest(redis_client, SYMBOLS).values())
                and len(read_latest(redis_client, SYMBOLS)) == len(SYMBOLS)
            ),
            10,
            message="every symbol's last quote served",
        )
        wait_for(
            lambda: (
                [read_status(redis_client, i).get("counts", {}).get("served") for i in range(2)]
                == [rounds * len(expected[i]) for i in range(2)]
            ),
            10,
            message="each shard's served count in its status",
        )
        statuses = read_shard_statuses(redis_client, 2)
        assert [statuses[str(i)]["symbols"] for i in range(2)] == expected
        assert [statuses[str(i)]["name"] for i in range(2)] == ["stream-0", "stream-1"]
        assert all(read_published(redis_client, i).get("process", {}).get("count", 0) > 0 for i in range(2)), "latencies per shard"
        assert read_status(redis_client) == {}, "no unsharded status: the readers look at the shards"
        print(
            f"symbols per shard (N={len(SYMBOLS)}): {[len(s) for s in expected]}; quotes served per shard "
            f"({rounds} rounds): {[statuses[str(i)]['counts']['served'] for i in range(2)]}"
        )

        # A second worker on shard 0's key: the connection lock refuses it; it never even connects.
        def key_0_auths() -> int:
            return sum(1 for m in standin.received if m.get("action") == "auth" and m.get("key") == "fake-key-0")

        auths = key_0_auths()
        duplicate = OmniProcess(["stream", "--shard", "0"], env, tmp_path / "stream-0-again.log").start()
        omni_processes.append(duplicate)
        wait_for(lambda: "holds this API key" in duplicate.log_text(), 30, message="the duplicate refused by the lock")
        assert key_0_auths() == auths, "the duplicate never even tried to connect"
        assert standin.limit_refusals == 0
        duplicate.stop()
        assert duplicate.process is not None
        assert duplicate.process.returncode == 0

        # Shard 1 killed outright: its symbols go stale, shard 0 keeps serving.
        shards[1].kill_group(signal.SIGKILL)
        killed_at = time.monotonic()
        runtime = SimpleNamespace(settings=settings, redis=redis_client)
        findings: list[str] = []

        ticks = iter(range(1, 10_000))

        def shard_1_down() -> bool:
            standin.send(_quotes(expected[0], 200.0 + next(ticks) / 100))  # shard 0 serves on (a new price: a repeat is not news)
            observed = gather(runtime, queue_depths=None, market_open=lambda _now: True, database_ok=False)  # type: ignore[arg-type]
            finding = stale_stream(observed, settings)
            findings[:] = [finding.message] if finding else []
            # Named alone: a loaded moment may briefly age shard 0 too; wait for the steady verdict.
            return finding is not None and finding.message.startswith("shard 1:") and "shard 0" not in finding.message

        seen_s = wait_for(shard_1_down, 10, interval_s=0.1, message="the watchdog's stale_stream on shard 1")
        assert findings[0].startswith("shard 1: market open and the last quote is"), findings
        assert "shard 0" not in findings[0], findings
        assert findings[0].endswith("(1 of 2 shards serving)"), findings
        standin.send(_quotes(expected[0], 300.0))
        wait_for(
            lambda: (
                all(float(q.bid) == pytest.approx(300.0) for q in read_latest(redis_client, expected[0]).values())
                and time.time_ns() - read_status(redis_client, 0).get("last_quote_ns", 0) < STALE_S / 3 * 1e9
            ),
            5,
            message="shard 0 serving, its status fresh",
        )
        assert {float(q.bid) for q in read_latest(redis_client, expected[1]).values()} <= {last_bid}, "shard 1's symbols: nothing new"
        view = stream_view(redis_client, shards=2)
        assert view is not None
        shown = view["shards"]
        assert shown["0"]["connected"] == 1
        assert shown["0"]["counts"]["served"] > shown["1"]["counts"]["served"]
        status_view.print_stream(view)  # `omni status`'s stream part: one row per shard
        metrics = _scrape(lambda: {str(i): (read_status(redis_client, i), read_published(redis_client, i)) for i in range(2)})
        ages = {
            line.split('shard="')[1][0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("omni_stream_last_quote_age_seconds{")
        }
        assert ages["1"] > STALE_S > ages["0"], ages
        print(
            f"shard 1 SIGKILLed: the watchdog's stale_stream named it {seen_s:.1f} s after the kill "
            f"({time.monotonic() - killed_at:.1f} s incl. checks), last-quote age shard 0 {ages['0']:.2f} s, shard 1 {ages['1']:.2f} s; "
            f"shard 0 served {shown['0']['counts']['served']} quotes, shard 1 {shown['1']['counts']['served']}; "
            f"test took {time.monotonic() - started:.1f} s"
        )
