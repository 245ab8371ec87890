"""The fork server of `omni up`: imports what every child shares once, then forks each child from that state.

`omni up` runs about ten Python processes (a worker per kind, beat, the stream, Flower, the
metrics server), and each spent over a second of CPU importing the same Celery, kombu,
SQLAlchemy, redis-py, pydantic and typer modules: on a 2-core machine, most of the start.
This process imports them once (:data:`PRELOAD`), then forks a child for each request of the
supervisor (:mod:`omni_tasks.ops.forking`); the child sets up its session, its output and its
environment and runs ``omni ARGS`` exactly as ``python -m omni_tasks ARGS`` would.

Fork safety: what is preloaded only defines things. This process stays single-threaded (checked
before every fork), opens no connection and runs no event loop; settings, clients, the Celery
app's configuration and logging are set up by each child after the fork, as before.

The conversation (a socketpair, ``SOCK_SEQPACKET``: one JSON object a message):

* supervisor -> server: ``{"name", "args", "env"}``, the child's output descriptor attached;
* server -> supervisor: ``{"pid"}`` for each request, in order; ``{"exited": pid, "code"}`` when a
  child ends (``code`` as subprocess's ``returncode``: ``-N`` for signal N).

The server exits when the supervisor closes its end; a child dies with the server and the server
with the supervisor (``PR_SET_PDEATHSIG``), so nothing outlives `omni up`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import select
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni_tasks.ops.forkwire import die_with_parent, name_process, receive, send

#: What every child, or most of them, imports at start; the Celery side is listed in :mod:`omni_tasks.pipeline.preload`.
PRELOAD = (
    "omni_tasks.cli.main",
    "typer._adapters",  # typer's parameter conversion, loaded when a command's arguments are parsed
    "typer._click.decorators",
    "omni_tasks.settings",
    "omni_tasks.core.runtime",
    "omni_tasks.core.logs",
    "omni_tasks.storage.engine",
    "omni_tasks.ops.startup_checks",
    "sqlite3",  # the embedded database's driver, loaded by the first connection
    "workers",
    "beat_schedule",
)


@dataclass
class Request:
    """A child to run: its ``omni`` arguments, environment and output descriptor."""

    name: str
    args: list[str]
    env: dict[str, str]
    output: int


def preload() -> None:
    """Import the shared modules; refuse to serve if that started a thread (a fork would copy it half-alive)."""
    from omni_tasks.pipeline import preload as celery_side

    for name in (*PRELOAD, *celery_side.MODULES):
        importlib.import_module(name)
    # Every `omni` command module (the command line registers them all) and every task module the Celery app
    # includes when it starts: light by design (tests/unit/pipeline/test_light_start.py), and in every child.
    cli = importlib.import_module("omni_tasks.cli")
    for found in pkgutil.iter_modules(cli.__path__):
        importlib.import_module(f"omni_tasks.cli.{found.name}")
    for name in importlib.import_module("omni_tasks.pipeline.app").TASK_MODULES:
        importlib.import_module(name)
    if threading.active_count() != 1:
        raise RuntimeError(f"preloading started threads ({[t.name for t in threading.enumerate()]}): forking is unsafe")


def _reap(channel: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            send(channel, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})
        except OSError:
            return  # the supervisor hung up: the loop reads the end of the conversation next


def serve(channel: socket.socket) -> Request | None:
    """Fork a child for each request until the supervisor hangs up (then None). In a child, its request."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # a handler, so the wake-up descriptor hears of exits
    while True:
        readable: list[Any] = select.select([channel.fileno(), wake_read], [], [], 5.0)[0]
        if wake_read in readable:
            _drain(wake_read)
        _reap(channel)
        if channel.fileno() not in readable:
            continue
        message, fds = receive(channel)
        if message is None:
            return None
        request = Request(message["name"], list(message["args"]), dict(message["env"]), fds[0])
        if threading.active_count() != 1:
            raise RuntimeError("the fork server is not single-threaded any more")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (wake_read, wake_write, *fds[1:]):
                os.close(fd)
            channel.close()
            return request
        for fd in fds:
            os.close(fd)
        try:
            send(channel, {"pid": pid})
        except OSError:
            return None  # the supervisor is gone: so is this server (its children follow it)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def become(request: Request, server_pid: int) -> None:  # pragma: no cover - runs in the forked child
    """Turn this fork into the child: own session, dies with the server, output to its pipe, its environment."""
    os.setsid()
    die_with_parent()
    if os.getppid() != server_pid:  # the server died before the line above: the kernel would not tell us
        os._exit(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(request.output, 1)
    os.dup2(request.output, 2)
    for fd in (null, request.output):
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update(request.env)
    name_process(request.name)  # its command line stays the server's


def main(argv: list[str]) -> int:
    """``python -m omni_tasks.ops.zygote FD``: serve on descriptor FD; in each forked child, run its command."""
    channel = socket.socket(fileno=int(argv[0]))
    name_process("forkserver")
    preload()
    server_pid = os.getpid()
    request = serve(channel)
    if request is None:
        return 0
    become(request, server_pid)
    import omni_tasks
    from omni_tasks.cli.main import main as omni

    # What `python -m omni_tasks ARGS` would have: Celery re-executes sys.argv when asked to restart.
    sys.argv = [str(Path(omni_tasks.__file__).with_name("__main__.py")), *request.args]

    omni(request.args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
