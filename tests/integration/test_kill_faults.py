"""The kill switch under faults of its two stores: never undone by a Redis restarted from older data, never lost by a database outage.

Every server here is the test's own (tests/servers.py): a redis-server with the
append-only file on (as the embedded default and docker/compose.yml run it) and,
for the database outage, a PostgreSQL cluster of its own. The shared services
are never stopped or flushed.

Orders go through the real order path: the order task's refusal on the path's own
first reads (``OrderSubmitter.submit(refuse_when_halted=True)``, what the orders worker
runs; Redis's copy from the breakers' pipeline, the database's from the request's
record), the pre-trade checks (:class:`OrderSubmitter`) and the simulated broker's
last-step guard, each one faced in turn with the stale Redis value as the first
reader after the fault was staged again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from omni_tasks.contracts.venue import OrderBlocked, OrderRequest
from omni_tasks.core.errors import TaskRefused
from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.core.runtime import Runtime
from omni_tasks.ops import health
from omni_tasks.safety import engage as ks
from omni_tasks.safety import reconcile, transitions
from omni_tasks.safety.drill import serve_quote
from omni_tasks.safety.killswitch import current_state, read_state, state_info
from omni_tasks.safety.order_guard import order_guard
from omni_tasks.safety.state_rule import StoredState, TradingState
from omni_tasks.safety.state_store import durable_state
from omni_tasks.safety.watchdog_listener import start_watchdog_listener
from omni_tasks.settings import load_settings
from omni_tasks.storage.models import AuditLog, KillEvent
from omni_tasks.trading.orders import OrderSubmitter
from tests.conftest import REPO_ROOT, service_env, wait_for
from tests.servers import PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.services]

SYMBOL = "AAPL"
OPERATOR = "operator:fault"
ACTIVE, HALTED = TradingState.ACTIVE, TradingState.HALTED
LIMITS = {
    "OMNI_RISK_MAX_TRADES_PER_DAY": "10000",
    "OMNI_RISK_MAX_POSITION_NOTIONAL_USD": "100000000",
    "OMNI_RISK_MAX_CONCENTRATION_PCT": "100",
    "OMNI_RISK_MAX_GROSS_LEVERAGE": "100",
    "OMNI_RISK_QUOTE_MAX_AGE_S": "60",
    "OMNI_TRADING_QUOTE_MAX_AGE_S": "60",
    "OMNI_KILL_POLL_INTERVAL_MS": "5",
    "OMNI_KILL_CANCEL_CONFIRM_TIMEOUT_S": "2",
    "OMNI_KILL_RECONCILE_EVERY_S": "0.5",
}


def settings_env(redis_url: str, database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        "OMNI_BROKER_URL": redis_url,
        "OMNI_DATABASE_URL": database_url,
        "OMNI_DATA_DIR": str(data_dir),
        "OMNI_LOG_LEVEL": "WARNING",
        **LIMITS,
    }


def quick_redis(server: PrivateRedis) -> redis.Redis:
    """A client that gives up on a paused server in 0.3 s, with no retries (the runtime's waits 5 s, four times)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0))


@dataclass
class Desk:
    """One process's order path on the test's own Redis and database, with the kill switch's readers."""

    rt: Runtime
    server: PrivateRedis
    submitter: OrderSubmitter
    readings: list[str] = field(default_factory=list)

    @property
    def broker(self) -> Any:
        return self.submitter.venue

    def raw(self) -> bytes | None:
        return self.server.client().get(TRADING_STATE_KEY)

    def reconnect(self) -> None:
        """After a Redis restart: the runtime's pooled connection is re-made before the next reading."""

        def answers() -> bool:
            try:
                return bool(self.rt.redis.ping())
            except redis.RedisError:
                return False

        wait_for(answers, 15, interval_s=0.01, message="redis to answer")
        serve_quote(self.rt.redis, SYMBOL, Decimal("100.00"), Decimal("100.02"))

    def observe(self) -> None:
        """What an operator sees, read only (no reader here writes Redis): omni kill status / omni status, /health, /metrics."""
        info = state_info(self.rt.redis, self.rt.sessions)
        self.readings.append(info["state"])
        _code, payload = health.check_health(
            engine=self.rt.engine,
            client=self.rt.redis,
            broker_url=self.rt.settings.broker_url,
            worker_kinds=[],
            dead_after_s=3,
            watchdog_interval_s=1,
        )
        self.readings.append(payload["trading"]["state"])

    def order(self, layer: str, tag: str) -> str:
        """One market buy whose first state reader is ``layer``; returns its outcome (``filled`` is a failure after the engage)."""
        request = OrderRequest(f"f-{tag}-{uuid.uuid4().hex[:8]}", SYMBOL, "buy", Decimal(1), requested_by="test")
        if layer == "worker":  # the order task's path: refused on its own first reads, or the whole path
            try:
                outcome = self.submitter.submit(request, refuse_when_halted=True)
            except TaskRefused:
                self.readings.append("HALTED")
                return "refused by the order task"
            self.readings.append("ACTIVE")  # not refused: after an engage, a failure whatever the outcome
            return outcome.status
        if layer == "checks":  # the pre-trade checks read the state first, then the broker's guard
            outcome = self.submitter.submit(request)
            return outcome.status if outcome.check is None else f"{outcome.status} by {outcome.check}"
        try:  # the broker's last-step guard alone, as the first reader
            return self.broker.submit(request).status
        except OrderBlocked:
            return "blocked by the guard"


def make_desk(server: PrivateRedis, database_url: str, data_dir: Path) -> Desk:
    from omni_tasks.trading.wiring import make_venue

    rt = Runtime(load_settings(settings_env(server.url, database_url, data_dir)))
    broker = make_venue(rt, guard=order_guard(rt.redis, rt.sessions))
    submitter = OrderSubmitter(
        venue=broker, redis=rt.redis, sessions=rt.sessions, limits=rt.settings.risk, exchange_tz=rt.settings.core.exchange_tz
    )
    serve_quote(rt.redis, SYMBOL, Decimal("100.00"), Decimal("100.02"))
    return Desk(rt, server, submitter)


def sqlite_url(folder: Path) -> str:
    from omni_tasks.storage import migrations
    from omni_tasks.storage.engine import make_engine

    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'omni.db'}"
    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Services mode (PostgreSQL, a database of the test's own cluster) and the embedded default (SQLite)."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "sqlite")
    return str(request.getfixturevalue("private_pg_url"))


def operator_engage(rt: Runtime, reason: str) -> ks.EngageResult:
    """What `omni kill engage` runs: the configured broker (cancel and confirm) and the orders-queue purge."""
    from omni_tasks.ops.engaging import broker_for, orders_purge

    broker, problem = broker_for(rt)
    result = ks.engage(rt, actor=OPERATOR, reason=reason, broker=broker, purge=orders_purge(rt.settings), alert=lambda _e: None)
    if problem is not None:
        result.errors["broker"] = problem
    return result


def both(desk: Desk) -> tuple[bytes | None, StoredState]:
    return desk.raw(), durable_state(desk.rt.sessions)


def prepare_history(desk: Desk) -> None:
    """A desk that has been engaged and released once (HALTED 1, ACTIVE 2), where an order fills."""
    ks.engage(desk.rt, actor=OPERATOR, reason="earlier halt", broker=None, alert=lambda _e: None)
    transitions.release(desk.rt, actor=OPERATOR, reason="earlier release")
    assert both(desk) == (b"ACTIVE 2", StoredState(ACTIVE, 2))
    assert desk.order("worker", "control").startswith("filled"), "control: an order fills while ACTIVE"
    desk.readings.clear()  # from here on, every reading comes after an engage


def watch_repair(desk: Desk, want: bytes, timeout_s: float = 20.0) -> float:
    """Seconds until Redis holds ``want`` (raw GETs of our own; operator readings are taken meanwhile)."""
    started = time.monotonic()

    def repaired() -> bool:
        desk.readings.append(state_info(desk.rt.redis, desk.rt.sessions)["state"])
        return desk.raw() == want

    wait_for(repaired, timeout_s, interval_s=0.02, message=f"redis to be rewritten to {want!r}")
    return time.monotonic() - started


def run_rounds(desk: Desk, stage: Callable[[], None], expect_raw: bytes | None, n: int, label: str) -> dict[str, int]:
    """``n`` orders, each right after the fault was staged again, cycling the first reader across the three layers."""
    outcomes: dict[str, int] = {}
    layers = ("worker", "checks", "guard")
    for i in range(n):
        stage()
        desk.reconnect()
        assert desk.raw() == expect_raw, f"{label}: the fault was not staged (redis holds {desk.raw()!r})"
        desk.observe()
        outcome = desk.order(layers[i % 3], f"{label}-{i}")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def report(label: str, outcomes: dict[str, int], n: int, readings: list[str]) -> None:
    filled = sum(count for what, count in outcomes.items() if what.startswith("filled"))
    active = sum(1 for state in readings if state == "ACTIVE")
    print(f"{label}: orders filled after the engage {filled} of {n} ({outcomes}); state read ACTIVE {active} of {len(readings)} readings")
    assert filled == 0
    assert active == 0


def finish_with_release(desk: Desk, version: int) -> None:
    """Only an operator releases; the version goes on from the highest seen, and orders fill again."""
    result = transitions.release(desk.rt, actor=OPERATOR, reason="fault understood")
    assert (result.changed, result.version) == (True, version + 1)
    assert both(desk) == (f"ACTIVE {version + 1}".encode(), StoredState(ACTIVE, version + 1))
    assert desk.order("worker", "after-release").startswith("filled"), "control: orders fill again after the release"


def automatic_releases(desk: Desk) -> int:
    with desk.rt.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(KillEvent)
                .where(KillEvent.action.in_(("release", "activate")), KillEvent.actor != OPERATOR)
            )
            or 0
        )


