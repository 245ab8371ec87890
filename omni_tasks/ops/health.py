"""/health: the state of every dependency, with how long each check took.

Overall status is ``down`` (HTTP 503) when a critical dependency is down -
the database, the broker, or the watchdog worker - ``degraded`` when anything
else is (``ledgers``: work stuck without a live delivery and not being
resolved), ``ok`` otherwise. ``trading`` is the trading state and kill switch
(who engaged it, why, since when); a state that cannot be read counts as
HALTED and marks the ``kill_switch`` check down. The ``trading`` check is
``degraded``, with its reasons, while orders are blocked (kill switch,
REDUCING, a breaker on the order path open or forced open, a stale stream in
market hours): the desk is not ok then, though no dependency is down (200).
Times: ``ts`` is UNIX seconds, ``ts_utc`` and every ``*_at`` are ISO 8601 with
their offset (UTC).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import Engine, text

from omni_tasks.core import lock as leader
from omni_tasks.core.keys import WATCHDOG_LAST_TICK_KEY
from omni_tasks.pipeline import broker as celery_broker
from omni_tasks.pipeline import heartbeats

if TYPE_CHECKING:
    from omni_tasks.settings import Settings

CRITICAL = frozenset({"database", "broker", "worker:watchdog"})


def _timed(check: Callable[[], str | None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency is reported, not raised
        detail = f"{type(exc).__name__}: {exc}"[:300]
        status = "down"
    result: dict[str, Any] = {"status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    if detail:
        result["detail"] = detail
    return result


def check_health(
    *,
    engine: Engine,
    client: redis.Redis,
    broker_url: str,
    worker_kinds: Iterable[str],
    dead_after_s: float,
    watchdog_interval_s: float,
    settings: Settings | None = None,
) -> tuple[int, dict[str, Any]]:
    """(HTTP code, payload). ``settings`` names the order path's breakers and the stale-stream limit for the ``trading`` check."""
    checks: dict[str, dict[str, Any]] = {}

    def database() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def broker() -> str | None:
        if broker_url.startswith(("amqp", "pyamqp")):
            celery_broker.ping(broker_url)
            return "rabbitmq"
        client.ping()
        return None

    checks["database"] = _timed(database)
    checks["broker"] = _timed(broker)
    if checks["broker"]["status"] == "ok" or not broker_url.startswith(("redis", "unix")):
        checks["redis"] = _timed(lambda: (client.ping(), None)[1])
    redis_ok = checks.get("redis", checks["broker"])["status"] == "ok"

    alive_by_kind: dict[str, int] = {}
    if redis_ok:
        for worker in heartbeats.alive(client, dead_after_s):
            alive_by_kind[worker.kind] = alive_by_kind.get(worker.kind, 0) + 1
    for kind in worker_kinds:
        count = alive_by_kind.get(kind, 0)
        checks[f"worker:{kind}"] = {
            "status": "ok" if count else "down",
            "latency_ms": 0.0,
            "detail": f"{count} alive" if redis_ok else "redis unreachable",
        }

    def beat() -> str:
        current = leader.current_leader(client)
        if current is None:
            raise RuntimeError("no beat holds the leader lock")
        return f"leader {current.get('host')} pid {current.get('pid')}"

    def watchdog_tick() -> str:
        raw = client.get(WATCHDOG_LAST_TICK_KEY)
        if raw is None:
            raise RuntimeError("the watchdog has not run yet")
        age = time.time() - float(json.loads(raw)["ts"])
        if age > max(30.0, watchdog_interval_s * 6):
            raise RuntimeError(f"last watchdog tick {age:.0f} s ago")
        return f"last tick {age:.1f} s ago"

    def stream() -> str:
        from omni_tasks.stream.shards import shard_count
        from omni_tasks.stream.status import read_shard_statuses, read_status

        shards = shard_count(settings) if settings is not None else 0
        if shards:
            return shard_line(read_shard_statuses(client, shards))
        status = read_status(client)
        if not status:
            raise RuntimeError("no streaming worker has reported")
        age = (time.time_ns() - status.get("updated_ns", 0)) / 1e9
        if age > max(30.0, dead_after_s * 3):
            raise RuntimeError(f"the streaming worker last reported {age:.0f} s ago")
        if not status.get("connected"):
            raise RuntimeError(f"the streaming worker is not connected: {status.get('last_error') or 'connecting'}")
        stale = status.get("stale_symbols") or []
        last_quote_s = (time.time_ns() - status.get("last_quote_ns", 0)) / 1e9
        return (
            f"{status.get('feed')}: {len(status.get('symbols') or [])} symbols, {len(stale)} stale, last market data {last_quote_s:.1f} s ago"
            + refused_line(status)
        )

    def refused_line(status: dict[str, Any]) -> str:
        """The symbols the provider refused to stream, with its words and code (they get no quotes)."""
        refused = status.get("refused") or {}
        if not isinstance(refused, dict) or not refused:
            return ""
        by_reason: dict[str, list[str]] = {}
        for symbol, reason in refused.items():
            by_reason.setdefault(str(reason), []).append(str(symbol))
        return "; not served: " + "; ".join(f"{', '.join(symbols)} ({reason})" for reason, symbols in by_reason.items())

    def shard_line(statuses: dict[str, dict[str, Any]]) -> str:
        """Every shard must report and be connected: a shard down leaves its symbols without quotes."""
        down = []
        for shard, status in statuses.items():
            age = (time.time_ns() - status.get("updated_ns", 0)) / 1e9
            if not status or age > max(30.0, dead_after_s * 3) or not status.get("connected"):
                down.append(f"shard {shard}: " + ("no report" if not status else f"{status.get('last_error') or 'not connected'}, reported {age:.0f} s ago"))
        if down:
            raise RuntimeError(f"{len(down)} of {len(statuses)} stream shards down: " + "; ".join(down))
        symbols = sum(len(status.get("symbols") or []) for status in statuses.values())
        stale = sum(len(status.get("stale_symbols") or []) for status in statuses.values())
        return f"{len(statuses)} shards connected: {symbols} symbols, {stale} stale" + "".join(refused_line(s) for s in statuses.values())

    checks["stream"] = _timed(stream) if redis_ok else {"status": "down", "latency_ms": 0.0, "detail": "redis unreachable"}
    risk = _risk(engine, client)
    checks["beat"] = _timed(beat) if redis_ok else {"status": "down", "latency_ms": 0.0, "detail": "redis unreachable"}
    checks["watchdog_tick"] = _timed(watchdog_tick) if redis_ok else {"status": "down", "latency_ms": 0.0}
    checks["ledgers"] = (
        _timed(lambda: ledgers_detail(client)) if redis_ok else {"status": "down", "latency_ms": 0.0, "detail": "redis unreachable"}
    )

    trading = _trading(engine, client)
    checks["kill_switch"] = {
        "status": "down" if trading["source"] == "unreadable" else ("degraded" if trading["consistent"] is False else "ok"),
        "latency_ms": trading.pop("latency_ms"),
        "detail": _trading_detail(trading),
    }
    checks["trading"] = trading_check(trading, client, settings=settings)

    down = {name for name, result in checks.items() if result["status"] != "ok"}
    if down & CRITICAL:
        status, code = "down", 503
    elif down:
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    now = time.time()
    payload = {"status": status, "ts": now, "ts_utc": _utc_text(now), "trading": trading, "risk": risk, "checks": checks}
    return code, payload


