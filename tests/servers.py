"""Servers a fault test owns: its own redis-server and its own PostgreSQL cluster.

Fault tests stop, kill, pause and restore these, never the machine's shared
services. Each one listens on loopback on a free port and keeps its files in a
folder of its own, removed when it is closed.

    redis = PrivateRedis(tmp_path / "redis", appendonly=True).start()
    saved = redis.save_aof()          # copy of the append-only files as they are now
    ...                               # writes that must not be undone
    redis.kill(); redis.restore_aof(saved); redis.start()   # restarted from older data

    pg = PrivatePostgres.create()     # initdb as the postgres user, ~2 s
    pg.start(); pg.stop(); pg.pause(); pg.resume(); pg.close()

Both can run inside a network namespace instead (``netns=``, listening on
``host=``, the namespace's address: tests/hosts.py), reached from other
namespaces over their links.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

_AOF_NAMES = ("appendonlydir", "appendonly.aof")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """``127.0.0.1:<port>`` where a TCP connect hangs unanswered, like an unroutable address, without leaving loopback.

    A listener with a zero backlog that never accepts: once its accept queue is full, Linux drops every
    further SYN, so a client waits out its own connect timeout (what an address with no route does).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    host, port = listener.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):
            sock = socket.socket()
            sock.settimeout(0.3)
            fillers.append(sock)
            try:
                sock.connect((host, port))
            except TimeoutError:
                break  # the queue is full: this SYN was dropped
        else:
            raise RuntimeError("the loopback listener kept accepting connections: no black hole")
        yield f"{host}:{port}"
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


class PrivateRedis:
    """A redis-server on its own port and folder; stop, kill, pause, restart and restore its data at will.

    ``appendonly=True`` runs it the way the embedded default and docker/compose.yml
    do (append-only file on, fsync every second unless ``fsync_always``).
    """

    def __init__(
        self,
        folder: Path,
        *,
        appendonly: bool = False,
        fsync_always: bool = True,
        port: int | None = None,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        from omni_tasks.ops.embedded import redis_server_binary

        self.binary = str(redis_server_binary())
        self.folder = folder
        self.appendonly = appendonly
        self.fsync_always = fsync_always
        self.port = port or free_port()
        self.host = host
        self.netns = netns
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def start(self, timeout_s: float = 15.0) -> PrivateRedis:
        argv = [
            *_in_netns(self.netns), self.binary, "--port", str(self.port), "--bind", self.host, "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always" if self.fsync_always else "everysec",
            "--maxmemory-policy", "noeviction", "--dir", str(self.folder), "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fixed argv
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private redis on port {self.port} exited: {self.log_tail()}")
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"private redis on port {self.port} did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what the append-only file already holds."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    stop = kill

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connected clients hang instead of failing fast."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def save_aof(self) -> Path:
        """A copy of the append-only data as it is now (the server keeps running)."""
        if not self.appendonly:
            raise RuntimeError("save_aof needs appendonly=True")
        with contextlib.suppress(redis.RedisError):
            self.client().execute_command("CONFIG", "SET", "appendfsync", "always")
        target = Path(tempfile.mkdtemp(prefix="aof-", dir=self.folder.parent))
        for name in _AOF_NAMES:  # Redis 7 keeps a folder, 6.2 (the embedded one) a single file
            source = self.folder / name
            if source.is_dir():
                shutil.copytree(source, target / name)
            elif source.exists():
                shutil.copy2(source, target / name)
        return target

    def restore_aof(self, saved: Path) -> None:
        """Put back append-only data saved earlier; the server must be stopped."""
        if self.process is not None:
            raise RuntimeError("stop the server before restoring its data")
        for name in _AOF_NAMES:
            current, kept = self.folder / name, saved / name
            if current.is_dir():
                shutil.rmtree(current)
            elif current.exists():
                current.unlink()
            if kept.is_dir():
                shutil.copytree(kept, current)
            elif kept.exists():
                shutil.copy2(kept, current)


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in versions:
        if (folder / name).exists():
            return str(folder / name)
    raise FileNotFoundError(f"{name}: no PostgreSQL server binaries found (install postgresql)")


def _in_netns(netns: str | None) -> list[str]:
    """The command prefix that runs a program inside network namespace ``netns`` (none: here)."""
    return ["ip", "netns", "exec", netns] if netns else []


def _as_postgres(argv: list[str], netns: str | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    prefix = [*_in_netns(netns), *(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]  # kwargs are subprocess.run options (env, timeout), typed loosely here


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb in a temporary folder, trust auth on loopback).

    Runs as the ``postgres`` user when the tests run as root (initdb refuses root).
    """

    def __init__(self, folder: Path, port: int, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.folder = folder
        self.port = port
        self.host = host
        self.netns = netns
        self.data = folder / "data"
        self.sockets = folder / "sockets"
        self._paused_pid: int | None = None

    @classmethod
    def create(cls, *, host: str = "127.0.0.1", netns: str | None = None, clients: str | None = None) -> PrivatePostgres:
        """initdb a cluster listening on ``host`` (inside ``netns`` once started); ``clients``: a CIDR also trusted besides loopback."""
        folder = Path(tempfile.mkdtemp(prefix="omni-pg-"))
        os.chmod(folder, 0o755)  # noqa: S103 - the postgres user must reach its data folder inside
        (folder / "sockets").mkdir()
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
            shutil.chown(folder / "sockets", "postgres", "postgres")
        server = cls(folder, free_port(), host, netns)
        done = _as_postgres([_pg_bin("initdb"), "-D", str(server.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
        with open(server.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {server.port}\nlisten_addresses = '{host}'\nunix_socket_directories = '{server.sockets}'\n"
                "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
            )
        if clients:
            with open(server.data / "pg_hba.conf", "a") as hba:
                hba.write(f"\nhost all all {clients} trust\n")
        return server

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg2://postgres@{self.host}:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def start(self, timeout_s: float = 30.0) -> PrivatePostgres:
        done = _as_postgres(
            [_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-t", str(int(timeout_s)), "start"],
            self.netns,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr[-1000:]} {self.log_tail()}")
        return self

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: like a crash, clients cut at once; ``fast``: clean)."""
        self.resume()
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def is_running(self) -> bool:
        return _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "status"]).returncode == 0

    def _postmaster_pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            return int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def pause(self) -> None:
        """SIGSTOP the postmaster and every backend: connections hang (a stalled, not a dead, database)."""
        pid = self._postmaster_pid()
        if pid is None:
            return
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()
        for each in [pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGSTOP)
        self._paused_pid = pid

    def resume(self) -> None:
        if self._paused_pid is None:
            return
        children = subprocess.run(["pgrep", "-P", str(self._paused_pid)], capture_output=True, text=True, check=False).stdout.split()
        for each in [self._paused_pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGCONT)
        self._paused_pid = None

    def log_tail(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
