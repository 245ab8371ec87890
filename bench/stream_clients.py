"""Which Alpaca websocket client feeds the stream worker faster: our lean one or alpaca-py's StockDataStream?

The same quotes (``--quotes``, default 20,000, in msgpack frames of
``--per-frame`` = 100 over ``--symbols`` = 100 symbols) are sent as fast as the
socket takes them by the Alpaca stand-in (:mod:`omni_tasks.stream.standin`,
in its own process so it does not share the worker's GIL) to a real
:class:`StreamWorker` writing to a real Redis, once through
:class:`AlpacaFeed` (lean: raw frames, decoded by the path) and once through
:class:`AlpacaSdkFeed` (alpaca-py in raw mode: alpaca-py decodes and
dispatches message by message). A run is timed from the stand-in's first frame
to the flush that makes the last quote visible in Redis; ``--runs`` runs per
client, alternating, and the median is reported. Each run checks that Redis
ends with every symbol's last quote.

Redis: ``--redis URL`` (flushed before and after), else a free database on
127.0.0.1:6379 claimed the way the test sessions claim theirs.

    python bench/stream_clients.py [--quotes 20000] [--per-frame 100] [--symbols 100] [--runs 5]

Last line, one JSON object: ``{"lean_quotes_per_s", "alpaca_py_quotes_per_s", "ratio"}``
(ratio = lean / alpaca-py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from omni_tasks.stream.config import StreamConfig
from omni_tasks.stream.feeds import AlpacaFeed, Feed
from omni_tasks.stream.path import FlushResult, QuotePath
from omni_tasks.stream.sdk_feed import AlpacaSdkFeed
from omni_tasks.stream.standin import StandinServer
from omni_tasks.stream.worker import StreamWorker

REPO = Path(__file__).resolve().parent.parent
CLAIM_KEY = "omni:test-session"


def _serve(frames: list[bytes], symbols: int, key: str, secret: str, ready: Any, done: Any) -> None:
    """The stand-in, in a child process: wait for one fully subscribed client, send every frame at once, report."""
    with StandinServer(keys={key: secret}) as server:
        ready.put(server.url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            subs = server.subscriptions()
            if subs and len(subs[0]["quotes"]) == symbols:
                break
            time.sleep(0.005)
        else:
            done.put(("error", "no client subscribed to every symbol within 60 s"))
            return
        started = time.time()
        sent = server.call(server.stream_frames(frames, interval_s=0.0), timeout_s=600)
        done.put(("sent", started, sent))
        time.sleep(2.0)  # keep the socket open until the worker has read everything


def run_once(redis_url: str, client: str, frames: list[bytes], names: list[str], last_ts: dict[str, int], quotes: int) -> dict[str, Any]:
    key, secret = f"PK{secrets.token_hex(8).upper()}", secrets.token_urlsafe(24)
    ctx = mp.get_context("fork")
    ready, done = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=_serve, args=(frames, len(names), key, secret, ready, done), daemon=True)
    server.start()
    url = ready.get(timeout=30)
    make: Callable[[], Feed] = (lambda: AlpacaFeed(url, key, secret)) if client == "lean" else (lambda: AlpacaSdkFeed(url, key, secret))
    finished: dict[str, float] = {}
    box: list[StreamWorker] = []

    def on_flush(_result: FlushResult, path: QuotePath) -> None:
        if "at" not in finished and path.books.counts["quotes"] >= quotes and not path.dirty:
            finished["at"] = time.time()
            box[0].stop("all quotes visible in Redis")

    async def main() -> int:
        aclient = aioredis.Redis.from_url(redis_url)
        worker = StreamWorker(
            StreamConfig(symbols=names, market_hours="never", quote_ttl_s=120),
            redis=aclient,
            sync_redis=redis.Redis.from_url(redis_url),
            feed_factory=make,
            on_flush=on_flush,
            run_for_s=120,
        )
        box.append(worker)
        code = await worker.run()
        await aclient.aclose()
        return code

    code = asyncio.run(main())
    worker = box[0]
    outcome = done.get(timeout=30)
    server.join(10)
    if outcome[0] != "sent":
        raise RuntimeError(f"stand-in: {outcome[1]}")
    if "at" not in finished:
        raise RuntimeError(
            f"{client}: only {worker.path.books.counts['quotes']:,} of {quotes:,} quotes processed (exit {code}, {worker.exit_reason})"
        )
    seconds = finished["at"] - outcome[1]
    check = redis.Redis.from_url(redis_url)
    pipe = check.pipeline(transaction=False)
    for name in names:
        pipe.hget(f"omni:quote:{name}", "ts")
    stored = pipe.execute()
    matching = sum(1 for name, ts in zip(names, stored, strict=True) if ts is not None and int(ts) == last_ts.get(name))
    return {
        "client": client,
        "seconds": seconds,
        "quotes_per_s": quotes / seconds,
        "frames_seen": worker.path.frames,
        "flushes": worker.path.flushes,
        "garbage": worker.path.garbage_frames,
        "matching": matching,
        "symbols": len(names),
    }


def claim_database(host: str = "127.0.0.1", port: int = 6379) -> tuple[str, redis.Redis, str]:
    """A Redis database no test session holds, claimed with the test sessions' own SET NX key for an hour."""
    token = f"bench-stream-clients-{os.getpid()}"
    for db in range(15, 0, -1):
        client = redis.Redis(host=host, port=port, db=db, socket_timeout=3)
        if client.set(CLAIM_KEY, token, nx=True, ex=3600):
            client.flushdb()
            client.set(CLAIM_KEY, token, ex=3600)
            return f"redis://{host}:{port}/{db}", client, token
    raise SystemExit("every Redis database 1..15 is claimed; pass --redis URL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quotes", type=int, default=20_000)
    parser.add_argument("--per-frame", type=int, default=100)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--redis", default=None, help="a Redis URL to use (flushed before and after)")
    args = parser.parse_args(argv)
    if args.quotes < 1 or args.per_frame < 1 or args.symbols < 1 or args.runs < 1:
        parser.error("--quotes, --per-frame, --symbols and --runs must be positive")
    if args.redis:
        url, admin, token = args.redis, redis.Redis.from_url(args.redis), ""
        admin.flushdb()
    else:
        url, admin, token = claim_database()
    load = os.getloadavg()
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores; Redis {url}", flush=True)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # `python bench/stream_clients.py` puts bench/, not the repo, on the path
    from bench.stream import make_frames

    frames, names, last_ts = make_frames(args.quotes, args.symbols, args.per_frame)
    print(f"{args.quotes:,} quotes over {args.symbols} symbols in {len(frames):,} msgpack frames of {args.per_frame}", flush=True)
    rates: dict[str, list[float]] = {"lean": [], "alpaca-py": []}
    try:
        for run in range(args.runs):
            for client in ("lean", "alpaca-py") if run % 2 == 0 else ("alpaca-py", "lean"):
                for key in admin.scan_iter("omni:*"):
                    if key != CLAIM_KEY.encode():
                        admin.delete(key)
                r = run_once(url, client, frames, names, last_ts, args.quotes)
                rates[client].append(r["quotes_per_s"])
                print(
                    f"run {run + 1} {client:>9}: {r['seconds'] * 1000:7.1f} ms, {r['quotes_per_s']:>9,.0f} quotes/s; "
                    f"{r['frames_seen']:,} frames seen by the path, {r['flushes']:,} flushes, {r['garbage']} garbage; "
                    f"last quote in Redis for {r['matching']} of {r['symbols']} symbols",
                    flush=True,
                )
                if r["matching"] != r["symbols"]:
                    raise RuntimeError(f"{client}: Redis does not hold every symbol's last quote")
    finally:
        if token:
            admin.flushdb()
            admin.delete(CLAIM_KEY)
        elif args.redis:
            admin.flushdb()
    lean, sdk = statistics.median(rates["lean"]), statistics.median(rates["alpaca-py"])
    ratio = lean / sdk
    print(
        f"lean client (AlpacaFeed): median {lean:,.0f} quotes/s over {args.runs} runs (min {min(rates['lean']):,.0f}, max {max(rates['lean']):,.0f})"
    )
    print(
        f"alpaca-py (AlpacaSdkFeed): median {sdk:,.0f} quotes/s over {args.runs} runs "
        f"(min {min(rates['alpaca-py']):,.0f}, max {max(rates['alpaca-py']):,.0f})"
    )
    print(f"ratio lean / alpaca-py: {ratio:.2f}x")
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    print(json.dumps({"lean_quotes_per_s": round(lean), "alpaca_py_quotes_per_s": round(sdk), "ratio": round(ratio, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
