"""The kill switch: from a quote that pushes the day's loss past the limit to engaged (durable) and every order cancelled.

What runs, all real: PostgreSQL (a scratch database), a redis-server of its own
(free loopback port, no persistence; ``--redis URL`` uses another one, flushed), a watchdog worker process (``omni worker watchdog``: its alarm
listener engages the kill switch), and in this process the streaming worker
(:class:`StreamWorker` with the day-loss guard) fed by an in-memory queue, and
the simulated venue holding a position and ``--orders`` resting limit orders.

Each trial: the desk is ACTIVE, long 100 AAPL bought near 100, the day's loss
limit $1,000; a quote at 80 arrives at the stream (t0) -> the guard raises a
critical ``daily_loss`` alarm -> the watchdog's listener engages: Redis, the
database row (durable), snapshot, cancel all, confirm by polling. Measured
from outside, black-box: a thread polls the ``trading_state`` row (engaged =
it reads HALTED) and the ``orders`` table (cancelled = none of the trial's
orders open), every 0.5 ms. Then the quote goes back to 100 and an operator
releases, for the next trial.

    python bench/killswitch.py [--trials 50] [--orders 20] [--redis URL]

Besides the figures it prints where the time goes: each engage step's median
(from the KillEvents) and the quote -> engaged path by hop (p50 / p90 / max).

The last line is one JSON object: ``{"engaged_p50_ms", "engaged_p99_ms", "cancelled_p99_ms", "trials"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
from sqlalchemy import create_engine, func, select, text

from omni_tasks.stream import wire
from omni_tasks.stream.feeds import FeedClosed

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parent.parent


class QueueFeed:
    """Frames pushed by the bench, received by the worker as from a socket."""

    name = "bench"
    answers_subscriptions = False  # no subscription message answers a request (stream/subscriptions.py)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | str] = asyncio.Queue()
        self.closed = False

    async def connect(self) -> None:
        self.closed = False

    async def subscribe(self, channels: dict[str, list[str]]) -> None:
        return None

    async def unsubscribe(self, channels: dict[str, list[str]]) -> None:
        return None

    async def recv(self) -> bytes | str:
        frame = await self.queue.get()
        if self.closed:
            raise FeedClosed("closed")
        return frame

    async def close(self) -> None:
        self.closed = True
        self.queue.put_nowait(b"")


def _sequence_done(engine: Any) -> bool:
    with engine.connect() as connection:
        timings = connection.execute(text("SELECT timings_ms FROM kill_events WHERE action = 'engage' ORDER BY id DESC LIMIT 1")).scalar()
    if isinstance(timings, str):
        timings = json.loads(timings)
    return bool(timings) and "total" in timings


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q, method="higher"))


def _hops(engine: Any, client: redis.Redis, t0_ns: int, marks: dict[str, int]) -> dict[str, float]:
    """One trial's time by hop (ms): quote pushed -> received by the stream -> alarm raised -> engage began (in the
    watchdog) -> its ``durable`` mark -> seen HALTED by the poller. The ``durable`` mark comes after Redis is re-synced
    to the row, so the poller may see the row HALTED before it (a negative last hop).

    The alarm is the newest of the alarm log, the engage the newest engage KillEvent (both clocks are this machine's).
    """
    from omni_tasks.core.keys import ALARM_LOG_KEY

    alarm = json.loads(client.lindex(ALARM_LOG_KEY, 0) or b"{}")
    with engine.connect() as connection:
        timings, detail = connection.execute(
            text("SELECT timings_ms, detail FROM kill_events WHERE action = 'engage' ORDER BY id DESC LIMIT 1")
        ).one()
    timings = json.loads(timings) if isinstance(timings, str) else timings or {}
    detail = json.loads(detail) if isinstance(detail, str) else detail or {}
    recv_ns = int((alarm.get("detail") or {}).get("trigger_recv_ns") or t0_ns)
    alarm_ns = int(alarm.get("ts_ns") or recv_ns)
    started_ns = int(detail.get("started_at_ns") or alarm_ns)
    durable_ns = started_ns + int(float(timings.get("durable", 0.0)) * 1e6)
    return {
        "quote_received": (recv_ns - t0_ns) / 1e6,
        "alarm_raised": (alarm_ns - recv_ns) / 1e6,
        "engage_began": (started_ns - alarm_ns) / 1e6,
        "durable": (durable_ns - started_ns) / 1e6,
        "seen_halted": (marks["engaged"] - durable_ns) / 1e6,
    }


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (Linux); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--redis", default=None, help="a Redis to use (flushed before and after); default: a redis-server of its own")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.redis is None:
            if str(REPO) not in sys.path:
                sys.path.insert(0, str(REPO))  # `python bench/killswitch.py` puts bench/, not the repo, on the path
            from bench.private_desk import private_redis

            args.redis = stack.enter_context(private_redis(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="omni-bench-kill-redis-")))))
        return _run(args)


def _run(args: argparse.Namespace) -> int:

    scratch = f"omni_bench_kill_{os.getpid()}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{scratch}"'))
    database_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{scratch}"
    redis.Redis.from_url(args.redis).flushdb()
    data_dir = Path(tempfile.mkdtemp(prefix="omni-bench-kill-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        {
            "OMNI_BROKER_URL": args.redis,
            "OMNI_DATABASE_URL": database_url,
            "OMNI_DATA_DIR": str(data_dir),
            "OMNI_TRADING_VENUE": "simulated",
            "OMNI_RISK_MAX_DAILY_LOSS_USD": "1000",
            "OMNI_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    watchdog = None
    load = os.getloadavg()
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores", flush=True)
    try:
        from omni_tasks.core.runtime import get_runtime, install_settings
        from omni_tasks.settings import load_settings
        from omni_tasks.storage import migrations

        settings = load_settings(env)
        install_settings(settings)
        from omni_tasks.core.logs import configure_logging

        configure_logging(level="WARNING", fmt="console", role="bench", secrets=settings.secret_values())
        runtime = get_runtime()
        migrations.upgrade(runtime.engine)
        log = (data_dir / "watchdog.log").open("ab")
        watchdog = subprocess.Popen(  # fixed argv
            [sys.executable, "-m", "omni_tasks", "worker", "watchdog"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = runtime.redis
        from omni_tasks.core.keys import ALARM_CHANNEL

        deadline = time.monotonic() + 90
        while client.pubsub_numsub(ALARM_CHANNEL)[0][1] < 1:
            if watchdog.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the watchdog worker did not start its alarm listener; see {data_dir / 'watchdog.log'}")
            time.sleep(0.2)
        from omni_tasks.pipeline import heartbeats

        # Subscribed is not ready: the worker is still importing (and holding the GIL) for a few seconds after.
        while not any(w.kind == "watchdog" and w.pid == watchdog.pid for w in heartbeats.workers(client)):
            if watchdog.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the watchdog worker did not report ready; see {data_dir / 'watchdog.log'}")
            time.sleep(0.2)
        time.sleep(1.0)
        print("watchdog worker ready (heartbeat), alarm listener subscribed", flush=True)
        result = asyncio.run(run_trials(args, settings, runtime, database_url, watchdog.pid))
    finally:
        if watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(watchdog.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(watchdog.pid, 9)
        with contextlib.suppress(Exception):
            from omni_tasks.core.runtime import get_runtime

            get_runtime().engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
        redis.Redis.from_url(args.redis).flushdb()
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    print(json.dumps(result), flush=True)
    return 0


def _print_stages(engine: Any) -> None:
    """Where an engage's time went: the median of each step's mark (ms after the listener started the engage), from its KillEvent."""
    from omni_tasks.storage.models import KillEvent

    with engine.connect() as connection:
        rows = connection.execute(select(KillEvent.timings_ms).where(KillEvent.action == "engage")).scalars().all()
    marks: dict[str, list[float]] = {}
    for timings in rows:
        for name, value in (timings or {}).items():
            if isinstance(value, int | float):
                marks.setdefault(name, []).append(float(value))
    ordered = sorted(marks.items(), key=lambda item: float(np.median(item[1])))
    print(f"engage steps, median ms after the listener began (N={len(rows)}): " + ", ".join(f"{k} {np.median(v):.2f}" for k, v in ordered), flush=True)


async def run_trials(args: argparse.Namespace, settings: Any, runtime: Any, database_url: str, watchdog_pid: int) -> dict[str, Any]:
    from omni_tasks.contracts.venue import OrderRequest
    from omni_tasks.safety.killswitch import current_state
    from omni_tasks.safety.state_rule import TradingState
    from omni_tasks.safety.transitions import release
    from omni_tasks.storage.models import Order
    from omni_tasks.stream.config import StreamConfig
    from omni_tasks.stream.guard import build_guard
    from omni_tasks.stream.worker import StreamWorker
    from omni_tasks.trading.wiring import make_venue

    aclient = aioredis.Redis.from_url(args.redis)
    feed = QueueFeed()
    guard = build_guard(settings, aclient)
    worker = StreamWorker(
        StreamConfig(symbols=["AAPL", "MSFT"], market_hours="never", housekeeping_s=0.05),
        redis=aclient,
        sync_redis=runtime.redis,
        feed_factory=lambda: feed,
        on_flush=guard.on_flush,
        on_housekeeping=guard.on_housekeeping,
    )
    task = asyncio.create_task(worker.run())
    venue = make_venue(runtime)
    poll_engine = create_engine(database_url, pool_size=2)

    def push(symbol: str, bid: float, ask: float) -> int:
        now = time.time_ns()
        feed.queue.put_nowait(wire.encode_frame([wire.quote_message(symbol, now, bid, 500, ask, 500)]))
        return now

    async def until(predicate: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    push("AAPL", 100.00, 100.02)
    push("MSFT", 400.00, 400.04)
    await until(lambda: worker.path.flushes >= 1 and runtime.redis.exists("omni:quote:AAPL"), 10, "the first quotes in Redis")
    bought = await asyncio.to_thread(
        venue.submit, OrderRequest(client_order_id="bench-buy-aapl", symbol="AAPL", side="buy", qty=Decimal(100))
    )
    print(f"position: {bought.filled_qty} AAPL at {bought.avg_fill_price}; day-loss limit {settings.risk.max_daily_loss_usd}", flush=True)

    engaged_ms: list[float] = []
    cancelled_ms: list[float] = []
    alarm_ms: list[float] = []
    hops: dict[str, list[float]] = {}
    watchdog_cpu_s = _cpu_s(watchdog_pid)
    for trial in range(args.trials):
        if current_state(runtime.redis, runtime.sessions) is not TradingState.ACTIVE:
            release(runtime, actor="operator:bench", reason="bench: next trial")
        push("AAPL", 100.00, 100.02)  # back above the limit: the guard re-arms
        push("MSFT", 400.00, 400.04)  # a fresh quote: the venue accepts the resting orders on it
        await until(lambda: worker.path.trading_state == "ACTIVE" and not worker.path.dirty, 10, "the fresh quotes in Redis")
        ids = [f"bench-{trial}-{i}" for i in range(args.orders)]
        for client_order_id in ids:
            await asyncio.to_thread(
                venue.submit,
                OrderRequest(
                    client_order_id=client_order_id,
                    symbol="MSFT",
                    side="buy",
                    qty=Decimal(1),
                    order_type="limit",
                    limit_price=Decimal("1.00"),
                ),
            )
        await until(
            lambda: guard.book is not None and "AAPL" in guard.book.positions and worker.path.trading_state == "ACTIVE",
            10,
            "the guard to see the book",
        )
        with poll_engine.connect() as connection:
            resting = connection.execute(
                select(func.count()).select_from(Order).where(Order.client_order_id.in_(ids), Order.status.in_(("new", "accepted")))
            ).scalar()
        if resting != args.orders:
            with poll_engine.connect() as connection:
                why = connection.execute(select(Order.status, Order.reason).where(Order.client_order_id.in_(ids), Order.status.not_in(("new", "accepted")))).all()
            raise RuntimeError(f"trial {trial}: {resting} of {args.orders} orders are resting before the trigger; the others: {sorted(set(map(tuple, why)))}")
        await asyncio.sleep(0.1)
        marks: dict[str, int] = {}
        stop = threading.Event()

        def watch(ids: list[str] = ids, marks: dict[str, int] = marks, stop: threading.Event = stop) -> None:
            with poll_engine.connect() as connection:
                while not stop.is_set():
                    if "engaged" not in marks:
                        state = connection.execute(text("SELECT state FROM trading_state WHERE id = 1")).scalar()
                        connection.commit()
                        if state == "HALTED":
                            marks["engaged"] = time.time_ns()
                    if "engaged" in marks and "cancelled" not in marks:
                        still_open = connection.execute(
                            select(func.count())
                            .select_from(Order)
                            .where(Order.client_order_id.in_(ids), Order.status.in_(("pending", "new", "accepted", "partially_filled")))
                        ).scalar()
                        connection.commit()
                        if still_open == 0:
                            marks["cancelled"] = time.time_ns()
                            return
                    time.sleep(0.0005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = push("AAPL", 80.00, 80.02)  # the day's loss: 100 x ~20 = ~$2,000 > $1,000
        await asyncio.to_thread(watcher.join, 15)
        stop.set()
        if "cancelled" not in marks:
            raise RuntimeError(f"trial {trial}: not engaged and cancelled within 15 s (marks {marks})")
        # Let the engage sequence finish (snapshot, purge, its last confirmation poll) before the operator releases:
        # a release in the middle of it would race its cancel rounds against the next trial's orders.
        await until(lambda: _sequence_done(poll_engine), 30, "the engage sequence to finish")
        engaged_ms.append((marks["engaged"] - t0) / 1e6)
        for name, value in _hops(poll_engine, runtime.redis, t0, marks).items():
            hops.setdefault(name, []).append(value)
        cancelled_ms.append((marks["cancelled"] - t0) / 1e6)
        if guard.alarms:
            alarm_ms.append(0.0)
        if trial % 10 == 9:
            print(
                f"trials {trial + 1}: engaged p50 {_percentile(engaged_ms, 50):.1f} ms, cancelled p50 {_percentile(cancelled_ms, 50):.1f} ms",
                flush=True,
            )
    watchdog_cpu_s = _cpu_s(watchdog_pid) - watchdog_cpu_s
    worker.stop("bench done")
    await task
    await aclient.aclose()
    _print_stages(poll_engine)
    print(
        "quote -> engaged by hop, ms p50 / p90 / max: "
        + ", ".join(f"{k} {_percentile(v, 50):.2f} / {_percentile(v, 90):.2f} / {max(v):.2f}" for k, v in hops.items()),
        flush=True,
    )
    poll_engine.dispose()
    release(runtime, actor="operator:bench", reason="bench done")
    print(f"watchdog worker CPU per trial (the engage and everything else it ran): {watchdog_cpu_s * 1000 / args.trials:.1f} ms", flush=True)
    print("quote -> engaged, per trial (ms): " + " ".join(f"{v:.0f}" for v in engaged_ms), flush=True)
    print("quote -> all cancelled, per trial (ms): " + " ".join(f"{v:.0f}" for v in cancelled_ms), flush=True)
    result = {
        "engaged_p50_ms": round(_percentile(engaged_ms, 50), 2),
        "engaged_p99_ms": round(_percentile(engaged_ms, 99), 2),
        "cancelled_p99_ms": round(_percentile(cancelled_ms, 99), 2),
        "trials": len(engaged_ms),
    }
    print(
        f"{len(engaged_ms)} trials, {args.orders} open orders each: quote -> engaged (durable) p50 {result['engaged_p50_ms']} ms, "
        f"p99 {result['engaged_p99_ms']} ms, max {max(engaged_ms):.1f} ms (target p99 <= 10 ms: {'met' if result['engaged_p99_ms'] <= 10 else 'NOT met'}); "
        f"-> every order cancelled p50 {_percentile(cancelled_ms, 50):.1f} ms, p99 {result['cancelled_p99_ms']} ms "
        f"(target p99 <= 50 ms: {'met' if result['cancelled_p99_ms'] <= 50 else 'NOT met'}); the guard raised {guard.alarms} alarms",
        flush=True,
    )
    return result


if __name__ == "__main__":
    sys.exit(main())
