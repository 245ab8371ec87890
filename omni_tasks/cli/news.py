"""`omni news SYMBOL`: stored news sentiment for a symbol (Alpha Vantage), optionally fetched now."""

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.cli.parsing import fail

if TYPE_CHECKING:
    from omni_tasks.core.runtime import Runtime

console = Console()


def news(
    symbol: Annotated[str, typer.Argument(help="the symbol, e.g. AAPL")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="articles shown, newest first")] = 20,
    fetch: Annotated[
        bool, typer.Option("--fetch", help="fetch from Alpha Vantage now (one call of the daily quota) before showing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Stored news about SYMBOL: time, source, title, overall and per-ticker sentiment, relevance."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.contracts.bars import check_symbol
    from omni_tasks.core.runtime import get_runtime

    prepare("cli", configure_log=False)
    try:
        chosen = check_symbol(symbol)
    except ValueError as exc:
        fail("news", str(exc), 2)
    runtime = get_runtime()
    from omni_tasks.storage import migrations

    if migrations.current_revision(runtime.engine) != migrations.head_revision(runtime.engine):
        fail("news", "the database schema is not up to date: run `omni db upgrade` first", 2)
    if fetch:
        _fetch_now(runtime, chosen)
    from omni_tasks.news.store import read_news

    rows = read_news(runtime.sessions, chosen, limit=limit)
    if as_json:
        print(json.dumps({"symbol": chosen, "articles": rows}, indent=2))
        return
    if not rows:
        console.print(f"no stored news about {chosen}" + ("" if fetch else "; `omni news " + chosen + " --fetch` asks Alpha Vantage now"))
        return
    table = Table(title=f"news about {chosen} (newest first; scores -1 bearish .. +1 bullish, relevance 0..1)")
    for column in ("published (UTC)", "source", "title", "overall", f"{chosen} sentiment", "relevance"):
        table.add_column(column, justify="right" if column == "relevance" else "left", overflow="fold")
    for r in rows:
        table.add_row(
            r["published_at"].replace("T", " "),
            r["source"],
            r["title"][:100],
            _score(r["overall_sentiment_score"], r["overall_sentiment_label"]),
            _score(r["ticker_sentiment_score"], r["ticker_sentiment_label"]),
            "-" if r["relevance_score"] is None else f"{r['relevance_score']:.3f}",
        )
    console.print(table)


def _score(value: float | None, label: str | None) -> str:
    if value is None:
        return label or "-"
    return f"{value:+.3f} {label or ''}".strip()


def _fetch_now(runtime: "Runtime", symbol: str) -> None:
    from omni_tasks.marketdata.errors import ProviderError
    from omni_tasks.marketdata.providers.alpha_vantage import client as alpha_vantage
    from omni_tasks.marketdata.providers.alpha_vantage import news as alpha_vantage_news
    from omni_tasks.marketdata.ratelimit import RateLimiter
    from omni_tasks.news.fetch import Budget, fetch_symbol

    settings = runtime.settings
    caps = alpha_vantage.capabilities(settings.alpha_vantage.daily_quota, settings.alpha_vantage.calls_per_window)
    try:
        outcome = fetch_symbol(
            symbol,
            client=alpha_vantage_news.from_settings(settings),
            factory=runtime.sessions,
            limiter=RateLimiter(runtime.redis, window_s=settings.providers.rate_window_s),
            budget=Budget(per_min=caps.rate_limit_per_min, daily_quota=caps.daily_quota, wait_max_s=15.0),
            limit=settings.news.limit,
            lookback_days=settings.news.lookback_days,
        )
    except ProviderError as exc:
        fail("news", str(exc), 1)
    if outcome.status != "stored":
        console.print(f"[yellow]news not fetched ({outcome.status}): {outcome.detail}[/yellow]")
        return
    console.print(
        f"fetched {outcome.articles} articles from {outcome.time_from} on: {outcome.inserted} new, {outcome.updated} updated, {outcome.rejected} rejected"
    )


def register(app: typer.Typer) -> None:
    app.command()(news)
