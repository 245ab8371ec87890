"""Nanosecond latency histograms per stage, cheap enough to record every frame.

A :class:`Histogram` keeps counts in log-linear buckets: 8 sub-buckets per
power of two, so a reported percentile is at most 12.5% above the true value
(it reports the bucket's upper edge: never optimistic). Recording is a
bit_length and an index, no allocation. Values below 8 ns get exact buckets.

Stages of the quote path (DESIGN section 6; budgets from section 7):

``process``  frame received -> decoded and applied to the books (the quote-processing
             stage; budget 1 ms, violations counted)
``decode``   the msgpack/JSON decode alone
``flush``    one Redis round trip writing the changed symbols
``e2e``      frame received -> its quotes visible in Redis

:class:`StageLatencies` publishes itself to Redis (``omni:stream:latency``) for
``omni status``, ``/metrics`` and the watchdog; the violation counts also go
to ``omni:latency:violations:<budget>`` counters the watchdog reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from omni_tasks.core.budgets import BUDGETS_MS, violations_key
from omni_tasks.core.keys import STREAM_LATENCY_KEY

SUB_BITS: Final = 3
SUB: Final = 1 << SUB_BITS
N_BUCKETS: Final = 64 * SUB + SUB
STAGES: Final = ("process", "decode", "flush", "e2e")
#: The stage each latency budget of core/budgets.py watches here (quote processing: the "process" stage).
BUDGET_NAMES: Final = {"process": "quote_processing"}
BUDGETS_NS: Final = {stage: round(BUDGETS_MS[name] * 1_000_000) for stage, name in BUDGET_NAMES.items()}


def bucket_of(ns: int) -> int:
    if ns < SUB:
        return ns if ns > 0 else 0
    shift = ns.bit_length() - SUB_BITS - 1
    return ((shift + 1) << SUB_BITS) + ((ns >> shift) - SUB)


def bucket_upper(index: int) -> int:
    """The largest value that falls in bucket ``index``."""
    if index < SUB:
        return index
    shift = (index >> SUB_BITS) - 1
    sub = index & (SUB - 1)
    return ((SUB + sub + 1) << shift) - 1


class Histogram:
    """Counts of nanosecond values in log-linear buckets; percentiles on demand."""

    __slots__ = ("counts", "total", "sum_ns", "max_ns", "over_budget", "budget_ns")

    def __init__(self, budget_ns: int | None = None) -> None:
        self.counts = [0] * N_BUCKETS
        self.total = 0
        self.sum_ns = 0
        self.max_ns = 0
        self.over_budget = 0
        self.budget_ns = budget_ns

    def record(self, ns: int) -> None:
        self.counts[bucket_of(ns)] += 1
        self.total += 1
        self.sum_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns
        if self.budget_ns is not None and ns > self.budget_ns:
            self.over_budget += 1

    def record_many(self, values: Iterable[int]) -> None:
        for ns in values:
            self.record(ns)

    def percentile(self, q: float) -> int:
        """The value at percentile ``q`` (0..100), as the upper edge of its bucket; 0 when empty."""
        if self.total == 0:
            return 0
        rank = max(1, int(self.total * q / 100.0 + 0.999999))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(bucket_upper(index), self.max_ns)
        return self.max_ns

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.total,
            "sum_ns": self.sum_ns,
            "p50_ns": self.percentile(50),
            "p95_ns": self.percentile(95),
            "p99_ns": self.percentile(99),
            "max_ns": self.max_ns,
            "over_budget": self.over_budget,
            "budget_ns": self.budget_ns,
        }

    def sparse(self) -> dict[int, int]:
        return {i: c for i, c in enumerate(self.counts) if c}

    @classmethod
    def from_sparse(cls, buckets: dict[Any, int], *, max_ns: int = 0) -> Histogram:
        hist = cls()
        for index, count in buckets.items():
            hist.counts[int(index)] = int(count)
            hist.total += int(count)
        hist.max_ns = max_ns or (bucket_upper(max((int(i) for i in buckets), default=0)) if buckets else 0)
        return hist

    def cumulative_at(self, edges_ns: Iterable[int]) -> list[int]:
        """Counts of values <= each edge (for a Prometheus histogram); bucket edges are conservative."""
        out = []
        for edge in edges_ns:
            out.append(sum(c for i, c in enumerate(self.counts) if c and bucket_upper(i) <= edge))
        return out


class StageLatencies:
    """One :class:`Histogram` per stage, and the budget violations not yet published."""

    def __init__(self) -> None:
        self.stages = {stage: Histogram(BUDGETS_NS.get(stage)) for stage in STAGES}
        self._published_violations = dict.fromkeys(BUDGETS_NS, 0)

    def __getitem__(self, stage: str) -> Histogram:
        return self.stages[stage]

    def summary(self) -> dict[str, dict[str, Any]]:
        return {stage: hist.summary() for stage, hist in self.stages.items()}

    def publish(self, pipe: Any, key: str = STREAM_LATENCY_KEY) -> None:
        """Queue the publication on a Redis pipeline (sync or asyncio): histograms, summaries (in ``key``: a shard has its own), violation deltas."""
        payload = {
            stage: json.dumps({**hist.summary(), "buckets": hist.sparse()}, separators=(",", ":")) for stage, hist in self.stages.items()
        }
        pipe.hset(key, mapping=payload)
        pipe.expire(key, 3600)
        for stage in BUDGETS_NS:
            delta = self.stages[stage].over_budget - self._published_violations[stage]
            if delta:
                pipe.incrby(violations_key(BUDGET_NAMES[stage]), delta)
                self._published_violations[stage] += delta


def read_published(client: Any, shard: int | str | None = None) -> dict[str, dict[str, Any]]:
    """What a stream worker (or one shard) last published: stage -> summary with ``buckets`` ({} when none)."""
    from omni_tasks.stream.shards import latency_key

    raw = client.hgetall(latency_key(shard))
    out = {}
    for key, value in raw.items():
        stage = key.decode() if isinstance(key, bytes) else key
        try:
            out[stage] = json.loads(value)
        except ValueError:
            continue
    return out
