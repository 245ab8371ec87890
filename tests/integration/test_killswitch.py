"""The kill switch on real Redis and PostgreSQL: durable, idempotent, audited, fail closed, never released by automation.

Tests that stop or restart Redis use a redis-server of their own on another
port (the shared one is never stopped). The simulated broker trades on the
session's PostgreSQL database against quotes served into that private Redis.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import delete, func, select

from omni_tasks.contracts.venue import OrderBlocked, OrderRequest
from omni_tasks.core import counters
from omni_tasks.core.keys import ALARM_LOG_KEY, TRADING_STATE_KEY
from omni_tasks.core.runtime import Runtime
from omni_tasks.pipeline.broker import orders_purger
from omni_tasks.safety import engage as ks
from omni_tasks.safety import reconcile, transitions
from omni_tasks.safety.alarms import Alarm, AlarmListener, publish_alarm
from omni_tasks.safety.drill import serve_quote
from omni_tasks.safety.killswitch import current_state, fast_state, state_info
from omni_tasks.safety.order_guard import order_guard, order_task_refusal
from omni_tasks.safety.state_rule import TradingState
from omni_tasks.safety.state_store import durable_state
from omni_tasks.safety.watchdog_listener import start_watchdog_listener
from omni_tasks.settings import load_settings
from omni_tasks.storage.models import (
    AuditLog,
    BrokerAccount,
    EmergencySnapshot,
    Fill,
    KillEvent,
    Order,
    OrderEvent,
    Position,
    TradingStateRow,
)

pytestmark = [pytest.mark.services]

SYMBOL = "AAPL"
OPERATOR = "operator:test"


# ---- a Redis of our own -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server on its own port that keeps nothing on disk; stop/start/restart at will."""

    def __init__(self, folder: Path) -> None:
        from omni_tasks.ops.embedded import redis_server_binary

        self.binary = str(redis_server_binary())
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def start(self) -> PrivateRedis:
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction", "--dir", str(self.folder), "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"private redis on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


TABLES = (OrderEvent, Fill, Order, Position, BrokerAccount, EmergencySnapshot, KillEvent, AuditLog, TradingStateRow)


def clean_database(url: str) -> None:
    from omni_tasks.storage.engine import make_engine

    engine = make_engine(url)
    with engine.begin() as connection:
        for table in TABLES:
            connection.execute(delete(table))
    engine.dispose()


def make_runtime(redis_url: str, database_url: str, data_dir: Path, **extra: str) -> Runtime:
    env = {
        "OMNI_BROKER_URL": redis_url,
        "OMNI_DATABASE_URL": database_url,
        "OMNI_DATA_DIR": str(data_dir),
        "OMNI_LOG_LEVEL": "WARNING",
        **extra,
    }
    return Runtime(load_settings(env))


@pytest.fixture
def runtime(private_redis: PrivateRedis, migrated_pg_url: str, tmp_path: Path) -> Iterator[Runtime]:
    clean_database(migrated_pg_url)
    rt = make_runtime(
        private_redis.url, migrated_pg_url, tmp_path / "data", OMNI_KILL_POLL_INTERVAL_MS="5", OMNI_KILL_CANCEL_CONFIRM_TIMEOUT_S="3"
    )
    yield rt
    rt.engine.dispose()


def simulated_broker(rt: Runtime) -> Any:
    from omni_tasks.trading.wiring import make_venue

    return make_venue(rt, guard=order_guard(rt.redis, rt.sessions))


def count(rt: Runtime, model: Any, *where: Any) -> int:
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# ---- reading the state -------------------------------------------------------------------------


def test_fresh_install_reads_active_and_puts_the_database_copy_in_redis(runtime: Runtime) -> None:
    assert runtime.redis.get(TRADING_STATE_KEY) is None
    assert fast_state(runtime.redis) is TradingState.HALTED, "a missing key on the fast path counts as engaged"
    assert current_state(runtime.redis, runtime.sessions) is TradingState.ACTIVE
    assert runtime.redis.get(TRADING_STATE_KEY) == b"ACTIVE 0"
    assert fast_state(runtime.redis) is TradingState.ACTIVE


def test_malformed_redis_value_counts_as_halted_everywhere(runtime: Runtime) -> None:
    runtime.redis.set(TRADING_STATE_KEY, "OPEN sesame")
    assert fast_state(runtime.redis) is TradingState.HALTED
    assert current_state(runtime.redis, runtime.sessions) is TradingState.HALTED
    with pytest.raises(OrderBlocked):
        order_guard(runtime.redis, runtime.sessions)(OrderRequest("m-1", SYMBOL, "buy", Decimal(1)))
    info = state_info(runtime.redis, runtime.sessions)
    assert info["state"] == "HALTED"
    assert info["errors"], "status shows the malformed value"


# ---- the engage sequence -----------------------------------------------------------------------


class ReadsFirst:
    """The simulated venue through the plain contract (no ``cancel_open_orders``): the kill switch reads what is open, then cancels."""

    def __init__(self, venue: Any) -> None:
        self._venue = venue

    def __getattr__(self, name: str) -> Any:
        if name == "cancel_open_orders":
            raise AttributeError(name)
        return getattr(self._venue, name)


