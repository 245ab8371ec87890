"""Bar ingest: the bar store's PostgreSQL upsert against pandas ``DataFrame.to_sql``, in one run.

Ours is :meth:`omni_tasks.storage.bars.BarStore.upsert`: checks and
de-duplication in numpy, a binary COPY (encoded column-wise with numpy) into a
temporary staging table, and one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``
the row changed, all in one transaction. It is measured twice on the same
rows: into an empty ``bars`` table (fresh), then again (a re-run of a
backfill: nothing may change). The baseline is what a user would write:
``frame.to_sql(..., if_exists="append", index=False)`` with pandas' default
method, into a fresh table of the same shape (``LIKE bars INCLUDING ALL``, so
with the same primary key). to_sql is slow (about 20k rows/s), so by default
it gets the first ``--baseline-rows`` rows (200,000) and is compared in rows/s.

For scale, the same rows also go once through a plain binary COPY straight
into another fresh table of that shape (no staging, no upsert, no checks):
the most any loader could do with this table on this machine at this moment.
It is reported, not part of the ratio. The machine's load average is printed
at the start and the end: other work on the machine moves every figure.

The bars are synthetic but shaped like the real ones: ``--symbols`` tickers
(1-5 letters) of one-minute bars in regular sessions (14:30-21:00 UTC on
weekdays), a geometric random walk from a price between $5 and $500, high and
low around open and close, lognormal volumes, 1% of vwap and trade_count
missing (NULL), provider alpaca, feed sip, adjustment raw; the dtypes are the
ones :func:`omni_tasks.contracts.bars.canonical_bars` produces.

The benchmark creates its own PostgreSQL database (``omni_bench_ingest_<hex>``)
from ``--pg-admin-url``, migrates it with the project's Alembic revisions, and
drops it at the end.

    python bench/ingest.py [--rows 1000000] [--symbols 1000] [--baseline-rows 200000] [--rounds 1]

The last line is one JSON object:
``{"rows_per_s": ..., "rerun_rows_per_s": ..., "baseline_rows_per_s": ..., "ratio": ..., "rerun_rows_changed": ...}``
(ratio = rows_per_s / baseline_rows_per_s).
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
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine, create_engine, make_url, text

from omni_tasks.contracts import bars as frames
from omni_tasks.storage import migrations, pgcopy
from omni_tasks.storage.bars import BarStore, UpsertResult
from omni_tasks.storage.engine import make_engine

DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
TARGET_ROWS_PER_S = 250_000
TARGET_RATIO = 10.0
SESSION_MINUTES = 390
LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


class BenchError(RuntimeError):
    """The benchmark could not measure, or the store did something wrong (a re-run changed rows)."""


# ---- data ---------------------------------------------------------------------------


def synthetic_bars(rows: int, symbols: int, *, seed: int = 7) -> pd.DataFrame:
    """``rows`` canonical one-minute bars over ``symbols`` tickers (the last ones may get one bar fewer)."""
    if rows < 1 or symbols < 1:
        raise ValueError("rows and symbols must be positive")
    symbols = min(symbols, rows)
    per_symbol = -(-rows // symbols)
    rng = np.random.default_rng(seed)
    tickers: set[str] = set()
    while len(tickers) < symbols:
        size = int(rng.choice([1, 2, 3, 4, 5], p=[0.02, 0.08, 0.35, 0.45, 0.10]))
        tickers.add("".join(rng.choice(LETTERS, size)))
    names = np.array(sorted(tickers), dtype=object)

    days = pd.bdate_range("2026-01-05", periods=-(-per_symbol // SESSION_MINUTES))
    opens = days.values.astype("datetime64[ns]") + np.timedelta64(14 * 60 + 30, "m")
    minutes = (opens[:, None] + np.arange(SESSION_MINUTES) * np.timedelta64(1, "m")).ravel()[:per_symbol]

    shape = (symbols, per_symbol)
    first = np.exp(rng.uniform(np.log(5.0), np.log(500.0), symbols))
    close = first[:, None] * np.exp(np.cumsum(rng.normal(0.0, 0.0008, shape), axis=1))
    open_ = np.concatenate([first[:, None], close[:, :-1]], axis=1)
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, 0.0005, shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, 0.0005, shape)))
    volume = np.round(rng.lognormal(8.0, 1.0, shape))
    vwap = low + (high - low) * rng.uniform(0.2, 0.8, shape)
    trade_count = np.maximum(1, volume // 50).astype(np.int64)

    n = symbols * per_symbol
    vwap_flat = vwap.ravel()
    vwap_flat[rng.random(n) < 0.01] = np.nan
    counts = pd.array(trade_count.ravel(), dtype="Int64")
    counts[rng.random(n) < 0.01] = pd.NA

    def constant(value: str) -> pd.api.extensions.ExtensionArray:
        return pd.array(np.full(n, value, dtype=object), dtype="str")

    frame = pd.DataFrame(
        {
            "symbol": pd.array(np.repeat(names, per_symbol), dtype="str"),
            "timeframe": constant("1Min"),
            "ts": pd.DatetimeIndex(np.tile(minutes, symbols)).tz_localize("UTC"),
            "open": open_.ravel(),
            "high": high.ravel(),
            "low": low.ravel(),
            "close": close.ravel(),
            "volume": volume.ravel(),
            "vwap": vwap_flat,
            "trade_count": counts,
            "provider": constant("alpaca"),
            "feed": constant("sip"),
            "adjustment": constant("raw"),
        }
    )
    return frame.iloc[:rows].reset_index(drop=True)


def check_shape(frame: pd.DataFrame) -> None:
    """The generated frame has canonical_bars' dtypes and a sample passes the boundary contract."""
    sample = frame.iloc[:2_000]
    shaped = frames.canonical_bars(
        sample[["ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]],
        symbol=str(sample["symbol"].iloc[0]), timeframe="1Min", provider="alpaca", feed="sip", adjustment="raw",
    )
    if not shaped.dtypes.equals(frame.dtypes):
        raise BenchError(f"generated dtypes differ from canonical_bars':\n{frame.dtypes}\nvs\n{shaped.dtypes}")
    _, rejected = frames.split_valid(sample)
    if len(rejected):
        raise BenchError(f"generated bars fail the boundary contract: {rejected['reason'].iloc[0]}")


# ---- database ------------------------------------------------------------------------


@contextmanager
def scratch_database(admin_url: str, prefix: str = "omni_bench_ingest") -> Iterator[str]:
    """A new, empty PostgreSQL database for this run; dropped afterwards whatever happens."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def server_version(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(connection.execute(text("SHOW server_version")).scalar_one())


def reset_bars(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE bars"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("CHECKPOINT"))


def table_rows(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608 - our own table names


# ---- measurements ----------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    rows: int
    seconds: float
    changed: int = 0
    phases: dict[str, float] | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def ours(store: BarStore, frame: pd.DataFrame) -> tuple[Measured, UpsertResult]:
    started = time.perf_counter()
    result = store.upsert(frame)
    seconds = time.perf_counter() - started
    return Measured(len(frame), seconds, result.changed, dict(result.phases)), result


def baseline(engine: Engine, frame: pd.DataFrame) -> Measured:
    """pandas to_sql, default method, appending to a fresh table shaped like bars (same primary key)."""
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS bars_to_sql"))
        connection.execute(text("CREATE TABLE bars_to_sql (LIKE bars INCLUDING ALL)"))
    rows = frame.assign(ingested_at=pd.Timestamp(datetime.now(tz=UTC)))
    started = time.perf_counter()
    rows.to_sql("bars_to_sql", engine, if_exists="append", index=False)
    seconds = time.perf_counter() - started
    stored = table_rows(engine, "bars_to_sql")
    if stored != len(frame):
        raise BenchError(f"to_sql stored {stored} rows of {len(frame)}")
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE bars_to_sql"))
    return Measured(len(frame), seconds, len(frame))


def ceiling(engine: Engine, frame: pd.DataFrame) -> Measured:
    """Plain binary COPY of the rows (and an ingested_at) straight into a fresh table shaped like bars."""
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS bars_copy"))
        connection.execute(text("CREATE TABLE bars_copy (LIKE bars INCLUDING ALL)"))
    started = time.perf_counter()
    columns = [
        pgcopy.text_column(name, frame[name]) if name in TEXT else
        pgcopy.timestamptz_column(name, frame[name]) if name == "ts" else
        pgcopy.Column(name, "int8", frame[name].to_numpy(dtype=np.int64, na_value=0), frame[name].isna().to_numpy()) if name == "trade_count" else
        pgcopy.Column(name, "float8", frame[name].to_numpy(), frame[name].isna().to_numpy())
        for name in frames.BAR_COLUMNS
    ]
    columns.append(pgcopy.Column("ingested_at", "timestamptz", np.full(len(frame), time.time_ns(), dtype=np.int64)))
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        names = ", ".join(column.name for column in columns)
        cursor.copy_expert(f"COPY bars_copy ({names}) FROM STDIN (FORMAT binary)", pgcopy.ChunkReader(pgcopy.copy_chunks(columns)), size=1 << 20)
        cursor.close()
        raw.commit()
    finally:
        raw.close()
    seconds = time.perf_counter() - started
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE bars_copy"))
    return Measured(len(frame), seconds, len(frame))


TEXT = ("symbol", "timeframe", "provider", "feed", "adjustment")


def run(args: argparse.Namespace) -> dict[str, float | int]:
    load_at_start = os.getloadavg()[0]
    generated = time.perf_counter()
    frame = synthetic_bars(args.rows, args.symbols)
    check_shape(frame)
    symbols = frame["symbol"].nunique()
    print(f"generated {len(frame):,} bars ({symbols:,} symbols x up to {-(-len(frame) // symbols):,} one-minute bars) "
          f"in {time.perf_counter() - generated:.1f} s", flush=True)

    with scratch_database(args.pg_admin_url) as url:
        engine = make_engine(url)
        try:
            migrations.upgrade(engine)
            store = BarStore(engine)
            print(f"PostgreSQL {server_version(engine)}, scratch database {make_url(url).database}", flush=True)
            fresh_runs: list[Measured] = []
            rerun_runs: list[Measured] = []
            for round_number in range(1, args.rounds + 1):
                reset_bars(engine)
                fresh, result = ours(store, frame)
                if result.inserted != len(frame) or table_rows(engine, "bars") != len(frame):
                    raise BenchError(f"fresh upsert inserted {result.inserted} of {len(frame)} rows")
                rerun, result = ours(store, frame)
                if result.unchanged != len(frame):
                    raise BenchError(f"re-run of identical rows reported {result}")
                fresh_runs.append(fresh)
                rerun_runs.append(rerun)
                print(f"round {round_number}: fresh {fresh.rows_per_s:,.0f} rows/s, re-run {rerun.rows_per_s:,.0f} rows/s, "
                      f"re-run rows changed {rerun.changed}", flush=True)
            verify_read_back(store, frame)
            reset_bars(engine)
            print("plain binary COPY (for scale) ...", flush=True)
            copy = ceiling(engine, frame)
            base_rows = len(frame) if args.baseline_rows <= 0 else min(args.baseline_rows, len(frame))
            print(f"baseline: to_sql of {base_rows:,} rows ...", flush=True)
            base = baseline(engine, frame.iloc[:base_rows])
        finally:
            engine.dispose()

    fresh = median(fresh_runs)
    rerun = median(rerun_runs)
    ratio = fresh.rows_per_s / base.rows_per_s
    report(args, fresh, rerun, base, copy, ratio, rounds=args.rounds)
    print(f"load average (1 min) at start {load_at_start:.2f}, at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return {
        "rows_per_s": round(fresh.rows_per_s),
        "rerun_rows_per_s": round(rerun.rows_per_s),
        "baseline_rows_per_s": round(base.rows_per_s),
        "ratio": round(ratio, 2),
        "rerun_rows_changed": max(m.changed for m in rerun_runs),
    }


def verify_read_back(store: BarStore, frame: pd.DataFrame) -> None:
    """One symbol read back is the frame's rows exactly (same checksum)."""
    symbol = str(frame["symbol"].iloc[-1])
    expected = frame[frame["symbol"] == symbol].reset_index(drop=True)
    start, end = expected["ts"].iloc[0].to_pydatetime(), expected["ts"].iloc[-1].to_pydatetime() + pd.Timedelta(minutes=1)
    stored = store.read(symbol, "1Min", start, end, feeds=("sip",))
    if len(stored) != len(expected) or store.checksum(stored) != store.checksum(expected):
        raise BenchError(f"{symbol} read back differs from what was written ({len(stored)} rows vs {len(expected)})")


def median(runs: list[Measured]) -> Measured:
    middle = sorted(runs, key=lambda m: m.seconds)[len(runs) // 2]
    return middle if len(runs) % 2 else Measured(middle.rows, statistics.median(m.seconds for m in runs), middle.changed, middle.phases)


def report(args: argparse.Namespace, fresh: Measured, rerun: Measured, base: Measured, copy: Measured, ratio: float, *, rounds: int) -> None:
    note = f" (median of {rounds} rounds)" if rounds > 1 else ""
    rows = [
        ("ours: COPY + upsert, fresh table" + note, fresh, ""),
        ("ours: re-run of identical rows" + note, rerun, f"rows changed: {rerun.changed}"),
        ("pandas to_sql (default method), fresh table", base, "" if base.rows == fresh.rows else f"first {base.rows:,} rows (--baseline-rows)"),
        ("for scale: plain binary COPY, fresh table", copy, f"ours fresh = {fresh.rows_per_s / copy.rows_per_s:.0%} of it"),
    ]
    print()
    print(f"{'':48s} {'rows':>11s} {'seconds':>9s} {'rows/s':>11s}")
    for label, measured, extra in rows:
        print(f"{label:48s} {measured.rows:>11,} {measured.seconds:>9.2f} {measured.rows_per_s:>11,.0f}  {extra}")
    print()
    fresh_ok = "met" if fresh.rows_per_s >= TARGET_ROWS_PER_S else "NOT met"
    rerun_ok = "met" if rerun.rows_per_s >= TARGET_ROWS_PER_S else "NOT met"
    ratio_ok = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"ratio ours fresh / to_sql: {ratio:.1f}x (target >= {TARGET_RATIO:g}x: {ratio_ok}); "
          f"fresh {fresh.rows_per_s:,.0f} rows/s and re-run {rerun.rows_per_s:,.0f} rows/s "
          f"(target >= {TARGET_ROWS_PER_S:,}: {fresh_ok}, {rerun_ok})")
    for label, measured in (("fresh", fresh), ("re-run", rerun)):
        if measured.phases:
            parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in measured.phases.items())
            print(f"where the time went ({label}): {parts}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="bars to ingest (default 1,000,000)")
    parser.add_argument("--symbols", type=int, default=1_000, help="tickers the bars are spread over (default 1,000)")
    parser.add_argument("--baseline-rows", type=int, default=200_000, help="rows for to_sql (default 200,000; 0 = all --rows)")
    parser.add_argument("--rounds", type=int, default=1, help="fresh + re-run rounds of ours; the median is reported (default 1)")
    parser.add_argument("--pg-admin-url", default=DEFAULT_ADMIN_URL, help=f"a database to connect to for CREATE/DROP DATABASE (default {DEFAULT_ADMIN_URL})")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        summary = run(args)
    except BenchError as exc:
        print(f"bench/ingest failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
