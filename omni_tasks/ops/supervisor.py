"""A small process supervisor for `omni up`: start, watch, restart with backoff, stop cleanly.

Each child runs in its own process group (so a Celery worker's pool children
are stopped with it) and gets SIGTERM if the supervisor itself dies (Linux
PR_SET_PDEATHSIG), so no process is left behind.

A child that runs an ``omni`` command (``ChildSpec.omni_args``) is forked from the
fork server when the supervisor has one (:mod:`omni_tasks.ops.forking`): the
modules every child imports are then imported once, not once per child. It dies
with the fork server, which dies with the supervisor; the rest is the same.

A child's stdout and stderr go through the supervisor into its log file, one JSON
object per line: a line the child wrote as JSON (our structlog records) is kept
as it is, any other line (Celery's banner, a library's warning, Redis's own log)
is wrapped as ``{"timestamp", "level", "process", "event"}``, secrets removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from omni_tasks.ops.forkwire import die_with_parent

if TYPE_CHECKING:
    from omni_tasks.ops.forking import ForkServer


class Process(Protocol):
    """What the supervisor uses of a child process: a ``subprocess.Popen`` or a forked one."""

    returncode: int | None

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class ChildSpec:
    """How to run one supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    stop_timeout_s: float = 20.0
    log_path: Path | None = None
    stop_phase: int = 1  # lower phases stop first: beat, then workers and servers, then Redis
    #: The ``omni`` command this child runs (``argv`` runs the same): forked from the fork server when there is one.
    omni_args: list[str] | None = None


@dataclass
class Child:
    spec: ChildSpec
    process: Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_row: int = 0
    next_start_at: float = 0.0
    exits: list[int] = field(default_factory=list)
    pump: threading.Thread | None = None


Announce = Callable[[str], None]


def json_line(raw: bytes, process: str, scrub: Callable[[str], str] = lambda text: text) -> str | None:
    """One line of a child's output as a JSON line (None for a blank line): kept if it is a JSON object, wrapped otherwise."""
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    if not text.strip():
        return None
    if text.startswith("{"):
        try:
            if isinstance(json.loads(text), dict):
                return scrub(text)
        except ValueError:
            pass
    upper = text.upper()
    level = next((name.lower() for name in ("CRITICAL", "ERROR", "WARNING") if name in upper), "info")
    record = {"timestamp": datetime.now(tz=UTC).isoformat(), "level": level, "process": process, "event": scrub(text), "wrapped": True}
    return json.dumps(record, ensure_ascii=False)


def _pump(source: IO[bytes], path: Path, process: str) -> None:
    """Copy a child's output into its log file as JSON lines until the child closes it."""
    from omni_tasks.core.logs import redactor

    scrub = redactor().scrub
    with path.open("a", encoding="utf-8") as sink:
        for raw in iter(source.readline, b""):
            line = json_line(raw, process, scrub)
            if line is not None:
                sink.write(line + "\n")
                sink.flush()
    source.close()


class Supervisor:
    def __init__(
        self,
        specs: list[ChildSpec],
        *,
        announce: Announce,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 30.0,
        fork_server: ForkServer | None = None,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self.fork_server = fork_server
        self._announce = announce
        self._max_backoff_s = max_backoff_s
        self._healthy_after_s = healthy_after_s
        self._stopping = False

    # ---- lifecycle ---------------------------------------------------------
    def start(self, child: Child) -> None:
        spec = child.spec
        if spec.log_path is not None:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        server, args = self.fork_server, spec.omni_args
        if args is not None and server is not None and not server.broken:
            child.process, child.pump = self._fork(server, spec, args)
        else:
            popen = subprocess.Popen(  # noqa: S603 - argv is built by us, never from user input
                spec.argv,
                env=spec.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if spec.log_path is None else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,  # no threads yet matter here
            )
            child.process = popen
            if spec.log_path is not None and popen.stdout is not None:
                child.pump = self.pump_log(popen.stdout, spec.log_path, spec.name)
        child.started_at = time.monotonic()

    def _fork(self, server: ForkServer, spec: ChildSpec, args: list[str]) -> tuple[Process, threading.Thread | None]:
        """The child forked by the fork server, its output through a pipe of ours into its log file as for any child."""
        if spec.log_path is None:
            output = os.open(os.devnull, os.O_WRONLY)
            try:
                return server.spawn(spec.name, args, spec.env, output), None
            finally:
                os.close(output)
        reading, writing = os.pipe()
        try:
            process = server.spawn(spec.name, args, spec.env, writing)
        finally:
            os.close(writing)  # the child (and its pool) hold the only writing ends: the log ends when they do
        return process, self.pump_log(os.fdopen(reading, "rb"), spec.log_path, spec.name)

    @staticmethod
    def pump_log(source: IO[bytes], path: Path, name: str) -> threading.Thread:
        """A thread copying ``source`` into the log file at ``path`` as JSON lines (see :func:`json_line`)."""
        pump = threading.Thread(target=_pump, args=(source, path, name), name=f"log-{name}", daemon=True)
        pump.start()
        return pump

    def start_all(self) -> None:
        for child in self.children:
            self.start(child)

    def poll(self) -> None:
        """Restart children that exited, with exponential backoff."""
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is None:
                if not self._stopping and now >= child.next_start_at:
                    self.start(child)
                    child.restarts += 1
                    self._announce(f"restarted {child.spec.name} (restart #{child.restarts})")
                continue
            code = process.poll()
            if code is None:
                if now - child.started_at > self._healthy_after_s:
                    child.failures_in_row = 0
                continue
            child.exits.append(code)
            child.process = None
            if self._stopping:
                continue
            child.failures_in_row += 1
            delay = min(self._max_backoff_s, 0.5 * 2 ** (child.failures_in_row - 1))
            child.next_start_at = now + delay
            self._announce(f"{child.spec.name} exited with code {code}; restarting in {delay:.1f} s")

    def running(self) -> dict[str, int | None]:
        return {c.spec.name: (c.process.pid if c.process and c.process.poll() is None else None) for c in self.children}

    def stop_all(self) -> None:
        """Stop phase by phase: SIGTERM a phase's process groups, wait, SIGKILL what is left."""
        self._stopping = True
        for phase in sorted({c.spec.stop_phase for c in self.children}):
            group = [c for c in self.children if c.spec.stop_phase == phase]
            for child in group:
                self._signal(child, signal.SIGTERM)
            deadline = time.monotonic() + max(c.spec.stop_timeout_s for c in group)
            while time.monotonic() < deadline and any(c.process is not None and c.process.poll() is None for c in group):
                time.sleep(0.05)
            for child in group:
                if child.process is not None and child.process.poll() is None:
                    self._announce(f"{child.spec.name} did not stop in {child.spec.stop_timeout_s:g} s; killing it")
                # Kill the group too: pool children that outlived their parent.
                self._signal(child, signal.SIGKILL)
                if child.process is not None:
                    try:
                        child.process.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                if child.pump is not None:
                    # The last lines a child wrote before it exited reach its log file.
                    child.pump.join(timeout=2)
        if self.fork_server is not None:
            self.fork_server.close()  # every child it forked has stopped: it exits

    @staticmethod
    def _signal(child: Child, sig: signal.Signals) -> None:
        process = child.process
        if process is None or process.pid <= 0:  # no pid: the fork server never forked it (killpg(0) would be ours)
            return
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
