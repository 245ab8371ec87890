"""Prometheus metrics. celery-exporter's names, so existing dashboards and alerts work, plus ``omni_*``.

Worker children, beat and the CLI write to files in the multiprocess folder
(``PROMETHEUS_MULTIPROC_DIR`` = ``<data>/metrics/<hostname>``, set by the
launcher before this module is imported); the metrics server merges every
host's folder, and computes queue lengths,
worker liveness and the beat leader at scrape time. Labels never hold symbols.
"""

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

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_TASK_LABELS = ("name", "hostname", "queue_name")
_RUNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))

TASK_RECEIVED = Counter("celery_task_received", "Sent when the worker receives a task.", _TASK_LABELS)
TASK_STARTED = Counter("celery_task_started", "Sent just before the worker executes the task.", _TASK_LABELS)
TASK_SUCCEEDED = Counter("celery_task_succeeded", "Sent if the task executed successfully.", _TASK_LABELS)
TASK_FAILED = Counter("celery_task_failed", "Sent if the execution of the task failed.", _TASK_LABELS)
TASK_RETRIED = Counter("celery_task_retried", "Sent if the task failed, but will be retried.", _TASK_LABELS)
TASK_REJECTED = Counter("celery_task_rejected", "The task was rejected by the worker.", _TASK_LABELS)
TASK_REVOKED = Counter("celery_task_revoked", "Sent if the task has been revoked.", _TASK_LABELS)
TASK_RUNTIME = Histogram("celery_task_runtime", "Histogram of task runtime measurements.", _TASK_LABELS, buckets=_RUNTIME_BUCKETS)
TASK_QUEUE_WAIT = Histogram(
    "celery_task_queue_wait_time",
    "Seconds between publishing a task and a worker starting it.",
    _TASK_LABELS,
    buckets=_RUNTIME_BUCKETS,
)

DEAD_LETTERS = Counter("omni_task_dead_letters", "Tasks dead-lettered after too many deliveries.", ("name", "queue_name"))
REDELIVERED = Counter("omni_tasks_redelivered", "Unacked tasks of dead workers put back on their queues.")
OUTCOMES_PERSISTED = Counter("omni_task_outcomes_persisted", "Task outcomes moved from Redis into the task_runs table.")
BEAT_SENT = Counter("omni_beat_sent", "Scheduled tasks sent by the beat leader.", ("entry",))
BEAT_DUPLICATES = Counter("omni_beat_duplicate_sends", "Scheduled sends recognised as duplicates of their slot.", ("entry",))
WATCHDOG_TICKS = Counter("omni_watchdog_ticks", "Watchdog evaluations run.")
BACKFILL_PARTITIONS = Counter("omni_backfill_partitions", "Backfill partitions finished, by status.", ("status", "provider"))
BACKFILL_ROWS = Counter("omni_backfill_rows", "Bars stored by backfills, by provider.", ("provider",))
BACKFILL_REJECTED = Counter("omni_backfill_rejected_rows", "Rows quarantined by the boundary check, by provider.", ("provider",))
LATENCY_VIOLATIONS = Counter("omni_latency_budget_violations", "Operations over their latency budget (DESIGN section 7).", ("budget",))
ORDERS = Counter("omni_orders", "Orders through the orders path, by outcome (denied orders also by check).", ("outcome", "check"))
ORDER_SUBMIT_SECONDS = Histogram(
    "omni_order_submit_seconds",
    "Order submission: checks, records and the broker call.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, float("inf")),
)
WATCHDOG_FINDINGS = Counter("omni_watchdog_findings", "Watchdog rule findings (breaching evaluations), by rule.", ("rule",))
WATCHDOG_ACTIONS = Counter("omni_watchdog_actions", "Actions the watchdog fired, by rule and action.", ("rule", "action"))
LEDGER_ACTIONS = Counter(
    "omni_ledger_actions", "Stuck ledger items (no live delivery) the watchdog requeued or failed, by ledger and action.", ("ledger", "action")
)


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


STREAM_LATENCY_EDGES_S = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)


