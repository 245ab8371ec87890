"""The quote path: 1,000,000 quotes in Alpaca's wire format into a real Redis, against the naive handler, in one run.

Three measurements:

1. **In process** (``quotes_per_s``): the real :class:`StreamWorker` reading
   pre-encoded msgpack frames (``--per-frame`` quotes each, ``--symbols``
   symbols) from an in-memory feed, through decode -> books ->
   microstructure -> one Lua round trip per flush (latest quote per changed
   symbol, capped stream), until the last quote is visible in Redis. The
   median of ``--runs`` runs (default 5), printed with their spread (min-max).
2. **Naive** (``baseline_quotes_per_s``): decode each frame, then for each
   quote one unpipelined ``HSET`` of its fields. It runs on the first
   ``--baseline-quotes`` quotes (default 100,000: about 15 s at its pace) and
   its rate is what is compared.
3. **Over a local websocket** (``p99_ms_at_50k``, ``p99_ms_at_100k``, ``stage_p99_us``): the
   Alpaca stand-in (:mod:`omni_tasks.stream.standin`) runs in its own process
   and sends ``--rate`` quotes/s (frames of ``--ws-per-frame``, one per
   ``per_frame / rate`` s) for ``--seconds`` to our client (lean, msgpack);
   the worker records, per frame, received -> visible in Redis (the ``e2e``
   histogram) and received -> applied to the books (``process``, the 1 ms
   quote-processing budget), at ``--rate`` and at twice that.

Redis is ``--redis`` (default redis://127.0.0.1:6379/15, flushed before and after).

    python bench/stream.py [--quotes 1000000] [--runs 5] [--symbols 100] [--per-frame 100] [--rate 50000] [--seconds 10]

Targets (issue 15): in process at least 250,000 quotes/s and 40x the naive handler; received -> visible in
Redis p99 at most 5 ms at 50,000 quotes/s and 15 ms at 100,000/s. The last line is one JSON object:
``{"quotes_per_s", "baseline_quotes_per_s", "ratio", "p99_ms_at_50k", "p99_ms_at_100k", "stage_p99_us", ...}``
(besides those: the in-process runs, the flush figures and the load average at start and end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from typing import Any

import msgpack
import redis
import redis.asyncio as aioredis

from omni_tasks.stream import wire
from omni_tasks.stream.config import StreamConfig
from omni_tasks.stream.feeds import AlpacaFeed, FeedExhausted
from omni_tasks.stream.standin import StandinServer
from omni_tasks.stream.worker import StreamWorker

KEY, SECRET = "bench-key", "bench-secret"


def make_frames(quotes: int, symbols: int, per_frame: int, *, seed: int = 5) -> tuple[list[bytes], list[str], dict[str, int]]:
    """Random-walk quotes with increasing timestamps as msgpack frames; the symbols; each symbol's last timestamp
    (what Redis must end with)."""
    rng = random.Random(seed)  # synthetic data
    names = [f"S{i:04d}" for i in range(symbols)]
    mids = [50.0 + 200.0 * rng.random() for _ in names]
    base = time.time_ns()
    frames = []
    last_ts: dict[str, int] = {}
    n = 0
    while n < quotes:
        messages = []
        for _ in range(min(per_frame, quotes - n)):
            i = rng.randrange(symbols)
            mids[i] *= 1.0 + rng.gauss(0.0, 0.0002)
            half = max(0.005, round(mids[i] * 0.0001, 2))
            size_bid, size_ask = float(rng.randint(1, 30) * 100), float(rng.randint(1, 30) * 100)
            messages.append(wire.quote_message(names[i], base + n, round(mids[i] - half, 2), size_bid, round(mids[i] + half, 2), size_ask))
            last_ts[names[i]] = base + n
            n += 1
        frames.append(msgpack.packb(messages))
    return frames, names, last_ts


class MemoryFeed:
    """Pre-encoded frames, handed over as fast as the loop turns (one loop turn per frame, as a socket would)."""

    name = "memory"
    answers_subscriptions = False  # no subscription message answers a request (stream/subscriptions.py)

    def __init__(self, frames: list[bytes]) -> None:
        self._frames = frames
        self._next = 0

    async def connect(self) -> None:
        self._next = 0

    async def subscribe(self, channels: dict[str, list[str]]) -> None:
        return None

    async def unsubscribe(self, channels: dict[str, list[str]]) -> None:
        return None

    async def recv(self) -> bytes:
        await asyncio.sleep(0)
        if self._next >= len(self._frames):
            raise FeedExhausted("all frames sent")
        frame = self._frames[self._next]
        self._next += 1
        return frame

    async def close(self) -> None:
        return None


IN_FLIGHT = {"n": StreamConfig.flushes_in_flight}


def _config(symbols: list[str], **extra: Any) -> StreamConfig:
    return StreamConfig(symbols=symbols, market_hours="never", quote_ttl_s=60, flushes_in_flight=IN_FLIGHT["n"], **extra)


async def run_ours(url: str, frames: list[bytes], symbols: list[str]) -> tuple[float, StreamWorker]:
    client = aioredis.Redis.from_url(url)
    worker = StreamWorker(_config(symbols), redis=client, sync_redis=redis.Redis.from_url(url), feed_factory=lambda: MemoryFeed(frames))
    started = time.perf_counter()
    code = await worker.run()
    seconds = time.perf_counter() - started
    await client.aclose()
    if code != 0:
        raise RuntimeError(f"worker exited {code}: {worker.exit_reason}")
    return seconds, worker


def run_naive(url: str, frames: list[bytes]) -> tuple[float, int]:
    """The way a first version does it: decode, then one HSET per quote, each a round trip."""
    client = redis.Redis.from_url(url)
    n = 0
    started = time.perf_counter()
    for frame in frames:
        for m in msgpack.unpackb(frame, timestamp=3):
            if m.get("T") != "q":
                continue
            mid = (m["bp"] + m["ap"]) / 2
            client.hset(
                f"naive:quote:{m['S']}",
                mapping={
                    "bid": m["bp"],
                    "ask": m["ap"],
                    "bid_size": m["bs"],
                    "ask_size": m["as"],
                    "ts": m["t"].isoformat(),
                    "mid": mid,
                    "spread_bps": (m["ap"] - m["bp"]) / mid * 1e4,
                },
            )
            n += 1
    return time.perf_counter() - started, n


def _serve(frames: list[bytes], interval_s: float, ready: Any, go: Any, done: Any) -> None:
    """The stand-in in its own process, so it does not share the worker's GIL."""
    with StandinServer(keys={KEY: SECRET}) as server:
        ready.put(server.url)
        go.wait()
        server.wait_for_clients(1, 30)
        time.sleep(0.5)
        sent = server.call(server.stream_frames(frames, interval_s=interval_s), timeout_s=3600)
        done.put(sent)
        time.sleep(1.0)


