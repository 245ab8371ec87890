"""Per-process runtime: the settings read once, and the clients built from them.

The CLI loads the settings, installs them here, and every process-level
component (the Celery app, task hooks, servers) reads them from here. Domain
modules never do: they take what they need as arguments.
"""

from __future__ import annotations

import os
import socket
from functools import cached_property

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core.redis_client import redis_from_url
from omni_tasks.settings import Settings, load_settings
from omni_tasks.storage.engine import engine_from_settings, session_factory

_settings: Settings | None = None
_runtime: Runtime | None = None


def install_settings(settings: Settings) -> None:
    global _settings, _runtime
    _settings = settings
    _runtime = None


def get_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


class Runtime:
    """Lazily built clients for this process. Rebuilt after fork (see :func:`after_fork`)."""

    def __init__(self, settings: Settings, *, redis_client: redis.Redis | None = None) -> None:
        """``redis_client``: use this client instead of one built from the settings (a caller with its own timeouts)."""
        self.settings = settings
        self.pid = os.getpid()
        self.hostname = socket.gethostname()
        self._redis_client = redis_client

    @cached_property
    def redis(self) -> redis.Redis:
        return self._redis_client if self._redis_client is not None else redis_from_url(self.settings.redis_url)

    @cached_property
    def engine(self) -> Engine:
        return engine_from_settings(self.settings)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return session_factory(self.engine)


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(get_settings())
    return _runtime


def after_fork() -> None:
    """Forget clients inherited from a parent process (sockets must not be shared)."""
    global _runtime
    if _runtime is not None and "engine" in _runtime.__dict__:
        _runtime.engine.dispose(close=False)
    _runtime = None
