"""Bars/s through one real backfill worker: minute bars from the synthetic provider into PostgreSQL, the whole path.

What is timed: ``omni backfill run`` records a job and enqueues its partitions
(5 sessions of one symbol each); one ``omni worker backfill --concurrency N``
fetches each partition from the offline synthetic feed, checks it against the
bar contract, writes it with COPY + upsert and records it in the ledger. The
clock starts when the job is enqueued and stops when the ledger marks it
finished; bars/s = bars stored / that time. Each round backfills new symbols
(every bar a new row); each concurrency runs on a fresh database and its own
private redis-server; the median round is reported.

    python -m bench.backfill_throughput [--symbols 40] [--sessions 10] [--rounds 3] [--concurrency 1,2]

The last line is one JSON object: ``{"runs": [{"concurrency": 1, "bars_per_s": ...}, ...], ...}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date, timedelta
from typing import Any

from bench.private_desk import DEFAULT_ADMIN_URL, BenchError, Desk, load_average, private_desk, wait_until

#: Two calendar weeks of sessions after this day (no holidays in it).
FIRST_SESSION = date(2024, 3, 4)


def session_range(sessions: int) -> tuple[str, str]:
    """Start and exclusive end (ISO dates) covering ``sessions`` exchange sessions from FIRST_SESSION."""
    from omni_tasks.marketdata import calendar

    days = calendar.sessions(FIRST_SESSION, date(FIRST_SESSION.year + 1, 1, 1))[:sessions]
    if len(days) < sessions:
        raise BenchError(f"only {len(days)} sessions after {FIRST_SESSION}")
    return FIRST_SESSION.isoformat(), (days[-1] + timedelta(days=1)).isoformat()


def timed_job(desk: Desk, args: argparse.Namespace, symbols: list[str], start: str, end: str) -> tuple[int, int, float, int]:
    """Enqueue one job and wait for the ledger to finish it: (bars, partitions, seconds, Redis commands meanwhile)."""
    from omni_tasks.marketdata import backfill
    from omni_tasks.storage.engine import make_engine, session_factory

    engine = make_engine(desk.database_url)
    factory = session_factory(engine)
    try:
        commands = desk.redis_commands()
        started = time.monotonic()
        run = desk.omni("backfill", "run", ",".join(symbols), "--timeframe", "1Min", "--start", start, "--end", end)
        job_id = int(run.stdout.split("job ")[1].split(":")[0])
        wait_until(
            lambda: backfill.job_progress(factory, job_id)["status"] in {"succeeded", "failed", "partial"},
            args.timeout,
            "the job to finish",
            0.1,
        )
        seconds = time.monotonic() - started
        progress = backfill.job_progress(factory, job_id)
        commands = desk.redis_commands() - commands
    finally:
        engine.dispose()
    if progress["status"] != "succeeded":
        raise BenchError(f"job {job_id} ended {progress['status']}: {progress['by_status']}")
    return int(progress["rows"]), int(progress["partitions"]), seconds, commands


def one_run(args: argparse.Namespace, concurrency: int, start: str, end: str) -> dict[str, Any]:
    with private_desk(args.pg_admin_url, OMNI_PROVIDERS_ORDER="synthetic") as desk:
        desk.worker("backfill", concurrency=concurrency)
        load_before = load_average()
        rounds: list[float] = []
        per_partition: list[float] = []
        for number in range(args.rounds):
            # New symbols every round: every bar is a new row, as in a first backfill.
            symbols = [f"R{number}B{i:03d}" for i in range(args.symbols)]
            bars, partitions, seconds, commands = timed_job(desk, args, symbols, start, end)
            rounds.append(bars / seconds)
            per_partition.append(commands / partitions)
            print(
                f"  concurrency {concurrency}, round {number + 1}: {bars:,} bars in {partitions} partitions in {seconds:.1f} s = {bars / seconds:,.0f} bars/s",
                flush=True,
            )
        result = {
            "concurrency": concurrency,
            "symbols": args.symbols,
            "partitions": partitions,
            "bars": bars,
            "rounds_bars_per_s": [round(r, 1) for r in rounds],
            "bars_per_s": round(statistics.median(rounds), 1),
            "redis_commands_per_partition": round(statistics.median(per_partition), 1),
            "load_before": load_before,
            "load_after": load_average(),
        }
        print(
            f"concurrency {concurrency}: {result['redis_commands_per_partition']:.0f} Redis commands per partition (broker, ledger, heartbeats); median {result['bars_per_s']:,.0f} bars/s over {args.rounds} rounds "
            f"({bars:,} minute bars, {partitions} partitions each); load {result['load_before']} -> {result['load_after']}",
            flush=True,
        )
        return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    start, end = session_range(args.sessions)
    print(f"backfill throughput: {args.symbols} symbols x {args.sessions} sessions of 1Min synthetic bars ({start} .. {end}), "
          f"one backfill worker per run; load {load_average()}", flush=True)  # fmt: skip
    runs = [one_run(args, int(c), start, end) for c in args.concurrency.split(",")]
    return {"benchmark": "backfill_throughput", "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=40, help="symbols (default 40)")
    parser.add_argument(
        "--sessions", type=int, default=10, help="exchange sessions of minute bars per symbol (default 10: 2 partitions each)"
    )
    parser.add_argument("--concurrency", default="1,2", help="prefork processes of the worker, one run each (default 1,2)")
    parser.add_argument("--rounds", type=int, default=3, help="jobs per concurrency, new symbols each; the median is reported (default 3)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a job may take (default 300)")
    parser.add_argument(
        "--pg-admin-url", default=DEFAULT_ADMIN_URL, help=f"a database for CREATE/DROP DATABASE (default {DEFAULT_ADMIN_URL})"
    )
    try:
        summary = run(parser.parse_args())
    except BenchError as exc:
        print(f"bench/backfill_throughput failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
