"""`omni order`: place orders through the orders queue (pre-trade checks), list them, cancel every open one."""

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.cli.common import CommandGroup
from omni_tasks.cli.parsing import NOT_MIGRATED, fail, option, schema_missing
from omni_tasks.core import inputs

console = Console()
_group = CommandGroup("order")
_fail = _group.fail
_actor = _group.actor
order_app = typer.Typer(help="Orders through the pre-trade checks (DESIGN section 7): buy, sell, list, cancel-all.", no_args_is_help=True)
OK_STATUSES = frozenset({"new", "accepted", "partially_filled", "filled"})
#: Publishing an order: a broker that does not answer at once is reported, not waited for (kombu's default retries take seconds).
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
#: Every status an order row can have (omni_tasks.storage.models.Order), for ``--status``.
ORDER_STATUSES = ("pending", "new", "accepted", "partially_filled", "filled", "cancelled", "rejected", "denied", "expired")

OperatorOption = Annotated[str | None, typer.Option("--operator", help="your name in the records (default: the login name)")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="seconds to wait with --wait", parser=option(inputs.seconds, what="--timeout", hi=3600.0))]


def _place(side: str, symbol: str, qty: str, limit: str | None, wait: bool, timeout_s: float, operator: str | None, as_json: bool) -> None:
    from omni_tasks.cli.common import prepare
    from omni_tasks.contracts.venue import InvalidOrder
    from omni_tasks.trading.parsing import parse_order

    prepare("cli")
    client_order_id = f"cli-{uuid.uuid4().hex[:24]}"
    try:
        request = parse_order(
            symbol=symbol, side=side, qty=qty, order_type="limit" if limit is not None else "market", limit_price=limit,
            client_order_id=client_order_id, requested_by=_actor(operator),
        )  # fmt: skip
    except InvalidOrder as exc:
        _fail(str(exc))
    if timeout_s <= 0:
        _fail("--timeout must be positive")

    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.safety.killswitch import read_state
    from omni_tasks.safety.state_rule import TradingState
    from omni_tasks.trading.intake import NotQueued, accept_order
    from omni_tasks.trading.tasks import submit_order

    runtime = get_runtime()
    what = f"{request.side} {_plain(request.qty)} {request.symbol} " + (
        f"limit {_plain(request.limit_price)}" if request.limit_price is not None else "market"
    )
    reading = read_state(runtime.redis, runtime.sessions)
    if reading.state is TradingState.HALTED:
        if reading.database.status == "unreadable" and reading.redis.status == "ok":
            # Not an engage: the order cannot be recorded, so it is not accepted (say so, as the intake would).
            detail = (reading.database.detail or "").split("\n", 1)[0][:160]
            fail("order", f"could not queue {what} ({client_order_id}): the database is unavailable ({detail}): nothing recorded, nothing queued", 1)
        message = "trading is HALTED (kill switch engaged, or its state cannot be read): order not enqueued; see `omni kill status`"
        fail("order", message, 1)
    trading = runtime.settings.trading
    try:
        # Recorded (pending, with its deadline) before it is queued: from here it ends with a final status.
        accepted = accept_order(
            request, sessions=runtime.sessions, venue=trading.venue, ttl_s=trading.order_ttl_s,
            send=lambda kwargs: submit_order.apply_async(kwargs=kwargs, retry_policy=PUBLISH_RETRY_POLICY),
        )  # fmt: skip
    except NotQueued as exc:
        if as_json:
            print(json.dumps({"client_order_id": client_order_id, "status": "not_queued", "reason": str(exc)}))
        else:
            fail("order", f"could not queue {what} ({client_order_id}): {exc}", 1)
        raise typer.Exit(1) from None
    deadline = accepted.expires_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    if not wait:
        if as_json:
            print(json.dumps({"client_order_id": client_order_id, "status": "queued", "expires_at": accepted.expires_at.isoformat()}))
        else:
            console.print(
                f"order [bold]{client_order_id}[/bold] queued: {what}, to be sent by {deadline} or recorded expired; "
                "`omni order list` shows its outcome",
                soft_wrap=True,
            )
        return
    row = _wait_for_outcome(runtime.sessions, client_order_id, timeout_s)
    if row is None:
        message = (
            f"order {client_order_id} ({what}) accepted but not decided within {timeout_s:g} s: is an orders worker running? "
            f"(`omni status`); it is sent by {deadline} or recorded expired, `omni order list` shows which"
        )
        if as_json:
            print(json.dumps({"client_order_id": client_order_id, "status": "pending", "reason": message}))
        else:
            console.print(f"[yellow]{message}[/yellow]", soft_wrap=True)
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(row, default=str))
    else:
        _print_outcome(row, what)
    raise typer.Exit(0 if row["status"] in OK_STATUSES else 1)


