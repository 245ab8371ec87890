"""Operator commands: status and ping."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.cli.parsing import option
from omni_tasks.core import inputs

console = Console()


#: How long `omni status` waits to connect to Redis before it concludes the pipeline is not running.
PROBE_CONNECT_S = 0.5
#: `omni status` exit codes: 0 all shown, 1 some part unavailable, 4 the pipeline is not running.
NOT_RUNNING_EXIT = 4
NOT_RUNNING_HINT = "the pipeline is not running (no omni up / no workers seen): start it with `omni up`"


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
        finding["message"] = NOT_RUNNING_HINT
        return finding, None
    client = redis_from_url(settings.redis_url, timeout_s=5.0, connect_timeout_s=PROBE_CONNECT_S)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach Redis means the pipeline cannot be running
        finding["redis"] = f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finding["message"] = NOT_RUNNING_HINT
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
        finding["message"] = NOT_RUNNING_HINT
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
        from omni_tasks.risk.snapshot import latest_snapshot

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
        out["stream"] = stream_view(runtime.redis)
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
        found["db_errors"].append(f"database: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return found


def stream_view(client: Any) -> dict[str, Any] | None:
    """The streaming worker's last status and its latency percentiles per stage (None: no stream worker has run)."""
    from omni_tasks.contracts.quotes import read_trading_status
    from omni_tasks.stream.latency import read_published
    from omni_tasks.stream.status import read_status

    status = read_status(client)
    if not status:
        return None
    latency = {stage: {k: v for k, v in summary.items() if k != "buckets"} for stage, summary in read_published(client).items()}
    symbols = found if isinstance(found := status.get("symbols"), list) else []
    halted = {s: st.describe() for s, st in read_trading_status(client, symbols).items() if st.halted}
    return {**status, "age_s": round((time.time_ns() - status.get("updated_ns", 0)) / 1e9, 1), "latency": latency, "halted": halted}


def _print_ledgers(view: dict[str, Any] | None) -> None:
    """Stuck and redelivered work: what the watchdog's ledger reconciler sees and did in the last hour."""
    if view is None:
        return
    hour = view["last_hour"]
    stuck = view["stuck"]
    colour = "yellow" if stuck else "green"
    last = view.get("last_reconcile") or {}
    threshold = f", acted on after {last['stuck_after_s']:g} s" if last.get("stuck_after_s") else ""
    console.print(
        f"Stuck work (not final, nothing queued or running{threshold}): [{colour}]{stuck}[/{colour}] "
        f"(backfill partitions {view['stuck_partitions']}, scan runs {view['stuck_scan_runs']}, oldest {view['oldest_stuck_s']:.0f} s); "
        f"last hour: requeued {hour['requeued']}, failed {hour['failed']}, redelivered {hour['redelivered']}, jobs rolled up {hour['rolled_up']}"
        + (f"; [red]last pass skipped: {last['skipped']}[/red]" if last.get("skipped") else "")
    )


def _print_pipeline(scan: dict[str, Any] | None, validation: dict[str, Any] | None) -> None:
    """The latest scan run and the validation verdicts (what the data behind scans and risk looks like)."""
    if scan is None:
        console.print("Scan: [yellow]no run yet[/yellow] (every 5 minutes in market hours; `omni scan --wait`)")
    else:
        colour = {"succeeded": "green", "failed": "red"}.get(scan["status"], "yellow")
        top = ", ".join(scan["top"])
        console.print(
            f"Scan: run {scan['id']} [{colour}]{scan['status']}[/{colour}] ({scan['requested_by']}), as of {scan['as_of'][:19].replace('T', ' ')} UTC, "
            f"{scan['ranked']} of {scan['symbols']} symbols ranked" + (f", top {top}" if top else "") + (f"; {scan['error'][:120]}" if scan["error"] else "")
            + "; `omni scan show " + str(scan["id"]) + "`",
            highlight=False,
        )
    if validation is None:
        console.print("Validation: [yellow]nothing validated yet[/yellow] (after every backfill job; `omni validate`)")
        return
    parts = []
    for timeframe, counts in sorted(validation["series"].items()):
        said = ", ".join(f"[{'red' if k == 'failed' else 'green' if k == 'passed' else 'yellow'}]{v} {k}[/]" for k, v in sorted(counts.items()))
        parts.append(f"{timeframe}: {said}")
    failed = validation.get("failed_examples") or []
    console.print(
        f"Validation (series verdicts, last check {validation['last_checked_at'][:19].replace('T', ' ')} UTC): " + "; ".join(parts) + (f"; failed e.g. {', '.join(failed)}" if failed else ""),
        highlight=False,
    )


