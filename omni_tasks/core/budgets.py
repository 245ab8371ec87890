"""Latency budgets (DESIGN section 7) and the Redis counters of their violations, which the watchdog reads.

Each violation is counted twice: in Prometheus (``omni_latency_budget_violations_total``,
label ``budget``, for dashboards) and in a plain Redis counter
``omni:latency:violations:<budget>`` (INCRBY; never reset) that every process
shares, so the watchdog can see the rate across processes. The stream worker
writes ``quote_processing`` the same way (omni_tasks.stream.latency).
"""

from __future__ import annotations

from typing import Any, Final

from omni_tasks.core.keys import LATENCY_VIOLATIONS_KEY

#: Budget name -> milliseconds.
BUDGETS_MS: Final[dict[str, float]] = {
    "order_submission": 10.0,
    "quote_processing": 1.0,
    "strategy_step": 5.0,
    "database_query": 5.0,
    "provider_call": 50.0,
}


def violations_key(budget: str) -> str:
    if budget not in BUDGETS_MS:
        raise ValueError(f"unknown latency budget {budget!r}: choose from {', '.join(BUDGETS_MS)}")
    return LATENCY_VIOLATIONS_KEY.format(budget=budget)


def count_violations(redis: Any, budget: str, count: int = 1) -> None:
    """Add ``count`` violations of ``budget`` to its shared counter. Redis errors propagate."""
    if count > 0:
        redis.incrby(violations_key(budget), count)


def read_violations(redis: Any) -> dict[str, int]:
    """Every budget's violation count so far (0 when never violated), one round trip."""
    names = list(BUDGETS_MS)
    values = redis.mget([LATENCY_VIOLATIONS_KEY.format(budget=name) for name in names])
    return {name: int(value or 0) for name, value in zip(names, values, strict=True)}
