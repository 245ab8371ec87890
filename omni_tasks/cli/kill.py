"""`omni kill`: engage, release, status and drill of the kill switch (and the REDUCING state).

Exit codes:

======= ==========================================================================
engage  0 engaged, durable, every open order cancelled; 1 engaged and durable but
        a step failed or orders are still open (see the table); 3 NOT durable
release 0 released; 1 declined at the prompt; 3 failed (see the message);
        4 nothing to release (the switch was not engaged)
reduce  0 now REDUCING; 3 refused or failed
activate 0 now ACTIVE; 3 refused or failed; 4 was not REDUCING
status  0 ACTIVE; 1 REDUCING or HALTED; 3 the state cannot be read (counts as HALTED);
        2 nothing set up yet (no omni tables, no state in Redis: run `omni up` first)
drill   0 every check held; 1 a check failed (listed); 3 the drill could not run
usage   2 (a missing --reason, a bad option)
======= ==========================================================================
"""

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.cli.common import CommandGroup
from omni_tasks.cli.parsing import NOT_MIGRATED, check, fail, option, schema_missing
from omni_tasks.core import inputs

console = Console()
_group = CommandGroup("kill", reason_max_len=2000)
_actor = _group.actor
_reason = _group.reason
kill_app = typer.Typer(help="The kill switch: engage, release, status, drill.", no_args_is_help=True)

ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="why (recorded with who and when); required")]
OperatorOption = Annotated[str | None, typer.Option("--operator", help="your name in the audit log (default: the login name)")]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _timings_table(timings: dict[str, float], title: str) -> Table:
    """Engage steps: ms from the engage's start and each step's own time; the drill's other steps: their duration."""
    table = Table(title=title, title_justify="left")
    table.add_column("step")
    table.add_column("ms from engage start", justify="right")
    table.add_column("step took (ms)", justify="right")
    previous = 0.0
    standalone = {"drill_total", "scratch_setup", "place_orders", "release"}
    for step, at in timings.items():
        if step in standalone:
            table.add_row(step, "-", f"{at:.1f}")
        elif step == "purge":
            table.add_row(step, f"{at:.1f}", "(alongside, from 'durable')")
        elif step == "total":
            table.add_row(step, f"{at:.1f}", f"{at:.1f}")
        else:
            table.add_row(step, f"{at:.1f}", f"{max(at - previous, 0.0):.1f}")
            previous = at
    return table


