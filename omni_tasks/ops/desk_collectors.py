"""Collectors of what other processes publish to Redis: the stream worker's stage histograms, and the desk (risk, backfills, validation, watchdog, latency)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STREAM_LATENCY_EDGES_S = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)


#: One stream worker's (status, published latencies); a source returns one pair (the unsharded worker) or a pair per shard.
StreamReading = tuple[dict[str, Any], dict[str, Any]]
StreamSource = Callable[[], StreamReading | Mapping[str | None, StreamReading]]


class StreamCollector(Collector):
    """The streaming worker's stage histograms and counts, read from what it publishes to Redis each second.

    The quote loop records nanosecond histograms in its own memory (a
    prometheus-client observe per frame would cost more than the frame); the
    worker publishes them to Redis and this collector turns them into
    Prometheus histograms at scrape time. Labels never hold symbols.

    ``source`` returns the unsharded worker's (status, latencies), or a mapping
    shard -> (status, latencies): with shards every family has a ``shard``
    label, so a shard that is down shows as its own ``omni_stream_up 0``
    (a None key in the mapping is the unsharded worker: no label, as before).
    """

    def __init__(self, source: StreamSource) -> None:
        self._source = source

    def _readings(self) -> dict[str | None, StreamReading]:
        try:
            found = self._source()
        except Exception:  # noqa: BLE001 - a failed read shows as omni_stream_up 0
            return {None: ({}, {})}
        if isinstance(found, tuple):
            return {None: found}
        return dict(found) or {None: ({}, {})}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        from omni_tasks.stream.latency import Histogram

        readings = self._readings()
        by = [] if list(readings) == [None] else ["shard"]
        shards = [([] if shard is None else [str(shard)], status, published) for shard, (status, published) in readings.items()]
        up = GaugeMetricFamily("omni_stream_up", "1 while the streaming worker reports connected (its status younger than 30 s).", labels=by)
        for shard, status, _ in shards:
            fresh = bool(status) and (time.time_ns() - status.get("updated_ns", 0)) < 30e9
            up.add_metric(shard, 1.0 if fresh and status.get("connected") else 0.0)
        yield up
        latency = HistogramMetricFamily(
            "omni_stream_stage_latency_seconds",
            "Quote path latency per stage and frame (process: received -> books; e2e: received -> visible in Redis).",
            labels=[*by, "stage"],
        )
        violations = CounterMetricFamily(
            "omni_stream_budget_violations", "Frames over their latency budget (quote processing: 1 ms).", labels=[*by, "stage"]
        )
        for shard, _, published in shards:
            for stage, summary in sorted(published.items()):
                hist = Histogram.from_sparse(summary.get("buckets", {}), max_ns=int(summary.get("max_ns", 0)))
                cumulative = hist.cumulative_at(int(edge * 1e9) for edge in STREAM_LATENCY_EDGES_S)
                buckets = [(repr(edge), count) for edge, count in zip(STREAM_LATENCY_EDGES_S, cumulative, strict=True)]
                buckets.append(("+Inf", hist.total))
                latency.add_metric([*shard, stage], buckets, sum_value=float(summary.get("sum_ns", 0)) / 1e9)
                if summary.get("budget_ns"):
                    violations.add_metric([*shard, stage], float(summary.get("over_budget", 0)))
        yield latency
        yield violations
        messages = CounterMetricFamily(
            "omni_stream_messages", "Market-data messages by outcome (served, crossed, zero_size, out_of_order, ...).", labels=[*by, "outcome"]
        )
        kinds = CounterMetricFamily("omni_stream_message_kinds", "Messages received by kind (Alpaca's T: q, t, b, s, l, c, x, ..., error, unknown).", labels=[*by, "kind"])
        garbage = CounterMetricFamily("omni_stream_garbage_frames", "Frames that were not Alpaca message arrays (counted and skipped).", labels=by)
        events = CounterMetricFamily(
            "omni_stream_connection_events", "Connects, reconnects, mute-socket reconnects, connection-limit cooldowns.", labels=[*by, "event"]
        )
        # What the watchdog's stale_stream rule judges: the last quote (else the last message), by the stream's own clock.
        quote_age = GaugeMetricFamily(
            "omni_stream_last_quote_age_seconds",
            "Seconds since the streaming worker's last quote (its last message before the first quote).",
            labels=by,
        )
        stale = GaugeMetricFamily("omni_stream_stale_symbols", "Subscribed symbols with no quote for stale_after_s in market hours.", labels=by)
        for shard, status, _ in shards:
            for outcome, count in sorted((status.get("counts") or {}).items()) if isinstance(status.get("counts"), dict) else ():
                messages.add_metric([*shard, outcome], float(count))
            for kind, count in sorted((status.get("kinds") or {}).items()) if isinstance(status.get("kinds"), dict) else ():
                kinds.add_metric([*shard, kind], float(count))
            garbage.add_metric(shard, float(status.get("garbage_frames", 0)))
            counters = found if isinstance(found := status.get("counters"), dict) else {}
            for event in ("connects", "reconnects", "mute_reconnects", "connection_limit", "flush_errors"):
                events.add_metric([*shard, event], float(counters.get(event, 0)))
            last_ns = int(status.get("last_quote_ns") or 0) or int(status.get("last_msg_ns") or 0)
            if status and last_ns > 0:
                quote_age.add_metric(shard, max(0.0, (time.time_ns() - last_ns) / 1e9))
            stale.add_metric(shard, float(len(status.get("stale_symbols") or [])))
        yield messages
        yield kinds
        yield garbage
        yield events
        if quote_age.samples:
            yield quote_age
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
