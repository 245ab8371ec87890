"""`omni backfill plan|run|status|verify|reconcile`: historical bars through the partition ledger, and a second opinion."""

import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from omni_tasks.cli.common import CommandGroup
from omni_tasks.cli.parsing import check, option
from omni_tasks.contracts.feeds import FEEDS, READ_FEED_HELP, feeds_to_read
from omni_tasks.core import inputs

console = Console()
_group = CommandGroup("backfill")
_fail = _group.fail
backfill_app = typer.Typer(help="Historical bars: plan, run, watch and verify backfills.", no_args_is_help=True)

Symbols = Annotated[str | None, typer.Argument(help="comma-separated symbols, or 'universe' for the configured universe")]
Timeframe = Annotated[str, typer.Option("--timeframe", "-t", help="1Min, 5Min, 15Min, 30Min, 1Hour or 1Day")]
Start = Annotated[str | None, typer.Option(help="first date, YYYY-MM-DD (default: a year ago)")]
End = Annotated[str | None, typer.Option(help="end date, exclusive, YYYY-MM-DD (default: tomorrow)")]
Feed = Annotated[str | None, typer.Option(help="iex or sip (default: OMNI_BACKFILL_FEED)")]
Adjustment = Annotated[str | None, typer.Option(help="raw, split, dividend or all (default: OMNI_BACKFILL_ADJUSTMENT)")]
ReadFeed = Annotated[str | None, typer.Option(help=READ_FEED_HELP)]
UniverseFile = Annotated[Path | None, typer.Option("--universe", help="a file of symbols instead of SYMBOLS")]


def _date(value: str | None, default: date, what: str, *, end: bool = False) -> date:
    if value is None:
        return default
    return check("backfill", inputs.day, value, what=what, extra_days=1 if end else 0)


def _earliest() -> date:
    from omni_tasks.core.runtime import get_settings

    return get_settings().backfill.earliest_date


def _resolve(symbols: str | None, universe_file: Path | None, start: str | None, end: str | None, feed: str | None, adjustment: str | None) -> tuple[list[str], date, date, str, str]:
    from omni_tasks.contracts.bars import ADJUSTMENTS
    from omni_tasks.core.runtime import get_settings
    from omni_tasks.marketdata.universe import load_universe

    settings = get_settings().backfill
    today = datetime.now(tz=UTC).date()
    lo = _date(start, today - timedelta(days=365), "--start")
    hi = _date(end, today + timedelta(days=1), "--end", end=True)
    check("backfill", inputs.date_range, lo, hi)
    feed_ = check("backfill", inputs.choice, feed, what="--feed", choices=("iex", "sip")) if feed is not None else settings.feed
    adj = check("backfill", inputs.choice, adjustment, what="--adjustment", choices=ADJUSTMENTS) if adjustment is not None else settings.adjustment
    try:
        if universe_file is not None:
            chosen = load_universe(universe_file)
        elif symbols is None or symbols.strip().lower() == "universe":
            chosen = load_universe(settings.universe_file, settings.universe)
        else:
            # On the command line only commas separate symbols: "BRK B" is a typo, not two symbols.
            chosen = check("backfill", inputs.symbols, symbols, what="SYMBOLS")
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    if not chosen:
        _fail("no symbols given")
    return chosen, lo, hi, feed_, adj


@backfill_app.command("plan")
def plan_cmd(
    symbols: Symbols = None,
    timeframe: Timeframe = "1Day",
    start: Start = None,
    end: End = None,
    feed: Feed = None,
    adjustment: Adjustment = None,
    universe: UniverseFile = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Dry run: the partitions and provider calls a backfill would make. Nothing is written."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.marketdata import backfill_plan

    prepare("cli", configure_log=False)
    chosen, lo, hi, feed_, adj = _resolve(symbols, universe, start, end, feed, adjustment)
    try:
        the_plan = backfill_plan.plan(chosen, timeframe, lo, hi, feed=feed_, adjustment=adj, earliest=_earliest())
    except backfill_plan.BackfillRequestError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({"partitions": len(the_plan.partitions), "calls": the_plan.calls, "expected_bars": the_plan.expected_bars, "symbols": chosen}))
        return
    by_symbol: dict[str, list[Any]] = {}
    for p in the_plan.partitions:
        by_symbol.setdefault(p.symbol, []).append(p)
    table = Table(title=f"backfill plan: {timeframe} {lo} .. {hi} (exclusive), feed {feed_}, {adj}")
    for column in ("symbol", "partitions", "sessions", "expected bars", "calls"):
        table.add_column(column, justify="right" if column != "symbol" else "left")
    for symbol, parts in by_symbol.items():
        table.add_row(symbol, str(len(parts)), str(sum(p.sessions for p in parts)), f"{sum(p.expected_bars for p in parts):,}", str(sum(p.calls for p in parts)))
    console.print(table)
    console.print(f"{len(the_plan.partitions)} partitions, about {the_plan.calls} provider calls, {the_plan.expected_bars:,} bars expected. Nothing was enqueued.")


