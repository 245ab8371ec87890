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
