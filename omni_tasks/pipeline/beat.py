"""The beat scheduler: one leader (a renewed Redis lock), deterministic task ids per time slot.

A second beat stands by and says so; it takes over once the leader's lock
expires. Every scheduled send gets ``task_id = uuid5(entry task, arguments,
time slot)`` and is recorded with SET NX, so a send repeated for the same
slot (two leaders in a split second, a restart) is recognised and skipped.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import structlog
from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import crontab
from celery.schedules import schedule as interval_schedule

from omni_tasks.core.keys import BEAT_SLOT_KEY
from omni_tasks.core.lock import LeaderLock
from omni_tasks.core.runtime import get_runtime
from omni_tasks.ops import prometheus as metrics

_log = structlog.get_logger("omni.beat")
_NAMESPACE = uuid.UUID("5b0f3a52-7c59-4f0e-9d4e-2f1d8c7a9b10")
#: Entries a new leader sends at once instead of a period after it takes the lead (interval entries only).
DUE_ON_LEAD = frozenset({"omni.watchdog.tick"})


def slot_start(entry_schedule: Any, now_s: float) -> int:
    """The start (UNIX s) of the time slot ``now_s`` falls in for this schedule."""
    if isinstance(entry_schedule, interval_schedule) and not isinstance(entry_schedule, crontab):
        period = max(1, int(entry_schedule.run_every.total_seconds()))
    else:
        period = 60  # crontab's resolution is one minute
    return int(now_s // period) * period


def slot_task_id(task_name: str, args: Any, kwargs: Any, slot: int) -> str:
    key = json.dumps([task_name, list(args or ()), dict(kwargs or {}), slot], sort_keys=True, separators=(",", ":"), default=str)
    return str(uuid.uuid5(_NAMESPACE, key))


class LockedScheduler(Scheduler):
    """In-memory schedule driven only while this beat holds the leader lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = get_runtime().settings
        self._lock = LeaderLock(get_runtime().redis, ttl_s=settings.broker.beat_lock_ttl_s)
        self._renew_every_s = max(0.2, settings.broker.beat_lock_ttl_s / 3)
        self._announced_standby = False
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        was_leading = self._lock.leading
        if not self._lock.hold():
            if was_leading:
                _log.error("beat lost the leader lock; scheduling stopped")
            if not self._announced_standby:
                _log.warning("another beat leads; standing by", lock_ttl_s=self._lock.ttl_s)
                print("omni beat: another beat holds the leader lock; standing by", flush=True)
                self._announced_standby = True
            return min(1.0, self._renew_every_s)
        if not was_leading:
            _log.info("beat leads the schedule", token=self._lock.token)
            print("omni beat: leading the schedule", flush=True)
            self._announced_standby = False
            self._restart_entries()
        delay = super().tick(*args, **kwargs)
        return float(min(delay, self._renew_every_s))

    def _restart_entries(self) -> None:
        # A new leader starts every entry afresh: it never replays a slot the
        # previous leader may already have sent. The watchdog's tick is due at
        # once (a desk that just started, or whose beat just moved, is watched
        # now, not a period later); its slot key still refuses a second send
        # in a slot the previous leader used.
        now = self.app.now()
        for entry in self.schedule.values():
            entry.last_run_at = now - timedelta(seconds=_period_s(entry.schedule)) if entry.task in DUE_ON_LEAD else now
        self._heap = None

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        entry = self.reserve(entry) if advance else entry
        slot = slot_start(entry.schedule, time.time())
        task_id = slot_task_id(entry.task, entry.args, entry.kwargs, slot)
        client = get_runtime().redis
        ttl_s = int(max(3600, _period_s(entry.schedule) * 4))
        if not client.set(BEAT_SLOT_KEY.format(task_id=task_id), entry.name, nx=True, ex=ttl_s):
            metrics.BEAT_DUPLICATES.labels(entry.name).inc()
            _log.warning("duplicate send for slot skipped", entry=entry.name, slot=slot, task_id=task_id)
            return None
        options = dict(entry.options)
        options.setdefault("headers", {})["celery_beat_task"] = True
        task = self.app.tasks.get(entry.task)
        metrics.BEAT_SENT.labels(entry.name).inc()
        if task is not None:
            return task.apply_async(entry.args, entry.kwargs, producer=producer, task_id=task_id, **options)
        return self.app.send_task(entry.task, entry.args, entry.kwargs, producer=producer, task_id=task_id, **options)

    def close(self) -> None:
        self._lock.release()
        super().close()


def _period_s(entry_schedule: Any) -> float:
    run_every = getattr(entry_schedule, "run_every", None)
    if isinstance(run_every, timedelta) and not isinstance(entry_schedule, crontab):
        return run_every.total_seconds()
    return 60.0