@backfill_app.command("run")
def run_cmd(
    symbols: Symbols = None,
    timeframe: Timeframe = "1Day",
    start: Start = None,
    end: End = None,
    feed: Feed = None,
    adjustment: Adjustment = None,
    universe: UniverseFile = None,
    only_failed: Annotated[int | None, typer.Option("--only-failed", help="re-run the failed partitions of this job id", parser=option(inputs.integer, what="--only-failed", lo=1, hi=2**62))] = None,
    wait: Annotated[bool, typer.Option("--wait", help="show progress until the job finishes")] = False,
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds --wait waits at most", parser=option(inputs.seconds, what="--timeout"))] = 3600.0,
) -> None:
    """Record a backfill job and enqueue its partitions on the backfill queue."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.marketdata import backfill, backfill_plan

    prepare("cli", configure_log=False)
    runtime = get_runtime()
    _ensure_schema(runtime)
    from omni_tasks.marketdata.tasks import enqueue_partitions

    if only_failed is not None:
        try:
            backfill.job_progress(runtime.sessions, only_failed)
        except LookupError as exc:
            _fail(str(exc))
        stuck = _stuck_partitions(runtime, only_failed)
        ids = backfill.reset_failed(runtime.sessions, only_failed, stuck=stuck)
        job_id = only_failed
        if not ids:
            console.print(f"job {job_id} has no failed or stuck partitions; nothing enqueued")
            return
        if stuck:
            console.print(f"job {job_id}: {len(stuck)} stuck partitions (not final, nothing queued or running for them) taken with the failed ones")
        from omni_tasks.watchdog.ledgers import forget_requeues

        forget_requeues(runtime.redis, ids)
    else:
        chosen, lo, hi, feed_, adj = _resolve(symbols, universe, start, end, feed, adjustment)
        try:
            the_plan = backfill_plan.plan(chosen, timeframe, lo, hi, feed=feed_, adjustment=adj, earliest=_earliest())
        except backfill_plan.BackfillRequestError as exc:
            _fail(str(exc))
        job_id = backfill.create_job(runtime.sessions, the_plan, requested_by="cli")
        ids = backfill.partition_ids(runtime.sessions, job_id)
    enqueue_partitions(ids)
    console.print(f"job [bold]{job_id}[/bold]: {len(ids)} partitions enqueued on the backfill queue")
    if wait:
        final = _wait(runtime.sessions, job_id, total=len(ids), timeout_s=timeout_s)
        _print_job(final)
        raise typer.Exit(0 if final["status"] == "succeeded" else 1)


def _stuck_partitions(runtime: Any, job_id: int) -> list[int]:
    """The job's partitions not final with no live delivery (nothing queued or unacked for them), quiet for the dead-worker threshold."""
    from omni_tasks.pipeline.broker import is_redis_url
    from omni_tasks.watchdog import ledgers

    if not is_redis_url(runtime.settings.broker_url):
        return []  # a RabbitMQ queue cannot be read without consuming it; the failed ones are still taken
    live = ledgers.redis_deliveries(runtime.redis)
    return ledgers.stuck_partitions(runtime.sessions, live, job_id, quiet_for_s=runtime.settings.broker.dead_after_s)


def _ensure_schema(runtime: Any) -> None:
    from omni_tasks.storage import migrations

    if migrations.current_revision(runtime.engine) != migrations.head_revision(runtime.engine):
        _fail("the database schema is not up to date: run `omni db upgrade` first")


def _wait(factory: Any, job_id: int, *, total: int, timeout_s: float) -> dict[str, Any]:
    from omni_tasks.marketdata import backfill

    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("[bold]job {task.fields[job]}[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("backfill", total=total, job=job_id, detail="")
        while True:
            state = backfill.job_progress(factory, job_id)
            counts = state["by_status"]
            done = counts.get("succeeded", 0) + counts.get("failed", 0)
            progress.update(task, completed=min(done, total), detail=f"{state['rows']:,} rows, {counts.get('failed', 0)} failed, {counts.get('retrying', 0)} retrying")
            if state["status"] in {"succeeded", "failed", "partial"}:
                return state
            if time.monotonic() > deadline:
                console.print(f"[yellow]still running after {timeout_s:g} s; `omni backfill status {job_id}` follows it[/yellow]")
                return state
            time.sleep(0.5)


def _print_job(state: dict[str, Any]) -> None:
    colour = {"succeeded": "green", "failed": "red", "partial": "yellow"}.get(state["status"], "white")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(state["by_status"].items()))
    console.print(f"job {state['job_id']}: [{colour}]{state['status']}[/{colour}] - {state['partitions']} partitions ({counts}), {state['rows']:,} rows stored, {state['rejected']} rejected")


