"""`omni risk`: the latest risk snapshot (figures and breaches), earlier ones, and an on-demand recalculation."""

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.cli.common import CommandGroup
from omni_tasks.cli.parsing import option
from omni_tasks.core import inputs

console = Console()
_group = CommandGroup("risk")
_fail = _group.fail
risk_app = typer.Typer(
    help="Portfolio risk: exposure, leverage, VaR/ES, drawdown, breaches of the desk's limits.", invoke_without_command=True
)


@risk_app.callback()
def risk(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    history: Annotated[int | None, typer.Option("--history", help="the last N snapshots, newest first", parser=option(inputs.integer, what="--history", lo=1, hi=10_000))] = None,
    recalc: Annotated[bool, typer.Option("--recalc", help="enqueue a recalculation on the risk queue and wait for it")] = False,
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds --recalc waits for a risk worker", parser=option(inputs.seconds, what="--timeout", hi=3600.0))] = 60.0,
) -> None:
    """Print the latest risk snapshot (every figure and breach); --history N lists earlier ones; --recalc takes a new one."""
    if ctx.invoked_subcommand is not None:
        return
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.risk import snapshot

    prepare("cli", configure_log=False)
    runtime = get_runtime()
    if history is not None and history < 1:
        _fail("--history must be at least 1")
    if timeout_s <= 0:
        _fail("--timeout must be positive")
    if recalc:
        _recalculate(runtime, timeout_s=timeout_s, quiet=as_json)
    if history is not None:
        rows = snapshot.recent_snapshots(runtime.sessions, history)
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            _history_table(rows)
        raise typer.Exit(0 if rows else 1)
    latest = snapshot.latest_snapshot(runtime)
    if latest is None:
        _fail("no risk snapshot yet: `omni risk --recalc` takes one (a risk worker must be running)", 1)
    assert latest is not None
    figures: dict[str, Any] = {}
    if latest.get("id") is not None:
        try:
            figures = snapshot.snapshot_figures(runtime.sessions, int(latest["id"]))
        except LookupError:
            figures = {}
    if as_json:
        print(json.dumps({**latest, "figures": figures}, indent=2))
        raise typer.Exit(0)
    _show(latest, figures)


def _recalculate(runtime: Any, *, timeout_s: float, quiet: bool) -> None:
    """Enqueue omni.risk.recalculate and wait for its outcome; a clear message when no risk worker answers."""
    from omni_tasks.pipeline import heartbeats
    from omni_tasks.pipeline.canvas import ResultTimeout, wait_for
    from omni_tasks.risk.tasks import recalculate

    live = [w for w in heartbeats.alive(runtime.redis, runtime.settings.broker.dead_after_s) if "risk" in w.queues]
    # The request expires with the wait: a recalculation nobody ran in time is not run later by surprise.
    result = recalculate.apply_async(kwargs={"when": "now", "requested_by": "cli"}, expires=timeout_s)
    if not quiet:
        console.print(
            f"risk recalculation {result.id} enqueued on the risk queue ({len(live)} live risk worker(s)); waiting up to {timeout_s:g} s"
        )
    started = time.monotonic()
    try:
        outcome = wait_for(result, timeout_s)
        failed = result.failed()
    except ResultTimeout:
        hint = (
            "no risk worker is running: start one with `omni worker risk` (or `omni up`)"
            if not live
            else "the risk workers are busy or stuck (see `omni status`)"
        )
        _fail(f"no risk worker answered within {timeout_s:g} s; {hint}; the request expires unrun", 3)
    finally:
        result.forget()
    if failed:
        _fail(f"the recalculation failed: {outcome}", 1)
    if not quiet:
        rules = ", ".join(outcome.get("breaches") or []) or "none"
        console.print(f"snapshot {outcome.get('snapshot_id')} taken in {time.monotonic() - started:.2f} s; breaches: {rules}")