# ---- 1. engaged while Redis was down (killed or paused), Redis back from an older append-only file ---------------------


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["kill", "pause"])
def test_engaged_during_a_redis_outage_then_redis_restored_from_an_older_aof_never_reads_active(
    outage: str, database_url: str, private_redis_aof: PrivateRedis, tmp_path: Path
) -> None:
    server = private_redis_aof
    desk = make_desk(server, database_url, tmp_path / "data")
    prepare_history(desk)
    older = server.save_aof()  # Redis says ACTIVE 2
    listener = start_watchdog_listener(desk.rt, purge=None, venue_factory=lambda _rt: desk.broker)
    try:
        wait_for(listener.subscribed.is_set, 10, message="the watchdog listener")
        if outage == "kill":
            server.kill()
            result = operator_engage(desk.rt, "engaged while redis is down")
        else:
            server.pause()
            engaging = Runtime(desk.rt.settings, redis_client=quick_redis(server))
            result = ks.engage(engaging, actor=OPERATOR, reason="engaged while redis is paused", broker=None, alert=lambda _e: None)
            server.kill()  # it never came back: restarted from its file
        assert result.durable
        assert "redis" in result.errors, "the engage says what failed"
        print(
            f"engage during a redis {outage}: durable in {result.timings_ms['durable']:.0f} ms, whole sequence {result.timings_ms['total']:.0f} ms; failed steps {sorted(result.errors)}"
        )
        assert durable_state(desk.rt.sessions) == StoredState(HALTED, 3)
        server.restore_aof(older)
        server.start()
        restarted = time.monotonic()
        seconds = watch_repair(desk, b"HALTED 3")
        print(
            f"redis ({ {'kill': 'killed', 'pause': 'paused'}[outage] } during the engage) restarted from an older append-only file: rewritten to HALTED 3 by the watchdog listener "
            f"{seconds:.2f} s after it answered ({time.monotonic() - restarted:.2f} s after the restart)"
        )
    finally:
        listener.stop()

    def restore() -> None:
        server.kill()
        server.restore_aof(older)
        server.start()

    n = 21
    outcomes = run_rounds(desk, restore, b"ACTIVE 2", n, f"aof-{outage}")
    report(
        f"engage during a redis {outage}, redis restored from an older append-only file, {database_url.split(':')[0]}",
        outcomes,
        n,
        desk.readings,
    )
    assert both(desk) == (b"HALTED 3", StoredState(HALTED, 3)), "the first reader rewrote Redis from the database"
    finish_with_release(desk, 3)
    assert automatic_releases(desk) == 0


