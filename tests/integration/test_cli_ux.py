"""The CLI as an operator meets it: quick start, a status that says when nothing runs, errors on stderr (JSON with --json)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from tests.conftest import REPO_ROOT, service_env, wait_for
from tests.servers import black_hole, free_port

HEAVY = (
    "sqlalchemy",
    "celery",
    "kombu",
    "pandas",
    "numpy",
    "redis",
    "pydantic",
    "cryptography",
    "omni_tasks.settings",
    "omni_tasks.core.runtime",
)


def _omni(env: dict[str, str], *argv: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(  # our own interpreter and module
        [sys.executable, "-m", "omni_tasks", *argv], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done, time.monotonic() - started


def _bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"OMNI_DATA_DIR": str(tmp_path / "data"), **extra})
    return env


@pytest.fixture
def unreachable_redis(where: str) -> Iterator[str]:
    """host:port of a Redis that cannot be reached: a closed loopback port (refused at once), or a loopback
    black hole whose connects hang unanswered like an unroutable address's (tests send nothing off loopback)."""
    if where == "closed port":
        yield f"127.0.0.1:{free_port()}"
    else:
        with black_hole() as address:
            yield address


def test_help_and_command_listing_import_nothing_heavy(tmp_path: Path) -> None:
    """`omni --help` builds every command without settings, SQLAlchemy, Redis, Celery or pandas."""
    code = (
        "import sys, time\n"
        "started = time.perf_counter()\n"
        "from omni_tasks.cli.main import _register, app\n"
        "import typer\n"
        "_register()\n"
        "typer.main.get_command(app)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(heavy, round(time.perf_counter() - started, 3))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True)
    heavy, seconds = done.stdout.rsplit(" ", 1)
    runs = [_omni(_bare_env(tmp_path), "--help")[1] for _ in range(3)]
    print(f"omni --help: imports and command tree {float(seconds):.3f} s; whole process median {sorted(runs)[1]:.3f} s (N=3)")
    assert heavy == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["kill", "--help"], ["kill", "engage", "--help"], ["kill"]])
def test_a_commands_help_imports_neither_pydantic_nor_markdown(argv: list[str], tmp_path: Path) -> None:
    """Shown help loads no pydantic (typer's coercion of the groups' unused --help flags) nor rich's Markdown and
    traceback support (markdown-it, pygments): what kept `omni kill --help` from starting in 0.3 s. The help is complete."""
    code = (
        "import contextlib, io, sys\n"
        "from omni_tasks.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(out):\n"
        f"    main({argv!r})\n"
        "loaded = [m for m in ('pydantic', 'pydantic_core', 'rich.markdown', 'markdown_it', 'rich.traceback', 'pygments') if m in sys.modules]\n"
        "print(loaded, len(sys.modules))\n"
        "print(out.getvalue())\n"
    )
    env = _bare_env(tmp_path, COLUMNS="120")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True)
    first, help_text = done.stdout.split("\n", 1)
    print(f"omni {' '.join(argv)}: {first.rsplit(' ', 1)[1]} modules loaded")
    assert first.rsplit(" ", 1)[0] == "[]", done.stdout
    if argv[0] != "kill":
        assert all(name in help_text for name in ("status", "kill", "scan", "order", "breaker", "Show this message and exit."))
    elif "engage" in argv:
        options = ("--reason", "why (recorded with who and when)", "--flatten", "--no-flatten", "--operator", "--json")
        assert all(text in help_text for text in options)
    else:
        assert all(name in help_text for name in ("engage", "release", "reduce", "activate", "status", "drill", "The kill switch"))


def test_status_says_quickly_that_the_embedded_pipeline_is_not_running(tmp_path: Path) -> None:
    env = _bare_env(tmp_path)
    done, took = _omni(env, "status")
    print(f"omni status, no omni up (embedded socket absent): {took:.2f} s, exit {done.returncode}")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "the pipeline is not running (no omni up / no workers seen): start it with `omni up`" in " ".join(done.stdout.split()).replace(
        "The pipeline", "the pipeline"
    )
    assert took < 10.0, "the 18 s of waiting on Redis and the broker are gone (the whole process; a loaded machine adds start-up)"
    as_json, _ = _omni(env, "status", "--json")
    assert as_json.returncode == 4
    data = json.loads(as_json.stdout)
    assert data["pipeline"]["running"] is False
    assert data["pipeline"]["redis"].startswith("unreachable: the embedded Redis socket")