@backfill_app.command("status")
def status_cmd(
    job: Annotated[int | None, typer.Argument(help="a job id: its partitions; none: recent jobs", parser=option(inputs.integer, what="JOB", lo=1, hi=2**62))] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent backfill jobs, or one job's partitions."""
    from sqlalchemy import select

    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.marketdata import backfill
    from omni_tasks.storage.models import BackfillJob, BackfillPartition

    prepare("cli", configure_log=False)
    runtime = get_runtime()
    _ensure_schema(runtime)
    if job is None:
        with runtime.sessions() as session:
            ids = list(session.scalars(select(BackfillJob.id).order_by(BackfillJob.id.desc()).limit(20)))
        states = [backfill.job_progress(runtime.sessions, int(i)) for i in ids]
        if as_json:
            print(json.dumps(states, indent=2))
            return
        table = Table(title="backfill jobs")
        for column in ("job", "status", "timeframe", "range", "symbols", "partitions", "rows", "rejected", "created"):
            table.add_column(column)
        for s in states:
            table.add_row(str(s["job_id"]), s["status"], s["timeframe"], f"{s['start']} .. {s['end']}", str(s["symbols"]), ", ".join(f"{k} {v}" for k, v in sorted(s["by_status"].items())), f"{s['rows']:,}", str(s["rejected"]), s["created_at"][:19])
        console.print(table)
        return
    try:
        state = backfill.job_progress(runtime.sessions, job)
    except LookupError as exc:
        _fail(str(exc))
    with runtime.sessions() as session:
        parts = session.scalars(select(BackfillPartition).where(BackfillPartition.job_id == job).order_by(BackfillPartition.symbol, BackfillPartition.start)).all()
    if as_json:
        print(json.dumps({**state, "partitions_detail": [
            {"id": p.id, "symbol": p.symbol, "start": p.start.isoformat(), "end": p.end.isoformat(), "status": p.status, "rows": p.rows,
             "rejected": p.rejected, "provider": p.provider, "attempts": p.attempts, "checksum": p.checksum, "error": p.last_error,
             "cause": p.cause, "notes": p.notes, "resume_at": p.resume_at.isoformat() if p.resume_at else None,
             "data_from": p.data_from.isoformat() if p.data_from else None}
            for p in parts]}, indent=2))
        return
    _print_job(state)
    table = Table()
    for column in ("id", "symbol", "range", "status", "rows", "rejected", "provider", "attempts", "last error / notes"):
        table.add_column(column)
    for p in parts:
        said = "; ".join(x for x in (p.cause and p.cause.replace("_", " "), p.last_error, p.notes) if x)
        shown = f"deferred, resumes {p.resume_at.strftime('%Y-%m-%d %H:%M:%S')} UTC" if p.status == "deferred" and p.resume_at else p.status
        table.add_row(str(p.id), p.symbol, f"{p.start.date()} .. {p.end.date()}", shown, str(p.rows), str(p.rejected), p.provider or "-", str(p.attempts), said[:160])
    console.print(table)


@backfill_app.command("verify")
def verify_cmd(
    symbols: Symbols = None,
    timeframe: Timeframe = "1Day",
    start: Start = None,
    end: End = None,
    feed: ReadFeed = None,
    adjustment: Adjustment = None,
    universe: UniverseFile = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check stored bars against the exchange calendar: missing bars in sessions, bars outside them.

    Whatever feed `backfill run` stored them under (synthetic, replay, iex, sip, yahoo, alpha_vantage) counts, unless --feed names one.
    """
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.marketdata import backfill_plan
    from omni_tasks.marketdata.wiring import build_store

    prepare("cli", configure_log=False)
    runtime = get_runtime()
    _ensure_schema(runtime)
    wanted = check("backfill", inputs.choice, feed, what="--feed", choices=FEEDS) if feed is not None else None
    chosen, lo, hi, feed_, adj = _resolve(symbols, universe, start, end, None, adjustment)
    try:
        backfill_plan.check_request(chosen, timeframe, lo, hi, feed_, adj, earliest=_earliest())
    except backfill_plan.BackfillRequestError as exc:
        _fail(str(exc))
    from omni_tasks.marketdata.router import serving_feeds

    store = build_store(runtime.engine)
    span = (datetime.combine(lo, datetime.min.time(), tzinfo=UTC), datetime.combine(hi, datetime.min.time(), tzinfo=UTC))
    feeds = feeds_to_read(wanted, store.stored_feeds(chosen, timeframe, adj, *span), serving_feeds(runtime.settings.providers.order, feed_))
    rows = backfill_plan.verify(chosen, store=store, timeframe=timeframe, start=lo, end=hi, feed=feed_, adjustment=adj, feeds=feeds)
    bad = [r for r in rows if r.missing or r.outside_sessions]
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        table = Table(title=f"verify {timeframe} {lo} .. {hi} (exclusive), feeds {', '.join(feeds)}")
        for column in ("symbol", "expected", "stored", "missing", "outside sessions", "first missing"):
            table.add_column(column)
        for r in rows:
            style = "red" if (r.missing or r.outside_sessions) else "green"
            table.add_row(r.symbol, str(r.expected), str(r.stored), f"[{style}]{r.missing}[/{style}]", str(r.outside_sessions), r.first_missing or "-")
        console.print(table)
        console.print(f"{len(rows) - len(bad)} of {len(rows)} symbols complete")
    raise typer.Exit(1 if bad else 0)


@backfill_app.command("reconcile")
def reconcile_cmd(
    symbols: Symbols = None,
    timeframe: Timeframe = "1Day",
    start: Start = None,
    end: End = None,
    feed: Feed = None,
    adjustment: Adjustment = None,
    universe: UniverseFile = None,
    sample: Annotated[int | None, typer.Option(min=1, max=10000, help="stored bars compared per series (default: OMNI_RECONCILE_SAMPLE_SESSIONS)")] = None,
    tolerance_bp: Annotated[float | None, typer.Option("--tolerance-bp", min=0.0001, help="close difference recorded beyond this (default: OMNI_RECONCILE_TOLERANCE_BP)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A second opinion: compare a sample of stored bars with another configured provider (close, and volume when comparable)."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.marketdata import backfill_plan
    from omni_tasks.validation.reconcile import reconcile_stored

    prepare("cli", configure_log=False)
    runtime = get_runtime()
    _ensure_schema(runtime)
    chosen, lo, hi, feed_, adj = _resolve(symbols, universe, start, end, feed, adjustment)
    try:
        backfill_plan.check_request(chosen, timeframe, lo, hi, feed_, adj, earliest=runtime.settings.backfill.earliest_date)
    except backfill_plan.BackfillRequestError as exc:
        _fail(str(exc))
    report = reconcile_stored(
        runtime.settings, runtime.redis, runtime.engine, runtime.sessions, chosen, timeframe=timeframe, start=lo, end=hi,
        feed=feed_, adjustment=adj, sample=sample, tolerance_bp=tolerance_bp,
    )
    summary = report.summary()
    if as_json:
        print(json.dumps({**summary, "comparisons": [{**c.__dict__, "ts": c.ts.isoformat()} for c in report.comparisons]}, indent=2))
        raise typer.Exit(1 if report.differences else 0)
    tolerance = tolerance_bp or runtime.settings.reconcile.tolerance_bp
    table = Table(title=f"second opinion {timeframe} {lo} .. {hi} (exclusive), {adj}: differences beyond {tolerance:g} bp (close) or {runtime.settings.reconcile.volume_tolerance_pct:g}% (volume)")
    for column in ("symbol", "bar", "stored", "other", "close", "other close", "diff bp", "volume diff", "note"):
        table.add_column(column, justify="right" if column in {"close", "other close", "diff bp", "volume diff"} else "left")
    for c in report.comparisons:
        style = "red" if c.beyond_tolerance else "green"
        volume = "not compared" if c.volume_diff_pct is None else f"{c.volume_diff_pct:.2f}%"
        table.add_row(
            c.symbol, c.ts.isoformat()[:16], f"{c.stored_provider}/{c.stored_feed}", f"{c.other_provider}/{c.other_feed}", f"{c.stored_close:.4f}",
            f"{c.other_close:.4f}", f"[{style}]{c.close_diff_bp:.2f}[/{style}]", volume, (c.note or "")[:60],
        )
    console.print(table)
    for symbol, reason in report.skipped:
        console.print(f"[yellow]{symbol}: not compared: {reason}[/yellow]")
    console.print(f"{summary['compared']} bars compared, {summary['differences']} beyond tolerance, {len(report.skipped)} not compared; recorded in the quality report (`omni validate` shows the differences)")
    raise typer.Exit(1 if report.differences else 0)


def register(app: typer.Typer) -> None:
    app.add_typer(backfill_app, name="backfill")