@kill_app.command("engage")
def engage_command(
    reason: ReasonOption,
    flatten: Annotated[
        bool | None, typer.Option("--flatten/--no-flatten", help="also close every position (default: OMNI_KILL_FLATTEN_ON_ENGAGE)")
    ] = None,
    operator: OperatorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Engage the kill switch now: orders stop, open orders are cancelled and confirmed, queued orders purged."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.ops.engaging import engage_with_process_runtime

    prepare("cli")
    actor, why = _actor(operator), _reason(reason)
    result = engage_with_process_runtime(actor=actor, reason=why, flatten=flatten)
    code = 0 if result.complete else (1 if result.durable else 3)
    from omni_tasks.ops import alerts

    alerts.drain(10.0)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        raise typer.Exit(code)
    if result.repeat:
        console.print(f"[yellow]The kill switch was already engaged[/yellow] (version {result.version}); your request is recorded.")
    elif result.durable:
        console.print(f"[bold red]KILL SWITCH ENGAGED[/bold red] by {actor}: {why} (version {result.version})")
    else:
        console.print(
            "[bold red]KILL SWITCH NOT DURABLE[/bold red]: the database write failed. Redis holds HALTED"
            + (
                " and orders are blocked (an unreadable database counts as HALTED too)"
                if result.redis_written
                else " [red]only if it was written (see below)[/red]"
            )
            + "; the watchdog writes it to the database as soon as it answers."
        )
    if result.durable and not result.redis_written:
        console.print(
            "[yellow]Redis was not written[/yellow]: the database holds HALTED, so orders are blocked (every order reads both copies); "
            "Redis is rewritten from the database when it is back."
        )
    console.print(_timings_table(result.timings_ms, "Engage sequence"))
    console.print(
        f"open orders before: {result.open_orders_before}; cancel requested: {result.cancel_requested} "
        f"in {result.cancel_rounds} round(s); still open: {len(result.remaining_open)}; "
        f"closing orders: {result.flattened}; queued order tasks purged: {result.purged if result.purged is not None else '-'}"
    )
    if result.snapshot_path:
        console.print(f"emergency snapshot: {result.snapshot_path}")
    if result.remaining_open:
        console.print(f"[bold red]STILL OPEN at the broker:[/bold red] {', '.join(result.remaining_open[:50])}")
    for step, error in result.errors.items():
        console.print(f"[red]{step} failed:[/red] {error}")
    raise typer.Exit(code)


@kill_app.command("release")
def release_command(
    reason: ReasonOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    to: Annotated[str, typer.Option("--to", help="active, or reducing (only orders that shrink positions)")] = "active",
    operator: OperatorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Release the kill switch (operators only, with a reason). Trading resumes."""
    from omni_tasks.cli.common import prepare

    prepare("cli")
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.safety.killswitch import state_info
    from omni_tasks.safety.state_rule import TradingState
    from omni_tasks.safety.transitions import KillSwitchError, release

    actor, why = _actor(operator), _reason(reason)
    target = {"active": TradingState.ACTIVE, "reducing": TradingState.REDUCING}[check("kill", inputs.choice, to, what="--to", choices=("active", "reducing"))]
    runtime = get_runtime()
    info = state_info(runtime.redis, runtime.sessions)
    if not yes:
        console.print(f"Trading state: [bold]{info['state']}[/bold] (since {info['changed_at']}, by {info['actor']}: {info['reason']})")
        if not typer.confirm(f"Release the kill switch to {target.value} as {actor}?", default=False):
            console.print("Not released.")
            raise typer.Exit(1)
    try:
        result = release(runtime, actor=actor, reason=why, to=target)
    except KillSwitchError as exc:
        fail("kill release", f"release refused or failed: {exc}", 3)
    except Exception as exc:  # noqa: BLE001 - the operator sees one line, not a traceback
        fail("kill release", f"release failed: {type(exc).__name__}: {exc}", 3)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    elif not result.changed:
        console.print(f"The kill switch was not engaged (state {result.state_before}); nothing released. Recorded.")
    else:
        console.print(
            f"[green]Released[/green]: {result.state_before} -> {result.state_after} by {actor}: {why} (version {result.version})"
        )
    if result.errors:
        console.print(
            f"[red]the database holds the release, but Redis was not updated ({result.errors['redis']}): orders stay blocked "
            "(the stricter copy applies) until the watchdog rewrites Redis from the database, within seconds of Redis answering, "
            "or you run the release again[/red]"
        )
        raise typer.Exit(3)
    raise typer.Exit(0 if result.changed else 4)


@kill_app.command("reduce")
def reduce_command(reason: ReasonOption, operator: OperatorOption = None) -> None:
    """ACTIVE -> REDUCING: only orders that shrink positions pass."""
    from omni_tasks.cli.common import prepare

    prepare("cli")
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.safety.transitions import KillSwitchError, set_reducing

    try:
        result = set_reducing(get_runtime(), actor=_actor(operator), reason=_reason(reason))
    except KillSwitchError as exc:
        fail("kill", f"refused: {exc}", 3)
    console.print(
        f"Trading state: {result.state_before} -> [yellow]{result.state_after}[/yellow]" + ("" if result.changed else " (already)")
    )
    raise typer.Exit(3 if result.errors else 0)


@kill_app.command("activate")
def activate_command(reason: ReasonOption, operator: OperatorOption = None) -> None:
    """REDUCING -> ACTIVE (operators only). A HALTED switch is lifted with `omni kill release`."""
    from omni_tasks.cli.common import prepare

    prepare("cli")
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.safety.transitions import KillSwitchError, activate

    try:
        result = activate(get_runtime(), actor=_actor(operator), reason=_reason(reason))
    except KillSwitchError as exc:
        fail("kill", f"refused: {exc}", 3)
    console.print(f"Trading state: {result.state_before} -> [green]{result.state_after}[/green]" + ("" if result.changed else " (already)"))
    raise typer.Exit(3 if result.errors else (0 if result.changed else 4))


def status_code(info: dict[str, Any]) -> int:
    if info["source"] == "unreadable":
        return 3
    return 0 if info["state"] == "ACTIVE" else 1


def render_state(info: dict[str, Any]) -> Table:
    """The trading state as a table (shared with `omni status`)."""
    colour = {"ACTIVE": "green", "REDUCING": "yellow"}.get(info["state"], "red")
    table = Table(title="Kill switch", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    label = {"ACTIVE": "ACTIVE (kill switch released)", "REDUCING": "REDUCING (only orders that shrink positions)"}.get(
        info["state"], "HALTED (kill switch ENGAGED)" if info["source"] != "unreadable" else "HALTED (state unreadable: counts as engaged)"
    )
    table.add_row("state", f"[{colour}]{label}[/{colour}]")
    table.add_row("since", str(info.get("changed_at") or "-"))
    table.add_row("by", str(info.get("actor") or "-"))
    table.add_row("why", str(info.get("reason") or "-"))
    applies = {"both": "both copies agree", "unreadable": "a copy cannot be read"}.get(info["source"], f"the {info['source']} copy's state")
    table.add_row("version", f"{info.get('version')} ({applies})")
    database = info.get("database")
    table.add_row(
        "redis copy",
        str(info.get("redis") or ("(unreadable)" if any(e.startswith("redis") for e in info.get("errors", [])) else "(no key)")),
    )
    table.add_row("database copy", f"{database['state']} {database['version']}" if database else "(unreadable)")
    snapshot = info.get("last_snapshot")
    table.add_row("last snapshot", f"{snapshot['path'] or '(database only)'} at {snapshot['ts']}" if snapshot else "-")
    if info.get("consistent") is False or info["source"] == "unreadable":
        table.add_row("applies because", f"[red]{info.get('why')}[/red]")
    for error in info.get("errors", []):
        table.add_row("error", f"[red]{error}[/red]")
    return table


@kill_app.command("status")
def status_command(
    as_json: JsonOption = False,
    events: Annotated[int, typer.Option("--events", help="recent kill switch events to list", parser=option(inputs.integer, what="--events", lo=0, hi=1000))] = 5,
) -> None:
    """Show the trading state, who engaged the kill switch, why and since when, the last snapshot and recent events."""
    from omni_tasks.cli.common import prepare

    prepare("cli")
    from sqlalchemy import select

    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.safety.killswitch import state_info
    from omni_tasks.storage.models import KillEvent

    runtime = get_runtime()
    info = state_info(runtime.redis, runtime.sessions)
    if info["redis"] is None and info["database"] is None and _no_tables_yet(runtime.sessions):
        # Before the first `omni up` (a fresh data folder): no copy was ever written, so there is no state to show
        # (not a HALTED one with the SQL error): say what to run, in one line, as every other command does.
        fail("kill status", NOT_MIGRATED)
    recent: list[dict[str, Any]] = []
    try:
        with runtime.sessions() as session:
            rows = session.scalars(select(KillEvent).order_by(KillEvent.id.desc()).limit(max(0, events))).all()
            recent = [
                {
                    "ts": r.ts.isoformat(),
                    "action": r.action,
                    "actor": r.actor,
                    "reason": r.reason,
                    "from": r.state_before,
                    "to": r.state_after,
                    "detail": r.detail,
                }
                for r in rows
            ]
    except Exception as exc:  # noqa: BLE001 - status shows what it can
        info["errors"].append(f"events: {type(exc).__name__}: {str(exc)[:200]}")
    code = status_code(info)
    if as_json:
        print(json.dumps({**info, "events": recent}, indent=2, default=str))
        raise typer.Exit(code)
    console.print(render_state(info))
    if recent:
        table = Table(title="Recent kill switch events", title_justify="left")
        for column in ("when", "action", "by", "from", "to", "why"):
            table.add_column(column)
        for event in recent:
            action = event["action"] + (" (repeat)" if (event["detail"] or {}).get("repeat") else "")
            table.add_row(event["ts"][:19], action, event["actor"], event["from"], event["to"], event["reason"][:80])
        console.print(table)
    raise typer.Exit(code)


def _no_tables_yet(sessions: Any) -> bool:
    """Whether reading the trading state fails because the database has no omni tables (yet)."""
    from omni_tasks.safety.state_store import read_row

    try:
        with sessions() as session:
            read_row(session)
    except Exception as exc:  # noqa: BLE001 - only the missing schema is of interest here
        return schema_missing(exc)
    return False


@kill_app.command("drill")
def drill_command(
    orders: Annotated[int, typer.Option("--orders", "-n", help="resting limit orders to place, then cancel", parser=option(inputs.integer, what="--orders", lo=1, hi=1000))] = 20,
    symbol: Annotated[str, typer.Option("--symbol", help="symbol of the drill's orders (scratch world only)")] = "AAPL",
    keep: Annotated[bool, typer.Option("--keep", help="keep the scratch folder (snapshot file, logs)")] = False,
    operator: OperatorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rehearse the whole sequence on a scratch Redis, database and simulated broker; print the timings."""
    from omni_tasks.cli.common import prepare

    symbol = check("kill drill", inputs.symbol, symbol, what="--symbol")
    operator_actor = _actor(operator)
    settings = prepare("cli")
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.safety.drill import run_drill
    from omni_tasks.trading.simulated import SimulatedVenue

    runtime = get_runtime()
    try:
        report = run_drill(
            settings,
            venue_factory=SimulatedVenue,
            orders=orders,
            symbol=symbol,
            real_redis=runtime.redis,
            real_sessions=runtime.sessions,
            operator=operator_actor,
            keep=keep,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    could_not_run = any(p.startswith("the drill could not run") for p in report.problems)
    code = 0 if report.passed else (3 if could_not_run else 1)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        raise typer.Exit(code)
    console.print(_timings_table(report.timings_ms, f"Kill switch drill: {orders} resting orders on a scratch simulated broker"))
    console.print(
        f"resting before engage: {report.open_before_engage} of {orders}; cancelled and verified: {report.cancelled_verified} of {report.placed_resting}; "
        f"open after: {report.open_after_engage}; order after engage blocked: {report.blocked_after_engage} of 1; "
        f"positions after flatten: {report.positions_after_flatten}; released: {'yes' if report.released else 'no'} "
        f"(state {report.state_after_release}); alerts produced (not sent): {report.alerts_produced}"
    )
    console.print(f"real trading state untouched: {'yes' if report.real_state_untouched else '[red]NO[/red]'} ({report.real_state_after})")
    if keep:
        console.print(f"scratch folder kept: {report.scratch_dir}")
    if report.passed:
        console.print("[green]drill passed[/green]")
    for problem in report.problems:
        console.print(f"[red]{problem}[/red]")
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.add_typer(kill_app, name="kill")