@pytest.mark.parametrize("where", ["closed port", "unanswered connect"])
def test_status_with_redis_unreachable_shows_the_database_state_within_two_seconds(
    where: str, unreachable_redis: str, tmp_path: Path, pg_database: Callable[[], str]
) -> None:
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import make_engine, session_factory
    from omni_tasks.storage.models import TradingStateRow

    url = pg_database()
    engine = make_engine(url)
    migrations.upgrade(engine)
    with session_factory(engine)() as session, session.begin():
        session.merge(
            TradingStateRow(
                id=1, state="HALTED", version=7, changed_at=datetime.now(tz=UTC), actor="operator:tess", reason="fat finger on NVDA"
            )
        )
    engine.dispose()
    env = service_env(redis_url=f"redis://{unreachable_redis}/0", database_url=url, data_dir=tmp_path / "data")
    done, took = _omni(env, "status", "--json")
    print(f"omni status --json, Redis at a {where}: {took:.2f} s, exit {done.returncode}")
    assert done.returncode == 4, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["pipeline"]["running"] is False
    assert data["pipeline"]["redis"].startswith("unreachable: ")
    assert (data["trading"]["state"], data["trading"]["version"], data["trading"]["reason"]) == ("HALTED", 7, "fat finger on NVDA")
    assert took < 10.0, "the 18 s of waiting on Redis and the broker are gone (the whole process; a loaded machine adds start-up)"
    human, _ = _omni(env, "status")
    text = " ".join(human.stdout.split())
    assert "Trading state in the database: HALTED (version 7" in text
    assert "it applies when the pipeline starts" in text
    assert human.stderr == ""


def test_status_with_redis_but_no_worker_says_not_running(
    redis_url: str, redis_client: redis.Redis, migrated_pg_url: str, tmp_path: Path
) -> None:
    env = service_env(redis_url=redis_url, database_url=migrated_pg_url, data_dir=tmp_path / "data")
    done, took = _omni(env, "status", "--json")
    data = json.loads(done.stdout)
    print(f"omni status --json, Redis up, no worker: {took:.2f} s, exit {done.returncode}")
    assert done.returncode == 4
    assert data["pipeline"] == {"running": False, "redis": "reachable", "workers_alive": 0, "message": data["pipeline"]["message"]}
    assert "trading" in data, "with Redis up, everything else is still shown"
    assert "queues" in data


def test_errors_go_to_stderr_and_are_json_with_json(redis_url: str, migrated_pg_url: str, tmp_path: Path) -> None:
    env = service_env(redis_url=redis_url, database_url=migrated_pg_url, data_dir=tmp_path / "data")
    missing, _ = _omni(env, "scan", "show", "999999999", "--json")
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert json.loads(missing.stderr) == {"error": "scan run 999999999 does not exist", "command": "omni scan show", "exit_code": 2}
    usage, _ = _omni(env, "scan", "show", "abc", "--json")
    assert usage.returncode == 2
    assert usage.stdout == ""
    assert json.loads(usage.stderr)["command"] == "omni scan show"
    plain, _ = _omni(env, "scan", "show", "999999999")
    assert (plain.returncode, plain.stdout, plain.stderr) == (2, "", "omni scan show: scan run 999999999 does not exist\n")