# ---- 2. other faults of Redis after an engage: FLUSHALL, a hand-written older value, a restore, a pause --------------------


@pytest.mark.parametrize("fault", ["flushall", "set-older", "restore-after-engage"])
def test_redis_losing_or_rolling_back_an_engage_never_reads_active(
    fault: str, private_pg_url: str, private_redis_aof: PrivateRedis, tmp_path: Path
) -> None:
    server = private_redis_aof
    desk = make_desk(server, private_pg_url, tmp_path / "data")
    prepare_history(desk)
    older = server.save_aof()
    result = operator_engage(desk.rt, f"engaged before a {fault}")
    assert result.durable
    assert both(desk) == (b"HALTED 3", StoredState(HALTED, 3))

    def stage() -> None:
        if fault == "flushall":
            server.client().flushall()
        elif fault == "set-older":
            server.client().set(TRADING_STATE_KEY, "ACTIVE 2")
        else:
            server.kill()
            server.restore_aof(older)
            server.start()

    expect = None if fault == "flushall" else b"ACTIVE 2"
    n = 21
    outcomes = run_rounds(desk, stage, expect, n, fault)
    report(f"{fault} after the engage", outcomes, n, desk.readings)
    assert both(desk) == (b"HALTED 3", StoredState(HALTED, 3))

    # The watchdog's listener alone (no order flowing) rewrites Redis too.
    stage()
    desk.reconnect()
    listener = start_watchdog_listener(desk.rt, purge=None, venue_factory=lambda _rt: desk.broker)
    try:
        seconds = watch_repair(desk, b"HALTED 3")
    finally:
        listener.stop()
    print(f"{fault}: redis rewritten to HALTED 3 by the watchdog listener in {seconds:.2f} s")
    assert [s for s in desk.readings if s == "ACTIVE"] == []
    finish_with_release(desk, 3)


