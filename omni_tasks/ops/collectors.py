"""Collectors of the /metrics body: every process's metric files merged, and the live gauges (queues, workers, beat) computed at scrape time."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class LiveCollector(Collector):
    """Gauges computed at scrape time from Redis and the broker (queue lengths, workers, beat)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        started = time.perf_counter()
        try:
            snap = self._snapshot()
            up = 1.0
        except Exception:  # noqa: BLE001 - a failed scrape must still answer, with omni_live_scrape_up 0
            snap = {}
            up = 0.0
        queue_length = GaugeMetricFamily("celery_queue_length", "Number of tasks in the queue.", labels=["queue_name"])
        for queue, depth in sorted(snap.get("queues", {}).items()):
            queue_length.add_metric([queue], depth)
        yield queue_length
        oldest = GaugeMetricFamily("omni_queue_oldest_wait_seconds", "Age of the oldest waiting task.", labels=["queue_name"])
        for queue, age in sorted(snap.get("oldest_wait_s", {}).items()):
            oldest.add_metric([queue], age)
        yield oldest
        # celery_* count Celery workers only (what Flower lists); the streaming worker is not one and has its own gauge.
        worker_up = GaugeMetricFamily("celery_worker_up", "Indicates if a worker has recently sent a heartbeat.", labels=["hostname"])
        stream_up = GaugeMetricFamily(
            "omni_stream_worker_up", "1 while a streaming worker (not a Celery worker) has recently sent a heartbeat.", labels=["hostname"]
        )
        age = GaugeMetricFamily(
            "omni_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.", labels=["hostname", "kind"]
        )
        seen: set[str] = set()
        for worker in snap.get("workers", []):
            # A worker restarted under the same hostname leaves its old record for an hour: the newest beat (listed first) speaks.
            if worker["hostname"] in seen:
                continue
            seen.add(worker["hostname"])
            (stream_up if worker["kind"] == "stream" else worker_up).add_metric([worker["hostname"]], 1.0 if worker["alive"] else 0.0)
            age.add_metric([worker["hostname"], worker["kind"]], worker["age_s"])
        yield worker_up
        yield stream_up
        yield age
        active = GaugeMetricFamily("celery_active_worker_count", "Number of active workers.")
        active.add_metric([], sum(1 for w in snap.get("workers", []) if w["alive"] and w["kind"] != "stream"))
        yield active
        leader = GaugeMetricFamily("omni_beat_leader", "1 while a beat holds the leader lock.")
        leader.add_metric([], 1.0 if snap.get("beat_leader") else 0.0)
        yield leader
        pending = GaugeMetricFamily("omni_task_outcomes_pending", "Task outcomes in Redis not yet in the database.")
        pending.add_metric([], snap.get("outcomes_pending", 0))
        yield pending
        breaker_state = GaugeMetricFamily(
            "omni_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open (forced states included).", labels=["breaker"]
        )
        codes = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
        for breaker in snap.get("breakers", []):
            shown = breaker.get("forced") or breaker["state"]
            breaker_state.add_metric([breaker["name"]], codes.get(shown, 2.0))
        yield breaker_state
        trading = snap.get("trading")
        if trading:
            state = GaugeMetricFamily(
                "omni_trading_state", "Trading state: 0 ACTIVE, 1 REDUCING, 2 HALTED (kill switch engaged, or the state unreadable)."
            )
            state.add_metric([], {"ACTIVE": 0.0, "REDUCING": 1.0}.get(trading["state"], 2.0))
            yield state
            engaged = GaugeMetricFamily("omni_kill_switch_engaged", "1 while the kill switch is engaged (or its state cannot be read).")
            engaged.add_metric([], 1.0 if trading["state"] == "HALTED" else 0.0)
            yield engaged
        scrape_up = GaugeMetricFamily("omni_live_scrape_up", "1 when the live metrics could be read from Redis and the broker.")
        scrape_up.add_metric([], up)
        yield scrape_up
        scrape_s = GaugeMetricFamily("omni_live_scrape_seconds", "Time taken to read the live metrics.")
        scrape_s.add_metric([], time.perf_counter() - started)
        yield scrape_s


_SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]  # metric name, sample name, sorted labels


@dataclass
class _FileValues:
    """One metric file's samples as last read; ``final``: its process is gone, the file will not change again."""

    values: dict[_SeriesKey, float]
    final: bool


