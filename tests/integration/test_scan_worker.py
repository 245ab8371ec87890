"""A scan across 500 symbols through real workers on real Redis and PostgreSQL, with the ranking checked against a direct computation.

One PostgreSQL database per module, migrated with ``omni db upgrade`` and filled
(in this process, one ``BarStore.upsert``) with about a year of synthetic daily
bars for 500 symbols; one real ``omni worker scans``; every scan goes through
the ``omni scan`` CLI as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from sqlalchemy import Engine, func, select

from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.scans.loading import load_bars
from omni_tasks.scans.scanner import ScanConfig, chunk, scan
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine
from omni_tasks.storage.models import ScanRun
from tests.conftest import REPO_ROOT, OmniProcess, service_env, wait_for_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

SYMBOLS = [f"T{i:03d}" for i in range(500)]
AS_OF = "2025-07-01T21:00:00+00:00"  # a Tuesday, an hour after the close (20:00 UTC in EDT)
FIRST_BAR_FROM = datetime(2024, 7, 1, tzinfo=UTC)
CHUNK_SIZE = 100


@dataclass(frozen=True)
class ScanSetup:
    env: dict[str, str]
    database_url: str
    engine: Engine
    bars_stored: int


def _omni(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def _payload(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object `omni scan ... --json` prints (whatever the console printed before it)."""
    start = done.stdout.find("{")
    assert start >= 0, f"no JSON in the output (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout[start:])  # type: ignore[no-any-return]


def _fill(engine: Engine) -> int:
    """About a year of synthetic daily bars per symbol (up to and including the as-of session), one upsert."""
    provider = SyntheticBars()
    end = pd.Timestamp(AS_OF).to_pydatetime()
    frames = [provider.fetch_bars(BarRequest(s, "1Day", FIRST_BAR_FROM, end, feed="synthetic")).bars for s in SYMBOLS]
    result = BarStore(engine).upsert(pd.concat(frames, ignore_index=True))
    return int(result.inserted)


@pytest.fixture(scope="module")
def scan_setup(redis_url: str, pg_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScanSetup]:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("scan-worker")
    database_url = pg_database()
    env = service_env(redis_url=redis_url, database_url=database_url, data_dir=tmp / "data")
    upgrade = _omni(env, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    # Start the worker first: it boots while the bars are written.
    worker = OmniProcess(["worker", "scans"], env, tmp / "logs" / "scans.log").start()
    engine = make_engine(database_url)
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        t0 = time.monotonic()
        stored = _fill(engine)
        fill_s = time.monotonic() - t0
        wait_for_worker(client, "scans", worker)
        print(
            f"\nscan setup: {stored:,} bars for {len(SYMBOLS)} symbols upserted in {fill_s:.1f} s; "
            f"database migrated and worker up after {time.monotonic() - started:.1f} s"
        )
        yield ScanSetup(env=env, database_url=database_url, engine=engine, bars_stored=stored)
    finally:
        worker.stop()
        if worker.process is not None and worker.process.returncode not in (0, None, -15):
            print(f"scans worker exited with {worker.process.returncode}:\n{worker.log_text()[-3000:]}")
        engine.dispose()
        client.close()


def _run_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(ScanRun)).scalar_one())