def test_redis_paused_during_the_engage_and_resumed_ends_halted_in_both(
    private_pg_url: str, private_redis_aof: PrivateRedis, tmp_path: Path
) -> None:
    server = private_redis_aof
    desk = make_desk(server, private_pg_url, tmp_path / "data")
    prepare_history(desk)
    server.pause()
    engaging = Runtime(desk.rt.settings, redis_client=quick_redis(server))
    try:
        result = ks.engage(engaging, actor=OPERATOR, reason="engaged while redis is paused", broker=None, alert=lambda _e: None)
        assert result.durable
        assert "redis" in result.errors
        assert read_state(engaging.redis, engaging.sessions).state is HALTED, "a paused Redis reads as HALTED"
    finally:
        server.resume()
    # Whatever the paused server does with the command it had half received, no reader sees ACTIVE.
    desk.reconnect()
    desk.observe()
    n = 9
    outcomes: dict[str, int] = {}
    for i in range(n):
        outcome = desk.order(("worker", "checks", "guard")[i % 3], f"resumed-{i}")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    report("redis paused during the engage, then resumed", outcomes, n, desk.readings)
    assert both(desk) == (b"HALTED 3", StoredState(HALTED, 3))
    finish_with_release(desk, 3)


# ---- 3. engaged while PostgreSQL was down ------------------------------------------------------------------------------