def run_websocket(url: str, rate: float, seconds: float, symbols: int, per_frame: int) -> dict[str, Any]:
    quotes = int(rate * seconds)
    frames, names, _ = make_frames(quotes, symbols, per_frame, seed=9)
    ctx = mp.get_context("fork")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(frames, per_frame / rate, ready, go, done), daemon=True)
    server.start()
    ws_url = ready.get(timeout=30)

    async def main() -> StreamWorker:
        client = aioredis.Redis.from_url(url)
        worker = StreamWorker(
            _config(names), redis=client, sync_redis=redis.Redis.from_url(url), feed_factory=lambda: AlpacaFeed(ws_url, KEY, SECRET)
        )
        task = asyncio.create_task(worker.run())
        go.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, done.get, True, seconds * 10 + 60)
        deadline = time.monotonic() + 10
        while worker.path.latency["e2e"].total < len(frames) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        worker.stop("bench done")
        await task
        await client.aclose()
        return worker

    worker = asyncio.run(main())
    server.join(10)
    e2e, process = worker.path.latency["e2e"], worker.path.latency["process"]
    return {
        "rate": rate,
        "frames": len(frames),
        "frames_seen": e2e.total,
        "e2e_p50_ms": e2e.percentile(50) / 1e6,
        "e2e_p99_ms": e2e.percentile(99) / 1e6,
        "process_p50_us": process.percentile(50) / 1e3,
        "process_p99_us": process.percentile(99) / 1e3,
        "over_budget": process.over_budget,
        "flushes": worker.path.flushes,
        "flush_p50_ms": worker.path.latency["flush"].percentile(50) / 1e6,
        "flush_p99_ms": worker.path.latency["flush"].percentile(99) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quotes", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5, help="in-process runs; their median is the figure")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--per-frame", type=int, default=100)
    parser.add_argument("--baseline-quotes", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=50_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ws-per-frame", type=int, default=50)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=StreamConfig.flushes_in_flight,
        help=f"writes in flight at once (StreamConfig.flushes_in_flight, default {StreamConfig.flushes_in_flight})",
    )
    parser.add_argument("--only-websocket", action="store_true", help="skip the in-process and naive runs")
    args = parser.parse_args(argv)
    IN_FLIGHT["n"] = args.in_flight
    flush = redis.Redis.from_url(args.redis)
    flush.flushdb()
    load = os.getloadavg()
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores", flush=True)

    ours = baseline = ratio = 0.0
    runs: list[float] = []
    if not args.only_websocket:
        frames, names, _ = make_frames(args.quotes, args.symbols, args.per_frame)
        print(f"{args.quotes:,} quotes over {args.symbols} symbols in {len(frames):,} msgpack frames of {args.per_frame}", flush=True)
        for run in range(1, args.runs + 1):
            flush.flushdb()
            seconds, worker = asyncio.run(run_ours(args.redis, frames, names))
            runs.append(args.quotes / seconds)
            counts = worker.path.books.counts
            served_in_redis = sum(1 for s in names if flush.exists(f"omni:quote:{s}"))
            flush_ms = worker.path.latency["flush"].percentile(50) / 1e6
            print(
                f"ours, run {run}: {seconds:.2f} s, {runs[-1]:,.0f} quotes/s; {worker.path.flushes:,} flushes "
                f"({counts['served'] / max(1, worker.path.flushes):.0f} quotes per flush, each p50 {flush_ms:.2f} ms), "
                f"{served_in_redis} of {args.symbols} symbols in Redis",
                flush=True,
            )
        ours = statistics.median(runs)
        print(f"ours: median of {len(runs)} runs {ours:,.0f} quotes/s (spread {min(runs):,.0f}-{max(runs):,.0f})", flush=True)
        baseline_frames = frames[: max(1, args.baseline_quotes // args.per_frame)]
        base_s, base_n = run_naive(args.redis, baseline_frames)
        baseline = base_n / base_s
        print(f"naive (decode, one HSET per quote): {base_n:,} quotes in {base_s:.2f} s, {baseline:,.0f} quotes/s", flush=True)
        ratio = ours / baseline
        print(
            f"ratio ours / naive: {ratio:.1f}x (target >= 40x: {'met' if ratio >= 40 else 'NOT met'}); "
            f"ours >= 250,000 quotes/s: {'met' if ours >= 250_000 else 'NOT met'}",
            flush=True,
        )

    results = {}
    for rate in (args.rate, 2 * args.rate):
        flush.flushdb()
        r = run_websocket(args.redis, rate, args.seconds, args.symbols, args.ws_per_frame)
        results[rate] = r
        print(
            f"websocket {rate:,.0f} quotes/s offered for {args.seconds:g} s ({r['frames']:,} frames of {args.ws_per_frame}, {r['frames_seen']:,} seen): "
            f"received -> visible in Redis p50 {r['e2e_p50_ms']:.2f} ms, p99 {r['e2e_p99_ms']:.2f} ms; "
            f"processing p50 {r['process_p50_us']:.0f} us, p99 {r['process_p99_us']:.0f} us, over 1 ms {r['over_budget']}; "
            f"{r['flushes']:,} flushes, each p50 {r['flush_p50_ms']:.2f} ms, p99 {r['flush_p99_ms']:.2f} ms",
            flush=True,
        )
    at, at2 = results[args.rate], results[2 * args.rate]
    print(
        f"target p99 <= 5 ms at {args.rate:,.0f}/s: {'met' if at['e2e_p99_ms'] <= 5 else 'NOT met'}; "
        f"p99 <= 15 ms at {2 * args.rate:,.0f}/s: {'met' if at2['e2e_p99_ms'] <= 15 else 'NOT met'}; "
        f"stage p99 < 1 ms: {'met' if at['process_p99_us'] < 1000 else 'NOT met'}"
    )
    end_load = os.getloadavg()
    print(f"load average at end {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}", flush=True)
    flush.flushdb()
    summary = {
        "quotes_per_s": round(ours),
        "baseline_quotes_per_s": round(baseline),
        "ratio": round(ratio, 1),
        "p99_ms_at_50k": round(at["e2e_p99_ms"], 3),
        "p99_ms_at_100k": round(at2["e2e_p99_ms"], 3),
        "stage_p99_us": round(at["process_p99_us"], 1),
        "quotes_per_s_runs": [round(r) for r in runs],
        "flush_p50_ms_at_50k": round(at["flush_p50_ms"], 3),
        "flush_p50_ms_at_100k": round(at2["flush_p50_ms"], 3),
        "load_avg_start": round(load[0], 2),
        "load_avg_end": round(end_load[0], 2),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
