"""Worker heartbeats in Redis, and redelivery of the unacked tasks of a worker that died.

Every worker process writes a heartbeat every ``heartbeat_s``: a sorted set
``omni:workers`` (instance -> last beat, UNIX s) and a JSON description. Each
message the worker receives is added to ``omni:inflight:<instance>`` before it
runs. When a worker is killed outright (SIGKILL, OOM, host loss) its messages
sit in kombu's ``unacked`` hash until the broker's visibility timeout - an
hour by default, and it must stay above the longest task. The sweeper notices
the silent heartbeat within ``dead_after_s`` and puts exactly those messages
back on their queues, so a killed worker's task runs again within seconds.
(The heartbeat thread, woken by each receipt, writes the tags to Redis a
round trip after receipt; a worker killed inside that millisecond leaves those
messages to the :func:`sweep_orphans` sweep.)

A worker that loses its broker connection (Redis restarted) cannot acknowledge
what it received on the old connection any more: Celery cancels those tasks,
and their messages, if Redis kept them, sit in ``unacked`` under a worker that
is alive and beating. On reconnecting the worker :func:`disown` s them, so the
orphan sweep redelivers them within ``dead_after_s``, not after the visibility
timeout. A message Redis lost altogether (neither queued nor unacked) is the
ledger reconciler's to find (:mod:`omni_tasks.watchdog.ledgers`).

All of this redelivery is for a Redis broker. On RabbitMQ the broker gives a
connection's unacknowledged messages back when the connection closes, so the
watchdog passes no ``restore`` there (the sweeps only forget dead workers)
and workers record no in-flight tags (:mod:`omni_tasks.pipeline.rabbit`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from omni_tasks.core.keys import KOMBU_UNACKED_KEY, WORKER_INFLIGHT_KEY, WORKER_INFO_KEY, WORKERS_KEY

KOMBU_UNACKED_INDEX_KEY = "unacked_index"
INFO_TTL_S = 3600


@dataclass(frozen=True)
class WorkerInfo:
    instance: str
    hostname: str
    kind: str
    queues: list[str]
    pid: int
    started_at: float
    last_seen: float
    active: int = 0
    processed: int = 0
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def age_s(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.last_seen


def beat(client: redis.Redis, info: WorkerInfo) -> None:
    """Record one heartbeat, and forget in-flight tags whose messages were acknowledged."""
    payload = json.dumps(info.__dict__, separators=(",", ":"))
    pipe = client.pipeline(transaction=False)
    pipe.zadd(WORKERS_KEY, {info.instance: info.last_seen})
    pipe.set(WORKER_INFO_KEY.format(instance=info.instance), payload, ex=INFO_TTL_S)
    pipe.execute()
    prune_inflight(client, info.instance)


def track_deliveries(client: redis.Redis, instance: str, delivery_tags: list[str]) -> None:
    """Remember that ``instance`` holds the unacked messages ``delivery_tags``."""
    if not delivery_tags:
        return
    key = WORKER_INFLIGHT_KEY.format(instance=instance)
    pipe = client.pipeline(transaction=False)
    pipe.sadd(key, *delivery_tags)
    pipe.expire(key, INFO_TTL_S * 24)
    pipe.execute()


def disown(client: redis.Redis, instance: str) -> int:
    """``instance`` reconnected to the broker: it holds none of the deliveries it recorded before. Returns how many it dropped."""
    key = WORKER_INFLIGHT_KEY.format(instance=instance)
    pipe = client.pipeline(transaction=True)
    pipe.scard(key)
    pipe.delete(key)
    dropped, _ = pipe.execute()
    return int(dropped)


def prune_inflight(client: redis.Redis, instance: str) -> None:
    key = WORKER_INFLIGHT_KEY.format(instance=instance)
    tags = list(client.smembers(key))
    if not tags:
        return
    pipe = client.pipeline(transaction=False)
    for tag in tags:
        pipe.hexists(KOMBU_UNACKED_KEY, tag)
    done = [tag for tag, exists in zip(tags, pipe.execute(), strict=True) if not exists]
    if done:
        client.srem(key, *done)


def leave(client: redis.Redis, instance: str) -> None:
    """A clean shutdown: the worker is gone, not dead."""
    pipe = client.pipeline(transaction=False)
    pipe.zrem(WORKERS_KEY, instance)
    pipe.delete(WORKER_INFO_KEY.format(instance=instance))
    pipe.execute()


def workers(client: redis.Redis) -> list[WorkerInfo]:
    """Every worker that has beaten within the last hour, newest beat first."""
    instances = [i.decode() if isinstance(i, bytes) else i for i in client.zrevrange(WORKERS_KEY, 0, -1)]
    if not instances:
        return []
    raws = client.mget([WORKER_INFO_KEY.format(instance=i) for i in instances])
    out: list[WorkerInfo] = []
    for instance, raw in zip(instances, raws, strict=True):
        if raw is None:
            continue
        data = json.loads(raw)
        data["instance"] = instance
        out.append(WorkerInfo(**data))
    return out


def alive(client: redis.Redis, dead_after_s: float, now: float | None = None) -> list[WorkerInfo]:
    now = time.time() if now is None else now
    return [w for w in workers(client) if w.age_s(now) <= dead_after_s]


def sweep_dead(
    client: redis.Redis,
    *,
    dead_after_s: float,
    restore: Callable[[Iterable[str]], int] | None,
    now: float | None = None,
) -> dict[str, int]:
    """Redeliver the unacked messages of every worker silent for ``dead_after_s``.

    ``restore`` puts the given delivery tags back on their queues and returns
    how many it restored (kombu's ``restore_by_tag``, atomic per tag, so two
    sweepers never restore one message twice). Returns instance -> restored.
    """
    now = time.time() if now is None else now
    dead = client.zrangebyscore(WORKERS_KEY, "-inf", now - dead_after_s)
    result: dict[str, int] = {}
    for raw_instance in dead:
        instance = raw_instance.decode() if isinstance(raw_instance, bytes) else str(raw_instance)
        key = WORKER_INFLIGHT_KEY.format(instance=instance)
        tags = [t.decode() if isinstance(t, bytes) else t for t in client.smembers(key)]
        restored = restore(tags) if (restore is not None and tags) else 0
        pipe = client.pipeline(transaction=False)
        pipe.delete(key)
        pipe.zrem(WORKERS_KEY, instance)
        pipe.execute()
        result[instance] = restored
    return result


def sweep_orphans(
    client: redis.Redis,
    *,
    dead_after_s: float,
    restore: Callable[[Iterable[str]], int] | None,
    now: float | None = None,
) -> int:
    """Redeliver unacked messages older than ``dead_after_s`` that no live worker holds.

    Catches what :func:`sweep_dead` cannot: a worker killed between receiving a
    message and recording it as in flight (its set never had the tag). A live
    worker records each tag within milliseconds, so a tag this old that no
    live worker claims belongs to a dead one.
    """
    if restore is None:
        return 0
    now = time.time() if now is None else now
    old = [t.decode() if isinstance(t, bytes) else str(t) for t in client.zrangebyscore(KOMBU_UNACKED_INDEX_KEY, "-inf", now - dead_after_s)]
    if not old:
        return 0
    live = [i.decode() if isinstance(i, bytes) else str(i) for i in client.zrangebyscore(WORKERS_KEY, now - dead_after_s, "+inf")]
    claimed: set[str] = set()
    for instance in live:
        claimed.update(t.decode() if isinstance(t, bytes) else t for t in client.smembers(WORKER_INFLIGHT_KEY.format(instance=instance)))
    orphans = [t for t in old if t not in claimed]
    return restore(orphans) if orphans else 0

