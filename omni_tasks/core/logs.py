"""Structured logs: JSON lines with task, queue and process in context, secrets redacted.

Both structlog loggers and the standard library's (Celery, kombu, SQLAlchemy)
go through one formatter, so every line is JSON with the same keys. Secrets
are removed twice: every configured secret's plaintext is replaced wherever it
appears, and values under keys that look like credentials are masked.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(r"pass(word)?|secret|token|api_?key|authorization|credential", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^/\s]*@")


class Redactor:
    """A structlog processor and logging filter that removes secrets from records."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is removed whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)

    def _value(self, key: str, value: Any) -> Any:
        if _SENSITIVE_KEY.search(key) and value not in (None, "", False):
            return REDACTED
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(key, v) for v in value]
        return value

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            event_dict[key] = self._value(key, event_dict[key])
        return event_dict


_configured_redactor = Redactor()


def redactor() -> Redactor:
    return _configured_redactor


def configure_logging(
    *,
    level: str = "INFO",
    fmt: str = "json",
    role: str = "cli",
    secrets: Iterable[str] = (),
    log_file: Path | None = None,
    stream: Any = None,
    console_level: str | None = None,
) -> None:
    """Route structlog and the standard library through one redacting JSON formatter.

    ``console_level`` is for commands that print for a person: the terminal then gets only records
    at that level or above, rendered for humans (one line, no JSON), while ``log_file`` keeps them all as JSON.
    """
    global _configured_redactor
    _configured_redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _add_role(role),
        _configured_redactor,
    ]
    renderer: Any = structlog.processors.JSONRenderer(sort_keys=False) if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared[:-1],
            _configured_redactor,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _configured_redactor, renderer],
    )
    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(stream or sys.stderr)
    if console_level is None:
        console.setFormatter(formatter)
    else:
        console.setLevel(console_level)
        console.addFilter(_not_a_drill)
        console.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _configured_redactor, _human_line],
            )
        )
    handlers.append(console)
    if log_file is not None:
        path = log_file.with_name(f"{log_file.stem}-{role}{log_file.suffix or '.log'}")
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(path, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8")
        rotating.setFormatter(formatter)
        handlers.append(rotating)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    # Chatty libraries stay at WARNING unless we debug.
    for noisy in ("kombu", "amqp", "urllib3", "tornado.access", "alembic"):
        logging.getLogger(noisy).setLevel(level if level == "DEBUG" else "WARNING")


def _not_a_drill(record: logging.LogRecord) -> bool:
    """Whether a record may reach a person's terminal: a drill's own records (``drill=True``: the rehearsal's
    engage, release, refused order on its scratch world) stay in the log file; the drill's report says what happened."""
    event = record.msg if isinstance(record.msg, dict) else structlog.contextvars.get_contextvars()
    return not event.get("drill")


def _human_line(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """``omni: warning: <event> (key=value, ...)``: how a log record reads on a person's terminal."""
    level = str(event_dict.pop("level", "info"))
    event = str(event_dict.pop("event", ""))
    exc = event_dict.pop("exception", None)
    for key in ("timestamp", "logger", "role", "task_id", "task_name", "process"):
        event_dict.pop(key, None)
    extra = ", ".join(f"{k}={v}" for k, v in event_dict.items())
    line = f"omni: {level}: {event}" + (f" ({extra})" if extra else "")
    if exc:
        line += f"; {str(exc).strip().splitlines()[-1]}"
    return " ".join(line.split())


def _add_role(role: str) -> Any:
    def processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("role", role)
        return event_dict

    return processor


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
