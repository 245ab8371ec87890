"""Unit tests of omni_tasks.ops.supervisor with real tiny child processes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omni_tasks.ops.supervisor import ChildSpec, Supervisor
from tests.conftest import process_gone, wait_for

EXITS_AT_ONCE = "import sys; sys.exit(3)"
SLEEPS = "import time; time.sleep(60)"
IGNORES_SIGTERM = (
    "import pathlib, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pathlib.Path(sys.argv[1]).write_text('ready')\n"
    "time.sleep(60)\n"
)
# The grandchild ignores SIGTERM and writes its pid once it does; the child itself dies on SIGTERM.
SPAWNS_GRANDCHILD = (
    "import subprocess, sys, time\n"
    "grandchild = (\n"
    "    'import os, pathlib, signal, sys, time\\n'\n"
    "    'signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n'\n"
    "    'pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\\n'\n"
    "    'time.sleep(60)\\n'\n"
    ")\n"
    "subprocess.Popen([sys.executable, '-c', grandchild, sys.argv[1]])\n"
    "time.sleep(60)\n"
)


def _spec(name: str, code: str, *args: str, stop_timeout_s: float = 2.0) -> ChildSpec:
    return ChildSpec(name=name, argv=[sys.executable, "-c", code, *args], env=dict(os.environ), stop_timeout_s=stop_timeout_s)


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    """Supervisors made by a test; whatever they still run is stopped at the end, even on failure."""
    made: list[Supervisor] = []
    yield made
    for supervisor in made:
        if any(pid is not None for pid in supervisor.running().values()):
            supervisor.stop_all()


def test_supervisor_child_that_exits_is_restarted_with_growing_backoff(supervisors: list[Supervisor]) -> None:
    announced: list[tuple[float, str]] = []
    supervisor = Supervisor([_spec("flaky", EXITS_AT_ONCE)], announce=lambda text: announced.append((time.monotonic(), text)))
    supervisors.append(supervisor)
    supervisor.start_all()

    def third_exit_seen() -> bool:
        supervisor.poll()
        return sum("exited" in text for _, text in announced) >= 3

    wait_for(third_exit_seen, 4.5, message="three exits of the flaky child", interval_s=0.02)

    texts = [text for _, text in announced]
    assert texts[:5] == [
        "flaky exited with code 3; restarting in 0.5 s",
        "restarted flaky (restart #1)",
        "flaky exited with code 3; restarting in 1.0 s",
        "restarted flaky (restart #2)",
        "flaky exited with code 3; restarting in 2.0 s",
    ]
    times = [at for at, _ in announced]
    assert times[1] - times[0] >= 0.5  # no restart before the backoff elapsed
    assert times[3] - times[2] >= 1.0
    child = supervisor.children[0]
    assert child.exits == [3, 3, 3]
    assert child.restarts == 2


def test_supervisor_backoff_is_capped_at_max_backoff(supervisors: list[Supervisor]) -> None:
    announced: list[str] = []
    supervisor = Supervisor([_spec("flaky", EXITS_AT_ONCE)], announce=announced.append, max_backoff_s=0.2)
    supervisors.append(supervisor)
    supervisor.start_all()

    def third_exit_seen() -> bool:
        supervisor.poll()
        return sum("exited" in text for text in announced) >= 3

    wait_for(third_exit_seen, 3.0, message="three exits of the flaky child", interval_s=0.02)

    delays = [text.rsplit("restarting in ", 1)[1] for text in announced if "exited" in text]
    assert delays == ["0.2 s", "0.2 s", "0.2 s"]


def test_supervisor_stop_all_does_not_restart_a_stopped_child(supervisors: list[Supervisor]) -> None:
    announced: list[str] = []
    supervisor = Supervisor([_spec("sleeper", SLEEPS)], announce=announced.append)
    supervisors.append(supervisor)
    supervisor.start_all()
    process = supervisor.children[0].process
    assert process is not None

    started = time.monotonic()
    supervisor.stop_all()
    supervisor.poll()

    assert time.monotonic() - started < 1.5  # it went on SIGTERM, no wait for the timeout
    assert process.returncode == -signal.SIGTERM
    assert announced == []
    assert supervisor.running() == {"sleeper": None}


def test_supervisor_stop_all_child_ignoring_sigterm_is_killed_after_stop_timeout(tmp_path: Path, supervisors: list[Supervisor]) -> None:
    ready = tmp_path / "ready"
    announced: list[str] = []
    supervisor = Supervisor([_spec("stubborn", IGNORES_SIGTERM, str(ready), stop_timeout_s=0.5)], announce=announced.append)
    supervisors.append(supervisor)
    supervisor.start_all()
    wait_for(ready.exists, 3.0, message="the child to ignore SIGTERM", interval_s=0.02)
    process = supervisor.children[0].process
    assert process is not None

    started = time.monotonic()
    supervisor.stop_all()
    elapsed = time.monotonic() - started

    assert process.returncode == -signal.SIGKILL
    assert 0.5 <= elapsed < 2.5
    assert announced == ["stubborn did not stop in 0.5 s; killing it"]


def test_supervisor_stop_all_child_with_grandchild_leaves_no_process_behind(tmp_path: Path, supervisors: list[Supervisor]) -> None:
    pid_file = tmp_path / "grandchild.pid"
    supervisor = Supervisor([_spec("parent", SPAWNS_GRANDCHILD, str(pid_file))], announce=lambda _text: None)
    supervisors.append(supervisor)
    supervisor.start_all()
    wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", 3.0, message="the grandchild to start", interval_s=0.02)
    grandchild = int(pid_file.read_text())
    child = supervisor.children[0].process
    assert child is not None
    assert os.getpgid(grandchild) == child.pid  # same process group as the supervised child

    try:
        supervisor.stop_all()
        # The orphaned grandchild is reaped by init; allow it a moment.
        wait_for(lambda: process_gone(grandchild), 5.0, message=f"grandchild {grandchild} to disappear", interval_s=0.02)
    finally:
        if not process_gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)

    assert child.returncode == -signal.SIGTERM


def test_every_line_a_child_writes_reaches_its_log_as_json(tmp_path: Path) -> None:
    """Celery's banner, a warning on stderr and a structlog record: the log file holds JSON lines only."""
    from omni_tasks.core.logs import configure_logging

    configure_logging(secrets=["child-secret-value"], stream=open(os.devnull, "w"))  # noqa: SIM115 - the test's own sink
    code = (
        "import sys\n"
        "print(' -------------- celery@host v5 (banner)')\n"
        'print(\'{"event": "worker ready", "level": "info"}\')\n'
        "print('[tasks]  . not json {', flush=True)\n"
        "print('', flush=True)\n"
        "sys.stderr.write('UserWarning: WARNING something with child-secret-value\\n')\n"
    )
    log = tmp_path / "logs" / "child.log"
    spec = ChildSpec(name="worker-x", argv=[sys.executable, "-c", code], env=dict(os.environ), log_path=log)
    supervisor = Supervisor([spec], announce=lambda _m: None)
    supervisor.start_all()
    child = supervisor.children[0]
    assert child.process is not None
    child.process.wait(timeout=30)
    assert child.pump is not None
    child.pump.join(timeout=10)
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    print(f"child log lines: {len(lines)}, JSON objects: {sum(isinstance(r, dict) for r in records)} of {len(lines)}")
    assert all(isinstance(r, dict) for r in records)
    assert records[1] == {"event": "worker ready", "level": "info"}, "JSON records are kept as written"
    wrapped = [r for r in records if r.get("wrapped")]
    assert [r["event"] for r in wrapped] == [
        " -------------- celery@host v5 (banner)",
        "[tasks]  . not json {",
        "UserWarning: WARNING something with [redacted]",
    ]
    assert {r["process"] for r in wrapped} == {"worker-x"}
    assert [r["level"] for r in wrapped] == ["info", "info", "warning"]
