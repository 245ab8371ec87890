"""Operator commands: status and ping."""

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.cli import status_view
from omni_tasks.cli.parsing import NOT_MIGRATED, fail, option, schema_missing
from omni_tasks.core import inputs

console = Console()


#: How long `omni status` waits to connect to Redis before it concludes the pipeline is not running.
PROBE_CONNECT_S = 0.5
#: `omni status` exit codes: 0 all shown, 1 some part unavailable, 4 the pipeline is not running.
NOT_RUNNING_EXIT = 4


class _QuickRuntime:
    """The process runtime with a Redis client that gives up connecting after :data:`PROBE_CONNECT_S`."""

    def __init__(self, runtime: Any, client: Any) -> None:
        self.settings = runtime.settings
        self.sessions = runtime.sessions
        self.redis = client


def probe_pipeline(settings: Any, dead_after_s: float) -> tuple[dict[str, Any], Any]:
    """Whether the pipeline runs: Redis answers and a worker beat recently. Returns (the finding, the Redis client or None).

    Quick by construction: the embedded Redis's socket file is checked before connecting, and a
    connection attempt gives up after :data:`PROBE_CONNECT_S`.
    """
    from omni_tasks.core.redis_client import redis_from_url

    finding: dict[str, Any] = {"running": False, "redis": None, "workers_alive": 0, "message": None}
    if settings.embedded and not settings.embedded_redis_socket.exists():
        finding["redis"] = f"unreachable: the embedded Redis socket {settings.embedded_redis_socket} does not exist"
        finding["message"] = status_view.NOT_RUNNING_HINT
        return finding, None
    client = redis_from_url(settings.redis_url, timeout_s=5.0, connect_timeout_s=PROBE_CONNECT_S)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach Redis means the pipeline cannot be running
        finding["redis"] = f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finding["message"] = status_view.NOT_RUNNING_HINT
        client.close()
        return finding, None
    finding["redis"] = "reachable"
    from omni_tasks.pipeline import observe  # imported only when there is something to observe

    try:
        alive = [w for w in observe.workers_view(client, dead_after_s) if w["alive"]]
    except Exception as exc:  # noqa: BLE001 - shown, and the rest of status still runs
        finding["redis"] = f"reachable, heartbeats unreadable: {type(exc).__name__}"
        alive = []
    finding["workers_alive"] = len(alive)
    finding["running"] = bool(alive)
    if not alive:
        finding["message"] = status_view.NOT_RUNNING_HINT
    return finding, client


