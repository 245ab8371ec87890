"""Many hosts on one machine: network namespaces as hosts, the services on one, the same queues served from two others.

The services host runs a redis-server and a PostgreSQL cluster of this test's
own (both listening on the services host's address only) and the watchdog
worker; host-a and host-b each run a scans worker, a backfill worker and a
beat, host-b also the orders worker. Every host has its own data folder (and
so its own metrics folder, ``<data>/metrics/<hostname>``); every process on a
host carries the host's name. This process reads Redis and PostgreSQL over a
link of its own, as an operator would. Figures are printed with the time since
the hosts were up (``[t+  s]``).

PostgreSQL is a cluster of the test's own inside the services namespace, not
the machine's: that one listens on loopback only, and reaching it from another
namespace would need forwarding rules in the machine's own network; ours is
reached, cut off and removed together with the namespaces.

A cut host's work comes back through the watchdog's dead-worker sweep (its
heartbeat goes silent), not the broker's visibility timeout: the start-up check
keeps that above every task's hard time limit (1000 s), so it can never be
short. The work redelivered goes on only because PostgreSQL ends the cut host's
sessions (and releases the row locks a half-done write held) within
``OMNI_DATABASE_DEAD_CLIENT_AFTER_S``: without it they are kept for hours.

Skipped, with one message, only where network namespaces cannot be made (not
root); with OMNI_REQUIRE_SERVICES=1 (CI) that fails instead.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core import lock as leader
from omni_tasks.core.keys import KOMBU_UNACKED_KEY, WORKER_INFLIGHT_KEY
from omni_tasks.marketdata import backfill, backfill_plan
from omni_tasks.pipeline import heartbeats
from omni_tasks.pipeline import outcomes as runs
from omni_tasks.safety.drill import serve_quote
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import Fill, Order, TaskRun
from tests.conftest import REQUIRE_SERVICES, OmniProcess, service_env, wait_for
from tests.hosts import Host, Network, netns_unavailable
from tests.servers import PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.services, pytest.mark.slow]

DAILY = [f"D{i:02d}" for i in range(20)]  # 2 years of daily bars each: 40 partitions, then the scan's universe
MINUTE = [f"M{i:02d}" for i in range(6)]  # 4 weeks of minute bars each: 24 partitions of ~1,950 bars, the job cut mid-way
SCAN_AS_OF = "2024-12-31T22:00:00+00:00"  # a Tuesday, an hour after the close
SCAN_CHUNK = 2
#: The shortest the start-up check allows: it must exceed every task's hard time limit (omni.validation.nightly: 1000 s).
VISIBILITY_TIMEOUT_S = 1001
#: PostgreSQL ends the session of a cut-off host after about this long, releasing the row locks its transaction held.
DEAD_CLIENT_AFTER_S = 6


@dataclass
class Cluster:
    """The hosts, their processes and environments, and this process's view of the services."""

    net: Network
    a: Host
    b: Host
    envs: dict[str, dict[str, str]]
    procs: dict[str, OmniProcess]
    client: redis.Redis
    engine: Engine
    sessions: sessionmaker[Session]
    t0: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        print(f"[t+{time.monotonic() - self.t0:5.1f} s] {message}", flush=True)

    def worker(self, kind: str, host: Host) -> heartbeats.WorkerInfo | None:
        """The live heartbeat of ``kind`` on ``host`` (None: none within the dead-worker threshold); its hostname is the node name, kind@host."""
        alive = heartbeats.alive(self.client, dead_after_s=3.0)
        return next((w for w in alive if w.kind == kind and _host_of(w.hostname) == host.name), None)

    def ledger(self, name: str) -> list[TaskRun]:
        """Every recorded outcome of task ``name`` (the outcome list drained into ``task_runs`` first)."""
        runs.drain_outcomes(self.client, self.sessions)
        with self.sessions() as session:
            return list(session.scalars(select(TaskRun).where(TaskRun.name == name)).all())


def test_the_database_is_asked_to_drop_a_silent_client_after_the_configured_time(pg_url: str) -> None:
    """What lets a cut host's locks go (below): every connection of an engine made from the settings asks for it."""
    from omni_tasks.settings import load_settings
    from omni_tasks.storage.engine import engine_from_settings

    engine = engine_from_settings(load_settings({"OMNI_DATABASE_URL": pg_url, "OMNI_DATABASE_DEAD_CLIENT_AFTER_S": "8"}))
    try:
        with engine.connect() as connection:
            shown = {
                name: connection.execute(text(f"SHOW {name}")).scalar_one()
                for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
            }
    finally:
        engine.dispose()
    assert shown == {"tcp_keepalives_idle": "4", "tcp_keepalives_interval": "1", "tcp_keepalives_count": "4", "tcp_user_timeout": "8000"}