def test_scan_of_500_symbols_through_workers_ranks_exactly_as_a_direct_scan(scan_setup: ScanSetup) -> None:
    started = time.monotonic()
    done = _omni(
        scan_setup.env, "scan", "--symbols", ",".join(SYMBOLS), "--as-of", AS_OF, "--wait", "--json",
        "--top", str(len(SYMBOLS)), "--chunk-size", str(CHUNK_SIZE), "--timeout", "90",
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    payload = _payload(done)
    assert payload["status"] == "succeeded", payload.get("error")
    assert payload["error"] is None
    assert payload["chunks"] == len(chunk(SYMBOLS, CHUNK_SIZE)) == 5
    assert sorted(payload["symbols"]) == SYMBOLS
    rows = payload["results"]
    assert len(rows) == len(SYMBOLS)
    assert {r["symbol"] for r in rows} == set(SYMBOLS)

    # The same scan computed directly, in this process, over the same bars read back from the store.
    config = ScanConfig()
    bars = load_bars(BarStore(scan_setup.engine), SYMBOLS, as_of=AS_OF, config=config)
    assert bars["symbol"].nunique() == len(SYMBOLS)
    direct = scan(bars, as_of=AS_OF, config=config, symbols=SYMBOLS)
    assert len(direct.ranked) == len(SYMBOLS), direct.unscored["reason"].value_counts().to_dict()

    expected = {row.symbol: (int(row.rank), float(row.score)) for row in direct.frame.itertuples()}
    got = {r["symbol"]: (r["rank"], r["score"]) for r in rows}
    assert all(r["reason"] is None for r in rows), [r for r in rows if r["reason"]][:3]
    assert {s: rank for s, (rank, _) in got.items()} == {s: rank for s, (rank, _) in expected.items()}
    worst = max(abs(got[s][1] - expected[s][1]) for s in SYMBOLS)
    assert worst <= 1e-9, f"scores differ by up to {worst:g}"
    assert [r["rank"] for r in rows] == list(range(1, len(SYMBOLS) + 1)), "rows come in rank order"
    top = ", ".join(f"{r['symbol']} {r['score']:+.3f}" for r in rows[:3])
    in_db = (datetime.fromisoformat(payload["finished_at"]) - datetime.fromisoformat(payload["created_at"])).total_seconds()
    print(
        f"scan: {len(SYMBOLS)} symbols, {payload['chunks']} chunks of <= {CHUNK_SIZE}, {len(bars):,} bars read; "
        f"run created -> finished {in_db:.2f} s, whole `omni scan --wait` process {seconds:.2f} s; "
        f"ranks equal, max score difference {worst:.1e}; top: {top}"
    )


def test_unknown_symbols_are_reported_with_a_reason_not_dropped(scan_setup: ScanSetup) -> None:
    known = SYMBOLS[:30]
    unknown = ["NOSUCH1", "NOSUCH2"]
    done = _omni(
        scan_setup.env,
        "scan",
        "--symbols",
        ",".join([*known, *unknown]),
        "--as-of",
        AS_OF,
        "--wait",
        "--json",
        "--top",
        "100",
        "--chunk-size",
        "10",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    payload = _payload(done)
    assert payload["status"] == "succeeded"
    rows = {r["symbol"]: r for r in payload["results"]}
    assert set(rows) == {*known, *unknown}, "every requested symbol has a row"
    assert all(rows[s]["rank"] is not None for s in known)
    for symbol in unknown:
        assert rows[symbol]["rank"] is None
        assert rows[symbol]["score"] is None
        assert rows[symbol]["reason"], f"{symbol} has no reason"
        assert "0 bars" in rows[symbol]["reason"], rows[symbol]["reason"]
    # The stored run says the same (`omni scan show`).
    shown = _omni(scan_setup.env, "scan", "show", str(payload["id"]), "--json", "--top", "100")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert {r["symbol"]: r["reason"] for r in _payload(shown)["results"] if r["rank"] is None} == {s: rows[s]["reason"] for s in unknown}
    reported = ", ".join(f"{s}: {rows[s]['reason']}" for s in unknown)
    print(f"unknown symbols: {reported}")


def _empty_universe_file(folder: Path) -> Path:
    empty = folder / "universe.txt"
    empty.write_text("# no symbols here\n\n", encoding="utf-8")
    return empty


def test_empty_universe_file_exits_non_zero_with_a_clear_message(scan_setup: ScanSetup, tmp_path: Path) -> None:
    empty = _empty_universe_file(tmp_path)
    done = _omni(scan_setup.env, "scan", "--universe", str(empty), "--as-of", AS_OF, "--wait", "--json")
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, output
    assert "lists no symbols" in output, output
    assert str(empty) in output, "the message names the file"
    print(f"empty universe file: exit {done.returncode}, {output!r}")


def test_empty_universe_file_is_recorded_as_a_failed_run(scan_setup: ScanSetup, tmp_path: Path) -> None:
    before = _run_count(scan_setup.engine)
    done = _omni(scan_setup.env, "scan", "--universe", str(_empty_universe_file(tmp_path)), "--as-of", AS_OF, "--wait", "--json")
    assert done.returncode != 0
    assert _run_count(scan_setup.engine) == before + 1, "no scan run was recorded for the empty universe file"
    with scan_setup.engine.connect() as connection:
        run = connection.execute(select(ScanRun.status, ScanRun.error).order_by(ScanRun.id.desc()).limit(1)).one()
    assert run.status == "failed", run
    assert run.error, run


def test_empty_symbol_list_gives_a_failed_run(scan_setup: ScanSetup) -> None:
    before = _run_count(scan_setup.engine)
    done = _omni(scan_setup.env, "scan", "--symbols", ",", "--as-of", AS_OF, "--wait", "--json")
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, output
    assert "empty universe" in output, output
    assert _run_count(scan_setup.engine) == before + 1
    with scan_setup.engine.connect() as connection:
        run = connection.execute(select(ScanRun.status, ScanRun.error).order_by(ScanRun.id.desc()).limit(1)).one()
    assert run.status == "failed", run
    assert "empty universe" in (run.error or ""), run


def test_window_without_stored_data_fails_the_run_with_a_reason(scan_setup: ScanSetup) -> None:
    before_any_bar = "2024-03-01T21:00:00+00:00"
    done = _omni(scan_setup.env, "scan", "--symbols", ",".join(SYMBOLS), "--as-of", before_any_bar, "--wait", "--json", "--top", "5")
    assert done.returncode != 0, done.stdout + done.stderr
    payload = _payload(done)
    assert payload["status"] == "failed"
    assert payload["error"], payload
    assert "no symbol could be scored" in payload["error"], payload["error"]
    assert "0 bars" in payload["error"], payload["error"]
    rows = payload["results"]
    assert len(rows) == len(SYMBOLS), "every symbol is reported"
    assert all(r["rank"] is None and r["reason"] for r in rows)
    print(f"no data in the window: exit {done.returncode}, run {payload['id']} {payload['status']}: {payload['error']}")