@pytest.mark.parametrize("reads_first", [False, True], ids=["cancel-reports-orders", "open-orders-read-first"])
def test_engage_halts_durably_snapshots_cancels_flattens_purges_and_audits(runtime: Runtime, reads_first: bool) -> None:
    broker = ReadsFirst(simulated_broker(runtime)) if reads_first else simulated_broker(runtime)
    serve_quote(runtime.redis, SYMBOL, Decimal("100.00"), Decimal("100.02"))
    bought = broker.submit(OrderRequest("e-buy", SYMBOL, "buy", Decimal(5), requested_by="test"))
    assert bought.status == "filled"
    resting = [
        broker.submit(OrderRequest(f"e-rest-{i}", SYMBOL, "buy", Decimal(1), "limit", Decimal("95.00"), requested_by="test"))
        for i in range(10)
    ]
    assert all(o.status == "new" for o in resting)
    runtime.redis.lpush("orders", "queued-1", "queued-2", "queued-3")  # stand-ins for queued order messages
    purge = orders_purger(runtime.settings.broker_url, "orders")

    result = ks.engage(
        runtime, actor=OPERATOR, reason="integration: engage", broker=broker, flatten=True, purge=purge, alert=lambda _e: None
    )

    print("engage timings (ms):", result.timings_ms)
    assert result.complete, result.errors
    assert (result.state_before, result.repeat, result.version) == ("ACTIVE", False, 1)
    assert list(result.timings_ms) == [
        "redis",
        "durable",
        "cancel_requested",
        "snapshot",
        "cancelled_confirmed",
        "flatten",
        "purge",
        "total",
    ]
    assert (
        result.timings_ms["redis"] <= result.timings_ms["durable"] <= result.timings_ms["cancelled_confirmed"] <= result.timings_ms["total"]
    )
    assert (result.open_orders_before, result.cancel_requested, result.remaining_open, result.flattened, result.purged) == (
        10,
        10,
        [],
        1,
        3,
    )
    # Durable: the row, one KillEvent with the whole story, one audit row.
    assert durable_state(runtime.sessions).state is TradingState.HALTED
    assert runtime.redis.get(TRADING_STATE_KEY) == b"HALTED 1"
    with runtime.sessions() as session:
        row = session.get(TradingStateRow, 1)
        assert (row.actor, row.reason) == (OPERATOR, "integration: engage")
        event = session.scalars(select(KillEvent)).one()
        assert (event.action, event.actor, event.state_before, event.state_after) == ("engage", OPERATOR, "ACTIVE", "HALTED")
        assert event.timings_ms == result.timings_ms
        assert event.detail["remaining_open"] == []
        assert event.detail["open_orders_before"] == 10
        audit = session.scalars(select(AuditLog).where(AuditLog.action.like("kill.%"))).all()
        assert [(a.action, a.actor, a.detail["reason"]) for a in audit] == [("kill.engage", OPERATOR, "integration: engage")]
        snapshot = session.scalars(select(EmergencySnapshot)).one()
        assert snapshot.kill_event_id == event.id
        assert sorted(o["client_order_id"] for o in snapshot.open_orders) == sorted(f"e-rest-{i}" for i in range(10))
        assert {o["status"] for o in snapshot.open_orders} == {"new"}, "as they rested"
        assert [(p["symbol"], p["qty"]) for p in snapshot.positions] == [(SYMBOL, "5.00000000")]
        # Verified at the broker's ledger: every resting order cancelled, the position closed.
        statuses = dict(session.execute(select(Order.client_order_id, Order.status).where(Order.client_order_id.like("e-rest-%"))).all())
        assert set(statuses.values()) == {"cancelled"}
        assert len(statuses) == 10
    file_payload = json.loads(Path(result.snapshot_path).read_text())
    assert file_payload["open_orders"] == snapshot.open_orders
    assert file_payload["positions"] == snapshot.positions
    assert Path(result.snapshot_path).parent == runtime.settings.data_dir / "emergency"
    assert broker.open_orders() == []
    assert broker.positions() == []
    assert runtime.redis.llen("orders") == 0
    # Nothing leaves now, and the attempt is recorded as rejected by the guard.
    with pytest.raises(OrderBlocked):
        broker.submit(OrderRequest("e-after", SYMBOL, "buy", Decimal(1), requested_by="test"))
    assert count(runtime, Fill, Fill.order_id.in_(select(Order.id).where(Order.client_order_id == "e-after"))) == 0


class CancelFails:
    """The simulated venue whose reporting cancel fails (the connection dropped, say); everything else works."""

    def __init__(self, venue: Any) -> None:
        self._venue = venue

    def cancel_open_orders(self) -> list[Any]:
        raise ConnectionError("the cancel did not go through")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._venue, name)


def test_a_failed_first_cancel_still_snapshots_what_is_open_and_the_confirmation_cancels_it(runtime: Runtime) -> None:
    broker = CancelFails(simulated_broker(runtime))
    serve_quote(runtime.redis, SYMBOL, Decimal("100.00"), Decimal("100.02"))
    for i in range(3):
        broker.submit(OrderRequest(f"cf-{i}", SYMBOL, "buy", Decimal(1), "limit", Decimal("95.00"), requested_by="test"))

    result = ks.engage(runtime, actor=OPERATOR, reason="integration: cancel fails", broker=broker, alert=lambda _e: None)

    assert result.durable
    assert result.complete, result.errors  # the confirmation's cancel_all went through: the first failure is cleared
    assert (result.open_orders_before, result.cancel_requested, result.remaining_open) == (3, 3, [])
    assert result.cancel_rounds == 1
    with runtime.sessions() as session:
        snapshot = session.scalars(select(EmergencySnapshot)).one()
        statuses = set(session.scalars(select(Order.status).where(Order.client_order_id.like("cf-%"))))
    assert sorted(o["client_order_id"] for o in snapshot.open_orders) == ["cf-0", "cf-1", "cf-2"]
    assert statuses == {"cancelled"}


def test_a_blank_reason_or_actor_never_stops_an_engage(runtime: Runtime) -> None:
    result = ks.engage(runtime, actor="  ", reason="", broker=None, alert=lambda _e: None)
    assert result.durable
    assert (result.actor, result.reason) == ("unknown", "(no reason given)")
    assert current_state(runtime.redis, runtime.sessions) is TradingState.HALTED


