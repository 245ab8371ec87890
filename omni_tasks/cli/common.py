"""What every `omni` command shares: loading the settings (:func:`prepare`) and a command group's refusals.

A command module imports from here and from :mod:`omni_tasks.cli.parsing`,
never from :mod:`omni_tasks.cli.main` (which imports every command module).
Light by construction: typer and the input rules; the settings are imported
when a command runs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from omni_tasks.cli.parsing import USAGE_EXIT, check, fail
from omni_tasks.core import inputs, operators

if TYPE_CHECKING:
    from omni_tasks.settings import Settings

#: The folder of the crash log, known once the settings are loaded (see :func:`crash_log_path`).
_crash_dir: Path | None = None
#: The long-running processes whose metrics the server merges from their files.
METRIC_FILE_ROLES = frozenset({"beat", "stream", "server"})


def writes_metric_files(role: str) -> bool:
    """Workers, beat, the stream and the server write prometheus-client files; the CLI, `omni up` and Flower do not."""
    return role in METRIC_FILE_ROLES or role.startswith("worker-")


def _match_prometheus_values() -> None:
    """Forked from `omni up`'s fork server, prometheus-client is already imported, its kind of value (files or
    memory) chosen from the server's environment, where metric files are on: Flower, which writes none, chooses
    again for the metrics it makes. Only then: a second files-backed kind would open this process's files twice.
    """
    values = sys.modules.get("prometheus_client.values")
    if values is None:
        return
    in_files = values.ValueClass is not values.MutexValue
    if in_files != ("PROMETHEUS_MULTIPROC_DIR" in os.environ):
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]  # an untyped module global


def prepare(role: str, *, configure_log: bool = True) -> Settings:
    """Load and install the settings, point Prometheus at the shared metrics folder, set up logs.

    Commands run by a person (role ``cli``) log everything as JSON to ``<data>/logs/omni-cli.log``
    (or ``OMNI_CORE_LOG_FILE``'s ``-cli`` file) and show only warnings on stderr, one human line each:
    their output is never mixed with log records. ``configure_log=False`` is kept for callers that set
    up logging themselves (``omni up``); for ``cli`` it changes nothing. A command that starts Celery
    names its process for the worker hooks itself (:func:`omni_tasks.pipeline.hooks.set_process`).
    """
    import socket

    from omni_tasks.core.runtime import install_settings
    from omni_tasks.settings import load_settings

    global _crash_dir
    settings = load_settings()
    install_settings(settings)
    _crash_dir = settings.data_dir / "logs"
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # prometheus_client reads this when it is first imported, so it is set
    # here, before any module that defines metrics is imported.
    if not writes_metric_files(role):
        # A short-lived command would leave files behind for every scrape to merge, and Flower serves its
        # own registry: neither writes metric files (what the CLI does is counted in Redis: omni_tasks.core.counters).
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    elif "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # One folder per host: PIDs repeat across containers sharing the volume.
        host_dir = settings.metrics_dir / socket.gethostname()
        host_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(host_dir)
    _match_prometheus_values()
    if role == "cli":
        from omni_tasks.core.logs import configure_logging

        configure_logging(
            level=settings.core.log_level,
            fmt="json",
            role=role,
            secrets=settings.secret_values(),
            log_file=settings.core.log_file or settings.data_dir / "logs" / "omni.log",
            console_level="WARNING",
        )
    elif configure_log:
        from omni_tasks.core.logs import configure_logging

        configure_logging(
            level=settings.core.log_level,
            fmt=settings.core.log_format,
            role=role,
            secrets=settings.secret_values(),
            log_file=settings.core.log_file,
        )
    return settings


def crash_log_path() -> Path:
    """Where the CLI writes tracebacks of unexpected errors: <data dir>/logs/cli-errors.log (a temp folder if unknown)."""
    import tempfile

    base = _crash_dir or Path(tempfile.gettempdir()) / f"omni-tasks-{os.getuid()}"
    return base / "cli-errors.log"


@dataclass(frozen=True)
class CommandGroup:
    """The refusals of one command group (``omni kill ...``): its usage errors, who is acting, why.

    ``fail`` prints ``omni <command>: <message>`` and exits; ``actor`` is the operator
    policy of :mod:`omni_tasks.core.operators` (``--operator``, else the login name);
    ``reason`` checks the free text kept with a change.
    """

    command: str
    reason_max_len: int = 500

    def fail(self, message: str, code: int = USAGE_EXIT) -> NoReturn:
        fail(self.command, message, code)

    def actor(self, name: str | None) -> str:
        return operators.operator_actor(check(self.command, inputs.operator, name or operators.login_name()))

    def reason(self, text: str) -> str:
        return check(self.command, inputs.reason, text, max_len=self.reason_max_len)
