"""System tasks: probes that prove a queue is served end to end."""

from __future__ import annotations

import os
import socket
import time

from omni_tasks.core.keys import PROBE_COMPLETIONS_KEY
from omni_tasks.core.runtime import get_runtime
from omni_tasks.pipeline.queues import Queue
from omni_tasks.pipeline.taskdef import omni_task
from omni_tasks.system.probes import pong


@omni_task(name="omni.system.ping", queue=Queue.WATCHDOG, soft_time_limit_s=5, time_limit_s=10, ignore_result=False, expires_s=120)
def ping(sent_at: float) -> dict[str, object]:
    """Answer a probe; `omni ping` sends one to every queue (queue= overrides the route)."""
    return pong(sent_at, host=socket.gethostname(), pid=os.getpid())


@omni_task(name="omni.system.probe", queue=Queue.WATCHDOG, soft_time_limit_s=120, time_limit_s=150, ignore_result=False)
def probe(marker: str, sleep_s: float = 0.0) -> dict[str, object]:
    """Sleep, then count one completion for ``marker``: proves exactly-once completion under faults."""
    time.sleep(max(0.0, min(sleep_s, 100.0)))
    count = int(get_runtime().redis.hincrby(PROBE_COMPLETIONS_KEY, marker, 1))
    return {"marker": marker, "completions": count, "pid": os.getpid()}


@omni_task(name="omni.system.noop", queue=Queue.SCANS, soft_time_limit_s=5, time_limit_s=10)
def noop() -> None:
    """Do nothing: measures the task path's own overhead (bench/celery_overhead)."""
