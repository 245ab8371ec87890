"""The /metrics registry and body: which collectors serve, and the files' part rendered once for concurrent scrapes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from omni_tasks.ops.collectors import LiveCollector, MergedFilesCollector
from omni_tasks.ops.desk_collectors import DeskCollector, StreamCollector, StreamSource


def build_registry(
    snapshot: Callable[[], dict[str, Any]],
    metrics_root: Path | None,
    stream_source: StreamSource | None = None,
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
    stream_source: StreamSource | None = None,
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
