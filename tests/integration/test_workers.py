"""Real worker processes on real Redis and PostgreSQL: ping, outcome ledger, SIGKILL recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from omni_tasks.core import keys
from omni_tasks.core.keys import PROBE_COMPLETIONS_KEY
from omni_tasks.pipeline import outcomes as runs
from omni_tasks.settings import load_settings
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import TaskRun
from tests.conftest import REPO_ROOT, DeliveryBroker, OmniProcess, service_env, wait_for, wait_for_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def env(redis_url: str, migrated_pg_url: str, tmp_path: Path, redis_client: redis.Redis) -> dict[str, str]:
    return service_env(redis_url=redis_url, database_url=migrated_pg_url, data_dir=tmp_path / "data")


@pytest.fixture
def broker_env(delivery_broker: DeliveryBroker, migrated_pg_url: str, tmp_path: Path) -> dict[str, str]:
    """The service environment on the parametrized broker (Redis, or RabbitMQ with Redis as the cache)."""
    return service_env(redis_url=delivery_broker.url, database_url=migrated_pg_url, data_dir=tmp_path / "data", **delivery_broker.env())


@pytest.fixture
def broker_sender(broker_env: dict[str, str]):  # type: ignore[no-untyped-def]
    from omni_tasks.pipeline.app import create_app

    app = create_app(load_settings(broker_env))
    yield app
    app.close()


@pytest.fixture
def sender(env: dict[str, str]):  # type: ignore[no-untyped-def]
    """A Celery app configured like the workers, for publishing from the test process."""
    from omni_tasks.pipeline.app import create_app

    app = create_app(load_settings(env))
    yield app
    app.close()


def _start(kind: str, env: dict[str, str], tmp_path: Path, procs: list[OmniProcess], *extra: str) -> OmniProcess:
    proc = OmniProcess(["worker", kind, *extra], env, tmp_path / "logs" / f"{kind}-{len(procs)}.log").start()
    procs.append(proc)
    return proc


def _completions(client: redis.Redis, markers: list[str]) -> dict[str, int]:
    values = client.hmget(PROBE_COMPLETIONS_KEY, markers)
    return {m: int(v or 0) for m, v in zip(markers, values, strict=True)}


def _started(env: dict[str, str], task_name: str) -> int:
    """How many times workers began running ``task_name`` (the task_started counter in the workers' metric files)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=env["PROMETHEUS_MULTIPROC_DIR"])
    return int(
        sum(
            sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if sample.name == "celery_task_started_total" and sample.labels.get("name") == task_name
        )
    )


def test_ping_every_queue_answers_and_outcomes_are_persisted(env, redis_client, migrated_pg_url, tmp_path, omni_processes):  # type: ignore[no-untyped-def]
    from workers import KINDS

    procs = {kind: _start(kind, env, tmp_path, omni_processes) for kind in KINDS}
    for kind, proc in procs.items():
        wait_for_worker(redis_client, kind, proc)

    result = subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", "ping", "--json", "--timeout", "20"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    answers = json.loads(result.stdout)["queues"]
    assert set(answers) == {"scans", "backfill", "validation", "risk", "watchdog", "orders"}
    assert all(a["ok"] for a in answers.values()), answers
    print("ping round trips (ms):", {q: a["rtt_ms"] for q, a in answers.items()})

    engine = make_engine(migrated_pg_url)
    factory = session_factory(engine)
    moved = runs.drain_outcomes(redis_client, factory)
    assert moved >= 6
    with factory() as session:
        rows = session.scalars(select(TaskRun).where(TaskRun.name == "omni.system.ping")).all()
    by_queue = {r.queue: r for r in rows}
    assert set(by_queue) == set(answers)
    for queue, row in by_queue.items():
        assert row.state == "SUCCESS"
        assert row.worker.startswith(f"{queue}@"), "each queue is served by its own worker kind"
        assert row.finished_at >= row.started_at
        assert row.queue_wait_s is not None
        assert row.queue_wait_s >= 0
    # A second drain finds nothing new and duplicates nothing.
    assert runs.drain_outcomes(redis_client, factory) == 0
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(TaskRun).where(TaskRun.name == "omni.system.ping")) == 6
    engine.dispose()


