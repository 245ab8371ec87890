"""The `omni` command line. Every command loads the settings once; errors print one line, no traceback."""

from __future__ import annotations

import os
import socket
import sys

import typer

from omni_tasks.errors import BootRefused, ConfigError
from omni_tasks.runtime import install_settings
from omni_tasks.settings import Settings, load_settings

app = typer.Typer(
    name="omni",
    help="omni-tasks: the back office of an algorithmic-trading desk (Celery pipeline).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: The long-running processes whose metrics the server merges from their files.
METRIC_FILE_ROLES = frozenset({"beat", "stream", "server"})


def writes_metric_files(role: str) -> bool:
    """Workers, beat, the stream and the server write prometheus-client files; the CLI, `omni up` and Flower do not."""
    return role in METRIC_FILE_ROLES or role.startswith("worker-")


def prepare(role: str, kind: str = "unknown", *, configure_log: bool = True) -> Settings:
    """Load and install the settings, point Prometheus at the shared metrics folder, set up logs."""
    settings = load_settings()
    install_settings(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # prometheus_client reads this when it is first imported, so it is set
    # here, before any module that defines metrics is imported.
    if not writes_metric_files(role):
        # A short-lived command would leave files behind for every scrape to merge, and Flower serves its
        # own registry: neither writes metric files (what the CLI does is counted in Redis: omni_tasks.counters).
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    elif "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # One folder per host: PIDs repeat across containers sharing the volume.
        host_dir = settings.metrics_dir / socket.gethostname()
        host_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(host_dir)
    from omni_tasks import worker_hooks

    worker_hooks.set_process(role, kind)
    if configure_log:
        from omni_tasks.logs import configure_logging

        configure_logging(
            level=settings.core.log_level,
            fmt=settings.core.log_format,
            role=role,
            secrets=settings.secret_values(),
            log_file=settings.core.log_file,
        )
    return settings


def _register() -> None:
    from omni_tasks.cli import admin, backfill, breaker, kill, ops, orders, risk, run, scan, stream, validate

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


def main(argv: list[str] | None = None) -> None:
    _register()
    command = typer.main.get_command(app)
    try:
        # Standalone mode: click prints usage errors in one line (exit 2) and turns Exit into the exit code.
        command.main(args=argv, prog_name="omni", standalone_mode=True)
    except ConfigError as exc:
        print(f"omni: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BootRefused as exc:
        print(f"omni: refusing to start: {exc}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":  # pragma: no cover
    main()