@pytest.mark.slow
def test_engaged_while_postgres_is_down_is_halted_in_redis_at_once_and_durable_once_it_is_back(
    private_postgres: PrivatePostgres, private_pg_url: str, private_redis_aof: PrivateRedis, tmp_path: Path
) -> None:
    server = private_redis_aof
    desk = make_desk(server, private_pg_url, tmp_path / "data")
    prepare_history(desk)
    listener = start_watchdog_listener(desk.rt, purge=None, venue_factory=lambda _rt: desk.broker)
    try:
        wait_for(listener.subscribed.is_set, 10, message="the watchdog listener")
        private_postgres.stop()
        result = operator_engage(desk.rt, "engaged while postgres is down")
        assert result.redis_written
        assert not result.durable
        assert desk.raw() == b"HALTED 3", "Redis says HALTED at once"
        for _ in range(5):
            desk.readings.append(current_state(desk.rt.redis, desk.rt.sessions).value)
            desk.readings.append(state_info(desk.rt.redis, desk.rt.sessions)["state"])
        rounds = listener.counts["maintenance"]
        # The watchdog's rounds fail meanwhile (the database is down); none may release anything.
        wait_for(lambda: listener.counts["maintenance"] >= rounds + 2, 30, message="two reconcile rounds with the database down")
        assert desk.raw() == b"HALTED 3"
        private_postgres.start()
        back = time.monotonic()

        def durable() -> bool:
            try:
                stored = durable_state(desk.rt.sessions)
            except Exception:  # noqa: BLE001 - the pool re-connects after the restart
                return False
            desk.readings.append(state_info(desk.rt.redis, desk.rt.sessions)["state"])
            return stored.state is HALTED and stored.version >= 3

        wait_for(durable, 30, interval_s=0.05, message="the database to hold the engage")
        seconds = time.monotonic() - back
        rounds = listener.counts["maintenance"]
        # A few more reconcile rounds: still HALTED, still no release.
        wait_for(lambda: listener.counts["maintenance"] >= rounds + 2, 30, message="two more reconcile rounds")
    finally:
        listener.stop()
    print(f"engage while postgres was down: HALTED in redis at once; database row HALTED {seconds:.2f} s after postgres was back")
    assert both(desk) == (b"HALTED 3", StoredState(HALTED, 3))
    with desk.rt.sessions() as session:
        repair = session.scalars(select(KillEvent).where(KillEvent.actor == reconcile.RECONCILE_ACTOR)).all()
        audit = session.scalars(select(AuditLog).where(AuditLog.action == "kill.repair.database")).all()
    assert [(e.action, e.state_before, e.state_after, e.detail["version"]) for e in repair] == [("engage", "ACTIVE", "HALTED", 3)]
    assert len(audit) == 1
    active = sum(1 for s in desk.readings if s == "ACTIVE")
    print(
        f"state read ACTIVE {active} of {len(desk.readings)} readings during and after the outage; automatic releases {automatic_releases(desk)}"
    )
    assert active == 0
    assert automatic_releases(desk) == 0
    n = 9
    outcomes: dict[str, int] = {}
    for i in range(n):
        outcome = desk.order(("worker", "checks", "guard")[i % 3], f"pg-back-{i}")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    report("after an engage during a postgres outage", outcomes, n, [])
    finish_with_release(desk, 3)


# ---- the repair never undoes anything, and versions only grow ------------------------------------------------------------


def test_a_newer_but_looser_redis_value_never_loosens_the_database(
    private_pg_url: str, private_redis_aof: PrivateRedis, tmp_path: Path
) -> None:
    desk = make_desk(private_redis_aof, private_pg_url, tmp_path / "data")
    prepare_history(desk)
    operator_engage(desk.rt, "halt")
    private_redis_aof.client().set(TRADING_STATE_KEY, "ACTIVE 99")  # by hand, or Redis restored from another desk
    assert current_state(desk.rt.redis, desk.rt.sessions) is HALTED
    assert desk.order("guard", "looser").startswith("blocked")
    assert reconcile.Reconciler(desk.rt).run() == "database"
    assert both(desk) == (b"HALTED 100", StoredState(HALTED, 100)), "the database's HALTED is recorded above Redis's version"
    finish_with_release(desk, 100)


