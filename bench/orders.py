"""Order latency through a real orders worker against the simulated venue on PostgreSQL, against the naive way.

What is timed, one order at a time (latency, not throughput): N market orders of
1 share (buys and sells alternating, so the position stays inside the limits) are
accepted exactly as ``omni order buy`` accepts them (:func:`omni_tasks.trading.intake.accept_order`:
the pending row recorded, then ``submit_order.apply_async`` with the CLI's retry
policy) and run by one ``omni worker orders`` (its own process) against the
simulated venue, whose ledger (order, fill, position, account, events) is in
a scratch PostgreSQL database. Two figures per order:

* **in the worker**: from the task's start (``before_start``, before the kill switch's
  pre-start gate) to the outcome recorded (the venue's transaction committed):
  ``task_ms`` in the task's result. The seed's order-submission budget (10 ms,
  :mod:`omni_tasks.core.budgets`) applies to it; the path's own measure of that
  budget (``elapsed_ms``, from ``OrderSubmitter.submit``'s start) is printed too.
* **enqueue -> recorded fill**: from the CLI's send (``apply_async``) until the
  bench holds the task's result, which the worker stores after the fill committed
  (so an upper bound of "the fill is recorded").

The naive way, in the same run and the same database (its own venue name): an ORM
unit of work committing each step, one session, one commit per step (the order
row, the checks, the fill, the position, the events, the final status), timed
from its start to its last commit, in this process. The two ways take turns, one
order each, so both meet the machine (its load, the disk's fsync time) as it is.

Every order must fill, and each one's rows are counted afterwards (one fill, its
events, a final status), so a denial or a lost write cannot pass for speed.

    python -m bench.orders [--orders 300] [--warmup 20]

The last line is one JSON object: ``p50_ms``, ``p99_ms``, ``e2e_p99_ms``,
``baseline_p50_ms``, ``ratio`` (baseline_p50_ms / p50_ms), and more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import redis

from bench.celery_overhead import process_tree_cpu_s
from bench.orders_throughput import SYMBOL, serve_quote
from bench.private_desk import DEFAULT_ADMIN_URL, BenchError, load_average, private_desk

NAIVE_BROKER = "naive"


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile (p99 of 300 values is the 297th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
    }


def naive_order(sessions: Any, client: redis.Redis, i: int, limits: Any) -> float:
    """One order the naive way: an ORM unit of work committing each step. Returns its milliseconds."""
    from sqlalchemy import func, select

    from omni_tasks.contracts.quotes import read_latest
    from omni_tasks.contracts.venue import OrderRequest
    from omni_tasks.storage.models import BrokerAccount, Fill, Order, OrderEvent, Position, TradingStateRow
    from omni_tasks.trading.checks import BreakerReading, CheckContext, run_checks
    from omni_tasks.trading.fills import PositionState, apply_fill, cash_after

    side: Literal["buy", "sell"] = "buy" if i % 2 == 0 else "sell"
    request = OrderRequest(
        client_order_id=f"naive-{uuid.uuid4().hex[:20]}",
        symbol=SYMBOL,
        side=side,
        qty=Decimal(1),
        order_type="market",
        requested_by="bench",
    )
    t0 = time.perf_counter()
    with sessions() as session:
        now = datetime.now(UTC)
        order = Order(
            client_order_id=request.client_order_id, broker=NAIVE_BROKER, symbol=SYMBOL, side=side, qty=request.qty, order_type="market",
            status="pending", filled_qty=Decimal(0), requested_by="bench", created_at=now, updated_at=now,
            expires_at=now + timedelta(seconds=60),
        )  # fmt: skip
        session.add(order)
        session.add(OrderEvent(ts=now, client_order_id=order.client_order_id, event="requested", detail={}))
        session.commit()
        # The checks: the kill switch's row, the portfolio, the quote, today's trades.
        state = session.execute(select(TradingStateRow.state).where(TradingStateRow.id == 1)).scalar_one_or_none() or "ACTIVE"
        account = session.execute(select(BrokerAccount).where(BrokerAccount.broker == NAIVE_BROKER)).scalar_one()
        held = session.get(Position, (NAIVE_BROKER, SYMBOL))
        trades = session.execute(select(func.count()).select_from(Order).where(Order.broker == NAIVE_BROKER)).scalar_one()
        quote = read_latest(client, [SYMBOL]).get(SYMBOL)
        decision = run_checks(
            CheckContext(
                request=request, trading_state=state, breaker=BreakerReading("broker:naive", True, True, "closed", None),
                position_qty=held.qty if held is not None else Decimal(0), equity=account.cash, day_start_equity=account.day_start_equity,
                daily_pnl=Decimal(0), trades_today=int(trades), market_values={}, quote=quote, limits=limits, now_ns=time.time_ns(),
                symbol_status=None,
            )
        )  # fmt: skip
        session.add(OrderEvent(ts=now, client_order_id=order.client_order_id, event="checked", detail={"check": decision.check}))
        session.commit()
        if not decision.allowed or quote is None:
            raise BenchError(f"naive order denied: {decision.check}: {decision.reason}")
        price = quote.ask if side == "buy" else quote.bid
        session.add(Fill(order_id=order.id, broker=NAIVE_BROKER, symbol=SYMBOL, side=side, qty=request.qty, price=price, ts=now))
        session.commit()
        before = PositionState(held.qty, held.avg_price, held.realized_pnl) if held is not None else PositionState()
        after = apply_fill(before, request.qty if side == "buy" else -request.qty, price)
        if held is None:
            session.add(Position(broker=NAIVE_BROKER, symbol=SYMBOL, qty=after.qty, avg_price=after.avg_price, realized_pnl=after.realized_pnl, updated_at=now))  # fmt: skip
        else:
            held.qty, held.avg_price, held.realized_pnl, held.updated_at = after.qty, after.avg_price, after.realized_pnl, now
        account.cash = cash_after(account.cash, side, request.qty, price)
        account.updated_at = now
        session.commit()
        session.add(OrderEvent(ts=now, client_order_id=order.client_order_id, event="submitted", detail={}))
        session.add(OrderEvent(ts=now, client_order_id=order.client_order_id, event="filled", detail={"price": str(price)}))
        session.commit()
        order.status, order.filled_qty, order.avg_fill_price, order.submitted_at = "filled", request.qty, price, now
        session.commit()
    return (time.perf_counter() - t0) * 1000


def naive_desk(database_url: str) -> tuple[Any, Any]:
    """The naive way's engine and sessions (the project's engine settings), and its account row."""
    from sqlalchemy.dialects.postgresql import insert

    from omni_tasks.storage.engine import make_engine, session_factory
    from omni_tasks.storage.models import BrokerAccount

    engine = make_engine(database_url)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        now = datetime.now(UTC)
        session.execute(
            insert(BrokerAccount)
            .values(broker=NAIVE_BROKER, cash=Decimal(100_000), day=now.date(), day_start_equity=Decimal(100_000),
                    peak_equity=Decimal(100_000), updated_at=now)
            .on_conflict_do_nothing(index_elements=["broker"])
        )  # fmt: skip
    return engine, sessions


def verify(database_url: str, ids: list[str]) -> dict[str, Any]:
    """Every timed order's rows: filled, one fill, its events in order."""
    from sqlalchemy import func, select

    from omni_tasks.storage.engine import make_engine, session_factory
    from omni_tasks.storage.models import Fill, Order, OrderEvent

    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            statuses = Counter(s for (s,) in session.execute(select(Order.status).where(Order.client_order_id.in_(ids))).all())
            fills = session.execute(
                select(func.count()).select_from(Fill).join(Order, Order.id == Fill.order_id).where(Order.client_order_id.in_(ids))
            ).scalar_one()
            events = Counter(e for (e,) in session.execute(select(OrderEvent.event).where(OrderEvent.client_order_id.in_(ids))).all())
    finally:
        engine.dispose()
    return {"statuses": dict(statuses), "fills": int(fills), "events": dict(events)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from omni_tasks.cli.orders import PUBLISH_RETRY_POLICY
    from omni_tasks.contracts.venue import OrderRequest
    from omni_tasks.core.runtime import get_runtime, install_settings
    from omni_tasks.settings import load_settings

    load_start = load_average()
    print(f"orders latency: {args.orders} market orders of 1 {SYMBOL} one at a time (buy/sell alternating), simulated venue on "
          f"PostgreSQL, one orders worker; load {load_start}", flush=True)  # fmt: skip
    with private_desk(
        args.pg_admin_url,
        OMNI_RISK_MAX_TRADES_PER_DAY=str(10 * (args.orders + args.warmup) + 100),
        # The quote is written once before the run; a loaded machine must not make it stale mid-run.
        OMNI_RISK_QUOTE_MAX_AGE_S="600",
        OMNI_TRADING_QUOTE_MAX_AGE_S="600",
    ) as desk:
        worker = desk.worker("orders", concurrency=1)
        client = redis.Redis.from_url(desk.redis_url, socket_timeout=5)
        settings = load_settings(desk.env)
        install_settings(settings)  # the CLI's own setup: its send goes to the private desk's broker
        from omni_tasks.pipeline.app import app
        from omni_tasks.trading.intake import accept_order
        from omni_tasks.trading.tasks import submit_order

        app.conf.update(broker_url=settings.broker_url, result_backend=settings.redis_url)
        runtime = get_runtime()
        try:
            serve_quote(client)

            def one(i: int) -> tuple[dict[str, Any], float]:
                request = OrderRequest(
                    client_order_id=f"bench-{uuid.uuid4().hex[:20]}", symbol=SYMBOL, side="buy" if i % 2 == 0 else "sell",
                    qty=Decimal(1), order_type="market", requested_by="bench",
                )  # fmt: skip
                sent: list[Any] = []

                def send(kwargs: dict[str, Any]) -> Any:
                    started = time.perf_counter()
                    result = submit_order.apply_async(kwargs=kwargs, retry_policy=PUBLISH_RETRY_POLICY)
                    sent.append((started, result))
                    return result

                accept_order(
                    request, sessions=runtime.sessions, venue=settings.trading.venue, ttl_s=settings.trading.order_ttl_s, send=send
                )
                started, result = sent[0]
                outcome = result.get(timeout=args.timeout)
                e2e_ms = (time.perf_counter() - started) * 1000
                return dict(outcome), e2e_ms

            naive_engine, naive_sessions = naive_desk(desk.database_url)
            for i in range(args.warmup):
                one(i)
                naive_order(naive_sessions, client, i, settings.risk)
            # One order each way in turn, so both meet the same machine (its load, the disk's fsync time) as it changes.
            load_before = load_average()
            outcomes: list[tuple[dict[str, Any], float]] = []
            naive: list[float] = []
            naive_cpu_s = 0.0
            worker_cpu_before = process_tree_cpu_s(worker.pid)
            for i in range(args.orders):
                outcomes.append(one(i))
                cpu_before = time.process_time()
                naive.append(naive_order(naive_sessions, client, i, settings.risk))
                naive_cpu_s += time.process_time() - cpu_before
            worker_cpu_ms = (process_tree_cpu_s(worker.pid) - worker_cpu_before) * 1000 / args.orders
            load_after = load_average()
            naive_engine.dispose()
            statuses = Counter(str(o["status"]) for o, _ in outcomes)
            if statuses.get("filled", 0) != args.orders:
                raise BenchError(f"not every order filled: {dict(statuses)}")
            ids = [str(o["client_order_id"]) for o, _ in outcomes]
            checked = verify(desk.database_url, ids)
            if checked["statuses"] != {"filled": args.orders} or checked["fills"] != args.orders:
                raise BenchError(f"the ledger does not hold every fill once: {checked}")
            task_ms = [float(o["task_ms"]) for o, _ in outcomes]
            elapsed_ms = [float(o["elapsed_ms"]) for o, _ in outcomes]
            venue_ms = [float(o["broker_ms"]) for o, _ in outcomes if o.get("broker_ms") is not None]
            e2e_ms = [e for _, e in outcomes]
            queue_ms = [float(o["queue_ms"]) for o, _ in outcomes if o.get("queue_ms") is not None]
            print(
                f"worker: {args.orders} orders filled; load {load_before} -> {load_after}\n"
                f"  task start -> recorded outcome   {summary(task_ms)} ms\n"
                f"  submit() (the budget's own)      {summary(elapsed_ms)} ms\n"
                f"  inside venue.submit              {summary(venue_ms)} ms\n"
                f"  CLI enqueue -> recorded fill     {summary(e2e_ms)} ms\n"
                f"    of which publish -> task start {summary(queue_ms) if queue_ms else '-'} ms\n"
                f"  worker CPU per order (the worker and its pool, whole task incl. Celery) {worker_cpu_ms:.2f} ms\n"
                f"  ledger: {checked}",
                flush=True,
            )
            print(
                f"naive (ORM unit of work, one commit per step, in this process, in turn with the above): {summary(naive)} ms; "
                f"CPU per order {naive_cpu_s * 1000 / args.orders:.2f} ms",
                flush=True,
            )
        finally:
            client.close()
    p50 = statistics.median(task_ms)
    baseline = statistics.median(naive)
    result = {
        "benchmark": "orders",
        "orders": args.orders,
        "p50_ms": round(p50, 3),
        "p99_ms": round(percentile(task_ms, 99), 3),
        "e2e_p50_ms": round(statistics.median(e2e_ms), 3),
        "e2e_p99_ms": round(percentile(e2e_ms, 99), 3),
        "queue_p50_ms": round(statistics.median(queue_ms), 3) if queue_ms else None,
        "submit_p50_ms": round(statistics.median(elapsed_ms), 3),
        "submit_p99_ms": round(percentile(elapsed_ms, 99), 3),
        "baseline_p50_ms": round(baseline, 3),
        "baseline_p99_ms": round(percentile(naive, 99), 3),
        "ratio": round(baseline / p50, 2),
        "worker_cpu_ms_per_order": round(worker_cpu_ms, 3),
        "baseline_cpu_ms_per_order": round(naive_cpu_s * 1000 / args.orders, 3),
        "load_before": load_before,
        "load_after": load_after,
    }
    print(f"in-worker p50 {result['p50_ms']} ms vs naive p50 {result['baseline_p50_ms']} ms: {result['ratio']}x", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=300, help="timed orders (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed orders first (default 20)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each result (default 60)")
    parser.add_argument(
        "--pg-admin-url", default=DEFAULT_ADMIN_URL, help=f"a database for CREATE/DROP DATABASE (default {DEFAULT_ADMIN_URL})"
    )
    try:
        summary_ = run(parser.parse_args())
    except BenchError as exc:
        print(f"bench/orders failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(summary_), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