class MergedFilesCollector(Collector):
    """Every process's metric files under ``root``, one subfolder per host (or container).

    prometheus-client's own collector reads one folder, keyed by PID; PIDs
    repeat across containers, so each host writes to ``root/<hostname>`` and
    the server merges them all.

    Worker children recycle (``max_tasks_per_child``) and each leaves its files
    behind, so there are hundreds; merging them all on every scrape (parsing
    every key's JSON again) made a scrape take over a second. Here the running
    sum is kept between scrapes: a file of a process of this host that has exited
    is read once more and then never again; every other file (a live process,
    another host's) is read on every scrape and replaces its previous values in
    the sum. Keys are parsed once per process lifetime of the server. Gauges
    (none of ours; their modes differ) are merged the ordinary way.

    Concurrent scrapes share one merge: a scrape arriving within ``max_age_s`` of
    the last merge (or while one runs) answers with it. The live gauges
    (:class:`LiveCollector`) are not cached: the trading state is never stale.
    """

    def __init__(
        self, root: Path, *, max_age_s: float = 0.0, hostname: str | None = None, alive: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._root = root
        self._max_age_s = max_age_s
        self._clock = clock
        self._merged: list[Any] | None = None
        self._merged_at = float("-inf")
        self._hostname = hostname or socket.gethostname()
        self._alive = alive or _pid_alive
        self._lock = threading.Lock()
        self._files: dict[str, _FileValues] = {}
        self._total: dict[_SeriesKey, float] = {}
        self._kinds: dict[str, tuple[str, str]] = {}  # metric name -> (type, help)
        self._keys: dict[str, tuple[str, str, tuple[tuple[str, str], ...], str]] = {}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric
        from prometheus_client.multiprocess import MultiProcessCollector

        asked = self._clock()
        with self._lock:
            # Merged while this scrape waited for the lock, or recently enough: the same answer.
            if self._merged is not None and (self._merged_at >= asked or asked - self._merged_at < self._max_age_s):
                return iter(self._merged)
            started = self._clock()
            gauges = self._refresh()
            metrics: dict[str, Any] = {}
            for (metric_name, name, labels), value in self._total.items():
                metric = metrics.get(metric_name)
                if metric is None:
                    typ, help_text = self._kinds[metric_name]
                    metric = metrics[metric_name] = Metric(metric_name, help_text, typ)
                metric.add_sample(name, labels, value)  # type: ignore[arg-type]  # a tuple of pairs, as prometheus-client's own _read_metrics passes: _accumulate_metrics keys on it
            # prometheus-client's own accumulation (histogram buckets made cumulative, _count added).
            merged = list(MultiProcessCollector._accumulate_metrics(metrics, True))
            if gauges:
                merged.extend(MultiProcessCollector.merge(gauges, accumulate=True))
            self._merged, self._merged_at = merged, started
        return iter(merged)

    def _refresh(self) -> list[str]:
        """Bring the running sum up to date with the files now present; returns the gauge files."""
        gauges: list[str] = []
        present: set[str] = set()
        for path in sorted(str(p) for p in self._root.glob("*/*.db")):
            parts = os.path.basename(path)[:-3].split("_")
            typ = parts[0]
            if typ == "gauge":
                gauges.append(path)
                continue
            present.add(path)
            known = self._files.get(path)
            if known is not None and known.final:
                continue
            final = self._is_ours(path) and parts[-1].isdigit() and not self._alive(int(parts[-1]))
            try:
                values = self._read(path, typ)
            except FileNotFoundError:
                present.discard(path)
                continue
            self._replace(path, _FileValues(values, final))
        for gone in set(self._files) - present:
            self._replace(gone, None)
        return gauges

    def _is_ours(self, path: str) -> bool:
        return os.path.basename(os.path.dirname(path)) == self._hostname

    def _read(self, path: str, typ: str) -> dict[_SeriesKey, float]:
        from prometheus_client.mmap_dict import MmapedDict

        values: dict[_SeriesKey, float] = {}
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(path):
            parsed = self._keys.get(key)
            if parsed is None:
                metric_name, name, labels, help_text = json.loads(key)
                parsed = self._keys[key] = (metric_name, name, tuple(sorted(labels.items())), help_text)
            metric_name, name, labels_key, help_text = parsed
            self._kinds.setdefault(metric_name, (typ, help_text))
            series = (metric_name, name, labels_key)
            values[series] = values.get(series, 0.0) + value
        return values

    def _replace(self, path: str, new: _FileValues | None) -> None:
        old = self._files.pop(path, None)
        if old is not None:
            for series, value in old.values.items():
                self._total[series] -= value
        if new is not None:
            self._files[path] = new
            for series, value in new.values.items():
                self._total[series] = self._total.get(series, 0.0) + value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's): alive
    return True