def test_worker_child_sigkilled_mid_task_is_redelivered_and_completes_once(broker_env, delivery_broker, redis_client, broker_sender, tmp_path, omni_processes):  # type: ignore[no-untyped-def]
    env, sender = broker_env, broker_sender
    worker = _start("scans", env, tmp_path, omni_processes)
    wait_for_worker(redis_client, "scans", worker)
    markers = [f"child-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    for marker in markers:
        sender.send_task("omni.system.probe", args=[marker, 1.5], queue="scans")
    # Both pool children are busy with a probe now; kill one of them outright.
    wait_for(lambda: _started(env, "omni.system.probe") >= 2, 20, message="both pool children running a probe")
    children = worker.children()
    assert children, "the prefork worker has pool children"
    killed_at = time.monotonic()
    os.kill(children[0], signal.SIGKILL)
    wait_for(lambda: all(v >= 1 for v in _completions(redis_client, markers).values()), 60, message="every probe to complete")
    recovered_s = time.monotonic() - killed_at
    wait_for(lambda: delivery_broker.settled(redis_client, "scans"), 30, message="no probe left in flight")  # one would show up as a second completion
    counts = _completions(redis_client, markers)
    lost = sum(1 for v in counts.values() if v == 0)
    duplicated = sum(1 for v in counts.values() if v > 1)
    print(f"\n[{delivery_broker.kind}] worker child SIGKILL: lost {lost} of {len(markers)}, completed twice {duplicated}, all done {recovered_s:.1f} s after the kill")
    assert lost == 0
    assert duplicated == 0


def test_whole_worker_sigkilled_mid_task_is_redelivered_within_seconds(broker_env, delivery_broker, redis_client, broker_sender, tmp_path, omni_processes):  # type: ignore[no-untyped-def]
    env, sender = broker_env, broker_sender
    if delivery_broker.kind == "redis":
        # On Redis the watchdog worker and beat run the sweeper that redelivers a dead worker's unacked tasks.
        watchdog = _start("watchdog", env, tmp_path, omni_processes)
        omni_processes.append(OmniProcess(["beat"], env, tmp_path / "logs" / "beat.log").start())
        wait_for_worker(redis_client, "watchdog", watchdog)
    # On RabbitMQ nothing of ours sweeps: the broker redelivers when the dead worker's connection closes.
    victim = _start("scans", env, tmp_path, omni_processes)
    wait_for_worker(redis_client, "scans", victim)
    markers = [f"whole-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for marker in markers:
        sender.send_task("omni.system.probe", args=[marker, 3.0], queue="scans")
    wait_for(lambda: _started(env, "omni.system.probe") >= 2, 20, message="probes taken by the worker")
    killed_at = time.monotonic()
    victim.kill_group(signal.SIGKILL)
    # The supervisor would restart it; here a replacement worker starts at once.
    replacement = _start("scans", env, tmp_path, omni_processes)
    wait_for(lambda: all(v >= 1 for v in _completions(redis_client, markers).values()), 90, message="every probe to complete")
    redelivered_s = time.monotonic() - killed_at
    wait_for(lambda: delivery_broker.settled(redis_client, "scans"), 30, message="no probe left in flight")
    counts = _completions(redis_client, markers)
    lost = sum(1 for v in counts.values() if v == 0)
    duplicated = sum(1 for v in counts.values() if v > 1)
    how = "the watchdog's sweep; visibility timeout 3600 s" if delivery_broker.kind == "redis" else "RabbitMQ, on the connection's close; no sweep"
    print(f"\n[{delivery_broker.kind}] whole worker SIGKILL: lost {lost} of {len(markers)}, completed twice {duplicated}, redelivered and done {redelivered_s:.1f} s after the kill ({how})")
    assert replacement.process is not None
    assert replacement.process.poll() is None
    assert lost == 0
    assert duplicated == 0
    assert redelivered_s < 30, "the sweeper (Redis) or the broker (RabbitMQ), not the one-hour visibility timeout, brought the tasks back"


def test_poison_task_is_dead_lettered_after_max_deliveries(broker_env, delivery_broker, redis_client, broker_sender, tmp_path, omni_processes):  # type: ignore[no-untyped-def]
    env, sender = {**broker_env, "OMNI_BROKER_MAX_DELIVERIES": "2"}, broker_sender
    worker = _start("scans", env, tmp_path, omni_processes)
    wait_for_worker(redis_client, "scans", worker)
    marker = f"poison-{uuid.uuid4().hex[:8]}"
    task_id = str(uuid.uuid4())
    sender.send_task("omni.system.probe", args=[marker, 5.0], queue="scans", task_id=task_id)
    delivery_key = f"omni:deliveries:{task_id}"
    # Kill the child running it on each of its first two deliveries: a task that kills its worker.
    # The first delivery is not counted in Redis (no round trip); redeliveries are.
    wait_for(lambda: _started(env, "omni.system.probe") >= 1, 30, message="delivery 1 running")
    for child in worker.children():
        os.kill(child, signal.SIGKILL)
    # The count is taken as the task starts in the pool child: it is running once the count is there.
    wait_for(lambda: int(redis_client.get(delivery_key) or 0) >= 1, 30, message="delivery 2")
    for child in worker.children():
        os.kill(child, signal.SIGKILL)
    # Third delivery exceeds max_deliveries=2: recorded as DEAD_LETTER and not run.
    wait_for(lambda: any(json.loads(r)["state"] == "DEAD_LETTER" for r in redis_client.lrange(keys.TASK_OUTCOMES_KEY, 0, -1)), 60, message="dead letter record")
    wait_for(lambda: delivery_broker.settled(redis_client, "scans"), 30, message="the dead-lettered delivery acknowledged")
    assert _completions(redis_client, [marker])[marker] == 0
    records = [json.loads(r) for r in redis_client.lrange(keys.TASK_OUTCOMES_KEY, 0, -1)]
    dead = [r for r in records if r["task_id"] == task_id and r["state"] == "DEAD_LETTER"]
    assert len(dead) == 1
    assert dead[0]["delivery"] == 3
    assert "dead-lettered" in dead[0]["error"]
    assert delivery_broker.settled(redis_client, "scans"), "not redelivered again"
    print(f"\n[{delivery_broker.kind}] poison task: delivered {dead[0]['delivery']} times, dead-lettered once, run to completion 0 times")
