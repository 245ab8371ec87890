"""The fork server of `omni up` (omni_tasks.ops.zygote, omni_tasks.ops.forking) under the supervisor, with real forked `omni` children.

`omni server` on an empty data folder serves /health without any service: a child that runs until stopped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from omni_tasks.ops.forking import ForkServer
from omni_tasks.ops.supervisor import ChildSpec, Supervisor
from tests.conftest import process_gone, wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    return clean | {"OMNI_DATA_DIR": str(tmp_path / "data"), "OMNI_METRICS_PORT": str(_free_port())}


@pytest.fixture
def made(env: dict[str, str]) -> Iterator[list[Supervisor]]:
    """Supervisors made by a test; stopped at the end (their fork server too), even on failure."""
    supervisors: list[Supervisor] = []
    yield supervisors
    for supervisor in supervisors:
        supervisor.stop_all()


def _omni(name: str, args: list[str], env: dict[str, str], log: Path | None = None) -> ChildSpec:
    return ChildSpec(name, ["unused: forked"], env, stop_timeout_s=5, log_path=log, omni_args=args)


def _serving(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_forked_children_log_json_lines_and_report_their_exit_codes(tmp_path: Path, env: dict[str, str], made: list[Supervisor]) -> None:
    logs = tmp_path / "logs"
    specs = [_omni("help", ["--help"], env, logs / "help.log"), _omni("typo", ["no-such-command"], env, logs / "typo.log")]
    supervisor = Supervisor(specs, announce=lambda _m: None, fork_server=ForkServer(env))
    made.append(supervisor)
    supervisor.start_all()

    codes = []
    for child in supervisor.children:
        assert child.process is not None
        codes.append(child.process.wait(timeout=60))
        assert child.pump is not None
        child.pump.join(timeout=10)

    assert codes == [0, 2]
    records = [json.loads(line) for line in (logs / "help.log").read_text().splitlines()]
    assert any("Usage" in record["event"] for record in records)
    assert {record["process"] for record in records} == {"help"}
    typo = (logs / "typo.log").read_text()
    assert "no-such-command" in typo
    assert all(isinstance(json.loads(line), dict) for line in typo.splitlines())


def test_forked_child_runs_in_its_own_session_and_stops_with_the_supervisor(env: dict[str, str], made: list[Supervisor]) -> None:
    server = ForkServer(env)
    supervisor = Supervisor([_omni("server", ["server"], env)], announce=lambda _m: None, fork_server=server)
    made.append(supervisor)
    supervisor.start_all()
    child = supervisor.children[0].process
    assert child is not None
    port = int(env["OMNI_METRICS_PORT"])
    wait_for(lambda: _serving(port), 60, message="the forked `omni server` to listen")
    assert server.process is not None
    server_pid = server.process.pid

    assert os.getsid(child.pid) == child.pid  # its own session and process group, as a subprocess had
    assert Path(f"/proc/{child.pid}/comm").read_text().strip() == "server"
    assert int(Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == server_pid

    supervisor.stop_all()

    assert child.returncode is not None
    assert process_gone(child.pid)
    wait_for(lambda: process_gone(server_pid), 5, message="the fork server to exit once its children stopped")
    assert not _serving(port)


def test_children_of_a_killed_fork_server_die_and_are_restarted_through_a_new_one(env: dict[str, str], made: list[Supervisor]) -> None:
    announced: list[str] = []
    server = ForkServer(env)
    supervisor = Supervisor([_omni("server", ["server"], env)], announce=announced.append, fork_server=server, max_backoff_s=0.2)
    made.append(supervisor)
    supervisor.start_all()
    first = supervisor.children[0].process
    assert first is not None
    port = int(env["OMNI_METRICS_PORT"])
    wait_for(lambda: _serving(port), 60, message="the forked `omni server` to listen")
    assert server.process is not None
    old_server = server.process.pid

    os.kill(old_server, signal.SIGKILL)
    wait_for(lambda: process_gone(first.pid), 10, message="the child to die with its fork server")

    def restarted() -> bool:
        supervisor.poll()
        return any(text.startswith("restarted server") for text in announced)

    wait_for(restarted, 10, message="the supervisor to restart the child")
    assert announced[0] == "server exited with code -9; restarting in 0.2 s"
    second = supervisor.children[0].process
    assert second is not None
    assert second.pid != first.pid
    assert server.process is not None
    assert server.process.pid != old_server
    wait_for(lambda: _serving(port), 60, message="the restarted child to listen")


def test_a_fork_server_that_dies_twice_before_forking_leaves_the_children_to_plain_processes(env: dict[str, str], made: list[Supervisor]) -> None:
    announced: list[str] = []
    failing = ForkServer(env, program=[sys.executable, "-c", "raise SystemExit(1)"])
    spec = ChildSpec("help", [sys.executable, "-c", "import sys; sys.exit(7)"], env, omni_args=["--help"])
    supervisor = Supervisor([spec], announce=announced.append, fork_server=failing, max_backoff_s=0.1)
    made.append(supervisor)
    supervisor.start_all()

    def plain_exit_seen() -> bool:
        supervisor.poll()
        return 7 in supervisor.children[0].exits

    wait_for(plain_exit_seen, 20, message="the child to run as a plain process")
    assert failing.broken
    assert supervisor.children[0].exits[:3] == [-signal.SIGKILL, -signal.SIGKILL, 7]


def test_a_forked_child_that_exits_is_forked_again_with_backoff(env: dict[str, str], made: list[Supervisor]) -> None:
    announced: list[str] = []
    server = ForkServer(env)
    supervisor = Supervisor([_omni("typo", ["no-such-command"], env)], announce=announced.append, fork_server=server, max_backoff_s=0.1)
    made.append(supervisor)
    supervisor.start_all()

    def second_exit_seen() -> bool:
        supervisor.poll()
        return len(supervisor.children[0].exits) >= 2

    wait_for(second_exit_seen, 60, message="two exits of the forked child")
    assert supervisor.children[0].exits[:2] == [2, 2]
    assert announced[:2] == ["typo exited with code 2; restarting in 0.1 s", "restarted typo (restart #1)"]
    assert server.process is not None
    assert server.process.poll() is None, "one fork server served both starts"
