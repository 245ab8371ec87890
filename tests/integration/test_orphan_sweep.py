"""The orphan sweep: an unacked message that no live worker holds comes back; one a live worker holds does not."""

from __future__ import annotations

import time

import pytest
import redis

from omni_tasks.pipeline import heartbeats

pytestmark = pytest.mark.services


def test_sweep_orphans_restores_only_old_unclaimed_messages(redis_client: redis.Redis) -> None:
    now = time.time()
    live = heartbeats.WorkerInfo(
        instance="scans@h:1:1", hostname="scans@h", kind="scans", queues=["scans"], pid=1, started_at=now - 60, last_seen=now
    )
    heartbeats.beat(redis_client, live)
    redis_client.hset(heartbeats.KOMBU_UNACKED_KEY, mapping={"orphan": "x", "held": "x", "fresh": "x"})
    redis_client.zadd(heartbeats.KOMBU_UNACKED_INDEX_KEY, {"orphan": now - 30, "held": now - 30, "fresh": now - 1})
    heartbeats.track_deliveries(redis_client, live.instance, ["held"])
    restored: list[str] = []

    def restore(tags):  # type: ignore[no-untyped-def]
        restored.extend(tags)
        return len(list(tags))

    count = heartbeats.sweep_orphans(redis_client, dead_after_s=10, restore=restore, now=now)

    # "orphan": received by a worker killed before it recorded the tag; "held": a live worker runs it;
    # "fresh": just delivered, its worker may not have recorded it yet.
    assert restored == ["orphan"]
    assert count == 1
    assert heartbeats.sweep_orphans(redis_client, dead_after_s=10, restore=None, now=now) == 0


def test_a_worker_that_reconnected_disowns_its_old_deliveries_and_the_sweep_restores_them(redis_client: redis.Redis) -> None:
    # A Redis restart: the worker is alive and beating, but what it received on the lost connection it can never ack.
    now = time.time()
    worker = heartbeats.WorkerInfo(
        instance="backfill@h:2:1", hostname="backfill@h", kind="backfill", queues=["backfill"], pid=2, started_at=now - 60, last_seen=now
    )
    heartbeats.beat(redis_client, worker)
    redis_client.hset(heartbeats.KOMBU_UNACKED_KEY, mapping={"old-1": "x", "old-2": "x"})
    redis_client.zadd(heartbeats.KOMBU_UNACKED_INDEX_KEY, {"old-1": now - 30, "old-2": now - 30})
    heartbeats.track_deliveries(redis_client, worker.instance, ["old-1", "old-2"])
    restored: list[str] = []

    def restore(tags):  # type: ignore[no-untyped-def]
        restored.extend(tags)
        return len(list(tags))

    assert heartbeats.sweep_orphans(redis_client, dead_after_s=10, restore=restore, now=now) == 0, "held by a live worker: left alone"
    assert heartbeats.disown(redis_client, worker.instance) == 2
    assert heartbeats.sweep_orphans(redis_client, dead_after_s=10, restore=restore, now=now) == 2
    assert sorted(restored) == ["old-1", "old-2"]
