"""Shared fixtures: real Redis, real PostgreSQL, real worker processes.

Tests that need services are skipped when Redis or PostgreSQL is not
reachable, unless OMNI_REQUIRE_SERVICES=1 (as in CI), where they fail instead.
Each session gets its own PostgreSQL database and its own Redis database
number, both removed at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

REDIS_HOST = os.environ.get("OMNI_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("OMNI_TEST_REDIS_PORT", "6379"))
PG_ADMIN_URL = os.environ.get("OMNI_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("OMNI_REQUIRE_SERVICES") == "1"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} unavailable: {exc}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (OMNI_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number of our own on the local server (claimed with SET NX), flushed before and after."""
    claim_key, token = "omni:test-session", f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    chosen: int | None = None
    for db in range(1, 16):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=3)
        try:
            if client.set(claim_key, token, nx=True, ex=3 * 3600):
                chosen = db
                break
        except redis.RedisError as exc:
            _unavailable("Redis", exc)
    if chosen is None:
        pytest.fail("every Redis database 1..15 is claimed by another test session")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=chosen, socket_timeout=3)
    _flush_keeping_claim(client, claim_key, token)
    yield chosen
    try:
        client.flushdb()
    except redis.RedisError:
        pass


def _flush_keeping_claim(client: redis.Redis, claim_key: str, token: str) -> None:
    client.flushdb()
    client.set(claim_key, token, ex=3 * 3600)


