"""Jobs always finish: a backfill across a PostgreSQL outage and across a Redis crash, and scan runs that fail or lose their messages.

Every test owns its servers (a private redis-server with its append-only file
as the broker, and for the outage a private PostgreSQL cluster it stops) and
runs real `omni worker backfill|scans|watchdog` and `omni beat` processes, with
the watchdog's thresholds scaled down through settings. Each prints its
figures with their N.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select

from omni_tasks.core import keys
from omni_tasks.marketdata import backfill
from omni_tasks.pipeline import heartbeats
from omni_tasks.scans import runs as scan_runs
from omni_tasks.scans.scanner import ScanConfig
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import BackfillPartition, ScanRun
from omni_tasks.watchdog import ledgers
from tests.conftest import REPO_ROOT, OmniProcess, service_env, wait_for, wait_for_worker
from tests.integration.test_backfill_worker import END, START, SYMBOLS, _omni, _table_fingerprint, _write_replay

pytestmark = [pytest.mark.services, pytest.mark.slow]

STUCK_AFTER_S = 6
FINAL = {"succeeded", "failed", "partial"}


def _env(tmp_path: Path, redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return service_env(
        redis_url=redis_url,
        database_url=database_url,
        data_dir=tmp_path / "data",
        OMNI_WATCHDOG_STUCK_AFTER_S=str(STUCK_AFTER_S),
        OMNI_DATABASE_OUTAGE_BACKOFF_MAX_S="4",
        OMNI_DATABASE_OUTAGE_RETRIES="40",
        **extra,
    )


def _start(env: dict[str, str], tmp_path: Path, procs: list[OmniProcess], client: redis.Redis, *kinds: str) -> None:
    """Workers of ``kinds`` (one child each), the watchdog worker and beat (which sends the watchdog's ticks)."""
    beat = OmniProcess(["beat"], env, tmp_path / "logs" / "beat.log").start()
    watchdog = OmniProcess(["worker", "watchdog"], env, tmp_path / "logs" / "watchdog.log").start()
    workers = [OmniProcess(["worker", kind, "--concurrency", "1"], env, tmp_path / "logs" / f"{kind}.log").start() for kind in kinds]
    procs.extend([beat, watchdog, *workers])
    wait_for_worker(client, "watchdog", watchdog, timeout_s=90)
    for kind, worker in zip(kinds, workers, strict=True):
        wait_for_worker(client, kind, worker, timeout_s=90)


def _job_id(done: subprocess.CompletedProcess[str]) -> int:
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.split("job ")[1].split(":")[0])


def _not_final(factory: Any, job_id: int) -> int:
    with factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(BackfillPartition)
                .where(BackfillPartition.job_id == job_id, BackfillPartition.status.not_in(("succeeded", "failed")))
            )
            or 0
        )


def _settled_view(client: redis.Redis) -> dict[str, Any]:
    """The reconciler's view once a pass ran after the job finished: nothing stuck."""
    wait_for(lambda: ledgers.read_view(client)["stuck"] == 0, 60, interval_s=0.5, message="the ledger reconciler to see nothing stuck")
    return ledgers.read_view(client)