def _wait_for_outcome(sessions: Any, client_order_id: str, timeout_s: float) -> dict[str, Any] | None:
    """Poll the order's row until it leaves ``pending`` (None: not decided in time; a database that fails meanwhile is polled again)."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from omni_tasks.storage.models import Order

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with sessions() as session:
                row = session.execute(select(Order).where(Order.client_order_id == client_order_id)).scalar_one_or_none()
                if row is not None and row.status != "pending":
                    return _row_dict(row)
        except SQLAlchemyError:
            pass  # the database is away for a moment: the order is recorded, its outcome will be too
        time.sleep(0.1)
    return None


def _plain(value: Any) -> str | None:
    from omni_tasks.trading.order_records import plain

    return None if value is None else plain(value)


#: Statuses besides ``denied`` whose reason may start with the check that decided them (``deadline: ...``, ``queue: ...``).
_CHECKED_REASONS = {"expired": ("deadline",), "rejected": ("queue",)}


def _row_dict(row: Any) -> dict[str, Any]:
    check, reason = None, row.reason
    if row.reason and ": " in row.reason:
        head, rest = row.reason.split(": ", 1)
        if row.status == "denied" or head in _CHECKED_REASONS.get(row.status, ()):
            check, reason = head, rest
    return {
        "client_order_id": row.client_order_id,
        "created_at": row.created_at.isoformat(),
        "broker": row.broker,
        "symbol": row.symbol,
        "side": row.side,
        "qty": _plain(row.qty),
        "order_type": row.order_type,
        "limit_price": _plain(row.limit_price),
        "status": row.status,
        "check": check,
        "reason": reason,
        "filled_qty": _plain(row.filled_qty),
        "avg_fill_price": _plain(row.avg_fill_price),
        "requested_by": row.requested_by,
        "expires_at": None if row.expires_at is None else row.expires_at.isoformat(),
    }


def _print_outcome(row: dict[str, Any], what: str) -> None:
    status = row["status"]
    if status == "filled":
        console.print(f"[green]filled[/green]: {what}: {row['filled_qty']} at {row['avg_fill_price']} ({row['client_order_id']})")
    elif status in OK_STATUSES:
        console.print(f"[green]{status}[/green]: {what} is at the broker ({row['client_order_id']})")
    elif status == "denied":
        console.print(f"[red]denied[/red] by [bold]{row['check']}[/bold]: {row['reason']} ({row['client_order_id']})")
    else:
        console.print(f"[red]{status}[/red]: {row['reason'] or 'no reason given'} ({row['client_order_id']})")


@order_app.command("buy", context_settings={"ignore_unknown_options": True})
def buy(
    symbol: Annotated[str, typer.Argument(help="ticker, e.g. AAPL")],
    qty: Annotated[str, typer.Argument(help="quantity (decimal text, e.g. 10 or 0.5)")],
    limit: Annotated[str | None, typer.Option("--limit", help="limit price; without it, a market order")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the outcome and print it")] = False,
    timeout_s: TimeoutOption = 30.0,
    operator: OperatorOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Buy through the pre-trade checks (exit 1 when denied or rejected with --wait)."""
    _place("buy", symbol, qty, limit, wait, timeout_s, operator, as_json)