def _print_risk(risk: dict[str, Any] | None) -> None:
    if risk is None:
        console.print("Risk: [yellow]no snapshot yet[/yellow] (the risk worker takes one every minute in market hours; `omni risk --recalc`)")
        return

    def fmt(value: Any, unit: str = "", digits: int = 2) -> str:
        return "-" if value is None else f"{float(value):,.{digits}f}{unit}"

    age = ""
    try:
        age = f"{(datetime.now(tz=UTC) - datetime.fromisoformat(risk['ts'])).total_seconds():.0f} s ago"
    except (KeyError, TypeError, ValueError):
        pass
    breaches = risk.get("breaches") or []
    colour = "red" if breaches else "green"
    console.print(
        f"Risk ({age}, {risk.get('positions', 0)} positions): equity {fmt(risk.get('equity'))}, day P&L {fmt(risk.get('daily_pnl'))}, "
        f"gross {fmt(risk.get('gross_exposure'))} (leverage {fmt(risk.get('gross_leverage'), 'x')}), "
        f"VaR95 {fmt(risk.get('var_95'))}, ES95 {fmt(risk.get('es_95'))}, drawdown {fmt(risk.get('drawdown_pct'), '%')}, "
        f"score [{colour}]{fmt(risk.get('risk_score'))}[/{colour}]"
    )
    for breach in breaches:
        console.print(f"  [red]breach[/red] {breach.get('rule')}: {breach.get('message')}")


def _stream_error(stream: dict[str, Any]) -> str:
    """The last error with when it happened, and whether data has flowed since (then it is history, not the state)."""
    if not stream.get("last_error"):
        return ""
    at, recovered = stream.get("last_error_ns") or 0, stream.get("recovered_ns") or 0
    when = f" ({(time.time_ns() - at) / 1e9:.0f} s ago)" if at else ""
    if recovered:
        return f"; last error{when}: {stream['last_error']}, [green]recovered[/green] {(time.time_ns() - recovered) / 1e9:.0f} s ago"
    return f"; [red]last error{when}[/red]: {stream['last_error']}"