def test_human_output_has_no_log_records_and_the_cli_log_is_json(
    redis_url: str, redis_client: redis.Redis, migrated_pg_url: str, tmp_path: Path
) -> None:
    """`omni kill drill` logs a lot: none of it reaches the terminal; all of it is in <data>/logs/omni-cli.log as JSON."""
    env = service_env(redis_url=redis_url, database_url=migrated_pg_url, data_dir=tmp_path / "data", OMNI_LOG_LEVEL="INFO")
    done, _ = _omni(env, "kill", "status")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert not [line for line in done.stdout.splitlines() if line.lstrip().startswith("{")]
    log = tmp_path / "data" / "logs" / "omni-cli.log"
    lines = log.read_text().splitlines() if log.exists() else []
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_status_watch_refreshes_in_place_and_ctrl_c_exits_0(tmp_path: Path) -> None:
    env = _bare_env(tmp_path)
    out = tmp_path / "watch.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "omni_tasks", "status", "--watch", "--interval", "0.2", "--json"],
            env=env,
            cwd=REPO_ROOT,
            stdout=sink,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: len(out.read_text().splitlines()) >= 3, 30, message="three refreshes")
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    refreshes = [json.loads(line) for line in out.read_text().splitlines()]
    print(f"omni status --watch --json: {len(refreshes)} refreshes, exit {code} after Ctrl-C")
    assert code == 0
    assert all(r["pipeline"]["running"] is False for r in refreshes)
    assert refreshes[0]["ts"] < refreshes[-1]["ts"]
    # On a terminal it redraws in place (rich Live): run it under a pseudo-terminal and look for cursor-up sequences.
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(REPO_ROOT)
        argv = [sys.executable, "-m", "omni_tasks", "status", "--watch", "--interval", "0.2"]
        os.execve(sys.executable, argv, env)  # noqa: S606 - our own interpreter and module
    seen = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and seen.count(b"omni status at") < 3:
        try:
            seen += os.read(fd, 65536)
        except OSError:
            break
    os.kill(pid, signal.SIGINT)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert seen.count(b"omni status at") >= 3
    assert b"\x1b[1A" in seen or b"\x1b[A" in seen, "rich Live moves the cursor up to redraw"
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("where", ["closed port", "unanswered connect"])
def test_the_not_running_probe_gives_up_on_redis_within_a_second(where: str, unreachable_redis: str, tmp_path: Path) -> None:
    """The probe itself (no interpreter start-up): connect bounded by PROBE_CONNECT_S, no retries that add up."""
    from omni_tasks.cli.ops import PROBE_CONNECT_S, probe_pipeline
    from omni_tasks.settings import load_settings

    settings = load_settings({"OMNI_BROKER_URL": f"redis://{unreachable_redis}/0", "OMNI_DATA_DIR": str(tmp_path)})
    started = time.monotonic()
    finding, client = probe_pipeline(settings, dead_after_s=3.0)
    took = time.monotonic() - started
    print(f"not-running probe, Redis at a {where}: {took:.3f} s (connect bound {PROBE_CONNECT_S} s)")
    assert client is None
    assert finding["running"] is False
    assert took < 1.5


def test_commands_before_the_first_omni_up_say_what_to_run_in_one_line(tmp_path: Path) -> None:
    """A new operator's first commands, on a fresh data folder before any `omni up`: no internal errors, no SQL, no retry loop."""
    from omni_tasks.cli.parsing import NOT_MIGRATED

    env = _bare_env(tmp_path)
    shown, _ = _omni(env, "scan", "show", "999", "--json")
    assert (shown.returncode, shown.stdout) == (2, ""), shown.stderr
    assert json.loads(shown.stderr) == {"error": NOT_MIGRATED, "command": "omni scan show", "exit_code": 2}
    listed, _ = _omni(env, "order", "list")
    assert (listed.returncode, listed.stderr) == (2, f"omni order list: {NOT_MIGRATED}\n")
    kill_status, _ = _omni(env, "kill", "status")
    assert (kill_status.returncode, kill_status.stdout) == (2, ""), "not a HALTED table with the SQL error"
    assert kill_status.stderr == f"omni kill status: {NOT_MIGRATED}\n"
    status, _ = _omni(env, "status", "--json")
    assert status.returncode == 4
    assert json.loads(status.stdout)["errors"] == [f"trading state: database: {NOT_MIGRATED}"]
    breakers, _ = _omni(env, "breaker", "list")
    assert breakers.returncode == 1
    assert breakers.stderr.startswith("omni breaker list: Redis is unreachable (")
    assert "is the pipeline running? Start it with `omni up`" in breakers.stderr
    pinged, took = _omni(env, "ping")
    print(f"omni ping with no omni up: exit {pinged.returncode} after {took:.1f} s: {pinged.stderr.strip()}")
    assert pinged.returncode == 1
    assert pinged.stderr.splitlines() == [
        f"omni ping: Redis unreachable: the embedded Redis socket {tmp_path / 'data' / 'redis.sock'} does not exist: the pipeline is not running (no omni up / no workers seen): start it with `omni up`"
    ]
    assert all(len(done.stderr.splitlines()) == 1 for done in (shown, listed, kill_status, breakers, pinged))
    assert not (tmp_path / "data" / "logs" / "cli-errors.log").exists(), "nothing here is an internal error"