def _utc_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")


def trading_check(
    trading: dict[str, Any], client: redis.Redis, *, settings: Settings | None = None, now: float | None = None
) -> dict[str, Any]:
    """Can orders pass? ``degraded`` with every reason they cannot: the kill switch, a breaker on the order path, a stale stream.

    ``trading`` is :func:`omni_tasks.safety.killswitch.state_info` (the order path's rule). The breakers are the
    ones every order passes (the database's and the configured broker's; without ``settings``, every
    registered ``broker:*`` breaker), read by their effective state (a forced state wins). The stream is
    judged by the watchdog's own ``stale_stream`` rule (market hours only). Never ``down``: a dead dependency
    is the other checks' to report.
    """
    started = time.perf_counter()
    reasons: list[str] = []
    state = trading.get("state")
    if trading.get("source") == "unreadable":
        reasons.append("kill switch: the trading state is unreadable and counts as HALTED: no order passes")
    elif state == "HALTED":
        reasons.append(f"kill switch engaged (HALTED) by {trading.get('actor')}: {trading.get('reason')}: no order passes")
    elif state == "REDUCING":
        reasons.append(f"trading REDUCING (by {trading.get('actor')}: {trading.get('reason')}): only orders that shrink a position pass")
    for name in _order_breakers(client, settings):
        reasons.extend(_breaker_reason(client, name))
    if settings is not None:
        stale = _stale_stream(client, settings, time.time() if now is None else now)
        if stale:
            reasons.append(stale)
    detail = "; ".join(reasons) if reasons else "orders pass (trading ACTIVE, order-path breakers closed, stream fresh or market closed)"
    return {
        "status": "degraded" if reasons else "ok",
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "detail": detail,
        "reasons": reasons,
    }


def _order_breakers(client: redis.Redis, settings: Settings | None) -> list[str]:
    from omni_tasks.safety.breaker import known_breakers
    from omni_tasks.trading.order_breakers import DATABASE_BREAKER, venue_breaker_name

    if settings is not None:
        return [venue_breaker_name(settings.trading.venue), DATABASE_BREAKER]
    try:
        brokers = [name for name in known_breakers(client) if name.startswith("broker:")]
    except redis.RedisError:
        brokers = []
    return [*brokers, DATABASE_BREAKER]


