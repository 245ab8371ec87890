"""Counters kept in Redis, for events that any process makes: the CLI included.

A short-lived process (``omni breaker trip``, ``omni kill engage``, a CLI
command that enqueues work) must not write prometheus-client multiprocess
files: each one would leave two files behind for the metrics server to merge
on every scrape. Events such processes make are counted here instead, with one
HINCRBY on a Redis hash per counter (field: the label values as a JSON list),
and the metrics server exports them (:class:`SharedCountersCollector`). Every
process counts them this way, so each series has one home and is exported once.

The counts live where the state they count lives: a breaker transition in the
Redis that holds the breaker, a kill switch change in the Redis of the runtime
that made it (so ``omni kill drill``, on its scratch Redis, never touches the
real counters). Counting is best effort: a Redis error is logged, never raised.
Labels never hold symbols.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from omni_tasks.core.keys import COUNTER_KEY

_log = structlog.get_logger("omni.counters")


@dataclass(frozen=True)
class SharedCounter:
    """One counter (exported as ``<name>_total``) with its label names."""

    name: str
    help: str
    labels: tuple[str, ...]

    @property
    def key(self) -> str:
        return COUNTER_KEY.format(name=self.name)

    def field(self, values: tuple[str, ...]) -> str:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.labels)} label values expected ({', '.join(self.labels)}), got {len(values)}")
        return json.dumps([str(v) for v in values], separators=(",", ":"))

    def inc(self, client: Any, *values: str, by: int = 1) -> bool:
        """Add ``by`` to the series of ``values``; False (logged) when Redis could not be written."""
        field = self.field(values)
        if by <= 0:
            return True
        try:
            client.hincrby(self.key, field, by)
        except Exception as exc:  # noqa: BLE001 - counting must never fail what it counts
            _log.warning("shared counter not incremented", counter=self.name, labels=list(values), error=f"{type(exc).__name__}: {exc}")
            return False
        return True


class Buffered:
    """Increments held in this process and written in one pipeline every ``interval_s`` (a daemon thread) and at exit.

    For counts made on a hot path (every task publish): the path itself never
    waits on Redis. A flush that fails keeps its counts for the next one; it says
    so once when the failures start, then at most once a minute while they last,
    and once when a flush succeeds again (not a line a second). A forked child
    starts with nothing (its parent flushes its own counts).
    """

    #: While flushes keep failing, the warning is repeated this often.
    WARN_EVERY_S = 60.0

    def __init__(self, client: Callable[[], Any], interval_s: float = 1.0) -> None:
        self._client = client
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._pid: int | None = None
        self._failing_since: float | None = None
        self._warned_at = 0.0

    def inc(self, counter: SharedCounter, *values: str, by: int = 1) -> None:
        field = counter.field(values)
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._counts = os.getpid(), {}
                threading.Thread(target=self._run, name="omni-counters", daemon=True).start()
                atexit.register(self.flush)
            self._counts[(counter.key, field)] = self._counts.get((counter.key, field), 0) + by

    def flush(self) -> int:
        """Write what is held; the number of increments written (0 when Redis refused them: they are kept)."""
        with self._lock:
            taken, self._counts = self._counts, {}
        if not taken:
            return 0
        try:
            pipe = self._client().pipeline(transaction=False)
            for (key, field), count in taken.items():
                pipe.hincrby(key, field, count)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - kept for the next flush
            with self._lock:
                for item, count in taken.items():
                    self._counts[item] = self._counts.get(item, 0) + count
            self._failed(exc)
            return 0
        if self._failing_since is not None:
            _log.info("shared counters flushed again", after_s=round(time.monotonic() - self._failing_since, 1))
            self._failing_since = None
        return sum(taken.values())

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._warned_at < self.WARN_EVERY_S:
            return
        self._warned_at = now
        _log.warning(
            "shared counters not flushed (kept for the next try)",
            error=f"{type(exc).__name__}: {exc}",
            failing_for_s=round(now - self._failing_since, 1),
        )

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            time.sleep(self._interval_s)
            self.flush()


TASKS_SENT = SharedCounter(
    "celery_task_sent",
    "Sent when a task message is published (by any process, the CLI and beat included).",
    ("name", "hostname", "queue_name"),
)
BREAKER_TRANSITIONS = SharedCounter(
    "omni_breaker_transitions",
    "Circuit breaker transitions from any process (automatic, forced and reset by operators), by breaker and the state reached.",
    ("breaker", "to_state"),
)
KILL_SWITCH_CHANGES = SharedCounter(
    "omni_kill_switch_changes",
    "Kill switch engages and trading state changes, by action and by whom (operator, watchdog, http, other). Drills are not counted here.",
    ("action", "by"),
)
KILL_SWITCH_DRILLS = SharedCounter(
    "omni_kill_switch_drills",
    "Kill switch drills (omni kill drill: a rehearsal on scratch Redis, database and broker), by result (passed, failed).",
    ("result",),
)
#: Every shared counter, in the order /metrics lists them.
ALL: tuple[SharedCounter, ...] = (TASKS_SENT, BREAKER_TRANSITIONS, KILL_SWITCH_CHANGES, KILL_SWITCH_DRILLS)


def read_all(client: Any, counters: tuple[SharedCounter, ...] = ALL) -> dict[str, dict[tuple[str, ...], float]]:
    """Every counter's series (label values -> count), one round trip. A malformed field is skipped."""
    pipe = client.pipeline(transaction=False)
    for counter in counters:
        pipe.hgetall(counter.key)
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for counter, raw in zip(counters, pipe.execute(), strict=True):
        series: dict[tuple[str, ...], float] = {}
        for field, value in (raw or {}).items():
            try:
                labels = json.loads(field.decode() if isinstance(field, bytes) else field)
                count = float(value.decode() if isinstance(value, bytes) else value)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(labels, list) and len(labels) == len(counter.labels):
                series[tuple(str(v) for v in labels)] = count
        out[counter.name] = series
    return out


def collector(read: Callable[[], dict[str, dict[tuple[str, ...], float]]], counters: tuple[SharedCounter, ...] = ALL) -> Any:
    """A prometheus-client collector exporting the shared counters at scrape time (``read``: :func:`read_all` on a client).

    While Redis cannot be read they are left out (``omni_live_scrape_up`` says so). prometheus-client
    is imported here, not with this module: the CLI imports this module before it decides whether
    the process writes metric files, and prometheus-client fixes that when first imported.
    """
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.registry import Collector

    class SharedCountersCollector(Collector):
        def collect(self) -> Iterator[Any]:
            try:
                values = read()
            except Exception as exc:  # noqa: BLE001 - a scrape must still answer
                _log.warning("shared counters unreadable", error=f"{type(exc).__name__}: {exc}")
                return
            for counter in counters:
                family = CounterMetricFamily(counter.name, counter.help, labels=list(counter.labels))
                for labels, count in sorted(values.get(counter.name, {}).items()):
                    family.add_metric(list(labels), count)
                yield family

    return SharedCountersCollector()