def gather_status() -> dict[str, Any]:
    """Everything `omni status` shows, as plain data (``pipeline``: whether it runs at all)."""
    from omni_tasks.core.runtime import get_runtime

    base = get_runtime()
    settings = base.settings
    out: dict[str, Any] = {"ts": time.time(), "errors": []}
    out["pipeline"], client = probe_pipeline(settings, settings.broker.dead_after_s)
    if client is None:
        # Not running: what the database says, nothing that would wait on Redis or the broker.
        out["trading"] = _database_state(base)
        out["errors"].extend(f"trading state: {error}" for error in out["trading"].pop("db_errors"))
        return out
    from sqlalchemy import select

    from omni_tasks.core.keys import WATCHDOG_LAST_TICK_KEY
    from omni_tasks.pipeline import observe
    from omni_tasks.pipeline.queues import ALL_QUEUES
    from omni_tasks.storage.models import TaskRun

    runtime = _QuickRuntime(base, client)
    try:
        snap = observe.live_snapshot(runtime.redis, settings.broker_url, [q.value for q in ALL_QUEUES], settings.broker.dead_after_s)
        out.update(snap)
        raw = runtime.redis.get(WATCHDOG_LAST_TICK_KEY)
        out["watchdog_last_tick"] = json.loads(raw) if raw else None
        from omni_tasks.watchdog.ledgers import read_view

        out["ledgers"] = read_view(runtime.redis)
    except Exception as exc:  # noqa: BLE001 - status must show what it can
        out["errors"].append(f"redis/broker: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    try:
        from omni_tasks.risk.snapshot_reads import latest_snapshot

        out["risk"] = latest_snapshot(runtime)
    except Exception as exc:  # noqa: BLE001 - status must show what it can
        out["errors"].append(f"risk snapshot: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    try:
        from omni_tasks.scans.runs import latest_run
        from omni_tasks.validation.persist import verdict_summary

        out["scan"] = latest_run(runtime.sessions)
        out["validation"] = verdict_summary(runtime.sessions)
    except Exception as exc:  # noqa: BLE001 - status must show what it can
        out["errors"].append(f"scans/validation: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    try:
        from omni_tasks.stream.shards import shard_count

        out["stream"] = stream_view(runtime.redis, shards=shard_count(runtime.settings))
    except Exception as exc:  # noqa: BLE001 - status must show what it can
        out["errors"].append(f"stream: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    from omni_tasks.safety.killswitch import state_info

    out["trading"] = state_info(runtime.redis, runtime.sessions)
    out["errors"].extend(f"trading state: {error}" for error in out["trading"]["errors"])
    try:
        with runtime.sessions() as session:
            rows = session.scalars(
                select(TaskRun).where(TaskRun.state.in_(("FAILURE", "DEAD_LETTER", "CORRUPT"))).order_by(TaskRun.finished_at.desc()).limit(10)
            ).all()
            out["recent_failures"] = [
                {"finished_at": r.finished_at.isoformat(), "name": r.name, "queue": r.queue, "state": r.state, "worker": r.worker, "error": (r.error or "")[:160]}
                for r in rows
            ]
    except Exception as exc:  # noqa: BLE001 - status must show what it can
        out["errors"].append(f"database: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    try:
        out["orders_today"] = orders_today(runtime.sessions)
    except Exception as exc:  # noqa: BLE001 - status must show what it can
        out["errors"].append(f"orders: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    client.close()
    return out


def orders_today(sessions: Any, now: datetime | None = None) -> dict[str, int]:
    """Orders created since 00:00 UTC by status (denied: refused by a pre-trade check, a successful task), from the ledger."""
    from sqlalchemy import func, select

    from omni_tasks.storage.models import Order

    now = datetime.now(tz=UTC) if now is None else now
    since = now.replace(hour=0, minute=0, second=0, microsecond=0)
    with sessions() as session:
        rows = session.execute(select(Order.status, func.count()).where(Order.created_at >= since).group_by(Order.status)).all()
    return {str(status): int(count) for status, count in sorted(rows)}


def _database_state(runtime: Any) -> dict[str, Any]:
    """The trading state recorded in the database, for when Redis is not there (the durable copy)."""
    from omni_tasks.safety.state_store import read_row

    found: dict[str, Any] = {"state": None, "version": None, "actor": None, "reason": None, "changed_at": None, "source": "database", "db_errors": []}
    try:
        with runtime.sessions() as session:
            row = read_row(session)
            if row is not None:
                found.update(
                    state=row.state, version=int(row.version), actor=row.actor, reason=row.reason,
                    changed_at=row.changed_at.isoformat() if getattr(row, "changed_at", None) else None,
                )
    except Exception as exc:  # noqa: BLE001 - shown as unavailable
        if schema_missing(exc):
            found["db_errors"].append(f"database: {NOT_MIGRATED}")
        else:
            found["db_errors"].append(f"database: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return found


def stream_view(client: Any, *, shard: str | None = None, shards: int = 0) -> dict[str, Any] | None:
    """The streaming worker's last status and its latency percentiles per stage (None: no stream worker has run).

    With ``shards`` (OMNI_STREAM_KEYS): ``{"shards": {shard: view or None}}``, every configured shard, reported or not.
    """
    from omni_tasks.contracts.quotes import read_trading_status
    from omni_tasks.stream.latency import read_published
    from omni_tasks.stream.status import read_status

    if shards:
        return {"shards": {str(i): stream_view(client, shard=str(i)) for i in range(shards)}}
    status = read_status(client, shard)
    if not status:
        return None
    latency = {stage: {k: v for k, v in summary.items() if k != "buckets"} for stage, summary in read_published(client, shard).items()}
    symbols = found if isinstance(found := status.get("symbols"), list) else []
    halted = {s: st.describe() for s, st in read_trading_status(client, symbols).items() if st.halted}
    return {**status, "age_s": round((time.time_ns() - status.get("updated_ns", 0)) / 1e9, 1), "latency": latency, "halted": halted}


def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="refresh in place until Ctrl-C (with --json: one JSON line per refresh)")] = False,
    interval_s: Annotated[float, typer.Option("--interval", help="seconds between refreshes with --watch", parser=option(inputs.seconds, what="--interval", lo=0.2, hi=3600.0))] = 2.0,
) -> None:
    """Show the trading state and kill switch, workers, queues (depth, oldest wait), the beat leader and recent failures.

    Says within about a second when the pipeline is not running (then only the trading state recorded
    in the database is shown). Exit code: 0 all shown, 1 some part unavailable, 4 the pipeline is not running.
    """
    from omni_tasks.cli.common import prepare

    prepare("cli", configure_log=False)
    if watch:
        _watch(as_json=as_json, interval_s=interval_s)
        raise typer.Exit(0)
    data = gather_status()
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        status_view.render(data)
    raise typer.Exit(_exit_code(data))


def _exit_code(data: dict[str, Any]) -> int:
    if not data["pipeline"]["running"]:
        return NOT_RUNNING_EXIT
    return 1 if data["errors"] else 0


def _watch(*, as_json: bool, interval_s: float) -> None:
    """Refresh until Ctrl-C: in place on a terminal (rich Live), one JSON line per refresh with --json."""
    from rich.live import Live

    try:
        if as_json:
            while True:
                print(json.dumps(gather_status(), default=str), flush=True)
                time.sleep(interval_s)
        with Live(status_view.captured(gather_status()), console=console, auto_refresh=False, screen=False, transient=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(status_view.captured(gather_status()), refresh=True)
    except KeyboardInterrupt:
        return


def ping(
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds to wait for each queue", parser=option(inputs.seconds, what="--timeout", hi=600.0))] = 10.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send a probe through every queue and print the round-trip times."""
    from omni_tasks.cli.common import prepare

    settings = prepare("cli", configure_log=False)
    finding, client = probe_pipeline(settings, settings.broker.dead_after_s)
    if client is None:
        # Celery's result backend would retry for 20 s, one line a second, then fail: say it now, in one line.
        fail("ping", f"Redis {finding['redis']}: {finding['message']}", 1, as_json=as_json)
    client.close()
    from omni_tasks.pipeline.queues import ALL_QUEUES
    from omni_tasks.system.tasks import ping as ping_task

    sent = {}
    for queue in ALL_QUEUES:
        started = time.perf_counter()
        sent[queue.value] = (started, ping_task.apply_async(args=[time.time()], queue=queue.value))
    results: dict[str, dict[str, Any]] = {}
    deadline = time.perf_counter() + timeout_s
    for name, (started, result) in sent.items():
        try:
            answer = result.get(timeout=max(0.1, deadline - time.perf_counter()), disable_sync_subtasks=False)
            results[name] = {"ok": True, "rtt_ms": round((time.perf_counter() - started) * 1000, 1), "host": answer["host"], "pid": answer["pid"]}
        except Exception as exc:  # noqa: BLE001 - a queue that does not answer is reported, not raised
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            result.forget()
    failed = [name for name, r in results.items() if not r["ok"]]
    if as_json:
        print(json.dumps({"ts": datetime.now(tz=UTC).isoformat(), "queues": results}, indent=2))
    else:
        table = Table(title="omni ping")
        for column in ("queue", "answered", "round trip", "by"):
            table.add_column(column)
        for name, r in results.items():
            if r["ok"]:
                table.add_row(name, "[green]yes[/green]", f"{r['rtt_ms']:.1f} ms", f"{r['host']} pid {r['pid']}")
            else:
                table.add_row(name, "[red]no[/red]", "-", r["error"])
        console.print(table)
    raise typer.Exit(1 if failed else 0)


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(ping)
