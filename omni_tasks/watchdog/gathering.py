"""Gathering the watchdog's facts: Redis, the database and the exchange calendar read into one :class:`Observations`.

A fact that cannot be read is left None (and ``errors`` says why): its rule is not evaluated this time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import redis as redis_lib
from sqlalchemy import func, select

from omni_tasks.core import budgets
from omni_tasks.core.keys import (
    BREAKER_KEY,
    RISK_LATEST_KEY,
    STREAM_STATUS_KEY,
    WATCHDOG_FIRST_EVALUATION_KEY,
    WATCHDOG_LATENCY_SEEN_KEY,
)
from omni_tasks.settings import Settings
from omni_tasks.storage.models import TaskRun
from omni_tasks.stream.shards import shard_count, status_key
from omni_tasks.watchdog.rules import Observations

#: Task-run states that count towards the error storm.
FAILED_STATES: Final = ("FAILURE", "DEAD_LETTER")


class RuntimeLike(Protocol):
    """What the watchdog needs of a process runtime (:class:`omni_tasks.core.runtime.Runtime` fits)."""

    settings: Settings

    @property
    def redis(self) -> redis_lib.Redis: ...

    @property
    def sessions(self) -> Any: ...


def gather(
    runtime: RuntimeLike,
    *,
    queue_depths: Mapping[str, int] | None,
    now: float | None = None,
    market_open: Callable[[datetime], bool] | None = None,
    database_ok: bool = True,
) -> Observations:
    """Read every rule's inputs; a failure to read one leaves its field None (and says why in ``errors``).

    ``queue_depths`` come from the monitor's snapshot (None: it could not be taken).
    ``database_ok`` is the database breaker's verdict for this evaluation: False skips the database reads.
    """
    settings = runtime.settings
    client = runtime.redis
    now = time.time() if now is None else now
    errors: dict[str, str] = {}
    # When this watchdog (any of them, across restarts) first evaluated: the start-up grace for missing workers.
    client.set(WATCHDOG_FIRST_EVALUATION_KEY, repr(now), nx=True)
    first = float(_text(client.get(WATCHDOG_FIRST_EVALUATION_KEY)) or now)

    is_open: bool | None = None
    try:
        if market_open is None:
            from omni_tasks.marketdata.calendar import is_open as calendar_is_open

            market_open = calendar_is_open
        is_open = bool(market_open(datetime.fromtimestamp(now, tz=UTC)))
    except Exception as exc:  # noqa: BLE001 - the calendar may not cover the date
        errors["stream"] = f"market hours unknown: {type(exc).__name__}: {exc}"

    risk: dict[str, Any] | None = None
    risk_read = False
    try:
        from omni_tasks.risk.snapshot_reads import latest_snapshot

        risk = latest_snapshot(runtime) if database_ok else _risk_from_redis(client)
        risk_read = risk is not None or database_ok
        if not risk_read:
            errors["risk"] = "database breaker open and no snapshot in Redis"
    except Exception as exc:  # noqa: BLE001 - reported; the rule is not evaluated
        errors["risk"] = f"risk snapshot unreadable: {type(exc).__name__}: {str(exc)[:200]}"

    stream_status: dict[str, str] | None = None
    stream_shards: dict[str, dict[str, str]] | None = None
    try:
        shards = shard_count(settings)
        if shards:
            stream_shards = {str(i): {_text(k): _text(v) for k, v in client.hgetall(status_key(i)).items()} for i in range(shards)}
        else:
            stream_status = {_text(k): _text(v) for k, v in client.hgetall(STREAM_STATUS_KEY).items()}
    except redis_lib.RedisError as exc:
        errors["stream"] = f"stream status unreadable: {exc}"

    provider_breakers: dict[str, str] | None
    try:
        provider_breakers = _provider_states(client, settings.providers.order)
    except redis_lib.RedisError as exc:
        provider_breakers = None
        errors["breakers"] = f"breakers unreadable: {exc}"

    failed: int | None = None
    if database_ok:
        try:
            since = datetime.fromtimestamp(now, tz=UTC) - timedelta(seconds=60)
            with runtime.sessions() as session:
                failed = int(
                    session.execute(
                        select(func.count()).select_from(TaskRun).where(TaskRun.state.in_(FAILED_STATES), TaskRun.finished_at >= since)
                    ).scalar_one()
                )
        except Exception as exc:  # noqa: BLE001 - reported; the rule is not evaluated
            errors["task_runs"] = f"task-run ledger unreadable: {type(exc).__name__}: {str(exc)[:200]}"
    else:
        errors["task_runs"] = "database breaker open"

    workers: dict[str, int] | None
    try:
        from omni_tasks.pipeline import heartbeats

        workers = {}
        for info in heartbeats.alive(client, settings.watchdog.heartbeat_stale_s, now=now):
            workers[info.kind] = workers.get(info.kind, 0) + 1
    except redis_lib.RedisError as exc:
        workers = None
        errors["workers"] = f"heartbeats unreadable: {exc}"

    latency: dict[str, int] | None
    try:
        latency = _latency_since_last(client)
    except redis_lib.RedisError as exc:
        latency = None
        errors["latency"] = f"latency counters unreadable: {exc}"

    return Observations(
        now=now,
        first_evaluation=first,
        market_open=is_open,
        risk=risk,
        risk_read=risk_read,
        stream_status=stream_status,
        stream_shards=stream_shards,
        provider_breakers=provider_breakers,
        failed_runs_last_min=failed,
        workers_alive=workers,
        queue_depths=None if queue_depths is None else dict(queue_depths),
        latency_new=latency,
        errors=errors,
    )


def _risk_from_redis(client: redis_lib.Redis) -> dict[str, Any] | None:

    raw = client.get(RISK_LATEST_KEY)
    return json.loads(raw) if raw else None


def _provider_states(client: redis_lib.Redis, providers: Iterable[str]) -> dict[str, str]:
    """Each configured provider's breaker as it acts now: a forced state wins over the automatic one."""
    names = [f"provider:{p}" for p in providers]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(BREAKER_KEY.format(name=name), "state", "forced")
    out: dict[str, str] = {}
    for name, (state, forced) in zip(names, pipe.execute(), strict=True):
        out[name] = _text(forced) or _text(state) or "closed"
    return out


def _latency_since_last(client: redis_lib.Redis) -> dict[str, int]:
    """Violations per budget since the previous evaluation (the counters only grow; the last values are kept in Redis)."""
    current = budgets.read_violations(client)
    previous = {_text(k): int(v) for k, v in client.hgetall(WATCHDOG_LATENCY_SEEN_KEY).items()}
    client.hset(WATCHDOG_LATENCY_SEEN_KEY, mapping={k: v for k, v in current.items()})
    # A first evaluation (nothing seen yet) counts nothing: old violations are history, not news.
    return {name: max(0, count - previous[name]) for name, count in current.items() if name in previous}


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