def test_a_release_whose_redis_write_was_lost_is_rewritten_only_after_two_rounds(
    private_pg_url: str, private_redis_aof: PrivateRedis, tmp_path: Path
) -> None:
    desk = make_desk(private_redis_aof, private_pg_url, tmp_path / "data")
    prepare_history(desk)
    operator_engage(desk.rt, "halt")
    older = private_redis_aof.save_aof()  # HALTED 3
    transitions.release(desk.rt, actor=OPERATOR, reason="released")  # ACTIVE 4 in both
    private_redis_aof.kill()
    private_redis_aof.restore_aof(older)
    private_redis_aof.start()
    desk.reconnect()
    assert both(desk) == (b"HALTED 3", StoredState(ACTIVE, 4))
    assert current_state(desk.rt.redis, desk.rt.sessions) is HALTED, "the stricter applies while they disagree"
    assert desk.raw() == b"HALTED 3", "an order-path reader never loosens Redis"
    reconciler = reconcile.Reconciler(desk.rt)
    assert reconciler.run() is None, "first sight: an engage may be between its two writes"
    assert desk.raw() == b"HALTED 3"
    assert reconciler.run() == "redis"
    assert both(desk) == (b"ACTIVE 4", StoredState(ACTIVE, 4))
    assert desk.order("worker", "released").startswith("filled")


def test_the_operator_sees_both_copies_and_why_one_applies(private_pg_url: str, private_redis_aof: PrivateRedis, tmp_path: Path) -> None:
    desk = make_desk(private_redis_aof, private_pg_url, tmp_path / "data")
    prepare_history(desk)
    private_redis_aof.kill()
    ks.engage(desk.rt, actor=OPERATOR, reason="engaged while redis is down", broker=None, alert=lambda _e: None)
    private_redis_aof.start()  # AOF kept ACTIVE 2 (appendfsync always): the engage never reached it
    desk.reconnect()
    assert desk.raw() == b"ACTIVE 2"
    env = service_env(redis_url=private_redis_aof.url, database_url=private_pg_url, data_dir=tmp_path / "cli", OMNI_LOG_LEVEL="ERROR")
    run = lambda *args: subprocess.run(  # noqa: E731 - one command line, twice
        [sys.executable, "-m", "omni_tasks", "kill", "status", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    shown = run("--json")
    info = json.loads(shown.stdout)
    assert shown.returncode == 1
    assert (info["state"], info["source"], info["consistent"], info["redis"], info["database"]["state"]) == (
        "HALTED",
        "database",
        False,
        "ACTIVE 2",
        "HALTED",
    )
    assert "stricter" in info["why"]
    table = run()
    assert "ACTIVE 2" in table.stdout
    assert "stricter" in table.stdout
    print(f"omni kill status with the copies apart:\n{table.stdout}")
    assert desk.raw() == b"ACTIVE 2", "status only reads"


def test_the_guard_costs_one_primary_key_read_per_order(private_pg_url: str, private_redis_aof: PrivateRedis, tmp_path: Path) -> None:
    from omni_tasks.safety.killswitch import fast_state

    desk = make_desk(private_redis_aof, private_pg_url, tmp_path / "data")
    current_state(desk.rt.redis, desk.rt.sessions)

    def p50_us(step: Callable[[], Any], n: int = 400) -> float:
        for _ in range(50):
            step()
        times = []
        for _ in range(n):
            started = time.perf_counter_ns()
            step()
            times.append(time.perf_counter_ns() - started)
        return sorted(times)[n // 2] / 1000

    redis_only = p50_us(lambda: fast_state(desk.rt.redis))
    both_copies = p50_us(lambda: current_state(desk.rt.redis, desk.rt.sessions))
    with desk.rt.sessions() as session, session.begin():
        in_session = p50_us(lambda: read_state(desk.rt.redis, desk.rt.sessions, session=session))
    print(
        f"trading state read per check (p50 of 400, PostgreSQL on loopback): Redis alone {redis_only:.0f} us, both copies {both_copies:.0f} us "
        f"(+{both_copies - redis_only:.0f} us), inside the broker's open transaction {in_session:.0f} us (+{in_session - redis_only:.0f} us)"
    )
    assert both_copies < 20_000