def _breaker_reason(client: redis.Redis, name: str) -> list[str]:
    from omni_tasks.safety.breaker import CircuitBreaker

    try:
        state = CircuitBreaker(name, client).state()
    except redis.RedisError as exc:
        return [f"breaker {name} unreadable ({type(exc).__name__}): the order path counts it as open"]
    if state["forced"] == "open":
        return [f"breaker {name} forced open: orders are denied until it is reset"]
    if state["state"] == "open":
        return [f"breaker {name} open (automatic, cooling down): orders are denied"]
    if state["state"] == "half_open":
        return [f"breaker {name} half-open: only trial orders pass"]
    return []


def _stale_stream(client: redis.Redis, settings: Settings, now: float) -> str | None:
    """The watchdog's stale_stream rule on what Redis and the calendar say now (None: fresh, market closed or unreadable).

    The calendar is asked only when the stream is stale: a fresh stream passes at any hour, and the exchange
    calendar (pandas, exchange_calendars) costs the server about a second of CPU on its first call, which was
    at its first /health, while `omni up` starts every process at once.
    """
    from dataclasses import replace

    from omni_tasks.stream.shards import shard_count, shard_labels, status_key
    from omni_tasks.watchdog.rules import NotEvaluated, Observations, stale_stream

    try:
        shards = shard_count(settings)
        raw = {shard: client.hgetall(status_key(shard)) for shard in shard_labels(shards)}
    except Exception:  # noqa: BLE001 - the stream has its own check; no reason to add here
        return None
    statuses = {shard: {_text(k): _text(v) for k, v in found.items()} for shard, found in raw.items()}
    if shards:
        sharded = {str(shard): status for shard, status in statuses.items()}
        observed = Observations(now=now, first_evaluation=now, market_open=True, stream_shards=sharded)
    else:
        observed = Observations(now=now, first_evaluation=now, market_open=True, stream_status=statuses[None])
    try:
        if stale_stream(observed, settings) is None:
            return None  # fresh even if the market is open: the hours do not matter
        from omni_tasks.marketdata.calendar import is_open

        finding = stale_stream(replace(observed, market_open=bool(is_open(datetime.fromtimestamp(now, tz=UTC)))), settings)
    except NotEvaluated:
        return None
    except Exception:  # noqa: BLE001 - the calendar has its own check; no reason to add here
        return None
    return None if finding is None else f"stream stale: {finding.message} (the order path's price collar needs fresh quotes)"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ledgers_detail(client: redis.Redis) -> str:
    """The ledger reconciler's view in one line; raises (the check is down) when stuck work is not being resolved."""
    from omni_tasks.watchdog.ledgers import read_view

    view = read_view(client)
    hour = view["last_hour"]
    last = view["last_reconcile"] or {}
    line = (
        f"stuck {view['stuck']} (partitions {view['stuck_partitions']}, scan runs {view['stuck_scan_runs']}, oldest {view['oldest_stuck_s']:.0f} s); "
        f"last hour: requeued {hour['requeued']}, failed {hour['failed']}, redelivered {hour['redelivered']}, jobs rolled up {hour['rolled_up']}"
    )
    limit = 2 * float(last.get("stuck_after_s") or 0)
    if limit and view["oldest_stuck_s"] > limit:
        raise RuntimeError(
            f"work stuck longer than {limit:.0f} s is not being resolved ({last.get('skipped') or last.get('error') or 'see the watchdog log'}): {line}"
        )
    return line


def _risk(engine: Engine, client: redis.Redis) -> dict[str, Any] | None:
    """The latest risk snapshot's summary (None when none was taken; an error is reported, not raised)."""
    from types import SimpleNamespace

    from sqlalchemy.orm import sessionmaker

    from omni_tasks.risk.snapshot_reads import latest_snapshot

    try:
        return latest_snapshot(SimpleNamespace(redis=client, sessions=sessionmaker(engine)))
    except Exception as exc:  # noqa: BLE001 - /health must answer
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def _trading(engine: Engine, client: redis.Redis) -> dict[str, Any]:
    """The trading state and kill switch (an unreadable state counts as HALTED: the kill switch engaged)."""
    from sqlalchemy.orm import sessionmaker

    from omni_tasks.safety.killswitch import state_info

    started = time.perf_counter()
    info = state_info(client, sessionmaker(engine))
    info["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return info


def _trading_detail(info: dict[str, Any]) -> str:
    if info["source"] == "unreadable":
        return f"trading state unreadable: counts as HALTED (kill switch engaged): {info['why']}"
    if info["state"] == "HALTED":
        text = f"kill switch ENGAGED (HALTED) since {info['changed_at']} by {info['actor']}: {info['reason']}"
    else:
        text = f"trading {info['state']}" + (f" since {info['changed_at']}" if info.get("changed_at") else "")
    return text if info["consistent"] is not False else f"{text}; {info['why']}"