def test_engaging_twice_keeps_one_engaged_period_and_audits_both_requests(runtime: Runtime) -> None:
    broker = simulated_broker(runtime)
    first = ks.engage(runtime, actor="watchdog:alarm:daily_loss", reason="loss", broker=broker, alert=lambda _e: None)
    with runtime.sessions() as session:
        since = session.get(TradingStateRow, 1).changed_at
    second = ks.engage(runtime, actor=OPERATOR, reason="me too", broker=broker, alert=lambda _e: None)
    assert (first.repeat, second.repeat) == (False, True)
    assert first.version == second.version == 1
    assert second.snapshot_id is None, "the engaged period's snapshot stands"
    with runtime.sessions() as session:
        row = session.get(TradingStateRow, 1)
        assert (row.state, row.version, row.changed_at, row.actor) == ("HALTED", 1, since, "watchdog:alarm:daily_loss")
        events = session.scalars(select(KillEvent).order_by(KillEvent.id)).all()
        assert [(e.action, e.actor, e.detail["repeat"]) for e in events] == [
            ("engage", "watchdog:alarm:daily_loss", False),
            ("engage", OPERATOR, True),
        ]
        assert [a.action for a in session.scalars(select(AuditLog).order_by(AuditLog.id)).all()] == ["kill.engage", "kill.engage.repeat"]
    assert count(runtime, EmergencySnapshot) == 1
    print("engage twice: engaged periods 1, audit entries 2, snapshots 1")


# ---- release: operators only -------------------------------------------------------------------


@pytest.mark.parametrize(
    "actor", ["watchdog", "watchdog:alarm:daily_loss", "Watchdog:rule:stale_stream", "alarm:stream", "system:boot", "auto:x"]
)
def test_automation_never_releases(runtime: Runtime, actor: str) -> None:
    ks.engage(runtime, actor="watchdog:rule", reason="breach", broker=None, alert=lambda _e: None)
    with pytest.raises(transitions.ReleaseRefused, match="only an operator"):
        transitions.release(runtime, actor=actor, reason="all clear")
    with pytest.raises(transitions.ReleaseRefused):
        transitions.activate(runtime, actor=actor, reason="all clear")
    assert current_state(runtime.redis, runtime.sessions) is TradingState.HALTED
    assert count(runtime, KillEvent, KillEvent.action.in_(("release", "activate"))) == 0
    assert count(runtime, AuditLog, AuditLog.action.in_(("kill.release.refused", "kill.activate.refused"))) == 2
    print(f"automatic releases by {actor!r}: 0 of 2 attempts (both refused and audited)")


def test_release_needs_a_reason_and_then_resumes_trading(runtime: Runtime) -> None:
    ks.engage(runtime, actor=OPERATOR, reason="stop", broker=None, alert=lambda _e: None)
    for blank in ("", "   "):
        with pytest.raises(transitions.KillSwitchError, match="reason"):
            transitions.release(runtime, actor=OPERATOR, reason=blank)
    assert current_state(runtime.redis, runtime.sessions) is TradingState.HALTED
    result = transitions.release(runtime, actor=OPERATOR, reason="feed back, loss understood")
    assert (result.changed, result.state_before, result.state_after, result.version, result.redis_synced) == (
        True,
        "HALTED",
        "ACTIVE",
        2,
        True,
    )
    assert runtime.redis.get(TRADING_STATE_KEY) == b"ACTIVE 2"
    again = transitions.release(runtime, actor=OPERATOR, reason="twice")
    assert (again.changed, again.state_after) == (False, "ACTIVE")
    assert count(runtime, KillEvent, KillEvent.action == "release") == 2
    with runtime.sessions() as session:
        row = session.get(TradingStateRow, 1)
        assert (row.state, row.version, row.actor, row.reason) == ("ACTIVE", 2, OPERATOR, "feed back, loss understood")


def test_reducing_tightens_for_anyone_and_loosens_only_for_operators(runtime: Runtime) -> None:
    assert transitions.set_reducing(runtime, actor="watchdog:rule:drawdown", reason="drawdown").state_after == "REDUCING"
    assert current_state(runtime.redis, runtime.sessions) is TradingState.REDUCING
    order_guard(runtime.redis, runtime.sessions)(OrderRequest("r-1", SYMBOL, "sell", Decimal(1)))  # REDUCING passes the guard
    assert order_task_refusal(runtime.redis, runtime.sessions) is None
    with pytest.raises(transitions.ReleaseRefused):
        transitions.activate(runtime, actor="watchdog:rule:drawdown", reason="recovered")
    ks.engage(runtime, actor=OPERATOR, reason="now stop", broker=None, alert=lambda _e: None)
    with pytest.raises(transitions.KillSwitchError, match="release it"):
        transitions.set_reducing(runtime, actor=OPERATOR, reason="soften")
    with pytest.raises(transitions.KillSwitchError, match="only a release"):
        transitions.activate(runtime, actor=OPERATOR, reason="resume")
    assert transitions.release(runtime, actor=OPERATOR, reason="reduce only", to=TradingState.REDUCING).state_after == "REDUCING"
    assert transitions.activate(runtime, actor=OPERATOR, reason="resume").state_after == "ACTIVE"
    assert current_state(runtime.redis, runtime.sessions) is TradingState.ACTIVE


# ---- Redis lost, Redis down, database down -------------------------------------------------------


def test_flushed_redis_gets_the_engaged_state_back_from_the_database(runtime: Runtime) -> None:
    ks.engage(runtime, actor=OPERATOR, reason="stop", broker=None, alert=lambda _e: None)
    runtime.redis.flushdb()
    assert fast_state(runtime.redis) is TradingState.HALTED
    assert current_state(runtime.redis, runtime.sessions) is TradingState.HALTED
    assert runtime.redis.get(TRADING_STATE_KEY) == b"HALTED 1"


