"""How `omni status` draws what it gathered: the tables of the pipeline, trading state, ledgers, risk and the stream."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
#: What `omni status` says when Redis answers and no worker has beaten (also its JSON finding's message).
NOT_RUNNING_HINT = "the pipeline is not running (no omni up / no workers seen): start it with `omni up`"


def print_ledgers(view: dict[str, Any] | None) -> None:
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


def print_pipeline(scan: dict[str, Any] | None, validation: dict[str, Any] | None) -> None:
    """The latest scan run and the validation verdicts (what the data behind scans and risk looks like)."""
    if scan is None:
        console.print("Scan: [yellow]no run yet[/yellow] (every 5 minutes in market hours; `omni scan --wait`)")
    else:
        colour = {"succeeded": "green", "failed": "red"}.get(scan["status"], "yellow")
        top = ", ".join(scan["top"])
        console.print(
            f"Scan: run {scan['id']} [{colour}]{scan['status']}[/{colour}] ({scan['requested_by']}), as of {scan['as_of'][:19].replace('T', ' ')} UTC, "
            f"{scan['ranked']} of {scan['symbols']} symbols ranked"
            + (f", top {top}" if top else "")
            + (f"; {scan['error'][:120]}" if scan["error"] else "")
            + "; `omni scan show "
            + str(scan["id"])
            + "`",
            highlight=False,
        )
    if validation is None:
        console.print("Validation: [yellow]nothing validated yet[/yellow] (after every backfill job; `omni validate`)")
        return
    parts = []
    for timeframe, counts in sorted(validation["series"].items()):
        said = ", ".join(
            f"[{'red' if k == 'failed' else 'green' if k == 'passed' else 'yellow'}]{v} {k}[/]" for k, v in sorted(counts.items())
        )
        parts.append(f"{timeframe}: {said}")
    failed = validation.get("failed_examples") or []
    console.print(
        f"Validation (series verdicts, last check {validation['last_checked_at'][:19].replace('T', ' ')} UTC): "
        + "; ".join(parts)
        + (f"; failed e.g. {', '.join(failed)}" if failed else ""),
        highlight=False,
    )


def print_risk(risk: dict[str, Any] | None) -> None:
    if risk is None:
        console.print(
            "Risk: [yellow]no snapshot yet[/yellow] (the risk worker takes one every minute in market hours; `omni risk --recalc`)"
        )
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


def stream_error(stream: dict[str, Any]) -> str:
    """The last error with when it happened, and whether data has flowed since (then it is history, not the state)."""
    if not stream.get("last_error"):
        return ""
    at, recovered = stream.get("last_error_ns") or 0, stream.get("recovered_ns") or 0
    when = f" ({(time.time_ns() - at) / 1e9:.0f} s ago)" if at else ""
    if recovered:
        return f"; last error{when}: {stream['last_error']}, [green]recovered[/green] {(time.time_ns() - recovered) / 1e9:.0f} s ago"
    return f"; [red]last error{when}[/red]: {stream['last_error']}"


def print_refused(stream: dict[str, Any]) -> None:
    """The symbols the provider refused to stream (405 symbol limit, 400 badly formatted), grouped by its words."""
    refused = stream.get("refused") or {}
    if not isinstance(refused, dict):
        return
    by_reason: dict[str, list[str]] = {}
    for symbol, reason in refused.items():
        by_reason.setdefault(str(reason), []).append(str(symbol))
    for reason, symbols in by_reason.items():
        console.print(f"  [red]not served[/red] ({len(symbols)}, {reason}): {', '.join(symbols)}")


def print_shards(shards: dict[str, dict[str, Any] | None]) -> None:
    """One row per stream shard (OMNI_STREAM_KEYS): a shard down shows its last quote ageing while the others serve."""
    feeds = {str(view["feed"]) for view in shards.values() if view and view.get("feed")}
    table = Table(title=f"Stream shards: {', '.join(sorted(feeds)) or '-'} feed, {len(shards)} keys, one connection each", title_justify="left")
    for column in ("shard", "state", "symbols", "stale", "served", "last quote", "reported", "p99", "last error"):
        table.add_column(column, justify="left" if column in ("shard", "state", "last error") else "right")
    now = time.time_ns()
    for shard, view in shards.items():
        if view is None:
            table.add_row(shard, "[red]no report[/red]", "-", "-", "-", "-", "-", "-", "no status for 300 s")
            continue
        fresh = view["age_s"] < 30
        state = "[green]connected[/green]" if view.get("connected") and fresh else "[red]down[/red]" if not fresh else "[red]not connected[/red]"
        last_ns = view.get("last_quote_ns") or 0
        p99 = view.get("latency", {}).get("process", {}).get("p99_ns")
        table.add_row(
            shard,
            state,
            str(len(view.get("symbols") or [])),
            str(len(view.get("stale_symbols") or [])),
            f"{view.get('counts', {}).get('served', 0):,}",
            f"{(now - last_ns) / 1e9:.1f} s ago" if last_ns else "none",
            f"{view['age_s']:.1f} s ago",
            "-" if p99 is None else f"{p99 / 1000:,.0f} us",
            stream_error(view).removeprefix("; ") or "-",
        )
    console.print(table)
    for view in shards.values():
        for symbol, what in ((view or {}).get("halted") or {}).items():
            console.print(f"  [red]halted[/red] {symbol}: {what}")
        print_refused(view or {})


def print_stream(stream: dict[str, Any] | None) -> None:
    if stream is None:
        console.print("Stream: [yellow]no streaming worker has reported[/yellow]")
        return
    if "shards" in stream:
        print_shards(stream["shards"])
        return
    counts = stream.get("counts", {})
    rejected = {k: counts.get(k, 0) for k in ("crossed", "zero_size", "bad_price", "out_of_order", "malformed") if counts.get(k)}
    connected = "[green]connected[/green]" if stream.get("connected") else "[red]not connected[/red]"
    stale = ", ".join(stream.get("stale_symbols") or [])
    console.print(
        f"Stream: {stream.get('feed') or '-'} {connected}, {len(stream.get('symbols') or [])} symbols"
        f"{f', [yellow]stale: {stale}[/yellow]' if stale else ''}; quotes {counts.get('quotes', 0):,}, served {counts.get('served', 0):,}"
        f"{f', not served {rejected}' if rejected else ''}; garbage frames {stream.get('garbage_frames', 0)}; "
        f"trading state seen {stream.get('trading_state', '?')}; reported {stream['age_s']:.1f} s ago" + stream_error(stream)
    )
    for symbol, what in (stream.get("halted") or {}).items():
        console.print(f"  [red]halted[/red] {symbol}: {what}")
    print_refused(stream)
    table = Table(title="Stream latency (per frame)", title_justify="left")
    for column in ("stage", "count", "p50", "p95", "p99", "max", "over budget"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, s in stream.get("latency", {}).items():
        budget = s.get("budget_ns")
        over = f"{s.get('over_budget', 0)} (> {budget / 1e6:g} ms)" if budget else "-"
        table.add_row(stage, f"{s['count']:,}", *(f"{s[k] / 1000:,.0f} us" for k in ("p50_ns", "p95_ns", "p99_ns", "max_ns")), over)
    console.print(table)


def captured(data: dict[str, Any]) -> Any:
    """What :func:`render` prints, as one renderable (rich Live redraws it in place), stamped with the time."""
    import io

    from rich.text import Text

    global console
    real = console
    console = Console(file=io.StringIO(), force_terminal=True, color_system=real.color_system or "standard", width=real.width)  # type: ignore[arg-type]  # rich types the property as str, the parameter as a Literal of the same names
    try:
        console.print(f"[dim]omni status at {datetime.now().astimezone().strftime('%H:%M:%S')} (Ctrl-C to stop)[/dim]")
        render(data)
        text = console.file.getvalue()  # type: ignore[attr-defined]  # the StringIO given above
    finally:
        console = real
    return Text.from_ansi(text)


def render_not_running(data: dict[str, Any]) -> None:
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


def render(data: dict[str, Any]) -> None:
    """Print `omni status` for a person."""
    if data.get("pipeline") and not data["pipeline"]["running"] and "workers" not in data:
        render_not_running(data)
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
            w["kind"],
            w["hostname"],
            str(w["pid"]),
            "[green]yes[/green]" if w["alive"] else "[red]no[/red]",
            f"{w['age_s']:.1f} s ago",
            str(w["active"]),
            str(w["processed"]),
            f"{w['uptime_s']:.0f} s",
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
        if leader
        else "Beat leader: [red]none[/red]"
    )
    tick = data.get("watchdog_last_tick")
    if tick:
        console.print(
            f"Watchdog: last tick {time.time() - tick['ts']:.1f} s ago; outcomes persisted {tick['outcomes_persisted']}, redelivered {tick['redelivered']}"
        )
    else:
        console.print("Watchdog: [red]no tick recorded[/red]")
    console.print(f"Task outcomes waiting for the database: {data.get('outcomes_pending', '?')}")
    print_ledgers(data.get("ledgers"))
    print_pipeline(data.get("scan"), data.get("validation"))
    print_risk(data.get("risk"))
    print_stream(data.get("stream"))

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
