"""`omni scan`: an ad hoc scan of the universe through the scans queue, and earlier runs."""

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from omni_tasks.cli.common import CommandGroup
from omni_tasks.cli.parsing import check, option
from omni_tasks.core import inputs

console = Console()
_group = CommandGroup("scan")
_fail = _group.fail
scan_app = typer.Typer(help="Market scans: momentum, volume surge, ATR%, gap, RSI, distance to the 52-week high.", invoke_without_command=True)


TopOption = Annotated[int, typer.Option(help="rows to print", parser=option(inputs.integer, what="--top", lo=1, hi=10_000))]


@scan_app.callback()
def scan(
    ctx: typer.Context,
    symbols: Annotated[str | None, typer.Option("--symbols", help="comma-separated symbols instead of the configured universe")] = None,
    universe: Annotated[Path | None, typer.Option("--universe", help="a file of symbols")] = None,
    top: TopOption = 20,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the result and print it")] = False,
    chunk_size: Annotated[int, typer.Option(help="symbols per chunk task", parser=option(inputs.integer, what="--chunk-size", lo=1, hi=10_000))] = 100,
    as_of: Annotated[str | None, typer.Option(help="scan instant, ISO 8601 with a zone (default: now)")] = None,
    timeout_s: Annotated[float, typer.Option("--timeout", parser=option(inputs.seconds, what="--timeout"))] = 300.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list every symbol that could not be scored, with its reason")] = False,
) -> None:
    """Enqueue a scan (chunks of symbols in parallel, one merge that ranks them all)."""
    if ctx.invoked_subcommand is not None:
        return
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.marketdata.universe import load_universe
    from omni_tasks.scans import runs
    from omni_tasks.scans.scanner import ScanConfig

    instant = check("scan", inputs.instant, as_of, what="--as-of") if as_of is not None else datetime.now(tz=UTC)
    given: list[str] | None = None
    if symbols is not None and universe is None:
        # "--symbols ," is an empty universe: a scan that fails on the record (below), not a usage error.
        given = check("scan", inputs.symbols, symbols, what="--symbols") if symbols.replace(",", "").strip() else []
    prepare("cli", configure_log=False)
    runtime = get_runtime()
    settings = runtime.settings.backfill
    try:
        if universe is not None:
            chosen = load_universe(universe)
        elif given is not None:
            chosen = given
        else:
            chosen = load_universe(settings.universe_file, settings.universe)
    except (ValueError, OSError) as exc:
        if universe is not None and "lists no symbols" in str(exc):
            # An empty universe is a scan that failed, on the record like any other.
            run_id = runs.create_run(runtime.sessions, [], as_of=datetime.now(tz=UTC), config=ScanConfig(), chunk_size=chunk_size, requested_by="cli")
            runs.fail_run(runtime.sessions, run_id, f"empty universe: {exc}")
            _fail(f"scan run {run_id} failed: {exc}")
        _fail(str(exc))
    run_id = runs.create_run(runtime.sessions, chosen, as_of=instant, config=ScanConfig(), chunk_size=chunk_size, requested_by="cli")
    if not chosen:
        _fail(f"scan run {run_id} failed: empty universe", 1)
    from omni_tasks.scans.tasks import start_run

    chunks = start_run(run_id)
    if not wait:
        console.print(f"scan run [bold]{run_id}[/bold]: {len(chosen)} symbols in {chunks} chunks enqueued; `omni scan show {run_id}` prints it")
        return
    deadline = time.monotonic() + timeout_s
    with Progress(SpinnerColumn(), TextColumn(f"scan run {run_id}: {len(chosen)} symbols, {chunks} chunks"), TimeElapsedColumn(), console=console, transient=True) as progress:
        progress.add_task("scan")
        while True:
            state = runs.load_run(runtime.sessions, run_id)
            if state["status"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    _show(run_id, top=top, as_json=as_json, verbose=verbose)


@scan_app.command("show")
def show(
    run_id: Annotated[int, typer.Argument(help="a scan run id", parser=option(inputs.integer, what="RUN_ID", lo=1, hi=2**62))],
    top: TopOption = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list every symbol that could not be scored, with its reason")] = False,
) -> None:
    """Print an earlier scan run."""
    from omni_tasks.cli.common import prepare

    prepare("cli", configure_log=False)
    _show(run_id, top=top, as_json=as_json, verbose=verbose)


#: The reason a symbol's row gives when it has too few bars (omni_tasks.scans.indicators).
_TOO_LITTLE_HISTORY = "insufficient history"


def history_hint(state: dict[str, Any], rows: list[dict[str, Any]], *, preparing_job: int | None = None) -> dict[str, Any] | None:
    """When symbols lack history: how many, and the backfill command that gives them enough (None when none lack it).

    ``preparing_job``: the first run's backfill job still running, if any (then the hint says to wait for it).
    """
    from omni_tasks.scans.loading import history_start

    lacking = sorted(r["symbol"] for r in rows if r["rank"] is None and (r["reason"] or "").startswith(_TOO_LITTLE_HISTORY))
    if not lacking:
        return None
    config = state["config"]
    start = history_start(state["as_of"], config.timeframe, config.lookbacks.window_bars).date()
    which = ",".join(lacking) if len(lacking) <= 8 else "universe"
    timeframe = "" if config.timeframe == "1Day" else f" --timeframe {config.timeframe}"
    command = f"omni backfill run {which}{timeframe} --start {start.isoformat()} --wait"
    message = (
        f"{len(lacking)} of {len(state['symbols'])} symbols have too little {config.timeframe} history "
        f"(at least {config.lookbacks.required_bars} bars, {config.lookbacks.window_bars} for every indicator): run `{command}`"
    )
    if preparing_job is not None:
        message += f"; or wait: the first run is preparing a year of synthetic history (`omni backfill status {preparing_job}`), and scans it"
    return {"symbols": len(lacking), "command": command, "message": message}


def _show(run_id: int, *, top: int, as_json: bool, verbose: bool = False) -> None:
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.scans import runs

    runtime = get_runtime()
    try:
        state = runs.load_run(runtime.sessions, run_id)
    except LookupError as exc:
        _fail(str(exc))
    rows = runs.results(runtime.sessions, run_id, top=top)
    from omni_tasks.marketdata.firstrun import open_first_run_job

    hint = history_hint(state, rows, preparing_job=open_first_run_job(runtime.sessions))
    if as_json:
        payload: dict[str, Any] = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in state.items() if k != "config"}
        payload["results"] = rows
        payload["history_hint"] = hint
        print(json.dumps(payload, indent=2, default=str))
    else:
        colour = {"succeeded": "green", "failed": "red"}.get(state["status"], "yellow")
        error = state["error"] or ""
        if hint is not None and not verbose and len(error) > 160:
            error = error[:157] + "..."
        ranked = sum(1 for r in rows if r["rank"] is not None)
        console.print(
            f"scan run {run_id}: [{colour}]{state['status']}[/{colour}] as of {state['as_of'].isoformat()}, {len(state['symbols'])} symbols, {ranked} ranked"
            + (f" - {error}" if error else ""),
            highlight=False,
        )
        if state["stale_input"]:
            console.print("[yellow]stale input: some series failed their latest validation; their rows are flagged[/yellow]")
        table = Table()
        for column in ("rank", "symbol", "score", "momentum %", "volume surge x", "ATR %", "gap %", "RSI", "from 52w high %", "note"):
            table.add_column(column, justify="right" if column not in {"symbol", "note"} else "left")

        def fmt(value: Any) -> str:
            return "-" if value is None else f"{value:.2f}"

        unscored = [r for r in rows if r["rank"] is None]
        for r in rows if verbose else [r for r in rows if r["rank"] is not None]:
            table.add_row(
                str(r["rank"] or "-"), r["symbol"], fmt(r["score"]), fmt(r.get("momentum_pct")), fmt(r.get("volume_surge_x")),
                fmt(r.get("atr_pct")), fmt(r.get("gap_pct")), fmt(r.get("rsi")), fmt(r.get("from_high_pct")),
                ("STALE INPUT " if r["stale_input"] else "") + (r["reason"] or ""),
            )
        if table.rows:
            console.print(table)
        if unscored and not verbose:
            reasons: dict[str, int] = {}
            for r in unscored:
                key = (r["reason"] or "no reason recorded").split(" (")[0]
                reasons[key] = reasons.get(key, 0) + 1
            said = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
            console.print(f"{len(unscored)} symbols not scored ({said}); --verbose lists them", highlight=False)
        if hint is not None:
            console.print(f"[yellow]{hint['message']}[/yellow]", highlight=False)
    raise typer.Exit(0 if state["status"] == "succeeded" else 1)


def register(app: typer.Typer) -> None:
    app.add_typer(scan_app, name="scan")