def test_backfill_across_a_postgres_outage_finishes_exactly(
    private_postgres: Any, private_pg_url: str, private_redis_aof: Any, tmp_path: Path, omni_processes: list[OmniProcess]
) -> None:
    replay_dir = tmp_path / "replay"
    expected_rows = _write_replay(replay_dir)
    env = _env(tmp_path, private_redis_aof.url, private_pg_url, OMNI_PROVIDERS_ORDER="replay", OMNI_PROVIDERS_REPLAY_DIR=str(replay_dir))
    client = private_redis_aof.client()
    _start(env, tmp_path, omni_processes, client, "backfill")
    factory = session_factory(make_engine(private_pg_url))

    job_id = _job_id(_omni(env, "backfill", "run", ",".join(SYMBOLS), "--start", START, "--end", END))
    total = len(backfill.partition_ids(factory, job_id))
    wait_for(lambda: backfill.job_progress(factory, job_id)["by_status"].get("succeeded", 0) >= 3, 120, message="some partitions to finish")
    done_before = int(backfill.job_progress(factory, job_id)["by_status"].get("succeeded", 0))

    outage_s = 20.0
    stopped = time.monotonic()
    private_postgres.stop()

    def retries_recorded() -> int:
        return sum(1 for raw in client.lrange(keys.TASK_OUTCOMES_KEY, 0, -1) if json.loads(raw).get("state") == "RETRY")

    # The worker must meet the outage (its partitions retried, not acknowledged as done) before the database returns.
    wait_for(lambda: retries_recorded() >= 3, 60, interval_s=0.2, message="partitions retried against the stopped database")
    time.sleep(max(0.0, outage_s - (time.monotonic() - stopped)))  # the outage itself: the database stays down this long
    retried = retries_recorded()  # the watchdog moves these into the database once it is back
    private_postgres.start()
    restarted = time.monotonic()

    wait_for(lambda: backfill.job_progress(factory, job_id)["status"] in FINAL, 180, interval_s=0.5, message="the job to finish")
    finished_s = time.monotonic() - restarted
    progress = backfill.job_progress(factory, job_id)
    rows, dupes, _ = _table_fingerprint(private_pg_url)
    with factory() as session:
        attempts = int(session.scalar(select(func.sum(BackfillPartition.attempts)).where(BackfillPartition.job_id == job_id)) or 0)
    stuck = _not_final(factory, job_id)
    view = _settled_view(client)
    print(
        f"\npostgres outage: {len(SYMBOLS)} symbols x 2 years daily, {total} partitions, PostgreSQL stopped {outage_s:.0f} s after "
        f"{done_before} of {total} finished; job {progress['status']} {finished_s:.1f} s after the restart; rows {rows} of {expected_rows} "
        f"expected (a clean run's count); duplicate keys {dupes}; partitions stuck {stuck} of {total}; attempts {attempts} for {total} partitions; "
        f"task retries during the outage {retried}; watchdog requeued {view['last_hour']['requeued']}, failed {view['last_hour']['failed']}"
    )
    assert progress["status"] == "succeeded", progress
    assert rows == expected_rows
    assert dupes == 0
    assert stuck == 0
    assert view["last_hour"]["failed"] == 0


