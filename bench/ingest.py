"""Bar ingest: the bar store's PostgreSQL write against a plain binary COPY into the old bars table and pandas ``to_sql``, in one run.

Ours is :meth:`omni_tasks.storage.bars.BarStore.upsert` into today's schema:
``bars`` keyed by (series_id, ts), ``bar_series`` naming each (symbol,
timeframe, feed, adjustment). Checks and de-duplication in numpy, each
series' rows hashed; a series with no stored bar in its range goes by binary
COPY straight into ``bars``, a series whose rows match a recorded digest is a
re-run and is not sent, the rest go through staging and one upsert statement;
all in one transaction. It is measured twice on the same rows: into an empty
table (fresh), then again (a re-run of a backfill: nothing may change, and
the rows changed are counted).

The reference is the physical limit of the old design: a plain binary COPY of
the same rows (no staging, no upsert, no checks) straight into the bars table
as it was before revision 0009, keyed by (symbol, timeframe, ts, feed,
adjustment), created here in the scratch database. The baseline is what a
user would write: ``frame.to_sql(..., if_exists="append", index=False)`` with
pandas' default method, into a fresh table of that same old shape. to_sql is
slow (about 20k rows/s on a quiet machine), so by default it gets the first
``--baseline-rows`` rows (200,000) and is compared in rows/s. Every load starts
after a CHECKPOINT. With ``--rounds`` > 1 the reference COPY and ours alternate
and the medians are compared. The machine's load average is printed at the
start and the end: other work on the machine moves every figure, which is why
only ratios measured in the same run are compared.

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

The last line is one JSON object: ``{"rows_per_s": ..., "rerun_rows_per_s": ...,
"reference_copy_rows_per_s": ..., "fresh_vs_reference": ..., "rerun_vs_reference": ...,
"baseline_rows_per_s": ..., "ratio": ..., "rerun_rows_changed": ...}``
(fresh_vs_reference = rows_per_s / reference_copy_rows_per_s, rerun_vs_reference
likewise for the re-run, ratio = rows_per_s / baseline_rows_per_s).
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
#: Targets (issue 15), each against its reference in the same run.
TARGET_FRESH_VS_REFERENCE = 1.25
TARGET_RERUN_VS_REFERENCE = 2.0
TARGET_RATIO = 25.0
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
        symbol=str(sample["symbol"].iloc[0]),
        timeframe="1Min",
        provider="alpaca",
        feed="sip",
        adjustment="raw",
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
        connection.execute(text("TRUNCATE bars, bar_digests"))
    checkpoint(engine)


def checkpoint(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("CHECKPOINT"))


def create_old_bars(engine: Engine, name: str) -> None:
    """A fresh table shaped as bars was before revision 0009: keyed by five columns, four of them text."""
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
        connection.execute(text(OLD_BARS_DDL.format(name=name)))
    checkpoint(engine)


OLD_BARS_DDL = """
CREATE TABLE {name} (
    symbol varchar(12) NOT NULL, timeframe varchar(8) NOT NULL, ts timestamptz NOT NULL, feed varchar(16) NOT NULL,
    adjustment varchar(8) NOT NULL, open float8 NOT NULL, high float8 NOT NULL, low float8 NOT NULL, close float8 NOT NULL,
    volume float8 NOT NULL, vwap float8, trade_count int8, provider varchar(32) NOT NULL, ingested_at timestamptz NOT NULL,
    CONSTRAINT pk_{name} PRIMARY KEY (symbol, timeframe, ts, feed, adjustment)
)
"""


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
    """pandas to_sql, default method, appending to a fresh table shaped as bars was (the same five-column key)."""
    create_old_bars(engine, "bars_to_sql")
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


def reference_copy(engine: Engine, frame: pd.DataFrame) -> Measured:
    """Plain binary COPY of the rows (and an ingested_at) straight into a fresh table shaped as bars was (five-column key)."""
    create_old_bars(engine, "bars_reference")
    started = time.perf_counter()
    columns = [
        pgcopy.text_column(name, frame[name]) if name in TEXT else
        pgcopy.timestamptz_column(name, frame[name]) if name == "ts" else
        pgcopy.Column(name, "int8", frame[name].to_numpy(dtype=np.int64, na_value=0), frame[name].isna().to_numpy()) if name == "trade_count" else
        pgcopy.Column(name, "float8", frame[name].to_numpy(), frame[name].isna().to_numpy())
        for name in frames.BAR_COLUMNS
    ]  # fmt: skip
    columns.append(pgcopy.Column("ingested_at", "timestamptz", np.full(len(frame), time.time_ns(), dtype=np.int64)))
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        names = ", ".join(column.name for column in columns)
        cursor.copy_expert(
            f"COPY bars_reference ({names}) FROM STDIN (FORMAT binary)", pgcopy.ChunkReader(pgcopy.copy_chunks(columns)), size=1 << 20
        )
        cursor.close()
        raw.commit()
    finally:
        raw.close()
    seconds = time.perf_counter() - started
    stored = table_rows(engine, "bars_reference")
    if stored != len(frame):
        raise BenchError(f"the reference COPY stored {stored} rows of {len(frame)}")
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE bars_reference"))
    checkpoint(engine)
    return Measured(len(frame), seconds, len(frame))


TEXT = ("symbol", "timeframe", "provider", "feed", "adjustment")


def run(args: argparse.Namespace) -> dict[str, float | int]:
    load_at_start = os.getloadavg()
    generated = time.perf_counter()
    frame = synthetic_bars(args.rows, args.symbols)
    check_shape(frame)
    symbols = frame["symbol"].nunique()
    print(f"generated {len(frame):,} bars ({symbols:,} symbols x up to {-(-len(frame) // symbols):,} one-minute bars) "
          f"in {time.perf_counter() - generated:.1f} s", flush=True)  # fmt: skip

    with scratch_database(args.pg_admin_url) as url:
        engine = make_engine(url)
        try:
            migrations.upgrade(engine)
            store = BarStore(engine)
            print(f"PostgreSQL {server_version(engine)}, scratch database {make_url(url).database}", flush=True)
            fresh_runs: list[Measured] = []
            rerun_runs: list[Measured] = []
            reference_runs: list[Measured] = []
            for round_number in range(1, args.rounds + 1):
                reference = reference_copy(engine, frame)
                reset_bars(engine)
                fresh, result = ours(store, frame)
                if result.inserted != len(frame) or table_rows(engine, "bars") != len(frame):
                    raise BenchError(f"fresh upsert inserted {result.inserted} of {len(frame)} rows")
                rerun, result = ours(store, frame)
                if result.unchanged != len(frame) or result.changed:
                    raise BenchError(f"re-run of identical rows reported {result}")
                fresh_runs.append(fresh)
                rerun_runs.append(rerun)
                reference_runs.append(reference)
                print(f"round {round_number}: reference COPY {reference.rows_per_s:,.0f} rows/s; ours fresh {fresh.rows_per_s:,.0f} rows/s "
                      f"({fresh.rows_per_s / reference.rows_per_s:.2f}x), re-run {rerun.rows_per_s:,.0f} rows/s "
                      f"({rerun.rows_per_s / reference.rows_per_s:.2f}x, {result.rerun_series:,} series recognised by digest), "
                      f"re-run rows changed {rerun.changed}", flush=True)  # fmt: skip
            verify_read_back(store, frame)
            correction = verify_correction(store, frame)
            print(f"a re-run with {correction} corrected rows: {correction} rows updated, the rest unchanged", flush=True)
            reset_bars(engine)
            base_rows = len(frame) if args.baseline_rows <= 0 else min(args.baseline_rows, len(frame))
            print(f"baseline: to_sql of {base_rows:,} rows ...", flush=True)
            base = baseline(engine, frame.iloc[:base_rows])
        finally:
            engine.dispose()

    fresh = median(fresh_runs)
    rerun = median(rerun_runs)
    reference = median(reference_runs)
    ratio = fresh.rows_per_s / base.rows_per_s
    report(args, fresh, rerun, base, reference, ratio, rounds=args.rounds)
    load_at_end = os.getloadavg()
    print(f"load average (1, 5, 15 min) at start {' '.join(f'{v:.2f}' for v in load_at_start)}, "
          f"at end {' '.join(f'{v:.2f}' for v in load_at_end)} on {os.cpu_count()} CPUs")  # fmt: skip
    return {
        "rows_per_s": round(fresh.rows_per_s),
        "rerun_rows_per_s": round(rerun.rows_per_s),
        "reference_copy_rows_per_s": round(reference.rows_per_s),
        "fresh_vs_reference": round(fresh.rows_per_s / reference.rows_per_s, 2),
        "rerun_vs_reference": round(rerun.rows_per_s / reference.rows_per_s, 2),
        "baseline_rows_per_s": round(base.rows_per_s),
        "ratio": round(ratio, 2),
        "rerun_rows_changed": max(m.changed for m in rerun_runs),
    }


def verify_correction(store: BarStore, frame: pd.DataFrame) -> int:
    """A re-run with a few corrected closes (spread over several series) updates exactly those rows; returns how many."""
    rows = np.linspace(0, len(frame) - 1, num=min(7, len(frame)), dtype=np.int64)
    corrected = frame.copy()
    corrected.loc[rows, "close"] = corrected.loc[rows, "close"] * 1.001
    result = store.upsert(corrected)
    if (result.inserted, result.updated, result.unchanged) != (0, len(rows), len(frame) - len(rows)):
        raise BenchError(f"a re-run with {len(rows)} corrected rows reported {result}")
    return len(rows)


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


def report(
    args: argparse.Namespace, fresh: Measured, rerun: Measured, base: Measured, reference: Measured, ratio: float, *, rounds: int
) -> None:
    note = f" (median of {rounds} rounds)" if rounds > 1 else ""
    fresh_x = fresh.rows_per_s / reference.rows_per_s
    rerun_x = rerun.rows_per_s / reference.rows_per_s
    rows = [
        ("reference: plain binary COPY, old 5-column key" + note, reference, ""),
        ("ours: BarStore.upsert, fresh table" + note, fresh, f"{fresh_x:.2f}x the reference"),
        ("ours: re-run of identical rows" + note, rerun, f"{rerun_x:.2f}x the reference; rows changed: {rerun.changed}"),
        (
            "pandas to_sql (default method), old table",
            base,
            "" if base.rows == fresh.rows else f"first {base.rows:,} rows (--baseline-rows)",
        ),
    ]
    print()
    print(f"{'':52s} {'rows':>11s} {'seconds':>9s} {'rows/s':>11s}")
    for label, measured, extra in rows:
        print(f"{label:52s} {measured.rows:>11,} {measured.seconds:>9.2f} {measured.rows_per_s:>11,.0f}  {extra}")
    print()

    def verdict(value: float, target: float) -> str:
        return f"{value:.2f}x (target >= {target:g}x: {'met' if value >= target else 'NOT met'})"

    print(f"ours fresh / reference COPY: {verdict(fresh_x, TARGET_FRESH_VS_REFERENCE)}; "
          f"re-run / reference COPY: {verdict(rerun_x, TARGET_RERUN_VS_REFERENCE)}; "
          f"ours fresh / to_sql: {verdict(ratio, TARGET_RATIO)}")  # fmt: skip
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
    parser.add_argument(
        "--pg-admin-url", default=DEFAULT_ADMIN_URL, help=f"a database to connect to for CREATE/DROP DATABASE (default {DEFAULT_ADMIN_URL})"
    )
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