def test_redis_stopped_no_order_leaves(runtime: Runtime, private_redis: PrivateRedis) -> None:
    assert current_state(runtime.redis, runtime.sessions) is TradingState.ACTIVE
    guard = order_guard(runtime.redis, runtime.sessions)
    guard(OrderRequest("up-1", SYMBOL, "buy", Decimal(1)))  # passes while Redis answers
    private_redis.stop()
    assert fast_state(runtime.redis) is TradingState.HALTED
    assert current_state(runtime.redis, runtime.sessions) is TradingState.HALTED
    assert order_task_refusal(runtime.redis, runtime.sessions) is not None
    n, left = 20, 0
    for i in range(n):
        try:
            guard(OrderRequest(f"down-{i}", SYMBOL, "buy", Decimal(1)))
            left += 1
        except OrderBlocked:
            pass
    info = state_info(runtime.redis, runtime.sessions)
    print(f"Redis stopped: orders that passed the guard {left} of {n}")
    assert left == 0
    assert (info["state"], info["source"]) == ("HALTED", "unreadable")


def test_engage_while_redis_is_down_is_durable_and_holds_when_an_empty_redis_returns(runtime: Runtime, private_redis: PrivateRedis) -> None:
    private_redis.stop()
    result = ks.engage(runtime, actor=OPERATOR, reason="redis is down too", broker=None, alert=lambda _e: None)
    assert result.durable
    assert not result.redis_written
    assert "redis" in result.errors
    private_redis.start()
    assert runtime.redis.get(TRADING_STATE_KEY) is None
    assert current_state(runtime.redis, runtime.sessions) is TradingState.HALTED


def test_an_engage_whose_database_write_failed_is_made_durable_from_redis(
    runtime: Runtime, private_redis: PrivateRedis, migrated_pg_url: str, tmp_path: Path
) -> None:
    assert current_state(runtime.redis, runtime.sessions) is TradingState.ACTIVE
    dead_db = migrated_pg_url.rsplit("/", 1)[0] + f"/omni_missing_{uuid.uuid4().hex[:8]}"
    broken = make_runtime(private_redis.url, dead_db, tmp_path / "broken")
    result = ks.engage(broken, actor="watchdog:alarm:daily_loss", reason="db down", broker=None, alert=lambda _e: None)
    assert result.redis_written
    assert not result.durable
    assert current_state(runtime.redis, runtime.sessions) is TradingState.HALTED, "Redis blocks orders meanwhile"
    assert durable_state(runtime.sessions).state is TradingState.ACTIVE
    assert reconcile.make_durable_from_redis(runtime) is True
    assert durable_state(runtime.sessions).state is TradingState.HALTED
    assert reconcile.make_durable_from_redis(runtime) is False
    # Now it survives Redis losing everything.
    runtime.redis.flushdb()
    assert current_state(runtime.redis, runtime.sessions) is TradingState.HALTED
    broken.engine.dispose()


def test_release_sees_an_engage_the_database_missed(
    runtime: Runtime, private_redis: PrivateRedis, migrated_pg_url: str, tmp_path: Path
) -> None:
    current_state(runtime.redis, runtime.sessions)
    broken = make_runtime(private_redis.url, migrated_pg_url.rsplit("/", 1)[0] + "/omni_missing_db", tmp_path / "b")
    ks.engage(broken, actor=OPERATOR, reason="db down", broker=None, alert=lambda _e: None)
    result = transitions.release(runtime, actor=OPERATOR, reason="back")
    assert (result.state_before, result.changed) == ("HALTED", True), "Redis held a newer engage than the database"
    assert current_state(runtime.redis, runtime.sessions) is TradingState.ACTIVE
    broken.engine.dispose()


# ---- the model-based test ----------------------------------------------------------------------


