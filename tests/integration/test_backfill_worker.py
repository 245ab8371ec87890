"""A real backfill worker on real Redis and PostgreSQL, fed by the replay provider, killed mid-job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import redis
from sqlalchemy import create_engine, text

from omni_tasks.marketdata import backfill
from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.pipeline.outcomes import drain_outcomes
from omni_tasks.storage.engine import make_engine, session_factory
from tests.conftest import REPO_ROOT, OmniProcess, service_env, wait_for, wait_for_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

SYMBOLS = [f"S{i:02d}" for i in range(20)]
START, END = "2023-01-01", "2025-01-01"


def _write_replay(folder: Path) -> int:
    """Two years of daily bars per symbol, in the replay feed's file format (CSV and Parquet)."""
    folder.mkdir(parents=True, exist_ok=True)
    synthetic = SyntheticBars()
    total = 0
    for i, symbol in enumerate(SYMBOLS):
        bars = synthetic.fetch_bars(BarRequest(symbol, "1Day", datetime(2023, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))).bars
        frame = bars[["ts", "open", "high", "low", "close", "volume", "vwap", "trade_count", "timeframe"]].assign(feed="iex")
        if i % 2:
            frame.to_parquet(folder / f"{symbol}.parquet", index=False)
        else:
            frame.to_csv(folder / f"{symbol}.csv", index=False)
        total += len(frame)
    return total


def _omni(env: dict[str, str], *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def _table_fingerprint(url: str) -> tuple[int, int, str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT count(*) FROM bars")).scalar_one()
        dupes = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT symbol, timeframe, ts, feed, adjustment FROM bars JOIN bar_series s ON s.id = bars.series_id "
                "GROUP BY 1,2,3,4,5 HAVING count(*) > 1) d"
            )
        ).scalar_one()
        digest = connection.execute(
            text(
                "SELECT md5(string_agg(symbol || ts::text || feed || open::text || close::text || volume::text || ingested_at::text, ',' "
                "ORDER BY symbol, ts)) FROM bars JOIN bar_series s ON s.id = bars.series_id"
            )
        ).scalar_one()
    engine.dispose()
    return int(rows), int(dupes), str(digest)


