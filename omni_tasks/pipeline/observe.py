"""What the pipeline looks like right now: queue depths and waits, workers, beat leader.

Plain functions over a Redis client, shared by ``omni status``, ``/health`` and
the live metrics; what is read from the Celery broker itself (queue depths,
the oldest wait) comes from :mod:`omni_tasks.pipeline.broker`. Importing this
module does not import Celery or kombu.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis

from omni_tasks.core import lock as leader
from omni_tasks.pipeline import broker, heartbeats
from omni_tasks.pipeline import outcomes as runs


def workers_view(client: redis.Redis, dead_after_s: float, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    rows = []
    for info in heartbeats.workers(client):
        age = info.age_s(now)
        rows.append(
            {
                "hostname": info.hostname,
                "instance": info.instance,
                "kind": info.kind,
                "queues": info.queues,
                "pid": info.pid,
                "alive": age <= dead_after_s,
                "age_s": round(age, 3),
                "active": info.active,
                "processed": info.processed,
                "uptime_s": round(now - info.started_at, 1),
            }
        )
    return rows


def live_snapshot(client: redis.Redis, broker_url: str, queues: Iterable[str], dead_after_s: float) -> dict[str, Any]:
    depths, oldest = broker.queue_depths(client, broker_url, queues)
    return {
        "queues": depths,
        "oldest_wait_s": oldest,
        "workers": workers_view(client, dead_after_s),
        "beat_leader": leader.current_leader(client),
        "outcomes_pending": runs.pending_outcomes(client),
        "breakers": breakers_view(client),
        "trading": trading_view(client),
    }


def trading_view(client: redis.Redis) -> dict[str, Any]:
    """The trading state as the order path's fast read sees it (Redis only: missing or unreadable counts as HALTED)."""
    from omni_tasks.core.keys import TRADING_STATE_KEY
    from omni_tasks.safety.state_rule import TradingState, parse_value

    try:
        raw = client.get(TRADING_STATE_KEY)
    except Exception as exc:  # noqa: BLE001 - unreadable counts as engaged
        return {"state": TradingState.HALTED.value, "version": None, "source": f"unreadable: {type(exc).__name__}"}
    parsed = parse_value(raw)
    if parsed is None:
        return {"state": TradingState.HALTED.value, "version": None, "source": "missing" if raw is None else "malformed"}
    return {"state": parsed.state.value, "version": parsed.version, "source": "redis"}


def breakers_view(client: redis.Redis) -> list[dict[str, Any]]:
    from omni_tasks.safety.breaker import CircuitBreaker, known_breakers

    return [CircuitBreaker(name, client).state() for name in known_breakers(client)]


#: Backfill partitions of jobs created this long ago at most count in ``desk_snapshot``'s ``backfill_partitions``.
RECENT_BACKFILL_S = 86_400.0


def desk_snapshot(runtime: Any, *, now: float | None = None) -> dict[str, Any]:
    """The desk's state for /metrics: market hours, the latest risk snapshot, recent backfills, validation, watchdog, latency.

    ``runtime`` is anything with ``.redis`` and ``.sessions``. Each part is
    read on its own: one that cannot be read is left out and named in
    ``errors`` (the others are still served). Every reading comes from the
    function the CLI, /health or the watchdog reads for the same fact.
    """
    now = time.time() if now is None else now
    out: dict[str, Any] = {"errors": []}

    def part(name: str, read: Any) -> None:
        try:
            out[name] = read()
        except Exception as exc:  # noqa: BLE001 - one unreadable part must not hide the others
            out["errors"].append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")

    def market_open() -> bool:
        from datetime import UTC, datetime

        from omni_tasks.marketdata.calendar import is_open

        return bool(is_open(datetime.fromtimestamp(now, tz=UTC)))

    def risk() -> dict[str, Any] | None:
        from omni_tasks.risk.snapshot_reads import latest_snapshot

        return latest_snapshot(runtime)

    def watchdog_last_tick() -> dict[str, Any] | None:
        from omni_tasks.core.keys import WATCHDOG_LAST_TICK_KEY

        raw = runtime.redis.get(WATCHDOG_LAST_TICK_KEY)
        return json.loads(raw) if raw else None

    def latency_violations() -> dict[str, int]:
        from omni_tasks.core import budgets

        return budgets.read_violations(runtime.redis)

    part("market_open", market_open)
    part("risk", risk)
    part("backfill_partitions", lambda: recent_backfill_partitions(runtime.sessions, since=now - RECENT_BACKFILL_S))
    part("validation_series", lambda: validation_verdicts(runtime.sessions))
    part("watchdog_last_tick", watchdog_last_tick)
    part("latency_violations", latency_violations)
    return out


def recent_backfill_partitions(sessions: Any, *, since: float) -> dict[str, int]:
    """Partitions by status over the backfill jobs created since ``since`` (unix seconds): the ledger `omni backfill status` lists."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from omni_tasks.storage.models import BackfillJob, BackfillPartition

    with sessions() as session:
        rows = session.execute(
            select(BackfillPartition.status, func.count())
            .join(BackfillJob, BackfillJob.id == BackfillPartition.job_id)
            .where(BackfillJob.created_at >= datetime.fromtimestamp(since, tz=UTC))
            .group_by(BackfillPartition.status)
        ).all()
    return {str(status): int(count) for status, count in rows}


def validation_verdicts(sessions: Any) -> dict[tuple[str, str], int]:
    """Series by (timeframe, latest verdict): the ``series_validation`` table scans and risk consult before trusting data."""
    from sqlalchemy import func, select

    from omni_tasks.storage.models import SeriesValidation

    with sessions() as session:
        rows = session.execute(
            select(SeriesValidation.timeframe, SeriesValidation.status, func.count()).group_by(
                SeriesValidation.timeframe, SeriesValidation.status
            )
        ).all()
    return {(str(timeframe), str(status)): int(count) for timeframe, status, count in rows}