class KillSwitchMachine(RuleBasedStateMachine):
    """Engage, release, reduce, activate, flush Redis, stop and start Redis: the state read never says
    ACTIVE while the model says HALTED (it reads exactly the model when Redis is up, HALTED when down)."""

    redis_server: PrivateRedis
    database_url: str
    data_dir: Path

    def __init__(self) -> None:
        super().__init__()
        clean_database(self.database_url)
        if self.redis_server.process is None:
            self.redis_server.start()
        self.redis_server.client().flushall()
        self.rt = make_runtime(self.redis_server.url, self.database_url, self.data_dir)
        self.model = TradingState.ACTIVE
        self.redis_up = True
        self.versions: list[int] = [0]

    def _db_version(self) -> int:
        with self.rt.sessions() as session:
            row = session.get(TradingStateRow, 1)
            return 0 if row is None else int(row.version)

    @rule(actor=st.sampled_from(["watchdog:alarm:daily_loss", OPERATOR, "http:127.0.0.1"]))
    def engage(self, actor: str) -> None:
        result = ks.engage(self.rt, actor=actor, reason="model", broker=None, alert=lambda _e: None)
        assert result.durable
        assert result.redis_written is self.redis_up
        self.model = TradingState.HALTED

    @rule(to=st.sampled_from([TradingState.ACTIVE, TradingState.REDUCING]))
    def operator_release(self, to: TradingState) -> None:
        result = transitions.release(self.rt, actor=OPERATOR, reason="model", to=to)
        assert result.redis_synced is self.redis_up
        if self.model is TradingState.HALTED:
            self.model = to
        assert result.state_after == self.model.value

    @rule(actor=st.sampled_from(["watchdog", "watchdog:rule:x", "alarm:x"]))
    def automatic_release(self, actor: str) -> None:
        with pytest.raises(transitions.ReleaseRefused):
            transitions.release(self.rt, actor=actor, reason="model")

    @rule(actor=st.sampled_from(["watchdog:rule:drawdown", OPERATOR]))
    def reduce(self, actor: str) -> None:
        if self.model is TradingState.HALTED:
            with pytest.raises(transitions.KillSwitchError):
                transitions.set_reducing(self.rt, actor=actor, reason="model")
            return
        transitions.set_reducing(self.rt, actor=actor, reason="model")
        self.model = TradingState.REDUCING

    @rule()
    def activate(self) -> None:
        if self.model is TradingState.HALTED:
            with pytest.raises(transitions.KillSwitchError):
                transitions.activate(self.rt, actor=OPERATOR, reason="model")
            return
        transitions.activate(self.rt, actor=OPERATOR, reason="model")
        self.model = TradingState.ACTIVE

    @rule()
    def redis_flush(self) -> None:
        if self.redis_up:
            self.rt.redis.flushall()

    @rule()
    def redis_down(self) -> None:
        if self.redis_up:
            self.redis_server.stop()
            self.redis_up = False

    @rule()
    def redis_up_again(self) -> None:
        if not self.redis_up:
            self.redis_server.start()  # empty: it keeps nothing on disk
            self.redis_up = True

    @invariant()
    def reads_follow_the_model_and_fail_closed(self) -> None:
        read = current_state(self.rt.redis, self.rt.sessions)
        fast = fast_state(self.rt.redis)
        if not self.redis_up:
            assert read is TradingState.HALTED
            assert fast is TradingState.HALTED
        else:
            assert read is self.model, f"read {read} while the model is {self.model}"
            assert fast is self.model, "current_state re-populated Redis"
        if self.model is TradingState.HALTED:
            assert read is not TradingState.ACTIVE
            assert fast is not TradingState.ACTIVE
        assert durable_state(self.rt.sessions).state is self.model
        version = self._db_version()
        assert version >= self.versions[-1], "the version never goes back"
        self.versions.append(version)

    def teardown(self) -> None:
        self.rt.engine.dispose()
        if not self.redis_up:
            self.redis_server.start()


def test_kill_switch_state_machine(private_redis: PrivateRedis, migrated_pg_url: str, tmp_path: Path) -> None:
    KillSwitchMachine.redis_server = private_redis
    KillSwitchMachine.database_url = migrated_pg_url
    KillSwitchMachine.data_dir = tmp_path / "machine"
    machine = KillSwitchMachine.TestCase()
    machine.settings = settings(max_examples=25, stateful_step_count=15, deadline=None, suppress_health_check=list(HealthCheck))
    machine.runTest()


# ---- alarms ---------------------------------------------------------------------------------------


def _alarm(kind: str = "daily_loss", severity: str = "critical", ts_ns: int | None = None) -> Alarm:
    return Alarm(kind=kind, severity=severity, source="stream", value=-1500.0, limit=-1000.0, ts_ns=ts_ns or time.time_ns())  # type: ignore[arg-type]


def _wait(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.01)


def test_listener_acts_on_critical_alarms_once_logs_warnings_and_ignores_garbage(private_redis: PrivateRedis) -> None:
    client = private_redis.client()
    critical: list[Alarm] = []
    warnings: list[Alarm] = []
    listener = AlarmListener(
        client_factory=private_redis.client, on_critical=critical.append, on_warning=warnings.append, coalesce_s=0
    ).start()
    other = AlarmListener(client_factory=private_redis.client, on_critical=critical.append, coalesce_s=0, owner="other").start()
    try:
        _wait(lambda: listener.subscribed.is_set() and other.subscribed.is_set())
        alarm = _alarm()
        assert publish_alarm(client, alarm) == 2
        client.publish("omni:safety:alarms", b"{not json")
        publish_alarm(client, _alarm("stale_stream", "warning"))
        _wait(lambda: len(critical) == 1 and len(warnings) == 1 and listener.counts["malformed"] == 1)
        # Both listeners have handled the critical alarm once the loser of the claim has counted it.
        _wait(lambda: listener.counts["claimed_elsewhere"] + other.counts["claimed_elsewhere"] >= 1)
        assert critical == [alarm], "two listeners, one action"
        assert listener.counts["claimed_elsewhere"] + other.counts["claimed_elsewhere"] == 1
        assert client.lrange(ALARM_LOG_KEY, 0, -1)[-1] == alarm.to_json().encode()
    finally:
        listener.stop()
        other.stop()


def test_listener_catches_up_on_alarms_published_while_it_was_away_and_survives_a_redis_restart(private_redis: PrivateRedis) -> None:
    client = private_redis.client()
    old = _alarm(ts_ns=time.time_ns() - 3_600 * 10**9)
    before_release = _alarm("error_storm", ts_ns=time.time_ns() - 2 * 10**9)
    missed = _alarm("daily_loss")
    for alarm in (old, before_release, missed):
        publish_alarm(client, alarm)
    released_at_ns = before_release.ts_ns + 10**9
    acted: list[Alarm] = []
    listener = AlarmListener(
        client_factory=private_redis.client, on_critical=acted.append, last_change_ns=lambda: released_at_ns, catchup_s=600, coalesce_s=0
    ).start()
    try:
        _wait(lambda: acted == [missed])
        private_redis.restart()
        # Re-subscribed, by redis-py's own reconnect or by the listener's loop.
        _wait(lambda: listener.subscribed.is_set() and listener.counts["subscriptions"] >= 2, timeout_s=20)
        after = _alarm("daily_loss")
        publish_alarm(private_redis.client(), after)
        _wait(lambda: acted == [missed, after], timeout_s=20)
        print(
            f"alarm listener: subscriptions {listener.counts['subscriptions']}, acted on {len(acted)} of 4 logged alarms "
            "(the one missed while away and the one after the Redis restart; one too old, one older than the last state change)"
        )
    finally:
        listener.stop()