@order_app.command("sell", context_settings={"ignore_unknown_options": True})
def sell(
    symbol: Annotated[str, typer.Argument(help="ticker, e.g. AAPL")],
    qty: Annotated[str, typer.Argument(help="quantity (decimal text, e.g. 10 or 0.5)")],
    limit: Annotated[str | None, typer.Option("--limit", help="limit price; without it, a market order")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the outcome and print it")] = False,
    timeout_s: TimeoutOption = 30.0,
    operator: OperatorOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Sell (or sell short) through the pre-trade checks (exit 1 when denied or rejected with --wait)."""
    _place("sell", symbol, qty, limit, wait, timeout_s, operator, as_json)


@order_app.command("list")
def list_orders(
    limit: Annotated[int, typer.Option("--limit", help="rows, newest first", parser=option(inputs.integer, what="--limit", lo=1, hi=10_000))] = 20,
    status: Annotated[str | None, typer.Option("--status", help="only this status (pending, denied, filled, new, rejected, expired...)", parser=option(inputs.choice, what="--status", choices=ORDER_STATUSES))] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent orders with their status, and the check and reason of every denial, rejection and expiry."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.storage.models import Order

    prepare("cli")
    if not 1 <= limit <= 10_000:
        _fail("--limit must be between 1 and 10000")
    query = select(Order).order_by(Order.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Order.status == status.strip().lower())
    try:
        with get_runtime().sessions() as session:
            rows = [_row_dict(r) for r in session.execute(query).scalars().all()]
    except SQLAlchemyError as exc:
        if schema_missing(exc):
            fail("order list", NOT_MIGRATED, 2)
        fail("order list", f"the database is unavailable ({type(exc).__name__}): orders cannot be listed now", 1)
    if as_json:
        print(json.dumps(rows, default=str, indent=2))
        return
    table = Table(title=f"Orders (newest {len(rows)})", title_justify="left")
    for column in ("created (UTC)", "id", "order", "status", "filled", "check / reason", "by"):
        table.add_column(column, overflow="fold")
    colours = {
        "filled": "green",
        "new": "cyan",
        "accepted": "cyan",
        "denied": "red",
        "rejected": "red",
        "cancelled": "yellow",
        "expired": "yellow",
    }
    for r in rows:
        colour = colours.get(r["status"], "white")
        why = f"{r['check']}: {r['reason']}" if r["check"] else (r["reason"] or "")
        order = f"{r['side']} {r['qty']} {r['symbol']} " + (f"limit {r['limit_price']}" if r["limit_price"] else "market")
        filled = f"{r['filled_qty']} @ {r['avg_fill_price']}" if r["avg_fill_price"] else r["filled_qty"]
        table.add_row(
            r["created_at"][:19].replace("T", " "),
            r["client_order_id"],
            order,
            f"[{colour}]{r['status']}[/{colour}]",
            filled,
            why,
            r["requested_by"],
        )
    console.print(table)


@order_app.command("cancel-all")
def cancel_all(
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds to wait for the broker to confirm", parser=option(inputs.seconds, what="--timeout", hi=600.0))] = 10.0,
    operator: OperatorOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cancel every open order at the broker now (not through the queue) and confirm none is left.

    Exit 0: none open now. Exit 1: orders are still open, or the broker failed; the
    message lists what is still open (from the broker, or from the orders ledger when the
    broker cannot be asked). Either way an ``orders.cancel_all`` audit row records it.
    """
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime

    actor = _actor(operator)
    prepare("cli")
    runtime = get_runtime()
    outcome = _cancel_everything(runtime, timeout_s)
    audited = _audit_cancel_all(runtime.sessions, actor, outcome)
    detail = {**outcome, "audited": audited}
    remaining = outcome["remaining"]
    if as_json:
        print(json.dumps(detail))
    if outcome["error"] is not None:
        shown = ", ".join(remaining[:50]) + (f" (and {len(remaining) - 50} more)" if len(remaining) > 50 else "")
        still = f"{len(remaining)} order(s) still open per the {outcome['remaining_source']}" + (f": {shown}" if remaining else "")
        if outcome["remaining_source"] == "unknown":
            still = "what is still open is unknown (neither the broker nor the orders ledger answered)"
        fail("order cancel-all", f"the broker failed ({outcome['error']}); {still}; " + ("audited" if audited else "NOT audited: the database write failed"), 1)
    if not as_json:
        if remaining:
            console.print(f"[red]{len(remaining)} order(s) still open after {timeout_s:g} s[/red]: {', '.join(remaining)}")
        else:
            console.print(
                f"cancel asked for {outcome['asked']} open order(s) at {outcome['broker']}; none open now (confirmed in {outcome['elapsed_ms']} ms)"
            )
    raise typer.Exit(1 if remaining else 0)


def _cancel_everything(runtime: Any, timeout_s: float) -> dict[str, Any]:
    """Ask the venue to cancel every open order until none is left or ``timeout_s`` passes; a venue failure is an outcome, not an exception."""
    from omni_tasks.trading.wiring import make_venue

    started = time.perf_counter()
    venue_name = runtime.settings.trading.venue
    venue: Any = None
    asked: list[str] = []
    remaining: list[str] | None = None
    error: str | None = None
    try:
        venue = make_venue(runtime)
        venue_name = venue.name
        asked = list(venue.cancel_all())
        open_now = venue.open_orders()
        deadline = time.monotonic() + timeout_s
        while open_now and time.monotonic() < deadline:
            time.sleep(0.1)
            venue.cancel_all()
            open_now = venue.open_orders()
        remaining = [o.client_order_id for o in open_now]
    except Exception as exc:  # noqa: BLE001 - any venue failure: reported in one line, audited, what is open listed
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    source = "broker"
    if error is not None:
        remaining, source = _still_open_after_failure(runtime, venue, venue_name)
    return {
        "broker": venue_name,  # the key operators read (JSON output, audit detail)
        "asked": len(asked),
        "remaining": remaining or [],
        "remaining_source": source,
        "error": error,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def _still_open_after_failure(runtime: Any, venue: Any, venue_name: str) -> tuple[list[str], str]:
    """What is still open after a failure: the venue's word if it answers now, else the orders ledger's open rows."""
    if venue is not None:
        try:
            return [o.client_order_id for o in venue.open_orders()], "broker"
        except Exception:  # noqa: BLE001, S110 - the venue's first error is the one reported; the ledger below answers instead
            pass
    from sqlalchemy import select

    from omni_tasks.contracts.venue import OPEN_STATUSES
    from omni_tasks.storage.models import Order

    try:
        with runtime.sessions() as session:
            rows = session.scalars(
                select(Order.client_order_id).where(Order.broker == venue_name, Order.status.in_(sorted(OPEN_STATUSES))).order_by(Order.id)
            ).all()
        return list(rows), "orders ledger"
    except Exception:  # noqa: BLE001 - nothing answered: said so
        return [], "unknown"


def _audit_cancel_all(sessions: Any, actor: str, outcome: dict[str, Any]) -> bool:
    """The ``orders.cancel_all`` audit row; False when the database write failed (the command says so)."""
    from omni_tasks.storage.models import AuditLog

    try:
        with sessions() as session, session.begin():
            session.add(
                AuditLog(
                    ts=datetime.now(tz=UTC), actor=actor, action="orders.cancel_all", subject=f"broker:{outcome['broker']}", detail=outcome
                )
            )
    except Exception:  # noqa: BLE001 - the database may be what failed; the command reports it
        return False
    return True


def register(app: typer.Typer) -> None:
    app.add_typer(order_app, name="order")
