"""The `omni` command line. Every command loads the settings once; errors print one line, no traceback.

Start-up is kept light: this module and the command modules import only typer, rich and the input
rules; settings, SQLAlchemy, Redis, Celery and the domain are imported inside the commands that use
them (`omni --help` must not pay for them). ``tests/test_cli_ux.py`` checks which modules are loaded.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import typer
from typer._click import Context

# typer vendors click; its usage-error base class is not re-exported (typer.BadParameter is one of them).
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from omni_tasks.cli.common import crash_log_path
from omni_tasks.cli.parsing import NOT_MIGRATED, redis_unreachable, report_error, schema_missing, wants_json
from omni_tasks.cli.parsing import one_line as _one_line
from omni_tasks.core.errors import BootRefused, ConfigError

app = typer.Typer(
    name="omni",
    help="omni-tasks: the back office of an algorithmic-trading desk (Celery pipeline).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from omni_tasks.cli import admin, backfill, breaker, kill, news, ops, orders, risk, run, scan, stream, validate

    run.register(app)
    ops.register(app)
    backfill.register(app)
    scan.register(app)
    validate.register(app)
    admin.register(app)
    kill.register(app)
    stream.register(app)
    risk.register(app)
    orders.register(app)
    breaker.register(app)
    news.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run one command. Whatever happens, the user sees at most one line about a failure, never a traceback:

    a usage error or refused input: ``omni <command>: <problem>``, exit 2; a configuration error, exit 2;
    a refused start, exit 3; anything unexpected: ``omni: internal error: ...; details in <log>``, exit 1
    (the traceback goes to that file).
    """
    _register()
    command = typer.main.get_command(app)
    _help_flags_default_false(command)
    _import_help_renderer()
    try:
        # Not standalone: click's own error display is a multi-line box; ours is one line.
        code = command.main(args=argv, prog_name="omni", standalone_mode=False)
    except ClickException as exc:
        where, message = _usage_line(exc)
        report_error(where, message, exc.exit_code, as_json=wants_json(argv=argv))
        sys.exit(exc.exit_code)
    except typer.Abort:
        report_error("omni", "aborted", 1, as_json=wants_json(argv=argv))
        sys.exit(1)
    except ConfigError as exc:
        report_error("omni", f"configuration error: {exc}", 2, as_json=wants_json(argv=argv))
        sys.exit(2)
    except BootRefused as exc:
        report_error("omni", f"refusing to start: {exc}", 3, as_json=wants_json(argv=argv))
        sys.exit(3)
    except KeyboardInterrupt:
        report_error("omni", "interrupted", 130, as_json=wants_json(argv=argv))
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the safety net: one line for the user, the traceback in a file
        if schema_missing(exc):
            # A command run before the first `omni up` (a fresh data folder): what to run, not an internal error.
            report_error(_command_path(argv), NOT_MIGRATED, 2, as_json=wants_json(argv=argv))
            sys.exit(2)
        if (unreachable := redis_unreachable(exc)) is not None:
            report_error(_command_path(argv), unreachable, 1, as_json=wants_json(argv=argv))
            sys.exit(1)
        trace = _write_crash(exc, argv)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        report_error(
            "omni", f"internal error: {type(exc).__name__}: {_one_line(first)[:300]}; details in {trace}", 1, as_json=wants_json(argv=argv)
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _help_flags_default_false(command: Any, parent: Context | None = None) -> None:
    """Give every command group's ``--help`` flag the default False (it is None): the same meaning, no pydantic.

    typer coerces an option's value through a pydantic TypeAdapter unless the value is already a bool; a group's
    ``--help`` that was not given (``omni kill --help`` passes it to ``kill``, not to ``omni``) is None, so
    every subcommand's help imported pydantic (about 90 modules, ~0.15 s CPU) for a flag nobody used.
    """
    if not isinstance(command, TyperGroup):
        return
    ctx = Context(command, parent=parent, info_name=command.name)
    if (flag := command.get_help_option(ctx)) is not None and flag.default is None:
        flag.default = False
    for sub in command.commands.values():
        _help_flags_default_false(sub, ctx)


class _Deferred(type):
    """A stand-in class for one rich class: calls and attribute reads import the real one (``_where``) first."""

    _where: tuple[str, str]

    def _real(cls) -> Any:
        module, name = cls._where
        return getattr(importlib.import_module(module), name)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._real()(*args, **kwargs)

    def __getattr__(cls, attr: str) -> Any:
        return getattr(cls._real(), attr)


def _import_help_renderer() -> None:
    """Import typer's rich help renderer without rich.markdown (markdown-it) and rich.traceback (pygments).

    ``typer.rich_utils`` imports both at module level, for Markdown help text (``rich_markup_mode="markdown"``,
    not ours: "rich") and pretty tracebacks (disabled: ``pretty_exceptions_enable=False``); together they were
    about a third of ``omni --help``'s start (~0.08 s CPU, 40 modules). While it is imported, each module is
    stood in by one whose class imports the real module when first used (never, for omni's help); the real
    modules stay importable by anything else. The help looks the same.
    """
    if "typer.rich_utils" in sys.modules:
        return
    stand_ins: dict[str, types.ModuleType] = {}
    for module, name in (("rich.markdown", "Markdown"), ("rich.traceback", "Traceback")):
        if module not in sys.modules:
            stand_ins[module] = types.ModuleType(module)
            setattr(stand_ins[module], name, _Deferred(name, (), {"_where": (module, name)}))
    sys.modules.update(stand_ins)
    try:
        import typer.rich_utils  # noqa: F401 - imported here, with the stand-ins, rather than by the first help shown
    finally:
        for module, stand_in in stand_ins.items():
            if sys.modules.get(module) is stand_in:
                del sys.modules[module]


def _command_path(argv: list[str] | None) -> str:
    """``omni <command> [<subcommand>]`` from the arguments: the words before the first option or value."""
    args = sys.argv[1:] if argv is None else argv
    words = ["omni"]
    for arg in args[:2]:
        if arg.startswith("-") or not arg.replace("-", "").isalpha():
            break
        words.append(arg)
    return " ".join(words)


def _usage_line(exc: ClickException) -> tuple[str, str]:
    """(``omni <command path>``, problem) from a click usage error (typer's parsers add pydantic's prefix; dropped)."""
    message = _one_line(exc.format_message())
    # "Invalid value for '--top': Value error, --top '1_0' is not ...": our parsers name the field themselves.
    message = re.sub(r"^Invalid value for '[^']*': Value error, ", "", message).replace("Value error, ", "")
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None and ctx.command_path else "omni"
    return where, message


def _write_crash(exc: BaseException, argv: list[str] | None) -> Path:
    """Append one JSON line (like every file in <data>/logs) with the traceback; returns the file."""
    import json
    import traceback
    from datetime import UTC, datetime

    path = crash_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {
            "timestamp": datetime.now(tz=UTC).isoformat(),
            "level": "error",
            "role": "cli",
            "event": "internal error",
            "pid": os.getpid(),
            # The arguments may hold anything a user typed: kept as given, escaped by JSON.
            "argv": list(sys.argv[1:] if argv is None else argv),
            "error": f"{type(exc).__name__}: {exc}",
            "exception": "".join(traceback.format_exception(exc)),
        }
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
    except OSError:
        pass
    return path


if __name__ == "__main__":  # pragma: no cover
    main()