def _fmt(value: Any, spec: str = ",.2f", suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    return f"{value:{spec}}{suffix}"


def _show(latest: dict[str, Any], figures: dict[str, Any]) -> None:
    score = float(latest["risk_score"])
    colour = "green" if score < 0.5 else "yellow" if score < 0.8 else "red"
    console.print(
        f"risk snapshot {latest.get('id')} at {latest['ts']} (broker {latest['broker']}, from {latest.get('source', '?')}): "
        f"risk score [{colour}]{score:.2f}[/{colour}], {latest.get('positions')} positions"
    )
    sources = latest.get("mark_sources") or {}
    if sources.get("close") or sources.get("broker") or sources.get("cost"):
        console.print(
            f"[yellow]marks: {sources.get('quote', 0)} from fresh quotes, {sources.get('close', 0)} from the last daily close, "
            f"{sources.get('broker', 0)} from the broker, {sources.get('cost', 0)} at cost[/yellow]"
        )
    if latest.get("stale_input"):
        console.print(f"[yellow]stale input: the latest validation failed for {', '.join(latest['stale_input'])}[/yellow]")
    f = {**latest, **figures}
    table = Table(title="figures")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("equity $", _fmt(f.get("equity"))),
        ("daily P&L $", _fmt(f.get("daily_pnl"), "+,.2f")),
        ("gross exposure $", _fmt(f.get("gross_exposure"))),
        ("net exposure $", _fmt(f.get("net_exposure"), "+,.2f")),
        ("gross leverage", _fmt(f.get("gross_leverage"), ".3f", "x")),
        (
            "concentration",
            _fmt(f.get("concentration_pct"), ".2f", "%") + (f" ({f['concentration_symbol']})" if f.get("concentration_symbol") else ""),
        ),
        ("largest position $", _fmt(f.get("largest_position_usd"))),
        (
            "max pair correlation",
            _fmt(f.get("max_pair_correlation"), "+.3f") + (f" ({' / '.join(f['max_pair'])})" if f.get("max_pair") else ""),
        ),
        (f"drawdown ({f.get('drawdown_from', 'peak')})", _fmt(f.get("drawdown_pct"), ".3f", "%")),
        ("drawdown from peak", _fmt(f.get("drawdown_from_peak_pct"), ".3f", "%")),
        ("drawdown from day start", _fmt(f.get("drawdown_from_day_start_pct"), ".3f", "%")),
    ]
    for level in ("95", "99"):
        for kind, label in (("hist", "historical"), ("param", "parametric")):
            rows.append(
                (f"VaR {level}% {label} $", _fmt(f.get(f"var_{level}_{kind}", latest.get(f"var_{level}") if kind == "hist" else None)))
            )
            rows.append(
                (f"ES {level}% {label} $", _fmt(f.get(f"es_{level}_{kind}", latest.get(f"es_{level}") if kind == "hist" else None)))
            )
    rows += [
        ("Sharpe (annualised)", _fmt(f.get("sharpe"), "+.3f")),
        (f"beta vs {f.get('benchmark', 'benchmark')}", _fmt(f.get("beta"), "+.3f")),
        ("history (days)", _fmt(f.get("history_days"), "d")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    breaches = latest.get("breaches") or []
    if breaches:
        out = Table(title=f"[red]{len(breaches)} limit breach(es)[/red]")
        for column in ("rule", "value", "limit", "message"):
            out.add_column(column, justify="right" if column in {"value", "limit"} else "left")
        for b in breaches:
            out.add_row(b["rule"], _fmt(b["value"], ",.6g"), _fmt(b["limit"], ",.6g"), b["message"])
        console.print(out)
    else:
        console.print("[green]no limit breached[/green]")
    notes = latest.get("notes") or {}
    for name, reason in sorted(notes.items()):
        console.print(f"[dim]{name}: {reason}[/dim]")


def _history_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no risk snapshot yet")
        return
    table = Table(title=f"last {len(rows)} risk snapshot(s)")
    for column in ("id", "ts (UTC)", "equity $", "P&L $", "gross $", "lev.", "VaR95 $", "ES95 $", "DD", "score", "breaches"):
        table.add_column(column, justify="left" if column in {"ts (UTC)", "breaches"} else "right")
    for r in rows:
        table.add_row(
            str(r["id"]), r["ts"][:19].replace("T", " "), _fmt(r["equity"], ",.0f"), _fmt(r["daily_pnl"], "+,.0f"), _fmt(r["gross_exposure"], ",.0f"),
            _fmt(r["gross_leverage"], ".2f", "x"), _fmt(r["var_95"], ",.0f"), _fmt(r["es_95"], ",.0f"), _fmt(r["drawdown_pct"], ".2f", "%"),
            f"{r['risk_score']:.2f}", ", ".join(b["rule"] for b in r["breaches"]) or "-",
        )  # fmt: skip
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(risk_app, name="risk")