def test_backfill_across_a_redis_crash_finishes_exactly(
    pg_database: Any, private_redis_aof: Any, tmp_path: Path, omni_processes: list[OmniProcess]
) -> None:
    database_url = pg_database()
    replay_dir = tmp_path / "replay"
    expected_rows = _write_replay(replay_dir)
    env = _env(tmp_path, private_redis_aof.url, database_url, OMNI_PROVIDERS_ORDER="replay", OMNI_PROVIDERS_REPLAY_DIR=str(replay_dir))
    assert _omni(env, "db", "upgrade").returncode == 0
    client = private_redis_aof.client()
    _start(env, tmp_path, omni_processes, client)  # the backfill worker starts once the broker is set up below
    factory = session_factory(make_engine(database_url))

    job_id = _job_id(_omni(env, "backfill", "run", ",".join(SYMBOLS), "--start", START, "--end", END))
    ids = backfill.partition_ids(factory, job_id)
    total = len(ids)
    # kombu pops a message (BRPOP) and only then writes it to `unacked`: a crash in between loses it altogether.
    # That is done here by hand, so the job can finish only if the ledger reconciler notices and requeues it.
    lost = client.rpop("backfill")
    assert lost is not None, f"the queue is empty right after the job was enqueued: {client.keys('*')}"
    lost_id = json.loads(base64.b64decode(json.loads(lost)["body"]))[0][0]
    duplicated = next(i for i in reversed(ids) if i != lost_id)  # not the lost one: its ETA message would count as its live delivery
    # A delivery certainly in flight at the crash: a (duplicate, idempotent) partition message with an ETA 90 s ahead,
    # which the worker receives and holds unacked until then.
    sender = Celery(broker=private_redis_aof.url, set_as_current=False)
    sender.send_task(
        "omni.backfill.fetch_partition", args=[duplicated], countdown=90, queue="backfill", routing_key="backfill", serializer="json"
    )
    client.rpush("backfill", client.lpop("backfill"))  # to the front of the queue (kombu pops from the right)
    worker = OmniProcess(["worker", "backfill", "--concurrency", "2"], env, tmp_path / "logs" / "backfill.log").start()
    omni_processes.append(worker)
    wait_for_worker(client, "backfill", worker, timeout_s=90)
    wait_for(lambda: bool(_held_eta_tags(client)), 30, interval_s=0.05, message="the worker to hold the ETA message")
    held = _held_eta_tags(client)
    wait_for(lambda: backfill.job_progress(factory, job_id)["by_status"].get("succeeded", 0) >= 3, 120, message="some partitions to finish")
    done_before = int(backfill.job_progress(factory, job_id)["by_status"].get("succeeded", 0))
    queued_before = client.llen("backfill")
    unacked_before = client.hlen(heartbeats.KOMBU_UNACKED_KEY)

    crashed = time.monotonic()
    private_redis_aof.kill()  # SIGKILL: the append-only file (fsync always) is all that survives
    # Down until the worker has noticed and failed to reconnect: kombu's own restore on closing the old channel fails
    # too, so what the worker held stays in `unacked` under a worker that is alive - the case this test is about.
    wait_for(lambda: "Cannot connect to" in worker.log_text(), 60, interval_s=0.1, message="the worker to lose the broker")
    down_s = time.monotonic() - crashed
    private_redis_aof.start()
    restarted_wall = time.time()
    back_s = wait_for(lambda: _delivered_since(client, held, restarted_wall), 60, interval_s=0.2, message="held deliveries redelivered")

    wait_for(
        lambda: backfill.job_progress(factory, job_id)["status"] in FINAL, 180, interval_s=0.5, message="the job to finish after the crash"
    )
    finished_s = time.monotonic() - crashed
    progress = backfill.job_progress(factory, job_id)
    rows, dupes, _ = _table_fingerprint(database_url)
    stuck = _not_final(factory, job_id)
    view = _settled_view(client)
    hour = view["last_hour"]
    print(
        f"\nredis crash: {total} partitions, broker SIGKILLed after {done_before} of {total} finished ({queued_before} queued, "
        f"{unacked_before} unacked at the time, 1 message lost altogether), down {down_s:.1f} s, restarted from its append-only file; deliveries held "
        f"by the live worker redelivered {back_s:.1f} s after the restart ({len(held)} of {len(held)}); job {progress['status']} {finished_s:.1f} s "
        f"after the crash (visibility timeout 3600 s, dead-worker threshold 3 s, stuck threshold {STUCK_AFTER_S} s); rows {rows} of "
        f"{expected_rows} expected; duplicate keys {dupes}; partitions stuck {stuck} of {total}; redelivered {hour['redelivered']}, "
        f"requeued by the ledger reconciler {hour['requeued']}, failed {hour['failed']}"
    )
    assert progress["status"] == "succeeded", progress
    assert rows == expected_rows
    assert dupes == 0
    assert stuck == 0
    assert back_s < 30, "held deliveries came back within the dead-worker threshold and a watchdog tick, not the visibility timeout"
    assert hour["redelivered"] >= len(held)
    assert hour["requeued"] >= 1, "the lost message's partition was requeued by the ledger reconciler"
    assert finished_s < 120, "lost deliveries came back within the thresholds, not after the visibility timeout"


