"""Unit tests of omni_tasks.core.logs: one redacting JSON formatter for structlog and the standard library."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from omni_tasks.core.logs import REDACTED, configure_logging, get_logger

SECRET = "Sup3r-S3cret-Alpaca-Key"  # noqa: S105 - made-up test value
OTHER_SECRET = "fl0wer-Operator-Pass"  # noqa: S105 - made-up test value
URL_PASSWORD = "brokerUrlPw77"  # noqa: S105 - made-up test value


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put the root logger and structlog back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_configure_logging_secrets_never_reach_the_output_and_context_is_kept() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, secrets=[SECRET, OTHER_SECRET], role="worker")
    log = get_logger("omni.test")
    stdlog = logging.getLogger("celery.test")
    structlog.contextvars.bind_contextvars(task_id="task-123", queue="scans")

    # Every call below carries a secret somewhere; N counts them.
    log.info("connecting", password=SECRET, api_key=OTHER_SECRET, note=f"key is {SECRET} here")
    log.info("broker", url=f"redis://:{URL_PASSWORD}@localhost:6379/0")
    log.info("nested", request={"headers": {"Authorization": f"Bearer {SECRET}"}, "args": [SECRET, "AAPL"]})
    stdlog.warning("login with %s", SECRET)
    stdlog.info("connecting to redis://omni:%s@cache:6379/1", URL_PASSWORD)
    try:
        raise RuntimeError(f"auth failed for {SECRET} at redis://user:{URL_PASSWORD}@host:6379")
    except RuntimeError:
        stdlog.exception("stdlib saw an error")
        log.exception("structlog saw an error")
    calls_with_secrets = 7

    output = stream.getvalue()
    lines = _lines(stream)
    found = sum(output.count(text) for text in (SECRET, OTHER_SECRET, URL_PASSWORD))
    print(f"secrets found in logs: {found} of {calls_with_secrets}")

    assert found == 0
    assert len(lines) == calls_with_secrets
    by_event = {line["event"]: line for line in lines}
    connecting = by_event["connecting"]
    assert connecting["password"] == REDACTED
    assert connecting["api_key"] == REDACTED
    assert connecting["note"] == f"key is {REDACTED} here"
    assert by_event["broker"]["url"] == f"redis://:{REDACTED}@localhost:6379/0"
    assert by_event["nested"]["request"]["headers"]["Authorization"] == REDACTED
    assert by_event["nested"]["request"]["args"] == [REDACTED, "AAPL"]
    for line in lines:
        assert line["task_id"] == "task-123"
        assert line["queue"] == "scans"
        assert line["role"] == "worker"
        assert "timestamp" in line
        assert "level" in line
    assert by_event["login with [redacted]"]["logger"] == "celery.test"
    for event in ("stdlib saw an error", "structlog saw an error"):
        assert "RuntimeError: auth failed for" in by_event[event]["exception"]
        assert by_event[event]["level"] == "error"


def test_configure_logging_unbound_context_is_absent_from_later_lines() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    log = get_logger("omni.test")

    structlog.contextvars.bind_contextvars(task_id="task-1", queue="risk")
    log.info("inside")
    structlog.contextvars.clear_contextvars()
    log.info("outside")

    inside, outside = _lines(stream)
    assert inside["task_id"] == "task-1"
    assert "task_id" not in outside
    assert "queue" not in outside


def test_configure_logging_level_warning_drops_info_lines() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, level="WARNING")

    get_logger("omni.test").info("quiet")
    logging.getLogger("sqlalchemy.test").info("quiet too")
    get_logger("omni.test").warning("loud")

    assert [line["event"] for line in _lines(stream)] == ["loud"]


def test_configure_logging_console_format_also_redacts_secrets() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, fmt="console", secrets=[SECRET])

    get_logger("omni.test").info("console", token=SECRET, note=SECRET)
    logging.getLogger("kombu.test").warning("stdlib %s", SECRET)

    output = stream.getvalue()
    assert output.count(SECRET) == 0
    assert output.count(REDACTED) == 3


def test_configure_logging_log_file_gets_role_in_name_and_no_secret(tmp_path: Path) -> None:
    configure_logging(stream=io.StringIO(), secrets=[SECRET], role="beat", log_file=tmp_path / "logs" / "omni.log")

    get_logger("omni.test").info("to file", note=SECRET)
    for handler in logging.getLogger().handlers:
        handler.flush()

    path = tmp_path / "logs" / "omni-beat.log"
    text = path.read_text(encoding="utf-8")
    assert SECRET not in text
    assert json.loads(text.splitlines()[0])["event"] == "to file"


def test_configure_logging_reconfigured_drops_the_old_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    configure_logging(stream=second)

    logging.getLogger("omni.test").warning("once")

    assert first.getvalue() == ""
    assert len(_lines(second)) == 1


def test_person_run_commands_show_only_warnings_in_one_human_line(tmp_path: Path) -> None:
    """``console_level``: the terminal gets warnings as one plain line; the file keeps every record as JSON."""
    terminal = io.StringIO()
    configure_logging(role="cli", stream=terminal, log_file=tmp_path / "omni.log", console_level="WARNING", secrets=[SECRET])
    log = get_logger("omni_tasks.test")
    log.info("order placed", order_id="o-1")
    log.warning("risk snapshot: Redis unreadable, reading the database", error=f"timeout {SECRET}")
    logging.getLogger("kombu").error("connection lost")
    for handler in logging.getLogger().handlers:
        handler.flush()
    shown = terminal.getvalue().splitlines()
    assert shown == [
        "omni: warning: risk snapshot: Redis unreadable, reading the database (error=timeout [redacted])",
        "omni: error: connection lost",
    ]
    records = [json.loads(line) for line in (tmp_path / "omni-cli.log").read_text().splitlines()]
    assert [r["event"] for r in records] == ["order placed", "risk snapshot: Redis unreadable, reading the database", "connection lost"]
    assert SECRET not in (tmp_path / "omni-cli.log").read_text()


def test_a_drills_own_records_stay_in_the_log_file(tmp_path: Path) -> None:
    """`omni kill drill`'s rehearsal engages, refuses an order and releases on a scratch world: its report says so;
    those records (``drill=True``) are not shown as warnings on the terminal, only kept in the file. Others still show."""
    terminal = io.StringIO()
    configure_logging(role="cli", stream=terminal, log_file=tmp_path / "omni.log", console_level="WARNING")
    log = get_logger("omni_tasks.test")
    with structlog.contextvars.bound_contextvars(drill=True):
        log.warning("kill switch engaged", actor="operator:dora (drill)")
        logging.getLogger("omni_tasks.test.stdlib").warning("order rejected")
    log.warning("shared counter not incremented")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert terminal.getvalue().splitlines() == ["omni: warning: shared counter not incremented"]
    records = [json.loads(line) for line in (tmp_path / "omni-cli.log").read_text().splitlines()]
    assert [(r["event"], r.get("drill")) for r in records] == [
        ("kill switch engaged", True),
        ("order rejected", True),
        ("shared counter not incremented", None),
    ]
