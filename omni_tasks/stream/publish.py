"""What the stream worker publishes every housekeeping tick: its status hash, latencies and heartbeat.

One pipelined round trip writes the status hash (read back by
:mod:`omni_tasks.stream.status`), the latency histograms and, once a
second, the per-symbol profiles; every ``heartbeat_s`` the worker also beats
like a Celery worker (kind ``stream``), so ``omni status``, ``/health`` and
the watchdog see it.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from omni_tasks.pipeline import heartbeats
from omni_tasks.stream.shards import latency_key, status_key

if TYPE_CHECKING:
    from omni_tasks.stream.worker import StreamWorker


def status(worker: StreamWorker) -> dict[str, Any]:
    """The status hash's fields (JSON for lists and dicts, ints for counts and times in wall ns)."""
    now = time.time_ns()
    path = worker.path
    config = worker.config
    return {
        "worker": worker.instance,
        "name": config.name,
        "feed": worker.feed.name if worker.feed is not None else "",
        "connected": int(worker.connected),
        "trading_state": path.trading_state,
        "symbols": json.dumps(worker.subscribed),
        "stale_symbols": json.dumps(path.stale_symbols(worker.subs.streaming(), now, config.stale_after_s) if worker.market_open() else []),
        "refused": json.dumps(worker.subs.refused),  # symbol -> the provider's words and code: not served
        "market_open": int(worker.market_open()),
        "last_msg_ns": path.last_msg_ns,
        "last_quote_ns": path.last_data_ns,
        "frames": path.frames,
        "flushes": path.flushes,
        "garbage_frames": path.garbage_frames,
        "counts": json.dumps(path.books.counts),
        "kinds": json.dumps(path.books.kinds),
        "channels": json.dumps(list(config.channels)),
        "counters": json.dumps(worker.counters.__dict__),
        "last_error": worker.last_error,
        "last_error_ns": worker.last_error_ns,
        "recovered_ns": worker.recovered_ns,
        "updated_ns": now,
    } | ({} if config.shard is None else {"shard": config.shard})


class StatusPublisher:
    """Publishes one worker's status; remembers when it last wrote the profiles and the heartbeat."""

    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker
        self.last_heartbeat = 0.0
        self.last_profiles = 0.0

    async def publish(self, *, force: bool = False) -> None:
        worker = self.worker
        worker.note_recovery()
        path = worker.path
        pipe = worker.redis.pipeline(transaction=False)
        key = status_key(worker.config.shard)
        pipe.hset(key, mapping=status(worker))
        pipe.expire(key, 300)
        path.latency.publish(pipe, latency_key(worker.config.shard))
        now = time.time()
        if force or now - self.last_profiles >= 1.0:
            self.last_profiles = now
            path.queue_profiles(pipe)
        await pipe.execute()
        if force or now - self.last_heartbeat >= worker.config.heartbeat_s:
            self.last_heartbeat = now
            self._beat(now)

    def _beat(self, now: float) -> None:
        worker = self.worker
        latency = worker.path.latency.summary()
        info = heartbeats.WorkerInfo(
            instance=worker.instance,
            hostname=worker.instance,
            kind="stream",
            queues=[],
            pid=os.getpid(),
            started_at=worker.started_at,
            last_seen=now,
            processed=worker.path.books.counts["quotes"],
            extra={
                "feed": worker.feed.name if worker.feed is not None else "",
                "connected": worker.connected,
                "symbols": len(worker.subscribed),
                **({} if worker.config.shard is None else {"shard": worker.config.shard}),
                "process_p99_us": latency["process"]["p99_ns"] / 1000,
                "e2e_p99_us": latency["e2e"]["p99_ns"] / 1000,
            },
        )
        heartbeats.beat(worker.sync_redis, info)  # a blocking ~0.3 ms every few seconds: cheaper than a thread