def test_watchdog_listener_engages_on_a_critical_alarm(runtime: Runtime) -> None:
    broker = simulated_broker(runtime)
    serve_quote(runtime.redis, SYMBOL, Decimal("100.00"), Decimal("100.02"))
    for i in range(5):
        broker.submit(OrderRequest(f"l-rest-{i}", SYMBOL, "buy", Decimal(1), "limit", Decimal("95.00"), requested_by="test"))
    listener = start_watchdog_listener(runtime, purge=None, venue_factory=lambda rt: broker)
    try:
        _wait(listener.subscribed.is_set)
        lags: list[float] = []
        trials = 10
        for trial in range(trials):
            alarm = _alarm(ts_ns=time.time_ns())
            publish_alarm(runtime.redis, alarm)
            _wait(lambda: durable_state(runtime.sessions).state is TradingState.HALTED)
            with runtime.sessions() as session:
                event = session.scalars(select(KillEvent).where(KillEvent.action == "engage").order_by(KillEvent.id.desc()).limit(1)).one()
                lags.append((event.ts.timestamp() * 1e9 - alarm.ts_ns) / 1e6)
                assert event.actor == "watchdog:alarm:daily_loss"
            if trial == 0:
                _wait(lambda: broker.open_orders() == [])
            transitions.release(runtime, actor=OPERATOR, reason=f"trial {trial}")
        lags.sort()
        print(
            f"alarm published -> durable engage written (in-process listener): p50 {lags[len(lags) // 2]:.1f} ms, max {lags[-1]:.1f} ms over {trials} trials"
        )
        assert count(runtime, KillEvent, KillEvent.action == "release", KillEvent.actor.like("watchdog%")) == 0
    finally:
        listener.stop()


# ---- the health server's engage endpoint, in a real process --------------------------------------


def test_health_server_engages_with_a_bearer_token_and_shows_the_state(
    private_redis: PrivateRedis, migrated_pg_url: str, tmp_path: Path, omni_processes: list[Any]
) -> None:
    import http.client

    from tests.conftest import OmniProcess, service_env, wait_for

    clean_database(migrated_pg_url)
    token = secrets.token_urlsafe(32)
    port = free_port()
    env = service_env(
        redis_url=private_redis.url,
        database_url=migrated_pg_url,
        data_dir=tmp_path / "data",
        OMNI_METRICS_PORT=str(port),
        OMNI_KILL_HTTP_TOKEN=token,
    )
    server = OmniProcess(["server"], env, tmp_path / "logs" / "server.log").start()
    omni_processes.append(server)

    def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = json.loads(response.read() or b"{}")
        connection.close()
        return response.status, payload

    def up() -> bool:
        try:
            return request("GET", "/health")[0] in (200, 503)
        except OSError:
            return False

    wait_for(up, 40, message="the health server")
    assert request("GET", "/health")[1]["trading"]["state"] == "ACTIVE"
    assert request("POST", "/kill/engage", b'{"reason": "x"}', {"Authorization": "Bearer wrong"})[0] == 401
    assert request("POST", "/kill/engage", b'{"reason": "x"}')[0] == 401
    assert request("POST", "/kill/engage", b"{}", {"Authorization": f"Bearer {token}"})[0] == 400
    rt = make_runtime(private_redis.url, migrated_pg_url, tmp_path / "check")
    assert current_state(rt.redis, rt.sessions) is TradingState.ACTIVE, "no bad request engaged anything"
    status, payload = request(
        "POST", "/kill/engage", json.dumps({"reason": "risk desk call", "operator": "bob"}).encode(), {"Authorization": f"Bearer {token}"}
    )
    assert status == 200, payload
    assert (payload["durable"], payload["actor"], payload["reason"]) == (True, "http:bob", "risk desk call")
    assert current_state(rt.redis, rt.sessions) is TradingState.HALTED
    health = request("GET", "/health")[1]
    assert (health["trading"]["state"], health["trading"]["actor"]) == ("HALTED", "http:bob")
    assert "ENGAGED" in health["checks"]["kill_switch"]["detail"]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    exposition = connection.getresponse().read().decode()
    assert "omni_trading_state 2.0" in exposition
    assert "omni_kill_switch_engaged 1.0" in exposition
    transitions.release(rt, actor=OPERATOR, reason="checked")
    connection.request("GET", "/metrics")
    exposition = connection.getresponse().read().decode()
    assert "omni_trading_state 0.0" in exposition
    assert "omni_kill_switch_engaged 0.0" in exposition
    connection.close()
    assert token not in server.log_text()
    rt.engine.dispose()


