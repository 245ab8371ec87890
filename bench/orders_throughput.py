"""Orders/s through one real orders worker against the simulated venue, the whole path.

What is timed: N ``omni.orders.submit`` messages (the task ``omni order buy``
and ``omni order sell`` send; market orders of 1 share, buys and sells
alternating so the position stays inside the limits) are published as fast as
one producer can, to one ``omni worker orders --concurrency C``. Each order
runs the pre-trade checks (kill switch, breakers, price collar against the
latest quote in Redis, position and trade limits), is filled by the simulated
venue, and its order, events, fill and position are written to PostgreSQL.
The clock starts before the first publish and stops when the last result is
back; orders/s = N / that time. Every outcome is counted by status, so a
denial cannot pass for a fill. Private redis-server and scratch database.

    python -m bench.orders_throughput [--orders 300] [--concurrency 1,2]

The last line is one JSON object: ``{"runs": [{"concurrency": 1, "orders_per_s": ...}, ...], ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import redis

from bench.private_desk import DEFAULT_ADMIN_URL, BenchError, load_average, private_desk

SYMBOL = "AAPL"


def serve_quote(client: redis.Redis) -> None:
    """A fresh AAPL quote exactly as the stream worker serves it (omni_tasks.contracts.quotes)."""
    from omni_tasks.contracts.quotes import quote_key

    ts = time.time_ns()
    client.hset(
        quote_key(SYMBOL),
        mapping={"bid": "189.99", "ask": "190.01", "bid_size": "300", "ask_size": "300", "ts": ts, "recv": ts, "mid": "190.00",
                 "spread_bps": "1.05", "vwap": "", "liq": ""},
    )  # fmt: skip
    client.expire(quote_key(SYMBOL), 600)


def one_run(args: argparse.Namespace, concurrency: int) -> dict[str, Any]:
    from omni_tasks.core.runtime import install_settings
    from omni_tasks.pipeline.app import create_app
    from omni_tasks.settings import load_settings

    with private_desk(
        args.pg_admin_url,
        OMNI_RISK_MAX_TRADES_PER_DAY=str(10 * args.orders + 100),
        # The quote is written once before the run; a loaded machine must not make it stale mid-run.
        OMNI_RISK_QUOTE_MAX_AGE_S="600",
        OMNI_TRADING_QUOTE_MAX_AGE_S="600",
    ) as desk:
        desk.worker("orders", concurrency=concurrency)
        client = redis.Redis.from_url(desk.redis_url, socket_timeout=5)
        settings = load_settings(desk.env)
        install_settings(settings)  # this process's publish hooks count into the private desk's Redis, as `omni order buy` does
        sender = create_app(settings)
        try:

            def send(i: int) -> Any:
                kwargs = {
                    "symbol": SYMBOL, "side": "buy" if i % 2 == 0 else "sell", "qty": "1", "order_type": "market", "limit_price": None,
                    "client_order_id": f"bench-{uuid.uuid4().hex[:20]}", "requested_by": "bench",
                }  # fmt: skip
                return sender.send_task("omni.orders.submit", kwargs=kwargs, queue="orders")

            serve_quote(client)
            for i in range(args.warmup):
                send(i).get(timeout=60)
            serve_quote(client)
            load_before = load_average()
            commands = desk.redis_commands()
            started = time.monotonic()
            results = [send(i) for i in range(args.orders)]
            published = time.monotonic() - started
            statuses = Counter(str(r.get(timeout=args.timeout)["status"]) for r in results)
            seconds = time.monotonic() - started
            commands = desk.redis_commands() - commands
        finally:
            sender.close()
            client.close()
    filled = statuses.get("filled", 0)
    result = {
        "concurrency": concurrency,
        "orders": args.orders,
        "statuses": dict(statuses),
        "seconds": round(seconds, 2),
        "publish_seconds": round(published, 3),
        "orders_per_s": round(args.orders / seconds, 1),
        "redis_commands_per_order": round(commands / args.orders, 1),
        "filled_per_s": round(filled / seconds, 1),
        "load_before": load_before,
        "load_after": load_average(),
    }
    print(
        f"concurrency {concurrency}: {args.orders} orders in {seconds:.2f} s = {args.orders / seconds:.1f} orders/s "
        f"(published in {published:.2f} s); {commands / args.orders:.0f} Redis commands per order; outcomes {dict(statuses)}; load {result['load_before']} -> {result['load_after']}",
        flush=True,
    )
    if filled != args.orders:
        raise BenchError(f"not every order filled: {dict(statuses)}")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    print(f"orders throughput: {args.orders} market orders of 1 {SYMBOL} (buy/sell alternating), simulated venue, "
          f"one orders worker per run; load {load_average()}", flush=True)  # fmt: skip
    runs = [one_run(args, int(c)) for c in args.concurrency.split(",")]
    return {"benchmark": "orders_throughput", "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=300, help="timed orders per run (default 300)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed orders first, one at a time (default 10)")
    parser.add_argument(
        "--concurrency", default="1,2", help="prefork processes of the orders worker, one run each (default 1,2: 1 is its setting)"
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for each result (default 120)")
    parser.add_argument(
        "--pg-admin-url", default=DEFAULT_ADMIN_URL, help=f"a database for CREATE/DROP DATABASE (default {DEFAULT_ADMIN_URL})"
    )
    try:
        summary = run(parser.parse_args())
    except BenchError as exc:
        print(f"bench/orders_throughput failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