def _print_stream(stream: dict[str, Any] | None) -> None:
    if stream is None:
        console.print("Stream: [yellow]no streaming worker has reported[/yellow]")
        return
    counts = stream.get("counts", {})
    rejected = {k: counts.get(k, 0) for k in ("crossed", "zero_size", "bad_price", "out_of_order", "malformed") if counts.get(k)}
    connected = "[green]connected[/green]" if stream.get("connected") else "[red]not connected[/red]"
    stale = ", ".join(stream.get("stale_symbols") or [])
    console.print(
        f"Stream: {stream.get('feed') or '-'} {connected}, {len(stream.get('symbols') or [])} symbols"
        f"{f', [yellow]stale: {stale}[/yellow]' if stale else ''}; quotes {counts.get('quotes', 0):,}, served {counts.get('served', 0):,}"
        f"{f', not served {rejected}' if rejected else ''}; garbage frames {stream.get('garbage_frames', 0)}; "
        f"trading state seen {stream.get('trading_state', '?')}; reported {stream['age_s']:.1f} s ago" + _stream_error(stream)
    )
    for symbol, what in (stream.get("halted") or {}).items():
        console.print(f"  [red]halted[/red] {symbol}: {what}")
    table = Table(title="Stream latency (per frame)", title_justify="left")
    for column in ("stage", "count", "p50", "p95", "p99", "max", "over budget"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, s in stream.get("latency", {}).items():
        budget = s.get("budget_ns")
        over = f"{s.get('over_budget', 0)} (> {budget / 1e6:g} ms)" if budget else "-"
        table.add_row(stage, f"{s['count']:,}", *(f"{s[k] / 1000:,.0f} us" for k in ("p50_ns", "p95_ns", "p99_ns", "max_ns")), over)
    console.print(table)


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
        _render(data)
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
        with Live(_captured(gather_status()), console=console, auto_refresh=False, screen=False, transient=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(_captured(gather_status()), refresh=True)
    except KeyboardInterrupt:
        return


def _captured(data: dict[str, Any]) -> Any:
    """What :func:`_render` prints, as one renderable (rich Live redraws it in place), stamped with the time."""
    import io

    from rich.text import Text

    global console
    real = console
    console = Console(file=io.StringIO(), force_terminal=True, color_system=real.color_system or "standard", width=real.width)  # type: ignore[arg-type]  # rich types the property as str, the parameter as a Literal of the same names
    try:
        console.print(f"[dim]omni status at {datetime.now().astimezone().strftime('%H:%M:%S')} (Ctrl-C to stop)[/dim]")
        _render(data)
        text = console.file.getvalue()  # type: ignore[attr-defined]  # the StringIO given above
    finally:
        console = real
    return Text.from_ansi(text)


def _render_not_running(data: dict[str, Any]) -> None:
    pipeline = data["pipeline"]
    console.print("[bold red]The pipeline is not running[/bold red] (no omni up / no workers seen): start it with `omni up`")
    console.print(f"Redis: {pipeline['redis']}; workers alive: {pipeline['workers_alive']}")
    trading = data.get("trading")
    if trading is None:
        return
    if trading.get("state") is None and not data["errors"]:
        console.print("Trading state in the database: none recorded (a fresh install starts ACTIVE)")
    elif trading.get("state") is not None:
        colour = {"ACTIVE": "green", "REDUCING": "yellow"}.get(trading["state"], "red")
        console.print(
            f"Trading state in the database: [{colour}]{trading['state']}[/{colour}] (version {trading['version']}, "
            f"since {trading.get('changed_at') or '-'}, by {trading.get('actor') or '-'}, why: {trading.get('reason') or '-'})"
        )
    else:
        return
    console.print(
        "  This is the durable copy; it applies when the pipeline starts. While the pipeline is not running no order is sent "
        "and nothing else (workers, queues, risk, stream) can be shown."
    )


def _render(data: dict[str, Any]) -> None:
    """Print `omni status` for a person."""
    if data.get("pipeline") and not data["pipeline"]["running"] and "workers" not in data:
        _render_not_running(data)
        for error in data["errors"]:
            console.print(f"[red]unavailable: {error}[/red]")
        return
    if data.get("pipeline") and not data["pipeline"]["running"]:
        console.print(f"[bold red]{NOT_RUNNING_HINT}[/bold red] (Redis answers, no worker has beaten recently)", markup=True)
    from omni_tasks.cli.kill import render_state

    console.print(render_state(data["trading"]))

    workers = Table(title="Workers", title_justify="left")
    for column in ("kind", "hostname", "pid", "alive", "last beat", "active", "processed", "uptime"):
        workers.add_column(column)
    for w in sorted(data.get("workers", []), key=lambda w: (w["kind"], w["hostname"])):
        workers.add_row(
            w["kind"], w["hostname"], str(w["pid"]),
            "[green]yes[/green]" if w["alive"] else "[red]no[/red]",
            f"{w['age_s']:.1f} s ago", str(w["active"]), str(w["processed"]), f"{w['uptime_s']:.0f} s",
        )
    console.print(workers)

    queues = Table(title="Queues", title_justify="left")
    queues.add_column("queue")
    queues.add_column("depth", justify="right")
    queues.add_column("oldest wait", justify="right")
    for name, depth in data.get("queues", {}).items():
        wait = data.get("oldest_wait_s", {}).get(name)
        queues.add_row(name, str(depth), "-" if wait is None else f"{wait:.1f} s")
    console.print(queues)

    leader = data.get("beat_leader")
    console.print(
        f"Beat leader: [green]{leader.get('host')} pid {leader.get('pid')}[/green] (lock ttl {leader.get('ttl_s')} s)"
        if leader else "Beat leader: [red]none[/red]"
    )
    tick = data.get("watchdog_last_tick")
    if tick:
        console.print(f"Watchdog: last tick {time.time() - tick['ts']:.1f} s ago; outcomes persisted {tick['outcomes_persisted']}, redelivered {tick['redelivered']}")
    else:
        console.print("Watchdog: [red]no tick recorded[/red]")
    console.print(f"Task outcomes waiting for the database: {data.get('outcomes_pending', '?')}")
    _print_ledgers(data.get("ledgers"))
    _print_pipeline(data.get("scan"), data.get("validation"))
    _print_risk(data.get("risk"))
    _print_stream(data.get("stream"))

    if data.get("breakers"):
        breakers = Table(title="Circuit breakers", title_justify="left")
        for column in ("breaker", "state", "forced", "consecutive failures", "since"):
            breakers.add_column(column)
        for b in data["breakers"]:
            shown = b.get("forced") or b["state"]
            colour = {"closed": "green", "half_open": "yellow"}.get(shown, "red")
            since = time.strftime("%H:%M:%S UTC", time.gmtime(b["updated_at"])) if b.get("updated_at") else "-"
            breakers.add_row(b["name"], f"[{colour}]{b['state']}[/{colour}]", b.get("forced") or "-", str(b["failures"]), since)
        console.print(breakers)

    orders = data.get("orders_today")
    if orders is not None:
        shown = ", ".join(f"{'[red]' + k + '[/red]' if k in ('denied', 'rejected') else k} {v}" for k, v in orders.items()) or "none"
        console.print(f"Orders today (since 00:00 UTC): {shown}")

    failures = Table(title="Recent failures", title_justify="left")
    for column in ("finished (UTC)", "task", "queue", "state", "error"):
        failures.add_column(column)
    for f in data.get("recent_failures", []):
        finished = datetime.fromisoformat(f["finished_at"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        failures.add_row(finished, f["name"], f["queue"], f["state"], f["error"])
    console.print(failures)
    for error in data["errors"]:
        console.print(f"[red]unavailable: {error}[/red]")


def ping(
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds to wait for each queue", parser=option(inputs.seconds, what="--timeout", hi=600.0))] = 10.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send a probe through every queue and print the round-trip times."""
    from omni_tasks.cli.common import prepare

    prepare("cli", configure_log=False)
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
