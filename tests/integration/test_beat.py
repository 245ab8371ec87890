"""Exactly one beat leads; a standby takes over when the leader dies; one run per slot."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from omni_tasks.core import lock as leader
from omni_tasks.pipeline import outcomes as runs
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import TaskRun
from tests.conftest import DeliveryBroker, OmniProcess, service_env, wait_for, wait_for_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_leader_lock_one_holder_renewal_and_expiry(redis_client: redis.Redis) -> None:
    # Redis keeps the lock's clock: the test reads the TTL instead of sleeping against it.
    first = leader.LeaderLock(redis_client, ttl_s=30.0)
    second = leader.LeaderLock(redis_client, ttl_s=30.0)
    assert first.hold() is True
    assert second.hold() is False
    redis_client.pexpire(first.key, 2000)  # the lead is about to run out
    assert first.hold() is True, "renewal keeps the lead"
    assert redis_client.pttl(first.key) > 20_000, "renewal restores the whole TTL"
    assert second.hold() is False, "renewed lock has not expired"
    # The leader stops renewing (dies): the standby takes over once the TTL has run out.
    redis_client.pexpire(first.key, 50)
    wait_for(lambda: redis_client.exists(first.key) == 0, 5, message="the lock to expire")
    assert second.hold() is True
    assert first.hold() is False, "a paused leader learns it lost the lead"
    second.release()
    assert leader.current_leader(redis_client) is None


def _tick_slots(redis_client: redis.Redis, pg_url: str) -> list[tuple[str, float]]:
    """(task id, start as UNIX s) of every successful watchdog tick so far, read from the database."""
    engine = make_engine(pg_url)
    factory = session_factory(engine)
    try:
        runs.drain_outcomes(redis_client, factory)
        with factory() as session:
            rows = session.execute(
                select(TaskRun.task_id, TaskRun.started_at).where(TaskRun.name == "omni.watchdog.tick", TaskRun.state == "SUCCESS")
            ).all()
    finally:
        engine.dispose()
    return [(r.task_id, r.started_at.timestamp()) for r in rows]


def test_two_beats_one_leads_standby_takes_over_and_each_slot_runs_once(
    delivery_broker: DeliveryBroker, migrated_pg_url: str, tmp_path: Path, redis_client: redis.Redis, omni_processes: list[OmniProcess]
) -> None:
    """On Redis and on RabbitMQ: the leader lock and the slot ids live in Redis either way; the sends go to the broker."""
    env = service_env(redis_url=delivery_broker.url, database_url=migrated_pg_url, data_dir=tmp_path / "data", **delivery_broker.env())
    test_started = time.time()  # the database is shared by both brokers' runs: count this run's ticks only
    watchdog = OmniProcess(["worker", "watchdog"], env, tmp_path / "logs" / "watchdog.log").start()
    omni_processes.append(watchdog)
    beat_a = OmniProcess(["beat"], env, tmp_path / "logs" / "beat-a.log").start()
    omni_processes.append(beat_a)
    wait_for_worker(redis_client, "watchdog", watchdog)
    wait_for(lambda: leader.current_leader(redis_client) is not None, 30, message="a beat to lead")
    led_wall = time.time()
    # A new leader sends the watchdog's tick at once, not a period (5 s) after it takes the lead.
    first_tick_s = wait_for(
        lambda: any(started >= test_started for _, started in _tick_slots(redis_client, migrated_pg_url)), 20, interval_s=0.1, message="the first tick"
    )
    beat_b = OmniProcess(["beat"], env, tmp_path / "logs" / "beat-b.log").start()
    omni_processes.append(beat_b)
    wait_for(lambda: "standing by" in beat_b.log_text(), 30, message="the second beat to stand by")
    current = leader.current_leader(redis_client)
    assert current is not None
    assert current["pid"] == beat_a.pid, "the first beat keeps the lead"

    # Two beats side by side until a couple of watchdog slots have run.
    wait_for(
        lambda: len({t for t, _ in _tick_slots(redis_client, migrated_pg_url)}) >= 2,
        40,
        interval_s=0.5,
        message="two slots before the kill",
    )
    beat_a.kill_group(signal.SIGKILL)
    killed_wall = time.time()
    takeover_s = wait_for(
        lambda: (c := leader.current_leader(redis_client)) is not None and c["pid"] == beat_b.pid,
        20,
        interval_s=0.05,
        message="the standby to take over",
    )
    # The new leader schedules a couple of slots (a duplicate of the first would have run by the second).
    wait_for(
        lambda: len({t for t, started in _tick_slots(redis_client, migrated_pg_url) if started >= killed_wall}) >= 2,
        40,
        interval_s=0.5,
        message="two slots after the takeover",
    )
    assert "leading the schedule" in beat_b.log_text()

    # The watchdog tick itself moves outcomes into the database: read them all from there.
    ticks = _tick_slots(redis_client, migrated_pg_url)
    per_slot = Counter(task_id for task_id, _ in ticks)
    slots_before = len({task_id for task_id, started in ticks if started < killed_wall})
    print(
        f"beat on {delivery_broker.kind}: takeover {takeover_s:.1f} s after SIGKILL of the leader (lock TTL 3 s); "
        f"slots run {len(per_slot)} ({slots_before} before the kill), runs per slot max {max(per_slot.values())}"
    )
    assert takeover_s < 8
    first_started = min(started for _, started in ticks if started >= test_started)
    print(f"first watchdog tick started {first_started - led_wall:.2f} s after the first beat led (seen {first_tick_s:.1f} s after)")
    assert first_started - led_wall < 4.0, "the first leader's tick is sent at once, not a 5 s period later"
    assert len(per_slot) >= 3, "the schedule ran before and after the takeover"
    assert slots_before >= 1
    assert len(per_slot) - slots_before >= 1
    assert max(per_slot.values()) == 1, "every slot ran exactly once"