@pytest.fixture(scope="session")
def redis_url(redis_db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    _flush_keeping_claim(client, "omni:test-session", "claimed")
    yield client
    _flush_keeping_claim(client, "omni:test-session", "claimed")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[Callable[[], str]]:
    """Creates fresh PostgreSQL databases on demand; all are dropped at the end of the session."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    created: list[str] = []
    base = PG_ADMIN_URL.rsplit("/", 1)[0]

    def create() -> str:
        name = f"omni_test_{uuid.uuid4().hex[:10]}"
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # noqa: BLE001 - any connection failure means the service is absent
            _unavailable("PostgreSQL", exc)
        created.append(name)
        return f"{base}/{name}"

    yield create
    with admin.connect() as connection:
        for name in created:
            connection.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url(pg_database: Callable[[], str]) -> str:
    """The session's PostgreSQL database."""
    return pg_database()


@pytest.fixture(scope="session")
def migrated_pg_url(pg_url: str) -> str:
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import make_engine

    engine = make_engine(pg_url)
    migrations.upgrade(engine)
    engine.dispose()
    return pg_url


def service_env(*, redis_url: str, database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for omni processes under test: our services, fast heartbeats, a private data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    metrics_dir = data_dir / "metrics" / "test-host"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "OMNI_BROKER_URL": redis_url,
            "OMNI_DATABASE_URL": database_url,
            "OMNI_DATA_DIR": str(data_dir),
            "OMNI_BROKER_HEARTBEAT_S": "0.5",
            "OMNI_BROKER_DEAD_AFTER_S": "3",
            "OMNI_BROKER_BEAT_LOCK_TTL_S": "3",
            "OMNI_LOG_LEVEL": "INFO",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class OmniProcess:
    """One `omni ...` subprocess in its own process group, logging to a file."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: object = field(default=None, repr=False)
    #: run it through this command (``ip netns exec NS ...``: on another host, tests/hosts.py)
    prefix: list[str] = field(default_factory=list)

    def start(self) -> OmniProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = handle
        self.process = subprocess.Popen(  # fixed argv
            [*self.prefix, sys.executable, "-m", "omni_tasks", *self.argv],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True, check=False)
        return [int(p) for p in out.stdout.split()]

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.kill_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group(signal.SIGKILL)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def omni_processes() -> Iterator[list[OmniProcess]]:
    """Processes appended here are stopped (and their groups killed) after the test."""
    started: list[OmniProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def terminate_backend(pid: int, admin_url: str) -> None:
    """End one PostgreSQL session from outside, as a server that drops a connection would."""
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        admin.dispose()


def wait_for(predicate, timeout_s: float, interval_s: float = 0.05, message: str = "condition") -> float:  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; returns the seconds it took. Fails the test on timeout."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {message}")
        time.sleep(interval_s)


def process_gone(pid: int) -> bool:
    """True once no process has this pid (it exited and was reaped, or never was)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for_worker(client: redis.Redis, kind: str, proc: OmniProcess, timeout_s: float = 40.0) -> None:
    from omni_tasks.pipeline import heartbeats

    def ready() -> bool:
        if proc.process is not None and proc.process.poll() is not None:
            pytest.fail(f"worker {kind} exited with {proc.process.returncode}:\n{proc.log_text()[-3000:]}")
        return any(w.kind == kind and w.pid == proc.pid for w in heartbeats.workers(client))

    wait_for(ready, timeout_s, message=f"worker {kind} heartbeat")


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[object]:
    """A PostgreSQL cluster this test session owns (initdb, own port): fault tests stop and pause it freely.

    Returned running; a test that stops it must leave it running again (use ``running_private_pg``).
    """
    from tests.servers import PrivatePostgres

    try:
        server = PrivatePostgres.create().start()
    except (OSError, RuntimeError) as exc:
        _unavailable("a private PostgreSQL cluster (initdb)", exc)
    yield server
    server.close()


@pytest.fixture
def private_pg_url(private_postgres: object) -> Iterator[str]:
    """A fresh, migrated database on the session's private cluster; the cluster is running again after the test."""
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import make_engine

    server = private_postgres
    if not server.is_running():  # type: ignore[attr-defined]
        server.start()  # type: ignore[attr-defined]
    url = server.create_database(f"omni_fault_{uuid.uuid4().hex[:10]}")  # type: ignore[attr-defined]
    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    yield url
    server.resume()  # type: ignore[attr-defined]
    if not server.is_running():  # type: ignore[attr-defined]
        server.start()  # type: ignore[attr-defined]


@pytest.fixture
def private_redis_aof(tmp_path: Path) -> Iterator[object]:
    """A redis-server of this test's own with the append-only file on (as the embedded default and compose run it)."""
    from tests.servers import PrivateRedis

    server = PrivateRedis(tmp_path / "redis-aof", appendonly=True).start()
    yield server
    server.resume()
    server.kill()


@pytest.fixture
def desk_runtime(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Build a Runtime on a migrated ``database_url`` and a redis-server of this test's own, with ``settings`` (OMNI_* env)."""
    from omni_tasks.core.runtime import Runtime
    from omni_tasks.settings import load_settings
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import make_engine
    from tests.servers import PrivateRedis

    servers: list[PrivateRedis] = []

    def build(database_url: str, **settings: str) -> Runtime:
        engine = make_engine(database_url)
        migrations.upgrade(engine)
        engine.dispose()
        server = PrivateRedis(tmp_path / f"redis-{len(servers)}").start()
        servers.append(server)
        env = {"OMNI_BROKER_URL": server.url, "OMNI_DATABASE_URL": database_url, "OMNI_DATA_DIR": str(tmp_path / "data"), **settings}
        return Runtime(load_settings(env))

    yield build
    for server in servers:
        server.kill()


# ---- the Celery broker under test: Redis, or RabbitMQ in a vhost of this session's own ----------

RABBITMQ_BASE_URL = os.environ.get("OMNI_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
RABBITMQ_USER = RABBITMQ_BASE_URL.split("://", 1)[1].split(":", 1)[0]


def rabbitmqctl(*args: str, timeout_s: float = 30.0) -> str:
    """Run ``rabbitmqctl`` against the local node (the tests' RabbitMQ tool: the management plugin may be off)."""
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout_s, check=False)  # fixed argv
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.returncode}: {(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout


@dataclass
class RabbitVhost:
    """A RabbitMQ vhost this test session created (and deletes): nothing outside it is touched."""

    name: str
    url: str

    def queues(self) -> dict[str, tuple[int, int]]:
        """Queue name -> (messages ready, messages unacknowledged)."""
        import json

        out = rabbitmqctl("list_queues", "-p", self.name, "name", "messages_ready", "messages_unacknowledged", "-q", "--formatter", "json")
        return {row["name"]: (int(row["messages_ready"]), int(row["messages_unacknowledged"])) for row in json.loads(out or "[]")}

    def purge_all(self) -> None:
        from kombu import Connection

        names = list(self.queues())
        with Connection(self.url, connect_timeout=5) as connection:
            channel = connection.default_channel
            for name in names:
                channel.queue_purge(name)

    def close_connections(self, reason: str) -> None:
        """What a broker restart does to the clients, staged for this vhost only (the shared RabbitMQ is never restarted)."""
        rabbitmqctl("close_all_connections", "-p", self.name, reason)

    def accepts_connections(self) -> bool:
        """A new vhost starts asynchronously on the node: a connection right after ``add_vhost`` may be closed on it."""
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=3) as connection:
                connection.default_channel.basic_qos(0, 1, False)
        except Exception:  # noqa: BLE001 - any failure: not ready yet
            return False
        return True

    def connection_count(self) -> int:
        out = rabbitmqctl("list_connections", "vhost", "-q")
        return sum(1 for line in out.splitlines() if line.strip() == self.name)


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[RabbitVhost]:
    name = f"omni-test-{uuid.uuid4().hex[:10]}"
    try:
        rabbitmqctl("add_vhost", name)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        _unavailable("RabbitMQ", exc)
    try:
        rabbitmqctl("set_permissions", "-p", name, RABBITMQ_USER, ".*", ".*", ".*")
        vhost = RabbitVhost(name, f"{RABBITMQ_BASE_URL}/{name}")
        wait_for(vhost.accepts_connections, 30, interval_s=0.2, message=f"RabbitMQ vhost {name} to accept connections")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", name)


@dataclass
class DeliveryBroker:
    """The Celery broker a delivery test runs on; Redis (the cache too) or RabbitMQ with Redis as the cache."""

    kind: str
    url: str
    cache_url: str
    vhost: RabbitVhost | None = None

    def env(self) -> dict[str, str]:
        return {"OMNI_BROKER_URL": self.url, "OMNI_BROKER_CACHE_URL": self.cache_url}

    def settled(self, client: redis.Redis, queue: str) -> bool:
        """Nothing left that could still run: the queue is empty and no delivery is unacknowledged."""
        if self.vhost is None:
            return client.llen(queue) == 0 and client.hlen("unacked") == 0
        return self.vhost.queues().get(queue, (0, 0)) == (0, 0)

    def waiting(self, client: redis.Redis, queue: str) -> int:
        if self.vhost is None:
            return int(client.llen(queue))
        return self.vhost.queues().get(queue, (0, 0))[0]


@pytest.fixture(params=["redis", "rabbitmq"])
def delivery_broker(request: pytest.FixtureRequest, redis_url: str, redis_client: redis.Redis) -> DeliveryBroker:
    """Each test using it runs twice: on Redis, and on RabbitMQ (this session's vhost, its queues purged first)."""
    if request.param == "redis":
        return DeliveryBroker("redis", redis_url, redis_url)
    vhost: RabbitVhost = request.getfixturevalue("rabbitmq_vhost")
    vhost.purge_all()
    return DeliveryBroker("rabbitmq", vhost.url, redis_url, vhost)
