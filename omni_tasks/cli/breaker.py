"""`omni breaker list|trip|reset|force`: the shared circuit breakers, for operators (DESIGN section 8).

A forced state (an operator's) is kept apart from the automatic one and wins
until it is cleared; ``reset`` clears both. Every change is audited (who, why,
when: an ``audit_log`` row ``breaker.transition`` whose actor is the operator),
logged, counted in ``omni_breaker_transitions_total`` (a counter in Redis the
metrics server exports: this short-lived process writes no metric file) and
alerted when a webhook is configured. ``state`` is the effective state (what
calls get: a forced state wins); ``automatic`` is the automatic one beneath.
Names outside the known set are refused with the list.
"""

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from omni_tasks.cli.common import CommandGroup
from omni_tasks.cli.parsing import check
from omni_tasks.core import inputs
from omni_tasks.core.keys import BREAKER_KEY

console = Console()
_group = CommandGroup("breaker")
_fail = _group.fail
_actor = _group.actor
_reason = _group.reason
breaker_app = typer.Typer(help="Circuit breakers (providers, the broker, the database): list, trip, reset, force.", no_args_is_help=True)

OperatorOption = Annotated[str | None, typer.Option("--operator", help="your name in the audit log (default: the login name)")]
ReasonOption = Annotated[str, typer.Option("--reason", help="why (kept in the audit log)")]


def expected_breakers(settings: Any) -> list[str]:
    """The breakers this configuration uses, whether or not they have been called yet."""
    from omni_tasks.trading.order_breakers import DATABASE_BREAKER, venue_breaker_name

    names = {DATABASE_BREAKER, venue_breaker_name(settings.trading.venue)}
    names.update(f"provider:{name}" for name in settings.providers.order)
    return sorted(names)


def known_names(client: Any, settings: Any) -> list[str]:
    from omni_tasks.safety.breaker import known_breakers

    return sorted(set(expected_breakers(settings)) | set(known_breakers(client)))


def breaker_rows(client: Any, settings: Any, now: float | None = None) -> list[dict[str, Any]]:
    """Every known breaker's state, with the cooldown left while automatically open."""
    from omni_tasks.safety.breaker import BreakerPolicy, CircuitBreaker

    now = time.time() if now is None else now
    cooldown_s = BreakerPolicy().cooldown_s
    rows = []
    for name in known_names(client, settings):
        state = CircuitBreaker(name, client).state()
        raw = {
            k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in client.hgetall(BREAKER_KEY.format(name=name)).items()
        }
        left = None
        if state["automatic"] == "open" and state["opened_at"] is not None:
            left = max(0.0, state["opened_at"] + cooldown_s - now)
        rows.append(
            {
                **state,
                "mode": f"forced {state['forced']}" if state["forced"] else "automatic",
                "forced_by": raw.get("forced_by"),
                "forced_reason": raw.get("forced_reason"),
                "cooldown_left_s": None if left is None else round(left, 1),
            }
        )
    return rows


def _breaker(name: str, actor: str) -> Any:
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime
    from omni_tasks.safety.breaker import CircuitBreaker
    from omni_tasks.safety.reporting import audit_transitions

    check("breaker", inputs.name, name, what="NAME")
    settings = prepare("cli")
    runtime = get_runtime()
    known = known_names(runtime.redis, settings)
    if name not in known:
        _fail(f"unknown breaker {name!r}: known breakers are {', '.join(known)}")
    return CircuitBreaker(name, runtime.redis, on_transition=audit_transitions(runtime.sessions, settings=runtime.settings, actor=actor, client=runtime.redis))


@breaker_app.command("list")
def list_breakers(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every breaker: state, forced or automatic, consecutive failures, when it opened, cooldown left."""
    from omni_tasks.cli.common import prepare
    from omni_tasks.core.runtime import get_runtime

    settings = prepare("cli")
    rows = breaker_rows(get_runtime().redis, settings)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Circuit breakers (state: what calls get; a forced state wins over the automatic one)", title_justify="left")
    for column in ("name", "state", "forced or automatic", "automatic state", "failures", "opened at (UTC)", "cooldown left", "forced by / why"):
        table.add_column(column)
    for row in rows:
        colour = {"closed": "green", "half_open": "yellow"}.get(row["state"], "red")
        opened = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(row["opened_at"])) if row["opened_at"] else "-"
        left = "-" if row["cooldown_left_s"] is None else f"{row['cooldown_left_s']:.1f} s"
        who = f"{row['forced_by']}: {row['forced_reason']}" if row["forced"] else "-"
        table.add_row(
            row["name"], f"[{colour}]{row['state']}[/{colour}]", row["mode"], row["automatic"], str(row["failures"]), opened, left, who
        )
    console.print(table)


@breaker_app.command("trip")
def trip(
    name: Annotated[str, typer.Argument(help="breaker name, e.g. broker:simulated (see `omni breaker list`)")],
    reason: ReasonOption,
    operator: OperatorOption = None,
) -> None:
    """Force a breaker OPEN until it is reset (calls through it are refused)."""
    from omni_tasks.safety.breaker import BreakerState

    actor, why = _actor(operator), _reason(reason)
    breaker = _breaker(name, actor)
    breaker.force(BreakerState.OPEN, actor=actor, reason=why)
    console.print(f"breaker [bold]{name}[/bold] forced [red]open[/red] by {actor}: {why}")


@breaker_app.command("force")
def force(
    name: Annotated[str, typer.Argument(help="breaker name (see `omni breaker list`)")],
    state: Annotated[str, typer.Argument(help="open or closed")],
    reason: ReasonOption,
    operator: OperatorOption = None,
) -> None:
    """Force a breaker OPEN or CLOSED (CLOSED lets every call through whatever fails) until it is reset."""
    from omni_tasks.safety.breaker import BreakerState

    chosen = check("breaker", inputs.choice, state, what="STATE", choices=("open", "closed"))
    actor, why = _actor(operator), _reason(reason)
    breaker = _breaker(name, actor)
    breaker.force(BreakerState(chosen), actor=actor, reason=why)
    console.print(f"breaker [bold]{name}[/bold] forced {chosen} by {actor}: {why}")


@breaker_app.command("reset")
def reset(
    name: Annotated[str, typer.Argument(help="breaker name (see `omni breaker list`)")],
    reason: ReasonOption,
    operator: OperatorOption = None,
) -> None:
    """Clear any forced state and close the breaker with its failure counts cleared."""
    actor, why = _actor(operator), _reason(reason)
    breaker = _breaker(name, actor)
    before = breaker.state()
    breaker.reset(actor=actor, reason=why)
    shown = f"forced {before['forced']}" if before["forced"] else before["automatic"]
    console.print(f"breaker [bold]{name}[/bold] reset by {actor} ({shown} -> [green]closed[/green]): {why}")


def register(app: typer.Typer) -> None:
    app.add_typer(breaker_app, name="breaker")
