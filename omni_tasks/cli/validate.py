"""`omni validate`: validate stored bars now, print the quality report, optionally draw the heatmap."""

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.contracts.feeds import FEEDS, READ_FEED_HELP, feeds_to_read

console = Console()


def validate(
    symbols: Annotated[str | None, typer.Argument(help="comma-separated symbols, or 'universe'")] = None,
    start: Annotated[str | None, typer.Option(help="first date YYYY-MM-DD (default: 30 days ago)")] = None,
    end: Annotated[str | None, typer.Option(help="end date, exclusive (default: tomorrow)")] = None,
    timeframe: Annotated[str, typer.Option("--timeframe", "-t")] = "1Day",
    feed: Annotated[str | None, typer.Option(help=READ_FEED_HELP)] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write a completeness heatmap (symbols x days) to this PNG")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Validate stored bars against the contract and the exchange calendar; store and print the quality report."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.cli.parsing import check, fail
    from omni_tasks.contracts.bars import TIMEFRAMES
    from omni_tasks.core import inputs
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.marketdata.router import serving_feeds
    from omni_tasks.marketdata.universe import load_universe
    from omni_tasks.validation.persist import validate_stored

    today = datetime.now(tz=UTC).date()
    # Every argument is checked before anything is read or written.
    universe = symbols is None or symbols.strip().lower() == "universe"
    given = None if universe else check("validate", inputs.symbols, symbols, what="SYMBOLS")
    lo = check("validate", inputs.day, start, what="--start", today=today) if start is not None else today - timedelta(days=30)
    hi = check("validate", inputs.day, end, what="--end", today=today, extra_days=1) if end is not None else today + timedelta(days=1)
    check("validate", inputs.date_range, lo, hi)
    timeframe = check("validate", inputs.choice, timeframe, what="--timeframe", choices=tuple(TIMEFRAMES))
    if feed is not None:
        feed = check("validate", inputs.choice, feed, what="--feed", choices=FEEDS)
    prepare("cli", configure_log=False)
    runtime = get_runtime()
    settings = runtime.settings.backfill
    if given is None:
        try:
            chosen = load_universe(settings.universe_file, settings.universe)
        except ValueError as exc:
            fail("validate", str(exc))
    else:
        chosen = given
    from omni_tasks.storage.bars import BarStore

    span = (datetime.combine(lo, datetime.min.time(), tzinfo=UTC), datetime.combine(hi, datetime.min.time(), tzinfo=UTC))
    stored = BarStore(runtime.engine).stored_feeds(chosen, timeframe, settings.adjustment, *span)
    feeds = feeds_to_read(feed, stored, serving_feeds(runtime.settings.providers.order, settings.feed))
    result, summary = validate_stored(runtime.engine, runtime.sessions, chosen, timeframe=timeframe, start=lo, end=hi, feeds=feeds, adjustment=settings.adjustment)
    no_data = summary.get("no_data_series", {})
    if summary["bars"] == 0 and not no_data:
        fail("validate", f"no stored {timeframe} bars for these symbols between {lo} and {hi}; run `omni backfill run` first", 1)
    reports = result.reports
    from omni_tasks.validation.reconcile import read_differences

    differences = read_differences(runtime.sessions, chosen, timeframe=timeframe, start=lo, end=hi)
    if plot is not None:
        _heatmap(reports, plot, title=f"completeness {timeframe} {lo} .. {hi}")
    if as_json:
        print(json.dumps({"summary": summary, "reports": json.loads(reports.to_json(orient="records", date_format="iso")), "reconciliation_differences": differences}, indent=2, default=str))
        raise typer.Exit(0 if summary["ok"] else 1)
    per_symbol = reports.groupby("symbol").agg(
        days=("session", "count"), expected=("expected_bars", "sum"), present=("present_bars", "sum"),
        holes=("provider_hole_bars", "sum"), halts=("halt_bars", "sum"), quarantined=("quarantined_rows", "sum"), no_data=("no_data_bars", "sum"),
        outliers=("outliers", "sum"), flagged=("flagged_rows", "sum"),
    )
    table = Table(title=f"quality {timeframe} {lo} .. {hi} (exclusive), feeds {', '.join(feeds)}")
    for column in ("symbol", "sessions", "expected", "present", "complete", "provider holes", "no data", "halts", "quarantined", "outliers (kept)", "verdict"):
        table.add_column(column, justify="left" if column in {"symbol", "verdict"} else "right")
    failed = set(summary["failed_series"])
    for symbol, row in per_symbol.iterrows():
        completeness = row.present / row.expected if row.expected else 1.0
        verdict = f"[yellow]{no_data[symbol][:80]}[/yellow]" if symbol in no_data else "[red]failed[/red]" if symbol in failed else "[green]passed[/green]"
        table.add_row(
            str(symbol), str(int(row.days)), str(int(row.expected)), str(int(row.present)), f"{completeness:.1%}", str(int(row.holes)), str(int(row.no_data)),
            str(int(row.halts)), str(int(row.quarantined)), str(int(row.outliers)), verdict,
        )
    console.print(table)
    if differences:
        second = Table(title="second opinion: stored bars that differ from another provider beyond tolerance (`omni backfill reconcile`)")
        for column in ("symbol", "bar", "stored", "other", "close", "other close", "diff bp", "volume diff", "checked"):
            second.add_column(column, justify="right" if column in {"close", "other close", "diff bp", "volume diff"} else "left")
        for d in differences:
            volume = "not compared" if d["volume_diff_pct"] is None else f"{d['volume_diff_pct']:.2f}%"
            second.add_row(
                d["symbol"], d["ts"].isoformat()[:16], f"{d['stored_provider']}/{d['stored_feed']}", f"{d['other_provider']}/{d['other_feed']}",
                f"{d['stored_close']:.4f}", f"{d['other_close']:.4f}", f"{d['close_diff_bp']:.2f} (> {d['tolerance_bp']:g})", volume, d["checked_at"].isoformat()[:16],
            )
        console.print(second)
    closures = result.closures
    if len(closures):
        console.print("exchange closures in range (not gaps): " + ", ".join(f"{c['date']} {c['name'] or c['kind']}" for c in closures.to_dict("records")))
    console.print(
        f"{summary['bars']:,} bars checked; {summary['quarantined']} rows moved to quarantine; {len(failed)} of {len(chosen)} series failed; "
        f"{len(no_data)} without data (backfill ledger); {len(differences)} second-opinion differences" + (f"; heatmap: {plot}" if plot else "")
    )
    raise typer.Exit(0 if summary["ok"] else 1)


def _heatmap(reports: Any, path: Path, *, title: str) -> None:
    """Symbols x session days, coloured by completeness; closed days grey, quarantine marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    days = sorted({d for d in reports["session"] if isinstance(d, date)})
    symbols = sorted(reports["symbol"].unique())
    grid = np.full((len(symbols), len(days)), np.nan)
    row_of = {s: i for i, s in enumerate(symbols)}
    col_of = {d: j for j, d in enumerate(days)}
    for r in reports.itertuples():
        if r.session in col_of and r.expected_bars > 0:
            grid[row_of[r.symbol], col_of[r.session]] = r.present_bars / r.expected_bars
    height = max(2.5, 0.28 * len(symbols) + 1.5)
    width = max(6.0, 0.22 * len(days) + 3.0)
    fig, ax = plt.subplots(figsize=(min(width, 30), min(height, 40)))
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("#d0d0d0")
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(len(symbols)), labels=symbols, fontsize=7)
    step = max(1, len(days) // 20)
    ax.set_xticks(range(0, len(days), step), labels=[days[j].isoformat() for j in range(0, len(days), step)], rotation=60, ha="right", fontsize=7)
    ax.set_title(title + "  (grey: exchange closed)", fontsize=9)
    fig.colorbar(image, ax=ax, label="completeness")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    app.command()(validate)
