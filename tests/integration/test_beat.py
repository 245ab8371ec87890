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
from tests.conftest import OmniProcess, service_env, wait_for, wait_for_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_leader_lock_one_holder_renewal_and_expiry(redis_client: redis.Redis) -> None:
    first = leader.LeaderLock(redis_client, ttl_s=1.0)
    second = leader.LeaderLock(redis_client, ttl_s=1.0)
    assert first.hold() is True
    assert second.hold() is False
    time.sleep(0.6)
    assert first.hold() is True, "renewal keeps the lead"
    time.sleep(0.6)
    assert second.hold() is False, "renewed lock has not expired"
    # The leader stops renewing (dies): the standby takes over after the TTL.
    time.sleep(1.1)
    assert second.hold() is True
    assert first.hold() is False, "a paused leader learns it lost the lead"
    second.release()
    assert leader.current_leader(redis_client) is None


def test_two_beats_one_leads_standby_takes_over_and_each_slot_runs_once(
    redis_url: str, migrated_pg_url: str, tmp_path: Path, redis_client: redis.Redis, omni_processes: list[OmniProcess]
) -> None:
    env = service_env(redis_url=redis_url, database_url=migrated_pg_url, data_dir=tmp_path / "data")
    watchdog = OmniProcess(["worker", "watchdog"], env, tmp_path / "logs" / "watchdog.log").start()
    omni_processes.append(watchdog)
    beat_a = OmniProcess(["beat"], env, tmp_path / "logs" / "beat-a.log").start()
    omni_processes.append(beat_a)
    wait_for_worker(redis_client, "watchdog", watchdog)
    wait_for(lambda: leader.current_leader(redis_client) is not None, 30, message="a beat to lead")
    beat_b = OmniProcess(["beat"], env, tmp_path / "logs" / "beat-b.log").start()
    omni_processes.append(beat_b)
    wait_for(lambda: "standing by" in beat_b.log_text(), 30, message="the second beat to stand by")
    current = leader.current_leader(redis_client)
    assert current is not None
    assert current["pid"] == beat_a.pid, "the first beat keeps the lead"

    time.sleep(11)  # two beats side by side for a couple of watchdog slots
    beat_a.kill_group(signal.SIGKILL)
    killed_at = time.monotonic()
    takeover_s = wait_for(
        lambda: (c := leader.current_leader(redis_client)) is not None and c["pid"] == beat_b.pid,
        20,
        interval_s=0.05,
        message="the standby to take over",
    )
    time.sleep(11)  # the new leader schedules a couple of slots
    assert "leading the schedule" in beat_b.log_text()

    # The watchdog tick itself moves outcomes into the database: read them all from there.
    engine = make_engine(migrated_pg_url)
    factory = session_factory(engine)
    runs.drain_outcomes(redis_client, factory)
    with factory() as session:
        ticks = session.execute(
            select(TaskRun.task_id, TaskRun.started_at).where(TaskRun.name == "omni.watchdog.tick", TaskRun.state == "SUCCESS")
        ).all()
    engine.dispose()
    per_slot = Counter(t.task_id for t in ticks)
    kill_wall = time.time() - (time.monotonic() - killed_at)
    slots_before = len({t.task_id for t in ticks if t.started_at.timestamp() < kill_wall})
    print(
        f"beat: takeover {takeover_s:.1f} s after SIGKILL of the leader (lock TTL 3 s); "
        f"slots run {len(per_slot)} ({slots_before} before the kill), runs per slot max {max(per_slot.values())}"
    )
    assert takeover_s < 8
    assert len(per_slot) >= 3, "the schedule ran before and after the takeover"
    assert slots_before >= 1
    assert len(per_slot) - slots_before >= 1
    assert max(per_slot.values()) == 1, "every slot ran exactly once"
