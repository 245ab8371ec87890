"""How the CLI refuses input and reports errors: the one home of its error output (DESIGN section 11).

Every error a command reports goes to stderr as one line: ``omni <command>: <problem>``;
with ``--json`` the line is a JSON object instead (``{"error": ..., "command": ..., "exit_code": ...}``),
so a script reading the command's JSON never has to parse prose. stdout carries results only.
The input rules themselves live in :mod:`omni_tasks.core.inputs`; this module turns them into typer
option parsers and into the refusal every command prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import typer

# typer vendors click; the current command's context (for its full name) is only reachable here.
from typer._click.globals import get_current_context

from omni_tasks.core import inputs

T = TypeVar("T")
USAGE_EXIT = 2


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


#: Said instead of a database error when the omni tables are not there yet (a fresh data folder before the first `omni up`).
NOT_MIGRATED = "the database has no omni tables yet (or an older schema): `omni up` creates them when it starts, or run `omni db upgrade`"


def schema_missing(exc: BaseException) -> bool:
    """Whether ``exc`` is a query on a table or column the database does not have: SQLite's "no such table/column",
    PostgreSQL's undefined table or column (SQLSTATE 42P01, 42703). Read without importing SQLAlchemy."""
    if not type(exc).__module__.startswith("sqlalchemy"):
        return False
    if getattr(getattr(exc, "orig", None), "pgcode", None) in {"42P01", "42703"}:
        return True
    text = str(exc)
    return "no such table" in text or "no such column" in text


def redis_unreachable(exc: BaseException) -> str | None:
    """The line to show when ``exc`` is a failure to reach Redis (the pipeline not running, most often), else None."""
    if not (type(exc).__module__.startswith("redis") and type(exc).__name__ in {"ConnectionError", "TimeoutError"}):
        return None
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return f"Redis is unreachable ({first}): is the pipeline running? Start it with `omni up` (or check OMNI_BROKER_URL)"


def wants_json(ctx: Any = None, argv: Sequence[str] | None = None) -> bool:
    """Whether the running command was asked for ``--json`` (its own option or a parent group's, or in argv)."""
    ctx = ctx if ctx is not None else get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("as_json"):
            return True
        ctx = ctx.parent
    args = sys.argv[1:] if argv is None else argv
    return "--json" in args[: args.index("--") if "--" in args else len(args)]


def report_error(where: str, message: str, code: int, *, as_json: bool) -> None:
    """Write one error on stderr: ``<where>: <message>``, or its JSON object. Nothing else prints errors."""
    line = one_line(message)
    text = json.dumps({"error": line, "command": where, "exit_code": code}) if as_json else f"{where}: {line}"
    print(text, file=sys.stderr, flush=True)


def fail(command: str, message: str, code: int = USAGE_EXIT, *, as_json: bool | None = None) -> NoReturn:
    """Report ``omni <command>: <message>`` on stderr (plain text: user input is never read as markup) and exit.

    The running command's full path (``omni order cancel-all``) is used when there is one; ``command`` otherwise.
    ``as_json`` defaults to whether the command was given ``--json``.
    """
    ctx = get_current_context(silent=True)
    where = ctx.command_path if ctx is not None and ctx.command_path.startswith("omni ") else f"omni {command}"
    report_error(where, message, code, as_json=wants_json(ctx) if as_json is None else as_json)
    raise typer.Exit(code)


def check(command: str, parse: Callable[..., T], *values: Any, **options: Any) -> T:
    """``parse(*values, **options)`` from :mod:`omni_tasks.core.inputs`, or the one-line refusal of ``command``."""
    try:
        return parse(*values, **options)
    except inputs.InputError as exc:
        fail(command, str(exc))


def option(parse: Callable[..., T], **options: Any) -> Callable[[Any], T]:
    """A typer ``parser=``: the value through ``parse``; its InputError becomes click's bad-parameter error (one line, exit 2)."""
    return inputs.parser(parse, **options)