def test_backfill_worker_killed_mid_job_completes_exactly_and_rerun_changes_nothing(
    redis_url: str, pg_database, tmp_path: Path, redis_client: redis.Redis, omni_processes: list[OmniProcess]  # type: ignore[no-untyped-def]
) -> None:
    database_url = pg_database()
    replay_dir = tmp_path / "replay"
    expected_rows = _write_replay(replay_dir)
    env = service_env(
        redis_url=redis_url, database_url=database_url, data_dir=tmp_path / "data",
        OMNI_PROVIDERS_ORDER="replay", OMNI_PROVIDERS_REPLAY_DIR=str(replay_dir),
    )
    assert _omni(env, "db", "upgrade").returncode == 0

    plan = _omni(env, "backfill", "plan", ",".join(SYMBOLS), "--start", START, "--end", END, "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["expected_bars"] == expected_rows

    # Slow the worker down a little so the kill lands mid-job: one child, partitions one at a time.
    watchdog = OmniProcess(["worker", "watchdog"], env, tmp_path / "logs" / "watchdog.log").start()
    beat = OmniProcess(["beat"], env, tmp_path / "logs" / "beat.log").start()
    victim = OmniProcess(["worker", "backfill", "--concurrency", "1"], env, tmp_path / "logs" / "backfill-1.log").start()
    omni_processes.extend([watchdog, beat, victim])
    wait_for_worker(redis_client, "backfill", victim)
    wait_for_worker(redis_client, "watchdog", watchdog)

    run = _omni(env, "backfill", "run", ",".join(SYMBOLS), "--start", START, "--end", END)
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = int(run.stdout.split("job ")[1].split(":")[0])

    factory = session_factory(make_engine(database_url))

    def succeeded() -> int:
        return int(backfill.job_progress(factory, job_id)["by_status"].get("succeeded", 0))

    wait_for(lambda: succeeded() >= 5, 120, interval_s=0.05, message="some partitions to finish")
    victim.kill_group(signal.SIGKILL)
    killed_with = succeeded()
    replacement = OmniProcess(["worker", "backfill"], env, tmp_path / "logs" / "backfill-2.log").start()
    omni_processes.append(replacement)

    wait_for(lambda: backfill.job_progress(factory, job_id)["status"] in {"succeeded", "failed", "partial"}, 180, interval_s=0.2, message="the job to finish")
    status = json.loads(_omni(env, "backfill", "status", str(job_id), "--json").stdout)
    rows, dupes, digest = _table_fingerprint(database_url)
    print(
        f"backfill: {len(SYMBOLS)} symbols x 2 years daily, worker SIGKILLed after {killed_with} of {status['partitions']} partitions; "
        f"job {status['status']}; rows {rows} of {expected_rows} expected; duplicate keys {dupes}"
    )
    assert status["status"] == "succeeded", status
    assert rows == expected_rows
    assert dupes == 0
    assert all(p["provider"] == "replay" for p in status["partitions_detail"])
    assert all(p["checksum"] for p in status["partitions_detail"])

    verify = _omni(env, "backfill", "verify", ",".join(SYMBOLS), "--start", START, "--end", END, "--json")
    assert verify.returncode == 0, verify.stdout
    assert all(r["missing"] == 0 and r["outside_sessions"] == 0 for r in json.loads(verify.stdout))

    # The same backfill again: every row is rewritten with identical values, so nothing changes.
    rerun = _omni(env, "backfill", "run", ",".join(SYMBOLS), "--start", START, "--end", END, "--wait", "--timeout", "180")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows2, dupes2, digest2 = _table_fingerprint(database_url)
    print(f"backfill re-run: row delta {rows2 - rows}, duplicate keys {dupes2}, table unchanged {digest2 == digest}")
    assert rows2 == rows
    assert dupes2 == 0
    assert digest2 == digest, "a re-run must not touch identical rows (not even ingested_at)"
    stored = pd.DataFrame(json.loads(verify.stdout))
    assert int(stored["stored"].sum()) == expected_rows


def test_backfill_unknown_symbol_fails_its_partitions_others_go_on_and_only_failed_retries(
    redis_url: str, pg_database, tmp_path: Path, redis_client: redis.Redis, omni_processes: list[OmniProcess]  # type: ignore[no-untyped-def]
) -> None:
    database_url = pg_database()
    replay_dir = tmp_path / "replay"
    _write_replay(replay_dir)
    env = service_env(
        redis_url=redis_url, database_url=database_url, data_dir=tmp_path / "data",
        OMNI_PROVIDERS_ORDER="replay", OMNI_PROVIDERS_REPLAY_DIR=str(replay_dir),
    )
    assert _omni(env, "db", "upgrade").returncode == 0
    refused = _omni(env, "backfill", "run", "S00,NOT A SYMBOL", "--start", START, "--end", END)
    assert refused.returncode == 2
    assert "not a ticker symbol" in refused.stdout + refused.stderr
    refused = _omni(env, "backfill", "run", "S00", "--start", END, "--end", START)
    assert refused.returncode == 2
    assert "impossible date range" in refused.stdout + refused.stderr
    assert redis_client.llen("backfill") == 0, "nothing was enqueued for refused requests"

    worker = OmniProcess(["worker", "backfill"], env, tmp_path / "logs" / "backfill.log").start()
    omni_processes.append(worker)
    wait_for_worker(redis_client, "backfill", worker)
    run = _omni(env, "backfill", "run", "S00,S01,ZZZZ", "--start", START, "--end", END, "--wait", "--timeout", "120")
    assert run.returncode == 1, "a partial job exits non-zero"
    job_id = int(run.stdout.split("job ")[1].split(":")[0])
    status = json.loads(_omni(env, "backfill", "status", str(job_id), "--json").stdout)
    assert status["status"] == "partial"
    failed = [p for p in status["partitions_detail"] if p["status"] == "failed"]
    assert {p["symbol"] for p in failed} == {"ZZZZ"}
    assert all("unknown symbol" in (p["error"] or "") for p in failed)
    assert all(p["attempts"] == 1 for p in failed), "a permanent error is not retried"

    # A failed partition is a failed task too (issue 11): `omni status` lists it once the outcomes reach the database
    # (the watchdog drains them every few seconds; none runs here, so the test drains).
    engine = make_engine(database_url)

    def partition_failures() -> list[dict[str, str]]:
        drain_outcomes(redis_client, session_factory(engine))
        shown = json.loads(_omni(env, "status", "--json").stdout)
        return [f for f in shown.get("recent_failures") or [] if f["name"] == "omni.backfill.fetch_partition"]

    wait_for(lambda: len(partition_failures()) == len(failed), 60, interval_s=1.0, message="omni status listing the failed partitions")
    listed = partition_failures()
    engine.dispose()
    print(f"\nomni status recent failures for the failed partitions: {[(f['state'], f['error'][:80]) for f in listed]}")
    assert all(f["state"] == "FAILURE" and "failed" in f["error"] for f in listed), listed

    # The data arrives; only the failed partitions run again.
    (replay_dir / "ZZZZ.csv").write_text((replay_dir / "S00.csv").read_text())
    again = _omni(env, "backfill", "run", "--only-failed", str(job_id), "--wait", "--timeout", "120")
    assert again.returncode == 0, again.stdout + again.stderr
    status = json.loads(_omni(env, "backfill", "status", str(job_id), "--json").stdout)
    assert status["status"] == "succeeded"
    attempts = {p["symbol"]: p["attempts"] for p in status["partitions_detail"]}
    assert attempts["S00"] == 1, "succeeded partitions were not fetched again"
    assert attempts["ZZZZ"] == 2
