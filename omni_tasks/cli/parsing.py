"""How the CLI refuses input: one line on stderr naming the problem, exit 2 (DESIGN section 11).

The rules themselves live in :mod:`omni_tasks.inputs`; this module turns them
into typer option parsers and into the one-line refusal every command prints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

# typer vendors click; the current command's context (for its full name) is only reachable here.
from typer._click.globals import get_current_context

from omni_tasks import inputs

T = TypeVar("T")
USAGE_EXIT = 2


def fail(command: str, message: str, code: int = USAGE_EXIT) -> NoReturn:
    """Print ``omni <command>: <message>`` on stderr (plain text: user input is never read as markup) and exit.

    The running command's full path (``omni order cancel-all``) is used when there is one; ``command`` otherwise.
    """
    ctx = get_current_context(silent=True)
    where = ctx.command_path if ctx is not None and ctx.command_path.startswith("omni ") else f"omni {command}"
    line = " ".join(message.split())
    print(f"{where}: {line}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def check(command: str, parse: Callable[..., T], *values: Any, **options: Any) -> T:
    """``parse(*values, **options)`` from :mod:`omni_tasks.inputs`, or the one-line refusal of ``command``."""
    try:
        return parse(*values, **options)
    except inputs.InputError as exc:
        fail(command, str(exc))


def option(parse: Callable[..., T], **options: Any) -> Callable[[Any], T]:
    """A typer ``parser=``: the value through ``parse``; its InputError becomes click's bad-parameter error (one line, exit 2)."""
    return inputs.parser(parse, **options)
