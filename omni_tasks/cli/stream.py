"""`omni stream`: the streaming worker, its remote control, and what it serves."""

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.cli.common import CommandGroup
from omni_tasks.cli.parsing import check, option
from omni_tasks.core import inputs

console = Console()
_group = CommandGroup("stream")
_fail = _group.fail
stream_app = typer.Typer(
    help="The real-time quote path: run the streaming worker, control it, look at what it serves.", invoke_without_command=True
)


def _symbols(text: str) -> list[str]:
    return check("stream", inputs.symbols, text, what="SYMBOLS")


NameOption = Annotated[str, typer.Option("--name", help="the stream worker's name", parser=option(inputs.name, what="--name"))]


@stream_app.callback()
def stream(
    ctx: typer.Context,
    feed: Annotated[str | None, typer.Option(help="synthetic, replay or alpaca (default: OMNI_STREAM_FEED)")] = None,
    symbols: Annotated[str | None, typer.Option(help="comma-separated symbols (default: OMNI_STREAM_SYMBOLS)")] = None,
    record: Annotated[Path | None, typer.Option("--record", help="append every raw frame to FILE, for replays")] = None,
    replay: Annotated[Path | None, typer.Option("--replay", help="play this recording (implies --feed replay)")] = None,
    speed: Annotated[float | None, typer.Option(help="replay speed: 1 real time, N times faster, 0 as fast as possible", parser=option(inputs.seconds, what="--speed", hi=1_000_000.0, allow_zero=True))] = None,
    for_seconds: Annotated[float | None, typer.Option("--for", help="run this many seconds, then stop cleanly", parser=option(inputs.seconds, what="--for", hi=366 * 86_400.0))] = None,
    shard: Annotated[int | None, typer.Option("--shard", min=0, help="run shard N of OMNI_STREAM_KEYS: its key, its lock, its slice of the symbols (name stream-N)")] = None,
) -> None:
    """Run the streaming worker (until SIGTERM, `omni stream stop`, --for, or the end of a replay)."""
    if ctx.invoked_subcommand is not None:
        return
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.errors import ConfigError
    from omni_tasks.core.redis_client import async_redis_from_url
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.stream.guard import build_guard
    from omni_tasks.stream.recording import Recorder
    from omni_tasks.stream.wiring import feed_factory, stream_config
    from omni_tasks.stream.worker import StreamWorker

    settings = prepare("stream")
    if replay is not None:
        feed = "replay"
    if feed is not None:
        feed = check("stream", inputs.choice, feed, what="--feed", choices=("synthetic", "replay", "alpaca"))
    if speed is not None and speed < 0:
        _fail("--speed must be >= 0 (0: as fast as possible)")
    chosen = _symbols(symbols) if symbols else None
    try:
        factory = feed_factory(settings, feed=feed, replay_file=replay, speed=speed, shard=shard)
        config = stream_config(settings, feed=feed, symbols=chosen, shard=shard)
    except ConfigError as exc:
        _fail(str(exc))
        raise
    runtime = get_runtime()

    async def main() -> int:
        client = async_redis_from_url(settings.redis_url)
        recorder = Recorder(record) if record is not None else None
        guard = build_guard(settings, client)
        worker = StreamWorker(
            config,
            redis=client,
            sync_redis=runtime.redis,
            feed_factory=factory,
            recorder=recorder,
            on_flush=guard.on_flush if guard else None,
            on_housekeeping=guard.on_housekeeping if guard else None,
            run_for_s=for_seconds,
        )
        try:
            return await worker.run()
        finally:
            if recorder is not None:
                console.print(f"recorded {recorder.frames} frames to {record}")
            await client.aclose()

    import asyncio

    raise typer.Exit(asyncio.run(main()))


def _send(command: dict[str, Any], name: str) -> None:
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.keys import STREAM_CONTROL_KEY
    from omni_tasks.core.runtime import get_runtime

    prepare("cli", configure_log=False)
    client = get_runtime().redis
    client.rpush(STREAM_CONTROL_KEY.format(name=name), json.dumps({**command, "at": time.time()}))
    console.print(f"sent {command['cmd']} to the stream worker {name!r}; it acts within a second")


@stream_app.command()
def subscribe(symbols: Annotated[str, typer.Argument(help="comma-separated symbols")], name: NameOption = "stream") -> None:
    """Add symbols to the running worker's subscriptions."""
    _send({"cmd": "subscribe", "symbols": _symbols(symbols)}, name)


@stream_app.command()
def unsubscribe(symbols: Annotated[str, typer.Argument(help="comma-separated symbols")], name: NameOption = "stream") -> None:
    """Drop symbols from the running worker's subscriptions."""
    _send({"cmd": "unsubscribe", "symbols": _symbols(symbols)}, name)


@stream_app.command()
def stop(name: NameOption = "stream") -> None:
    """Ask the running worker to stop cleanly (under `omni up` the supervisor starts it again)."""
    import getpass

    _send({"cmd": "stop", "by": getpass.getuser()}, name)


@stream_app.command()
def quotes(
    symbols: Annotated[str | None, typer.Argument(help="comma-separated symbols (default: the worker's)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The latest quotes served in Redis, with their microstructure, age and trading status (halts, LULD band)."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.contracts.quotes import read_latest, read_trading_status
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.stream.shards import shard_count, shard_labels
    from omni_tasks.stream.status import read_status

    settings = prepare("cli", configure_log=False)
    client = get_runtime().redis
    served = [s for shard in shard_labels(shard_count(settings)) for s in read_status(client, shard).get("symbols") or []]
    chosen = _symbols(symbols) if symbols else list(dict.fromkeys(served) or settings.stream.symbols)
    latest = read_latest(client, chosen)
    statuses = read_trading_status(client, chosen)
    now = time.time_ns()
    if as_json:
        rows = {s: {k: str(v) for k, v in q.__dict__.items()} | {"age_s": round(q.age_s(now), 3)} for s, q in latest.items()}
        status_rows = {s: {k: str(v) for k, v in st.__dict__.items()} | {"halted": st.halted} for s, st in statuses.items()}
        console.print_json(json.dumps({"quotes": rows, "status": status_rows, "missing": [s for s in chosen if s not in latest]}))
        return
    table = Table(title="Latest quotes (Redis)")
    for column in ("symbol", "bid", "ask", "size", "mid", "spread bp", "vwap", "liquidity", "age s", "status"):
        table.add_column(column, justify="right" if column not in ("symbol", "status") else "left")
    for symbol in chosen:
        q = latest.get(symbol)
        st = statuses.get(symbol)
        status_text = "-" if st is None else (f"[red]{st.describe()}[/red]" if st.halted else st.describe() or "-")
        if q is None:
            table.add_row(symbol, "-", "-", "-", "-", "-", "-", "-", "[yellow]none / expired[/yellow]", status_text)
            continue
        table.add_row(
            symbol,
            str(q.bid),
            str(q.ask),
            f"{q.bid_size:g} x {q.ask_size:g}",
            str(q.mid),
            f"{q.spread_bps:.2f}",
            "-" if q.vwap is None else f"{q.vwap:.4f}",
            "-" if q.liquidity is None else f"{q.liquidity:.2f}",
            f"{q.age_s(now):.1f}",
            status_text,
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(stream_app, name="stream")