def _fail_or_skip(message: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(message + " (OMNI_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def _host_env(host: Host, redis_url: str, database_url: str) -> dict[str, str]:
    env = service_env(
        redis_url=redis_url, database_url=database_url, data_dir=host.data_dir / "data",
        OMNI_PROVIDERS_ORDER="synthetic", OMNI_BROKER_VISIBILITY_TIMEOUT_S=str(VISIBILITY_TIMEOUT_S),
        OMNI_RISK_QUOTE_MAX_AGE_S="60", OMNI_TRADING_QUOTE_MAX_AGE_S="60", OMNI_DATABASE_DEAD_CLIENT_AFTER_S=str(DEAD_CLIENT_AFTER_S),
    )  # fmt: skip
    # Each host picks its own metrics folder, <data>/metrics/<hostname>, as on separate machines.
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = netns_unavailable()
    if why is not None:
        _fail_or_skip(f"multi-host test: network namespaces cannot be made here ({why}); it needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)")
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("hosts")
    net = Network.create(folder)
    pg: PrivatePostgres | None = None
    redis_server: PrivateRedis | None = None
    engine: Engine | None = None
    try:
        services = net.services
        redis_server = PrivateRedis(services.data_dir / "redis", host=services.address, netns=services.netns).start()
        pg = PrivatePostgres.create(host=services.address, netns=services.netns, clients=str(net.subnet)).start()
        database_url = pg.create_database("omni_hosts")
        engine = make_engine(database_url)
        migrations.upgrade(engine)
        a, b = net.add_host("host-a"), net.add_host("host-b")
        envs = {h.name: _host_env(h, redis_server.url, database_url) for h in (services, a, b)}
        procs = {"beat@host-a": a.spawn(["beat"], envs[a.name])}
        procs["watchdog@services"] = services.spawn(["worker", "watchdog"], envs[services.name])
        for host in (a, b):
            for kind in ("scans", "backfill"):
                procs[f"{kind}@{host.name}"] = host.spawn(["worker", kind, "--concurrency", "1"], envs[host.name])
        procs["orders@host-b"] = b.spawn(["worker", "orders", "--concurrency", "1"], envs[b.name])
        cluster = Cluster(net, a, b, envs, procs, redis.Redis.from_url(redis_server.url, socket_timeout=5), engine, session_factory(engine))

        def lead_of(host: Host) -> bool:
            current = leader.current_leader(cluster.client)
            return current is not None and current.get("host") == host.name

        _wait_alive(procs, lambda: lead_of(a), 60, "the beat on host-a to lead")
        procs["beat@host-b"] = b.spawn(["beat"], envs[b.name])
        for name in list(procs):
            kind, _, host_name = name.partition("@")
            if kind != "beat":
                host = next(h for h in (services, a, b) if h.name == host_name)
                _wait_alive(procs, lambda k=kind, h=host: cluster.worker(k, h) is not None, 60, f"{name} to beat")
        _wait_alive(procs, lambda: "standing by" in procs["beat@host-b"].log_text(), 30, "the beat on host-b to stand by")
        cluster.t0 = time.monotonic()
        cluster.say(
            f"hosts up in {cluster.t0 - started:.1f} s: services {services.address} (redis :{redis_server.port}, postgres :{pg.port}, "
            f"watchdog), host-a {a.address} and host-b {b.address} (scans, backfill, beat; orders on host-b); beat leads on host-a"
        )
        yield cluster
    finally:
        if engine is not None:
            engine.dispose()
        net.close()  # every omni process first, then whatever is left in the namespaces
        if redis_server is not None:
            redis_server.kill()
        if pg is not None:
            pg.close()
        left = net.leftovers()
        assert not left, f"namespaces or links left behind: {left}"


def _wait_alive(procs: dict[str, OmniProcess], predicate: Any, timeout_s: float, what: str) -> float:
    """wait_for, failing at once with the log of any process that exited meanwhile."""

    def check() -> bool:
        for name, proc in procs.items():
            if proc.process is not None and proc.process.poll() is not None:
                pytest.fail(f"{name} exited with {proc.process.returncode}:\n{proc.log_text()[-3000:]}")
        return bool(predicate())

    return wait_for(check, timeout_s, interval_s=0.1, message=what)


def _job_id(done: Any) -> int:
    assert done.returncode == 0, done.stdout + done.stderr
    return int(re.search(r"job (\d+)", done.stdout).group(1))  # type: ignore[union-attr]  # the CLI always names the job


def _partition_hosts(cluster: Cluster, job_id: int) -> dict[int, list[TaskRun]]:
    """partition id -> its recorded outcomes, for the partitions of ``job_id``."""
    ids = set(backfill.partition_ids(cluster.sessions, job_id))
    found: dict[int, list[TaskRun]] = {}
    for run in cluster.ledger("omni.backfill.fetch_partition"):
        partition = int(json.loads(run.args_json)["args"][0])
        if partition in ids:
            found.setdefault(partition, []).append(run)
    return found


def _bar_counts(engine: Engine, timeframe: str) -> tuple[int, int]:
    """(rows, duplicate keys) of the stored bars of ``timeframe``."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT count(*) FROM bars JOIN bar_series s ON s.id = bars.series_id WHERE timeframe = :tf"), {"tf": timeframe}
        ).scalar_one()
        dupes = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT symbol, timeframe, ts, feed, adjustment FROM bars JOIN bar_series s ON s.id = bars.series_id "
                "WHERE timeframe = :tf GROUP BY 1,2,3,4,5 HAVING count(*) > 1) d"
            ),
            {"tf": timeframe},
        ).scalar_one()
    return int(rows), int(dupes)


def _host_of(worker: str) -> str:
    return worker.partition("@")[2]


@pytest.fixture(scope="module")
def daily_job(cluster: Cluster) -> int:
    """Two years of daily bars for DAILY, run from host-a: the backfill the scan then reads."""
    started = time.monotonic()
    done = cluster.a.omni(cluster.envs["host-a"], "backfill", "run", ",".join(DAILY), "--start", "2023-01-01", "--end", "2025-01-01")
    job_id = _job_id(done)
    _wait_alive(
        cluster.procs,
        lambda: backfill.job_progress(cluster.sessions, job_id)["status"] in {"succeeded", "failed", "partial"},
        60,
        "the daily job",
    )
    cluster.say(f"daily backfill job {job_id} sent from host-a and finished in {time.monotonic() - started:.1f} s")
    return job_id


def test_backfill_partitions_spread_over_both_worker_hosts(cluster: Cluster, daily_job: int) -> None:
    progress = backfill.job_progress(cluster.sessions, daily_job)
    expected = backfill_plan.plan(DAILY, "1Day", date(2023, 1, 1), date(2025, 1, 1)).expected_bars
    by_partition = _partition_hosts(cluster, daily_job)
    hosts = Counter(_host_of(r.worker) for runs_ in by_partition.values() for r in runs_ if r.state == "SUCCESS")
    rows, dupes = _bar_counts(cluster.engine, "1Day")
    metric_files = {h.name: len(list((h.data_dir / "data" / "metrics" / h.name).glob("*.db"))) for h in (cluster.a, cluster.b)}
    cluster.say(
        f"backfill spread: job {daily_job} {progress['status']}, {progress['partitions']} partitions run on "
        f"host-a {hosts['host-a']}, host-b {hosts['host-b']}; rows {rows} of {expected}, duplicate keys {dupes}; "
        f"metric files per host folder {metric_files}"
    )
    assert progress["status"] == "succeeded", progress
    assert len(by_partition) == progress["partitions"], "every partition's outcome is in the ledger"
    assert hosts["host-a"] >= 1, hosts
    assert hosts["host-b"] >= 1, hosts
    assert sum(hosts.values()) == progress["partitions"], "each partition ran once"
    assert (rows, dupes) == (expected, 0)
    assert all(metric_files.values()), "each host writes its own metrics folder"


def test_scan_fans_out_over_both_worker_hosts_each_chunk_recording_its_host(cluster: Cluster, daily_job: int) -> None:
    started = time.monotonic()
    done = cluster.b.omni(
        cluster.envs["host-b"], "scan", "--symbols", ",".join(DAILY), "--as-of", SCAN_AS_OF, "--wait", "--json",
        "--top", str(len(DAILY)), "--chunk-size", str(SCAN_CHUNK), "--timeout", "60",
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads(done.stdout[done.stdout.find("{") :])
    chunks: list[TaskRun] = []

    def recorded() -> bool:
        chunks[:] = [r for r in cluster.ledger("omni.scans.chunk") if json.loads(r.args_json)["args"][0] == payload["id"]]
        return len(chunks) >= payload["chunks"]

    wait_for(recorded, 20, interval_s=0.2, message="every chunk's outcome in the ledger")
    hosts = Counter(_host_of(r.worker) for r in chunks)
    per_host = ", ".join(
        f"{host} {sorted(sym for r in chunks if _host_of(r.worker) == host for sym in json.loads(r.args_json)['args'][1])}"
        for host in sorted(hosts)
    )
    cluster.say(
        f"scan fan-out: run {payload['id']} {payload['status']} ({len(DAILY)} symbols, {payload['chunks']} chunks of {SCAN_CHUNK}) sent from host-b, "
        f"`omni scan --wait` {seconds:.1f} s; chunks by host: host-a {hosts['host-a']}, host-b {hosts['host-b']}; {per_host}"
    )
    assert payload["status"] == "succeeded", payload.get("error")
    assert sum(1 for r in payload["results"] if r["rank"] is not None) == len(DAILY)
    assert len(chunks) == payload["chunks"] == len(DAILY) // SCAN_CHUNK
    assert all(r.state == "SUCCESS" for r in chunks)
    assert hosts["host-a"] >= 1, hosts
    assert hosts["host-b"] >= 1, hosts


def _held(cluster: Cluster, instance: str) -> list[tuple[str, str, Any]]:
    """(delivery tag, task id, arguments) of every unacked message ``instance`` holds."""
    out = []
    for raw_tag in cluster.client.smembers(WORKER_INFLIGHT_KEY.format(instance=instance)):
        tag = raw_tag.decode() if isinstance(raw_tag, bytes) else str(raw_tag)
        raw = cluster.client.hget(KOMBU_UNACKED_KEY, tag)
        if raw is None:
            continue
        message = json.loads(raw)[0]
        headers = message["headers"]
        body = json.loads(base64.b64decode(message["body"]))
        out.append((tag, headers["id"], body[0]))
    return out


def _tick_slots(cluster: Cluster, *, sent_before: float | None = None, sent_after: float | None = None) -> Counter[str]:
    """Runs per slot (the beat's deterministic task id) of the successful watchdog ticks sent in the given window (UNIX s)."""
    return Counter(
        r.task_id
        for r in cluster.ledger("omni.watchdog.tick")
        if r.state == "SUCCESS"
        and r.sent_at is not None
        and (sent_before is None or r.sent_at.timestamp() < sent_before)
        and (sent_after is None or r.sent_at.timestamp() >= sent_after)
    )


def test_worker_host_cut_mid_task_is_redelivered_to_the_other_and_the_beat_lead_moves(cluster: Cluster, daily_job: int) -> None:
    a, b = cluster.a, cluster.b
    expected = backfill_plan.plan(MINUTE, "1Min", date(2025, 6, 2), date(2025, 6, 30)).expected_bars
    job_id = _job_id(
        b.omni(cluster.envs["host-b"], "backfill", "run", ",".join(MINUTE), "-t", "1Min", "--start", "2025-06-02", "--end", "2025-06-30")
    )
    worker_a = cluster.worker("backfill", a)
    assert worker_a is not None
    _wait_alive(
        cluster.procs, lambda: backfill.job_progress(cluster.sessions, job_id)["by_status"].get("succeeded", 0) >= 2, 60, "the job to run"
    )
    # Cut the moment host-a receives a partition, so the cut lands mid-partition (each takes ~0.3 s).
    seen = {task for _, task, _ in _held(cluster, worker_a.instance)}
    wait_for(
        lambda: bool({task for _, task, _ in _held(cluster, worker_a.instance)} - seen),
        30,
        interval_s=0.01,
        message="host-a to take a partition",
    )
    cluster.net.cut(a)
    cut_at, cut_wall = time.monotonic(), time.time()
    held = _held(cluster, worker_a.instance)  # host-a cannot acknowledge anything any more: this is what it holds
    assert len(held) == 1, held
    progress = backfill.job_progress(cluster.sessions, job_id)
    (_, task_id, partition_args), *_ = held
    cluster.say(
        f"host-a cut (eth0 down) holding partition {partition_args[0]} (task {task_id[:8]}); job {job_id}: "
        f"{progress['by_status'].get('succeeded', 0)} of {progress['partitions']} partitions done"
    )

    current: dict[str, Any] = {}

    def b_leads() -> bool:
        current.update(leader.current_leader(cluster.client) or {"host": None})
        return current["host"] == b.name

    takeover_s = _wait_alive(cluster.procs, b_leads, 20, "the beat on host-b to take over")
    cluster.say(f"beat: host-b leads {takeover_s:.1f} s after the cut (lock TTL 3 s)")

    # host-a's database sessions (one may hold row locks mid-write) are ended by the server, not kept for hours.
    def host_a_sessions() -> list[str]:
        with cluster.engine.connect() as connection:
            query = text("SELECT state || ':' || coalesce(wait_event, '-') FROM pg_stat_activity WHERE client_addr = CAST(:a AS inet)")
            return [str(state) for state in connection.execute(query, {"a": a.address}).scalars()]

    at_cut = [session.split(":", 1)[0] for session in host_a_sessions()]
    _wait_alive(cluster.procs, lambda: not host_a_sessions(), 30, "the server to end host-a's sessions")
    sessions_gone_s = time.monotonic() - cut_at
    cluster.say(
        f"postgres: host-a's {len(at_cut)} sessions ({dict(Counter(at_cut))}) ended by the server {sessions_gone_s:.1f} s after the cut "
        f"(OMNI_DATABASE_DEAD_CLIENT_AFTER_S={DEAD_CLIENT_AFTER_S})"
    )

    def finished() -> bool:
        return backfill.job_progress(cluster.sessions, job_id)["status"] in {"succeeded", "failed", "partial"}

    _wait_alive(cluster.procs, finished, 60, "the cut job to finish")
    job_s = time.monotonic() - cut_at
    redone = [r for r in cluster.ledger("omni.backfill.fetch_partition") if r.task_id == task_id]
    watchdog_log = cluster.procs["watchdog@services"].log_text()
    swept = [line for line in watchdog_log.splitlines() if "worker died" in line and worker_a.instance in line]
    progress = backfill.job_progress(cluster.sessions, job_id)
    rows, dupes = _bar_counts(cluster.engine, "1Min")
    by_partition = _partition_hosts(cluster, job_id)
    redelivered_after_s = min((r.started_at.timestamp() for r in redone), default=float("nan")) - cut_wall
    cluster.say(
        f"redelivery: partition {partition_args[0]} held by host-a ran on {sorted({r.worker for r in redone})} "
        f"(delivery {sorted({r.delivery for r in redone})}) {redelivered_after_s:.1f} s after the cut, put back by the watchdog's "
        f"dead-worker sweep ({len(swept)} sweep of {worker_a.instance}; visibility timeout {VISIBILITY_TIMEOUT_S} s never reached); "
        f"job {progress['status']} {job_s:.1f} s after the cut, rows {rows} of {expected}, duplicate keys {dupes}, "
        f"partitions by host {dict(Counter(_host_of(r.worker) for rs in by_partition.values() for r in rs if r.state == 'SUCCESS'))}"
    )
    assert progress["status"] == "succeeded", progress
    assert (rows, dupes) == (expected, 0)
    assert progress["rows"] == expected, "the ledger counts every partition's rows once"
    assert [(r.state, _host_of(r.worker)) for r in redone] == [("SUCCESS", "host-b")], [(r.state, r.worker, r.delivery) for r in redone]
    assert redone[0].delivery == 2
    assert swept, "the watchdog's dead-worker sweep put host-a's partition back"
    assert redelivered_after_s < 30

    # The beat: the new leader's slots, each run once.
    wait_for(lambda: len(_tick_slots(cluster, sent_after=cut_wall)) >= 2, 30, interval_s=0.5, message="two watchdog slots after the cut")
    assert "beat lost the leader lock" in cluster.procs["beat@host-a"].log_text()

    # host-a comes back: its beat stays standing by, its workers beat again, the rows stay exact.
    cluster.net.mend(a)
    mended_at = time.monotonic()
    back_s = _wait_alive(
        cluster.procs,
        lambda: cluster.worker("backfill", a) is not None and cluster.worker("scans", a) is not None,
        40,
        "host-a's workers to beat again",
    )
    mended_wall = time.time()
    wait_for(lambda: len(_tick_slots(cluster, sent_after=mended_wall)) >= 1, 20, interval_s=0.5, message="a slot after host-a is back")
    per_slot = _tick_slots(cluster)
    before_cut, after_cut = _tick_slots(cluster, sent_before=cut_wall), _tick_slots(cluster, sent_after=cut_wall)
    holder = leader.current_leader(cluster.client) or {}
    rows_after, dupes_after = _bar_counts(cluster.engine, "1Min")
    stale = [r for r in cluster.ledger("omni.backfill.fetch_partition") if r.task_id == task_id and _host_of(r.worker) == a.name]
    cluster.say(
        f"beat: slots run {len(per_slot)} ({len(before_cut)} sent by host-a before the cut, {len(after_cut)} by host-b after), "
        f"runs per slot max {max(per_slot.values())}; host-a's workers beat again {back_s:.1f} s after its link came back "
        f"(t+{mended_at - cluster.t0:.1f} s), leader still {holder.get('host')}; rows {rows_after}, duplicate keys {dupes_after}; "
        f"host-a's cut delivery recorded {[r.state for r in stale]} so far"
    )
    assert max(per_slot.values()) == 1, per_slot
    assert len(before_cut) >= 1
    assert len(after_cut) >= 2
    assert len(per_slot) == len(before_cut) + len(after_cut)
    assert holder.get("host") == b.name, "the mended host's beat does not take the lead back"
    assert cluster.procs["beat@host-a"].log_text().count("omni beat: leading the schedule") == 1
    assert (rows_after, dupes_after) == (expected, 0)


def test_kill_switch_engaged_on_one_host_stops_orders_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    serve_quote(cluster.client, "AAPL", Decimal("189.99"), Decimal("190.01"), ttl_s=600)
    before = b.omni(cluster.envs["host-b"], "order", "buy", "AAPL", "1", "--wait", "--json", "--timeout", "30")
    assert before.returncode == 0, before.stdout + before.stderr
    filled = json.loads(before.stdout[before.stdout.find("{") :])
    cluster.say(f"order from host-b before the engage: {filled['status']} ({filled['client_order_id']})")
    assert filled["status"] == "filled"

    started = time.monotonic()
    engaged = a.omni(cluster.envs["host-a"], "kill", "engage", "--reason", "multi-host test: engaged on host-a", "--json")
    engage_s = time.monotonic() - started
    assert engaged.returncode == 0, engaged.stdout + engaged.stderr
    fills_at_engage = _count(cluster, Fill)

    # From host-b: the CLI refuses to queue, and a message put straight on the orders queue is refused by host-b's worker.
    refused = b.omni(cluster.envs["host-b"], "order", "buy", "AAPL", "1", "--wait", "--json", "--timeout", "10")
    client_order_id = f"hosts-{uuid.uuid4().hex[:16]}"
    send = (
        "import sys; from omni_tasks.pipeline.app import create_app; from omni_tasks.settings import load_settings; "
        "app = create_app(load_settings()); app.send_task('omni.orders.submit', kwargs=dict(symbol='AAPL', side='buy', qty='1', "
        "order_type='market', limit_price=None, client_order_id=sys.argv[1], requested_by='test:host-b'), queue='orders'); app.close()"
    )
    sent = _python_on(b, cluster.envs["host-b"], send, client_order_id)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    outcome: list[TaskRun] = []

    def refused_by_worker() -> bool:
        outcome[:] = [r for r in cluster.ledger("omni.orders.submit") if client_order_id in r.args_json]
        return bool(outcome)

    wait_for(refused_by_worker, 30, interval_s=0.2, message="host-b's orders worker to decide the sent order")
    with cluster.sessions() as session:
        queued_row = session.scalar(select(Order).where(Order.client_order_id == client_order_id))
    fills_after = _count(cluster, Fill)
    cluster.say(
        f"kill switch: engaged on host-a in {engage_s:.1f} s (`omni kill engage`, exit {engaged.returncode}); from host-b: "
        f"`omni order buy` exit {refused.returncode} ({_error_of(refused)[:60]}...), an order sent straight "
        f"to the queue {outcome[0].state} by {outcome[0].worker}; fills after the engage {fills_after - fills_at_engage}"
    )
    assert refused.returncode == 1
    assert "HALTED" in refused.stdout + refused.stderr
    assert [(r.state, r.worker) for r in outcome] == [("REFUSED", "orders@host-b")]
    assert queued_row is None or queued_row.status != "filled"
    assert fills_after == fills_at_engage


def _error_of(done: Any) -> str:
    output = (done.stdout + done.stderr).strip()
    try:
        return str(json.loads(output[output.find("{") :])["error"])
    except (ValueError, KeyError):
        return output


def _count(cluster: Cluster, model: Any) -> int:
    with cluster.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _python_on(host: Host, env: dict[str, str], code: str, *args: str) -> Any:
    import subprocess

    return subprocess.run(  # fixed argv
        [*host.prefix(), sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
