"""Scan: a 500-symbol, one-year daily market scan, in seconds (target: under 5 s end to end through Celery).

THE CELERY LEG IS NOT MEASURED YET. The scan tasks (``omni_tasks/scans/tasks.py``:
a chord of chunk tasks on the ``scans`` queue and a merge that writes the scan
runs and results tables) are being written; until they land this benchmark
measures the in-process pipeline those tasks will run, which is the floor of
the end-to-end figure:

1. per chunk of ``--chunk-size`` symbols (what one chunk task will do): read the
   chunk's bars from the bar store's database in one statement
   (:func:`omni_tasks.scans.loading.load_bars` through
   :class:`~omni_tasks.scans.loading.BatchBarReader`) and compute its indicators
   (:func:`omni_tasks.scans.scanner.scan_chunk`), one chunk after another in
   this process;
2. the partials through their JSON form and back (as they will travel between
   processes), then :func:`omni_tasks.scans.scanner.merge`: z-scores, score
   and rank over all symbols.

The store is a scratch PostgreSQL database (``omni_bench_scan_<hex>``) created
from ``--pg-admin-url``, migrated with the project's Alembic revisions, filled
with one year of ``synthetic`` daily bars per symbol through ``BarStore.upsert``,
and dropped at the end. Setup is not timed. The exchange calendar is already
built when timing starts (a worker builds it once per process). The result is
checked: every symbol scored, and the chunked ranking identical to a one-shot
scan of the same bars.

``--per-symbol-reads`` adds one round that reads through ``BarStore.read``
(one call per symbol) instead, for comparison; it is not part of the figure.

    python bench/scan.py [--symbols 500] [--chunk-size 100] [--rounds 3] [--as-of 2026-10-30T21:00:00+00:00] [--per-symbol-reads]

The last line is one JSON object: ``{"seconds": ..., "symbols": ...}``
(seconds: the median round, in-process pipeline only until the Celery leg lands).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import create_engine, make_url, text

from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.scans.loading import BatchBarReader, ManyBarReader, PerSymbolReader, load_bars
from omni_tasks.scans.scanner import ScanConfig, ScanPartial, ScanResult, chunk, merge, scan, scan_chunk
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine

DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
DEFAULT_AS_OF = "2026-10-30T21:00:00+00:00"  # a Friday, an hour after the close (20:00 UTC in EDT)
TARGET_S = 5.0


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


def run(args: argparse.Namespace) -> dict[str, float | int]:
    as_of = pd.Timestamp(args.as_of).tz_convert("UTC")
    symbols = universe(args.symbols)
    config = ScanConfig()
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
                timing, result, bars = pipeline(BatchBarReader(engine), symbols, as_of, config, args.chunk_size)
                rounds.append(timing)
                print(f"round {number}: {timing.total_s:.3f} s (load {timing.load_s:.3f}, indicators {timing.indicators_s:.3f}, "
                      f"partials via JSON {timing.transport_s:.3f}, merge {timing.merge_s:.3f})", flush=True)
            check(result, bars, symbols, as_of, config)  # the last round's result
            if args.per_symbol_reads:
                slow, slow_result, _ = pipeline(PerSymbolReader(store), symbols, as_of, config, args.chunk_size)
                same = slow_result.frame.equals(result.frame)
                print(f"for comparison, reading through BarStore.read (one call per symbol): {slow.total_s:.3f} s "
                      f"(load {slow.load_s:.3f}); same result: {same}", flush=True)
                if not same:
                    raise BenchError("reading per symbol gave a different scan than the batch read")
        finally:
            engine.dispose()

    median = statistics.median(r.total_s for r in rounds)
    best = min(rounds, key=lambda r: r.total_s)
    chunks = len(chunk(symbols, args.chunk_size))
    print()
    print(f"in-process scan of {len(symbols)} symbols in {chunks} chunks of <= {args.chunk_size}: median {median:.3f} s over {len(rounds)} round(s) "
          f"(fastest {best.total_s:.3f} s: load {best.load_s:.3f}, indicators {best.indicators_s:.3f}, "
          f"JSON {best.transport_s:.3f}, merge {best.merge_s:.3f})")
    print(f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("CELERY LEG NOT MEASURED YET: omni_tasks.scans.tasks (chunk tasks + merge + scan runs/results tables) is not written; "
          f"the figure below is the in-process pipeline only (target {TARGET_S:g} s applies to the end-to-end run)")
    return {"seconds": round(median, 3), "symbols": len(symbols)}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500, help="symbols in the universe (default 500)")
    parser.add_argument("--chunk-size", type=int, default=100, help="symbols per chunk (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    parser.add_argument("--as-of", default=DEFAULT_AS_OF, help=f"the scan's instant, ISO 8601 with offset (default {DEFAULT_AS_OF})")
    parser.add_argument("--per-symbol-reads", action="store_true", help="add a comparison round reading through BarStore.read per symbol")
    parser.add_argument("--pg-admin-url", default=DEFAULT_ADMIN_URL, help=f"a database to connect to for CREATE/DROP DATABASE (default {DEFAULT_ADMIN_URL})")
    args = parser.parse_args(argv)
    if args.symbols < 1 or args.chunk_size < 1 or args.rounds < 1:
        parser.error("--symbols, --chunk-size and --rounds must be at least 1")
    try:
        summary = run(args)
    except BenchError as exc:
        print(f"bench/scan failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