class StreamCollector(Collector):
    """The streaming worker's stage histograms and counts, read from what it publishes to Redis each second.

    The quote loop records nanosecond histograms in its own memory (a
    prometheus-client observe per frame would cost more than the frame); the
    worker publishes them to Redis and this collector turns them into
    Prometheus histograms at scrape time. Labels never hold symbols.
    """

    def __init__(self, source: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        from omni_tasks.stream.latency import Histogram

        try:
            status, published = self._source()
        except Exception:  # noqa: BLE001 - a failed read shows as omni_stream_up 0
            status, published = {}, {}
        up = GaugeMetricFamily("omni_stream_up", "1 while the streaming worker reports connected (its status younger than 30 s).")
        fresh = bool(status) and (time.time_ns() - status.get("updated_ns", 0)) < 30e9
        up.add_metric([], 1.0 if fresh and status.get("connected") else 0.0)
        yield up
        latency = HistogramMetricFamily(
            "omni_stream_stage_latency_seconds",
            "Quote path latency per stage and frame (process: received -> books; e2e: received -> visible in Redis).",
            labels=["stage"],
        )
        violations = CounterMetricFamily(
            "omni_stream_budget_violations", "Frames over their latency budget (quote processing: 1 ms).", labels=["stage"]
        )
        for stage, summary in sorted(published.items()):
            hist = Histogram.from_sparse(summary.get("buckets", {}), max_ns=int(summary.get("max_ns", 0)))
            cumulative = hist.cumulative_at(int(edge * 1e9) for edge in STREAM_LATENCY_EDGES_S)
            buckets = [(repr(edge), count) for edge, count in zip(STREAM_LATENCY_EDGES_S, cumulative, strict=True)]
            buckets.append(("+Inf", hist.total))
            latency.add_metric([stage], buckets, sum_value=float(summary.get("sum_ns", 0)) / 1e9)
            if summary.get("budget_ns"):
                violations.add_metric([stage], float(summary.get("over_budget", 0)))
        yield latency
        yield violations
        messages = CounterMetricFamily(
            "omni_stream_messages", "Market-data messages by outcome (served, crossed, zero_size, out_of_order, ...).", labels=["outcome"]
        )
        for outcome, count in sorted((status.get("counts") or {}).items()) if isinstance(status.get("counts"), dict) else ():
            messages.add_metric([outcome], float(count))
        yield messages
        kinds = CounterMetricFamily("omni_stream_message_kinds", "Messages received by kind (Alpaca's T: q, t, b, s, l, c, x, ..., error, unknown).", labels=["kind"])
        for kind, count in sorted((status.get("kinds") or {}).items()) if isinstance(status.get("kinds"), dict) else ():
            kinds.add_metric([kind], float(count))
        yield kinds
        garbage = CounterMetricFamily("omni_stream_garbage_frames", "Frames that were not Alpaca message arrays (counted and skipped).")
        garbage.add_metric([], float(status.get("garbage_frames", 0)))
        yield garbage
        counters = found if isinstance(found := status.get("counters"), dict) else {}
        events = CounterMetricFamily(
            "omni_stream_connection_events", "Connects, reconnects, mute-socket reconnects, connection-limit cooldowns.", labels=["event"]
        )
        for event in ("connects", "reconnects", "mute_reconnects", "connection_limit", "flush_errors"):
            events.add_metric([event], float(counters.get(event, 0)))
        yield events
        last_ns = int(status.get("last_quote_ns") or 0) or int(status.get("last_msg_ns") or 0)
        if status and last_ns > 0:
            # What the watchdog's stale_stream rule judges: the last quote (else the last message), by the stream's own clock.
            quote_age = GaugeMetricFamily(
                "omni_stream_last_quote_age_seconds",
                "Seconds since the streaming worker's last quote (its last message before the first quote).",
            )
            quote_age.add_metric([], max(0.0, (time.time_ns() - last_ns) / 1e9))
            yield quote_age
        stale = GaugeMetricFamily("omni_stream_stale_symbols", "Subscribed symbols with no quote for stale_after_s in market hours.")
        stale.add_metric([], float(len(status.get("stale_symbols") or [])))
        yield stale


_UTILISATION_HELP = (
    "Share of each risk limit the latest risk snapshot uses (figure / limit; 1 = at the limit): daily_loss, drawdown, "
    "gross_leverage, concentration, var_99 (99% VaR against the daily loss limit), position_notional, correlation."
)


class DeskCollector(Collector):
    """The desk's state at scrape time: market hours, the latest risk snapshot, recent backfills, validation, watchdog, latency.

    ``source`` returns :func:`omni_tasks.pipeline.observe.desk_snapshot`: every figure
    comes from the function `omni status`, /health, the watchdog or the CLI
    reads for the same fact. A part that could not be read is left out and
    ``omni_desk_scrape_up`` is 0. Labels never hold symbols.
    """

    def __init__(self, source: Callable[[], dict[str, Any]], clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._clock = clock

    def collect(self) -> Iterator[Any]:
        from datetime import datetime

        from prometheus_client.core import CounterMetricFamily

        try:
            desk = self._source()
        except Exception:  # noqa: BLE001 - a failed read shows as omni_desk_scrape_up 0
            desk = {"errors": ["desk snapshot failed"]}
        now = self._clock()
        if desk.get("market_open") is not None:
            market = GaugeMetricFamily("omni_market_open", "1 while the exchange is in a regular session (the calendar the watchdog uses).")
            market.add_metric([], 1.0 if desk["market_open"] else 0.0)
            yield market

        risk = desk.get("risk")
        if isinstance(risk, dict) and "ts" in risk:
            used = GaugeMetricFamily("omni_risk_limit_utilisation", _UTILISATION_HELP, labels=["limit"])
            for limit, value in sorted((risk.get("utilisation") or {}).items()):
                if value is not None:
                    used.add_metric([limit], float(value))
            yield used
            score = GaugeMetricFamily("omni_risk_score", "The latest risk snapshot's 0..1 risk score.")
            score.add_metric([], float(risk.get("risk_score") or 0.0))
            yield score
            var = GaugeMetricFamily(
                "omni_risk_var_usd", "Historical value at risk of the latest snapshot, in USD (a loss is positive).", labels=["confidence"]
            )
            shortfall = GaugeMetricFamily(
                "omni_risk_expected_shortfall_usd", "Historical expected shortfall of the latest snapshot, in USD.", labels=["confidence"]
            )
            for level in ("95", "99"):
                if risk.get(f"var_{level}") is not None:
                    var.add_metric([f"0.{level}"], float(risk[f"var_{level}"]))
                if risk.get(f"es_{level}") is not None:
                    shortfall.add_metric([f"0.{level}"], float(risk[f"es_{level}"]))
            yield var
            yield shortfall
            breaches = GaugeMetricFamily("omni_risk_breaches", "Limit breaches in the latest risk snapshot.")
            breaches.add_metric([], float(len(risk.get("breaches") or [])))
            yield breaches
            age = GaugeMetricFamily("omni_risk_snapshot_age_seconds", "Seconds since the latest risk snapshot was taken.")
            age.add_metric([], max(0.0, now - datetime.fromisoformat(str(risk["ts"])).timestamp()))
            yield age

        if desk.get("backfill_partitions") is not None:
            partitions = GaugeMetricFamily(
                "omni_backfill_recent_partitions",
                "Partitions of the backfill jobs created in the last 24 h, by status (the ledger).",
                labels=["status"],
            )
            counts = dict(desk["backfill_partitions"])
            for status in sorted({"pending", "running", "succeeded", "failed"} | set(counts)):
                partitions.add_metric([status], float(counts.get(status, 0)))
            yield partitions

        if desk.get("validation_series") is not None:
            series = GaugeMetricFamily(
                "omni_validation_series",
                "Series by their latest validation verdict (failed: scans and risk mark them STALE INPUT).",
                labels=["timeframe", "status"],
            )
            verdicts = dict(desk["validation_series"])
            timeframes = sorted({timeframe for timeframe, _ in verdicts} | {"1Day"})
            for timeframe in timeframes:
                for status in ("failed", "passed"):
                    series.add_metric([timeframe, status], float(verdicts.get((timeframe, status), 0)))
            yield series

        if "watchdog_last_tick" in desk:
            tick = desk["watchdog_last_tick"]
            if isinstance(tick, dict) and tick.get("ts") is not None:
                tick_age = GaugeMetricFamily(
                    "omni_watchdog_last_tick_age_seconds",
                    "Seconds since the watchdog's last evaluation (what /health's watchdog_tick reads).",
                )
                tick_age.add_metric([], max(0.0, now - float(tick["ts"])))
                yield tick_age

        if desk.get("latency_violations") is not None:
            shared = CounterMetricFamily(
                "omni_latency_budget_violations_shared",
                "Latency budget violations counted by every process in Redis, by budget (the counters the watchdog reads).",
                labels=["budget"],
            )
            for budget, count in sorted(desk["latency_violations"].items()):
                shared.add_metric([budget], float(count))
            yield shared

        up = GaugeMetricFamily(
            "omni_desk_scrape_up", "1 when every desk figure (risk, backfills, validation, watchdog, latency) could be read."
        )
        up.add_metric([], 0.0 if desk.get("errors") else 1.0)
        yield up


def build_registry(
    snapshot: Callable[[], dict[str, Any]],
    metrics_root: Path | None,
    stream_source: Callable[[], tuple[dict[str, Any], dict[str, Any]]] | None = None,
    desk_source: Callable[[], dict[str, Any]] | None = None,
    *,
    files_max_age_s: float = 1.0,
    shared_counters: Callable[[], dict[str, dict[tuple[str, ...], float]]] | None = None,
) -> CollectorRegistry:
    """The registry served on /metrics: every process's metric files, the live gauges, the stream's histograms, the desk's state.

    ``files_max_age_s``: concurrent scrapes within this many seconds share one merge of the metric files.
    """
    registry = CollectorRegistry()
    if metrics_root is not None:
        registry.register(MergedFilesCollector(metrics_root, max_age_s=files_max_age_s))
    registry.register(LiveCollector(snapshot))
    if stream_source is not None:
        registry.register(StreamCollector(stream_source))
    if desk_source is not None:
        registry.register(DeskCollector(desk_source))
    if shared_counters is not None:
        from omni_tasks.core import counters

        registry.register(counters.collector(shared_counters))
    return registry


class Exposition:
    """The /metrics body: the metric files' part rendered at most once per ``max_age_s``, the live part on every scrape.

    The files' part (every process's counters and histograms, thousands of samples)
    is what costs: merged incrementally by :class:`MergedFilesCollector` and
    rendered to text here, once for all the scrapes that arrive within
    ``max_age_s`` or while it is being rendered. The live gauges and the stream's
    histograms (a few dozen samples, the trading state among them) are read and
    rendered on every scrape, so they are never stale.
    """

    def __init__(
        self,
        files: CollectorRegistry | None,
        live: CollectorRegistry,
        *,
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._files = files
        self._live = live
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._files_text = b""
        self._files_at = float("-inf")

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return self._files_part(generate_latest) + generate_latest(self._live)

    def _files_part(self, render: Callable[[CollectorRegistry], bytes]) -> bytes:
        if self._files is None:
            return b""
        asked = self._clock()
        with self._lock:
            if self._files_at >= asked or asked - self._files_at < self._max_age_s:
                return self._files_text
            started = self._clock()
            self._files_text = render(self._files)
            self._files_at = started
            return self._files_text


def build_exposition(
    snapshot: Callable[[], dict[str, Any]],
    metrics_root: Path | None,
    stream_source: Callable[[], tuple[dict[str, Any], dict[str, Any]]] | None = None,
    desk_source: Callable[[], dict[str, Any]] | None = None,
    *,
    files_max_age_s: float = 1.0,
    shared_counters: Callable[[], dict[str, dict[tuple[str, ...], float]]] | None = None,
) -> Exposition:
    """What /metrics serves (the same series as :func:`build_registry`), rendered for many concurrent scrapes."""
    files: CollectorRegistry | None = None
    if metrics_root is not None:
        files = CollectorRegistry()
        files.register(MergedFilesCollector(metrics_root))
    live = CollectorRegistry()
    live.register(LiveCollector(snapshot))
    if stream_source is not None:
        live.register(StreamCollector(stream_source))
    if desk_source is not None:
        # The desk's figures come from database queries: read at most once per files_max_age_s for all scrapes.
        live.register(DeskCollector(_shared_reading(desk_source, files_max_age_s)))
    if shared_counters is not None:
        # Counted in Redis by every process, the CLI included (omni_tasks.core.counters): one HGETALL each per scrape.
        from omni_tasks.core import counters

        live.register(counters.collector(shared_counters))
    return Exposition(files, live, max_age_s=files_max_age_s)


def _shared_reading(source: Callable[[], dict[str, Any]], max_age_s: float) -> Callable[[], dict[str, Any]]:
    """``source`` called at most once per ``max_age_s``; concurrent callers share one reading."""
    lock = threading.Lock()
    kept: dict[str, Any] = {"at": float("-inf"), "value": None}

    def read() -> dict[str, Any]:
        with lock:
            now = time.monotonic()
            if kept["value"] is None or now - kept["at"] >= max_age_s:
                kept["value"] = source()
                kept["at"] = time.monotonic()
            return dict(kept["value"])

    return read