def _in_pipeline(env: dict[str, str], code: str) -> str:
    """Run ``code`` in a process configured like `omni ...` (the settings of ``env``); returns what it printed."""
    script = f"from omni_tasks.cli.common import prepare; prepare('cli', configure_log=False); {code}"
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _start_chord(env: dict[str, str], run_id: int) -> None:
    """Enqueue a run's chunks and merge the way `omni scan` does (the run itself was recorded by the test)."""
    _in_pipeline(env, f"from omni_tasks.scans.tasks import start_run; print(start_run({run_id}))")


def _delivered_since(client: redis.Redis, tags: set[str], since: float) -> bool:
    """Every one of ``tags`` was put back on its queue (or delivered again) after ``since`` (UNIX s), none left where it was."""
    for tag in tags:
        score = client.zscore(heartbeats.KOMBU_UNACKED_INDEX_KEY, tag)
        if score is not None and score < since - 1:
            return False  # still held under the lost connection
        if score is None and not any(tag.encode() in raw for raw in client.lrange("backfill", 0, -1)):
            return False  # neither delivered again nor queued: not (yet) back
    return True


def _held_eta_tags(client: redis.Redis) -> set[str]:
    """Delivery tags in kombu's `unacked` of messages with an ETA: a worker holds those until the ETA."""
    held = set()
    for tag, raw in client.hgetall(heartbeats.KOMBU_UNACKED_KEY).items():
        if (json.loads(raw)[0].get("headers") or {}).get("eta"):
            held.add(tag.decode())
    return held


def test_scan_run_with_a_failing_chunk_or_lost_messages_ends_failed_with_a_reason(
    pg_database: Any, private_redis_aof: Any, tmp_path: Path, omni_processes: list[OmniProcess]
) -> None:
    from datetime import UTC, datetime

    database_url = pg_database()
    env = _env(tmp_path, private_redis_aof.url, database_url)
    assert _omni(env, "db", "upgrade").returncode == 0
    client = private_redis_aof.client()
    _start(env, tmp_path, omni_processes, client, "scans")
    factory = session_factory(make_engine(database_url))

    # A chunk that cannot run (an as-of beyond any timestamp pandas can hold): the chord's error callback ends the run.
    far = scan_runs.create_run(
        factory, ["AAPL", "MSFT"], as_of=datetime(3000, 1, 1, tzinfo=UTC), config=ScanConfig(), chunk_size=1, requested_by="test"
    )
    started = time.monotonic()
    _start_chord(env, far)
    wait_for(lambda: scan_runs.load_run(factory, far)["status"] != "running", 60, interval_s=0.2, message="the failing scan run to end")
    failed_in_s = time.monotonic() - started

    # A run whose messages were lost (recorded, never enqueued): the watchdog's reconciler ends it.
    lost = scan_runs.create_run(
        factory, ["AAPL"], as_of=datetime(2025, 7, 1, 21, tzinfo=UTC), config=ScanConfig(), chunk_size=1, requested_by="test"
    )
    lost_at = time.monotonic()
    wait_for(
        lambda: scan_runs.load_run(factory, lost)["status"] != "running",
        STUCK_AFTER_S + 60,
        interval_s=0.5,
        message="the lost scan run to end",
    )
    lost_in_s = time.monotonic() - lost_at

    with factory() as session:
        runs = {r.id: r for r in session.scalars(select(ScanRun).where(ScanRun.id.in_([far, lost])))}
        still_running = int(session.scalar(select(func.count()).select_from(ScanRun).where(ScanRun.status == "running")) or 0)
    print(
        f"\nscan runs: failing chunk -> {runs[far].status} after {failed_in_s:.1f} s ({runs[far].error}); lost messages -> "
        f"{runs[lost].status} after {lost_in_s:.1f} s (stuck threshold {STUCK_AFTER_S} s: {runs[lost].error}); runs still running {still_running} of 2"
    )
    assert runs[far].status == "failed"
    assert "OutOfBounds" in (runs[far].error or "") or "3000" in (runs[far].error or ""), runs[far].error
    assert runs[far].finished_at is not None
    assert runs[lost].status == "failed"
    assert "no chunk or merge" in (runs[lost].error or ""), runs[lost].error
    assert still_running == 0