def test_drill_rehearses_on_a_scratch_world_and_leaves_the_real_state_untouched(runtime: Runtime, tmp_path: Path) -> None:
    from tests.conftest import REPO_ROOT, service_env

    ks.engage(runtime, actor=OPERATOR, reason="real halt before the drill", broker=None, alert=lambda _e: None)
    real_before = (runtime.redis.get(TRADING_STATE_KEY), durable_state(runtime.sessions))
    changes_before = counters.read_all(runtime.redis)["omni_kill_switch_changes"]
    assert changes_before == {("engage", "operator"): 1.0}, "the real engage is counted"
    env = service_env(redis_url=runtime.settings.broker_url, database_url=runtime.settings.database_url, data_dir=tmp_path / "data")
    drill = subprocess.run(
        [sys.executable, "-m", "omni_tasks", "kill", "drill", "--orders", "15", "--operator", "dora", "--json"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert drill.returncode == 0, drill.stdout + drill.stderr
    # The rehearsal's own engage, refused order and release are in the log file only (drill=true), not on the terminal.
    assert drill.stderr == ""
    drill_log = [json.loads(line) for line in (tmp_path / "data" / "logs" / "omni-cli.log").read_text().splitlines()]
    assert {"kill switch engaged", "trading state release"} <= {r["event"] for r in drill_log if r.get("drill")}
    report = json.loads(drill.stdout)
    assert report["passed"] is True
    assert (report["placed_resting"], report["cancelled_verified"], report["open_after_engage"]) == (15, 15, 0)
    assert (report["blocked_after_engage"], report["positions_after_flatten"], report["state_after_release"]) == (1, 0, "ACTIVE")
    assert report["alerts_produced"] == 1
    assert report["real_state_untouched"] is True
    assert report["real_state_before"] == {"redis": "HALTED 1", "database": "HALTED 1"}
    for step in ("redis", "durable", "cancel_requested", "snapshot", "cancelled_confirmed", "flatten", "purge", "total", "release"):
        assert report["timings_ms"][step] >= 0
    print(f"omni kill drill (15 orders): {report['timings_ms']}")
    assert (runtime.redis.get(TRADING_STATE_KEY), durable_state(runtime.sessions)) == real_before
    # The rehearsal's engage and release are counted in its scratch Redis: the real counter is unchanged;
    # the drill is counted apart, and the CLI process left no metric file.
    shared = counters.read_all(runtime.redis)
    print(
        f"real kill switch changes counted during the drill: {sum(shared['omni_kill_switch_changes'].values()) - 1:g} "
        f"(engage by operator: {shared['omni_kill_switch_changes'].get(('engage', 'operator'), 0):g} before and after); "
        f"drills counted: {shared['omni_kill_switch_drills']}"
    )
    assert shared["omni_kill_switch_changes"] == changes_before
    assert shared["omni_kill_switch_drills"] == {("passed",): 1.0}
    assert sorted(Path(env["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db")) == []
    with runtime.sessions() as session:
        drills = session.scalars(select(KillEvent).where(KillEvent.action == "drill")).all()
        assert [(d.actor, d.state_before, d.state_after, d.detail["passed"]) for d in drills] == [
            ("operator:dora", "HALTED", "HALTED", True)
        ]
        snapshots = session.scalars(select(EmergencySnapshot)).all()
        assert [s.open_orders for s in snapshots] == [[]], "only the real engage's snapshot: the drill's stayed in its scratch world"
    assert not Path(report["scratch_dir"]).exists()
    status = subprocess.run(
        [sys.executable, "-m", "omni_tasks", "status", "--json"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    trading = json.loads(status.stdout)["trading"]
    assert (trading["state"], trading["actor"], trading["reason"]) == ("HALTED", OPERATOR, "real halt before the drill")


def test_without_a_token_the_health_server_has_no_engage_endpoint(
    private_redis: PrivateRedis, migrated_pg_url: str, tmp_path: Path, omni_processes: list[Any]
) -> None:
    import http.client

    from tests.conftest import OmniProcess, service_env, wait_for

    port = free_port()
    env = service_env(redis_url=private_redis.url, database_url=migrated_pg_url, data_dir=tmp_path / "data", OMNI_METRICS_PORT=str(port))
    omni_processes.append(OmniProcess(["server"], env, tmp_path / "logs" / "server.log").start())

    def post() -> int | None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("POST", "/kill/engage", body=b'{"reason": "x"}', headers={"Authorization": "Bearer " + "x" * 32})
            return connection.getresponse().status
        except OSError:
            return None

    wait_for(lambda: post() is not None, 40, message="the health server")
    assert post() == 404


def test_concurrent_engages_from_threads_make_one_engaged_period(runtime: Runtime) -> None:
    results: list[ks.EngageResult] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        result = ks.engage(runtime, actor=f"operator:t{i}", reason="race", broker=None, alert=lambda _e: None)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.durable for r in results)
    assert sum(1 for r in results if not r.repeat) == 1
    assert {r.version for r in results} == {1}
    assert count(runtime, KillEvent, KillEvent.action == "engage") == 8
    print(f"concurrent engages: {len(results)} requests, engaged periods 1")


# ---- 100 orders in flight through real orders workers ---------------------------------------------


def test_engage_while_100_orders_are_submitted_concurrently_accepts_none_after_the_kill(
    private_redis: PrivateRedis, migrated_pg_url: str, tmp_path: Path, omni_processes: list[Any]
) -> None:
    from omni_tasks.pipeline.app import create_app
    from omni_tasks.pipeline.broker import broker_transport_options
    from omni_tasks.trading.wiring import make_venue
    from tests.conftest import OmniProcess, service_env, wait_for, wait_for_worker

    clean_database(migrated_pg_url)
    limits = {
        "OMNI_RISK_MAX_TRADES_PER_DAY": "1000",
        "OMNI_RISK_MAX_POSITION_NOTIONAL_USD": "1000000",
        "OMNI_RISK_MAX_CONCENTRATION_PCT": "100",
        "OMNI_RISK_MAX_GROSS_LEVERAGE": "10",
        "OMNI_RISK_QUOTE_MAX_AGE_S": "30",
        "OMNI_TRADING_QUOTE_MAX_AGE_S": "30",
    }
    env = service_env(
        redis_url=private_redis.url, database_url=migrated_pg_url, data_dir=tmp_path / "data", OMNI_LOG_LEVEL="WARNING", **limits
    )
    client = private_redis.client()
    workers = [
        OmniProcess(["worker", "orders", "--concurrency", "3"], env, tmp_path / "logs" / f"orders-{i}.log").start() for i in range(2)
    ]
    omni_processes.extend(workers)
    for worker in workers:
        wait_for_worker(client, "orders", worker, timeout_s=60)
    rt = make_runtime(private_redis.url, migrated_pg_url, tmp_path / "observer", OMNI_KILL_POLL_INTERVAL_MS="5", **limits)
    assert current_state(rt.redis, rt.sessions) is TradingState.ACTIVE
    stop_quotes = threading.Event()

    def keep_quoting() -> None:
        while not stop_quotes.is_set():
            serve_quote(private_redis.client(), SYMBOL, Decimal("100.00"), Decimal("100.02"))
            stop_quotes.wait(0.2)

    quoting = threading.Thread(target=keep_quoting, daemon=True)
    quoting.start()
    sender = create_app(load_settings(env))
    n = 100
    run = uuid.uuid4().hex[:6]
    ids = [f"k{run}-{i:03d}" for i in range(n)]
    resting_ids = {oid for i, oid in enumerate(ids) if i % 5 in (1, 3)}  # 40 limit buys below the ask: they rest
    try:
        for oid in ids:
            args = (
                [SYMBOL, "buy", "1", "limit", "99.60", oid, "test"]
                if oid in resting_ids
                else [SYMBOL, "buy", "1", "market", None, oid, "test"]
            )
            sender.send_task("omni.orders.submit", args=args, queue="orders")

        def decided() -> int:
            return count(rt, Order, Order.client_order_id.like(f"k{run}-%"), Order.status != "pending")

        wait_for(lambda: decided() >= 30, 60, interval_s=0.002, message="30 orders decided")
        broker = make_venue(rt)
        purge = orders_purger(rt.settings.broker_url, "orders", broker_transport_options(rt.settings))
        result = ks.engage(rt, actor=OPERATOR, reason="100 orders in flight", broker=broker, purge=purge, alert=lambda _e: None)
        assert result.complete, result.errors
        halted_at_ns = result.halted_at_ns
        assert halted_at_ns is not None

        def settled_signature() -> tuple[int, int, int]:
            with rt.sessions() as session:
                rows = session.scalars(select(Order).where(Order.client_order_id.like(f"k{run}-%"))).all()
                refused = session.scalar(
                    select(func.count())
                    .select_from(OrderEvent)
                    .where(OrderEvent.client_order_id.like(f"k{run}-%"), OrderEvent.event == "refused")
                )
            return len(rows), sum(1 for r in rows if r.status == "pending"), int(refused or 0)

        last: list[tuple[int, int, int]] = []

        def settled() -> bool:
            signature = settled_signature()
            last.append(signature)
            return client.llen("orders") == 0 and signature[1] == 0 and len(last) >= 8 and len(set(last[-8:])) == 1

        wait_for(settled, 90, interval_s=0.25, message="every order task to be decided, refused or purged")
    finally:
        stop_quotes.set()
        sender.close()

    with rt.sessions() as session:
        rows = {r.client_order_id: r for r in session.scalars(select(Order).where(Order.client_order_id.like(f"k{run}-%"))).all()}
        events = session.scalars(select(OrderEvent).where(OrderEvent.client_order_id.like(f"k{run}-%"))).all()
        fills = session.execute(
            select(Order.client_order_id, Fill.ts).join(Fill, Fill.order_id == Order.id).where(Order.client_order_id.like(f"k{run}-%"))
        ).all()
    refused = {e.client_order_id for e in events if e.event == "refused" and e.check == "kill_switch"}
    denied_by = {e.client_order_id: e.check for e in events if e.event == "denied"}
    halted_at = halted_at_ns / 1e9
    outcome: dict[str, str] = {}
    for oid in ids:
        row = rows.get(oid)
        if row is None:
            outcome[oid] = "refused before it started" if oid in refused else "purged from the queue"
        elif row.status == "filled":
            outcome[oid] = "filled before the kill"
        elif row.status == "cancelled":
            outcome[oid] = "rested, cancelled by the engage"
        elif row.status == "denied" and denied_by.get(oid) in ("kill_switch", "trading_state"):
            outcome[oid] = "denied by the pre-trade kill switch check"
        elif row.status == "rejected" and "HALTED" in (row.reason or ""):
            outcome[oid] = "blocked by the broker's guard"
        else:
            outcome[oid] = f"unexpected: {row.status} {denied_by.get(oid)} {row.reason}"
    accepted_after = {oid for oid, ts in fills if ts.timestamp() > halted_at} | {
        oid for oid, row in rows.items() if row.submitted_at is not None and row.submitted_at.timestamp() > halted_at
    }
    cancelled = [oid for oid, what in outcome.items() if what == "rested, cancelled by the engage"]
    breakdown: dict[str, int] = {}
    for what in outcome.values():
        breakdown[what] = breakdown.get(what, 0) + 1
    print(f"engage during 100 concurrent submissions: {breakdown}; engage timings (ms): {result.timings_ms}")
    print(f"accepted after kill: {len(accepted_after)} of {n}")
    print(
        f"open orders cancelled and verified: {len(cancelled)} of {result.open_orders_before} open at the engage; open now: {len(broker.open_orders())}"
    )
    assert accepted_after == set()
    assert not [what for what in outcome.values() if what.startswith("unexpected")], breakdown
    assert broker.open_orders() == []
    assert len(cancelled) == result.open_orders_before
    assert sum(1 for what in outcome.values() if what == "purged from the queue") == result.purged
    assert all(rows[oid].status == "filled" for oid, _ in fills)
    assert breakdown.get("filled before the kill", 0) >= 1, "the engage came while orders were flowing"
    assert n - breakdown.get("filled before the kill", 0) - len(cancelled) >= 1, "some orders were still in flight at the engage"
    rt.engine.dispose()
