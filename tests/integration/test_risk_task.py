"""Risk recalculation through a real risk worker on real Redis and PostgreSQL, with the simulated broker.

One PostgreSQL database for the module (migrated in process), 60 sessions of
daily bars for AAA, BBB and the benchmark SPY (one ``BarStore.upsert``),
positions opened through the simulated broker's public API (market orders
filled against quotes written to Redis in the stream's latest-quote format),
one real ``omni worker risk``; every recalculation goes through the
``omni risk`` CLI as a subprocess. No watchdog worker runs, so a watchdog
evaluation enqueued by a breach waits in the ``watchdog`` queue, where the
test reads it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.bars import canonical_bars
from omni_tasks.contracts.quotes import quote_key
from omni_tasks.contracts.venue import OrderRequest
from omni_tasks.core.keys import RISK_LATEST_KEY
from omni_tasks.marketdata import calendar
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import RiskSnapshot, SeriesValidation
from omni_tasks.trading.simulated import SimulatedVenue
from tests.conftest import REPO_ROOT, OmniProcess, service_env, wait_for_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

SESSIONS = 60
STARTING_CASH = Decimal("100000")


@dataclass(frozen=True)
class RiskSetup:
    env: dict[str, str]
    engine: Engine
    sessions: sessionmaker[Session]
    client: redis.Redis
    broker: SimulatedVenue
    closes: pd.DataFrame  # session x symbol
    tmp: Path


def _omni(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # fixed argv
        [sys.executable, "-m", "omni_tasks", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def _payload(done: subprocess.CompletedProcess[str]) -> Any:
    """The JSON document `omni risk --json` prints (it starts on a line of its own; log lines may come before it)."""
    lines = done.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line in ("{", "[", "[]")]
    assert starts, f"no JSON in the output (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    value, _ = json.JSONDecoder().raw_decode("\n".join(lines[starts[0] :]))
    return value


def _closes() -> pd.DataFrame:
    """Seeded random-walk closes for the last SESSIONS sessions before today (AAA and BBB independent, SPY)."""
    today = datetime.now(tz=UTC).date()
    days = calendar.sessions(today - timedelta(days=140), today - timedelta(days=1))[-SESSIONS:]
    rng = np.random.default_rng(42)
    paths = {
        "AAA": 100.0 * np.exp(np.cumsum(rng.normal(0, 0.015, SESSIONS))),
        "BBB": 60.0 * np.exp(np.cumsum(rng.normal(0, 0.02, SESSIONS))),
        "SPY": 500.0 * np.exp(np.cumsum(rng.normal(0, 0.01, SESSIONS))),
    }
    frame = pd.DataFrame({s: np.round(p, 2) for s, p in paths.items()}, index=pd.DatetimeIndex(days))
    return frame


def _bars(closes: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for symbol in closes.columns:
        c = closes[symbol].to_numpy()
        raw = pd.DataFrame({"ts": closes.index, "open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": 1e6})
        frames.append(canonical_bars(raw, symbol=symbol, timeframe="1Day", provider="synthetic", feed="synthetic", adjustment="raw"))
    return pd.concat(frames, ignore_index=True)


def _write_quote(client: redis.Redis, symbol: str, mid: str, half_spread: str = "0.01") -> None:
    """A latest quote as the streaming worker serves it (omni_tasks.contracts.quotes), fresh now."""
    now = time.time_ns()
    m, h = Decimal(mid), Decimal(half_spread)
    fields = {
        "bid": str(m - h), "ask": str(m + h), "bid_size": "100", "ask_size": "100", "ts": str(now), "recv": str(now),
        "mid": str(m), "spread_bps": str(float(2 * h / m * 10000)), "vwap": "", "liq": "",
    }  # fmt: skip
    client.hset(quote_key(symbol), mapping=fields)
    client.expire(quote_key(symbol), 600)


def _buy(broker: SimulatedVenue, symbol: str, qty: str, tag: str) -> None:
    order = broker.submit(OrderRequest(client_order_id=f"risk-test-{tag}", symbol=symbol, side="buy", qty=Decimal(qty)))
    assert order.status == "filled", order


def _watchdog_ticks(client: redis.Redis) -> list[dict[str, Any]]:
    """omni.watchdog.tick messages waiting in the watchdog queue (kombu's Redis list)."""
    out = []
    for raw in client.lrange("watchdog", 0, -1):
        message = json.loads(raw)
        if message.get("headers", {}).get("task") == "omni.watchdog.tick":
            out.append(message)
    return out


def _snapshot_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(RiskSnapshot)).scalar_one())


@pytest.fixture(scope="module")
def setup(redis_url: str, pg_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RiskSetup]:
    tmp = tmp_path_factory.mktemp("risk-worker")
    database_url = pg_database()
    engine = make_engine(database_url)
    migrations.upgrade(engine)
    closes = _closes()
    BarStore(engine).upsert(_bars(closes))
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    for key in client.scan_iter("omni:quote:*"):
        client.delete(key)
    client.delete(RISK_LATEST_KEY, "watchdog")
    # Quotes stay fresh for the whole test: a loaded machine can take seconds to start each `omni risk` process,
    # and a quote that aged past OMNI_STREAM_STALE_AFTER_S would (rightly) be replaced by the last close.
    env = service_env(redis_url=redis_url, database_url=database_url, data_dir=tmp / "data", OMNI_STREAM_STALE_AFTER_S="600")
    sessions = session_factory(engine)
    broker = SimulatedVenue(sessions, client, starting_cash=STARTING_CASH, quote_max_age_s=5.0)
    try:
        yield RiskSetup(env, engine, sessions, client, broker, closes, tmp)
    finally:
        engine.dispose()
        client.close()


@pytest.fixture(scope="module")
def worker(setup: RiskSetup) -> Iterator[OmniProcess]:
    proc = OmniProcess(["worker", "risk"], setup.env, setup.tmp / "logs" / "risk.log").start()
    try:
        wait_for_worker(setup.client, "risk", proc)
        yield proc
    finally:
        proc.stop()


def test_recalc_with_no_risk_worker_says_so_and_the_request_expires(setup: RiskSetup) -> None:
    started = time.monotonic()
    done = _omni(setup.env, "risk", "--recalc", "--timeout", "3")
    waited = time.monotonic() - started
    assert done.returncode == 3, done.stdout + done.stderr
    text = " ".join((done.stdout + done.stderr).split())
    assert "no risk worker answered within 3 s" in text
    assert "no risk worker is running: start one with `omni worker risk`" in text
    assert _snapshot_rows(setup.engine) == 0
    print(f"\nrecalc without a risk worker: exit 3 after {waited:.1f} s (timeout 3 s), snapshots written 0")


def test_snapshot_of_a_small_portfolio_has_the_expected_exposure_and_var(setup: RiskSetup, worker: OmniProcess) -> None:
    client, broker, closes = setup.client, setup.broker, setup.closes
    _write_quote(client, "AAA", "100.00")
    _write_quote(client, "BBB", "60.00")
    _buy(broker, "AAA", "50", "aaa-1")
    _buy(broker, "BBB", "40", "bbb-1")
    client.delete(quote_key("BBB"))  # BBB has no fresh quote now: it is marked at its last daily close
    cash = broker.account().cash
    assert cash == STARTING_CASH - Decimal("50") * Decimal("100.01") - Decimal("40") * Decimal("60.01")

    done = _omni(setup.env, "risk", "--recalc", "--json", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    latest = _payload(done)
    bbb_close = Decimal(str(closes["BBB"].iloc[-1]))
    aaa_value, bbb_value = Decimal("50") * Decimal("100.00"), Decimal("40") * bbb_close
    equity = cash + aaa_value + bbb_value
    assert latest["source"] == "redis"
    assert latest["breaches"] == []
    assert latest["positions"] == 2
    assert Decimal(latest["equity"]) == equity
    assert latest["gross_exposure"] == pytest.approx(float(aaa_value + bbb_value), abs=1e-6)
    assert latest["mark_sources"] == {"quote": 1, "close": 1, "broker": 0, "cost": 0}
    figures = latest["figures"]
    assert figures["marks"]["BBB"]["source"] == "close"
    assert figures["marks"]["BBB"]["price"] == str(bbb_close)
    assert figures["marks"]["AAA"] == {"price": "100.00", "source": "quote", "as_of": figures["marks"]["AAA"]["as_of"]}
    assert figures["history_days"] == SESSIONS - 1

    # VaR/ES from the worker equal a direct computation over the same closes.
    returns = closes[["AAA", "BBB"]].pct_change().iloc[1:]
    losses = -(returns * [float(aaa_value), float(bbb_value)]).sum(axis=1)
    var_95 = float(losses.quantile(0.95))
    assert latest["var_95"] == pytest.approx(var_95, rel=1e-9)
    assert latest["es_95"] == pytest.approx(float(losses[losses >= var_95].mean()), rel=1e-9)
    assert latest["var_99"] == pytest.approx(float(losses.quantile(0.99)), rel=1e-9)
    assert figures["beta"] is not None
    assert figures["max_pair"] == ["AAA", "BBB"]

    with setup.sessions() as session:
        rows = session.execute(select(RiskSnapshot)).scalars().all()
    assert len(rows) == 1, "one snapshot: the expired request from the first test never ran"
    row = rows[0]
    assert row.id == latest["id"]
    assert row.broker == "simulated"
    assert row.equity == equity
    assert row.gross_exposure == pytest.approx(float(aaa_value + bbb_value), abs=1e-6)
    assert row.net_exposure == row.gross_exposure
    assert row.var_95 == pytest.approx(var_95, rel=1e-9)
    assert row.breaches == []
    assert _watchdog_ticks(client) == [], "no breach, no watchdog evaluation"
    print(
        f"\nrisk snapshot {row.id}: 2 positions, gross ${row.gross_exposure:,.2f}, equity ${row.equity:,.2f}, "
        f"VaR95 ${row.var_95:,.2f} (direct ${var_95:,.2f}), marks 1 quote + 1 close; watchdog ticks enqueued 0"
    )


def test_a_breach_is_stored_and_enqueues_a_watchdog_evaluation_at_once(setup: RiskSetup, worker: OmniProcess) -> None:
    client, broker = setup.client, setup.broker
    _write_quote(client, "AAA", "100.00")
    _buy(broker, "AAA", "150", "aaa-2")  # 200 AAA at 100.00 = $20,000: above the $10,000 per-position limit
    before = len(_watchdog_ticks(client))

    done = _omni(setup.env, "risk", "--recalc", "--json", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    latest = _payload(done)
    assert [b["rule"] for b in latest["breaches"]] == ["position_notional"]
    breach = latest["breaches"][0]
    assert breach["value"] == pytest.approx(20000.0)
    assert breach["limit"] == 10000.0
    assert breach["message"] == "AAA is $20,000.00, above the $10,000.00 per-position limit"
    assert latest["risk_score"] >= 0.5  # the position-notional weight: one limit at (over) 100%

    ticks = _watchdog_ticks(client)
    assert len(ticks) == before + 1
    body = json.loads(base64.b64decode(ticks[-1]["body"]))
    assert body[0] == []
    assert body[1] == {}
    assert ticks[-1]["properties"]["delivery_info"]["routing_key"] == "watchdog"

    with setup.sessions() as session:
        row = session.execute(select(RiskSnapshot).order_by(RiskSnapshot.id.desc()).limit(1)).scalar_one()
    assert row.id == latest["id"]
    assert [b["rule"] for b in row.breaches] == ["position_notional"]
    stored = json.loads(client.get(RISK_LATEST_KEY))
    assert stored["id"] == row.id

    table = _omni(setup.env, "risk")
    assert table.returncode == 0, table.stdout + table.stderr
    assert "position_notional" in table.stdout
    assert "1 limit breach(es)" in table.stdout
    history = _omni(setup.env, "risk", "--history", "5", "--json")
    assert history.returncode == 0, history.stdout + history.stderr
    rows = _payload(history)
    assert [r["id"] for r in rows] == [row.id, row.id - 1]
    assert [len(r["breaches"]) for r in rows] == [1, 0]
    print(
        f"\nbreach: position_notional $20,000 > $10,000 in snapshot {row.id}; watchdog ticks enqueued {len(ticks) - before} of 1 breached snapshot"
    )


def test_latest_snapshot_falls_back_to_the_database_when_redis_has_none(setup: RiskSetup, worker: OmniProcess) -> None:
    assert setup.client.delete(RISK_LATEST_KEY) == 1
    done = _omni(setup.env, "risk", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    latest = _payload(done)
    assert latest["source"] == "database"
    with setup.sessions() as session:
        newest = session.execute(select(RiskSnapshot).order_by(RiskSnapshot.id.desc()).limit(1)).scalar_one()
    assert latest["id"] == newest.id
    assert [b["rule"] for b in latest["breaches"]] == ["position_notional"]
    assert latest["var_99"] == newest.metrics["var_99_hist"]
    assert latest["mark_sources"] == newest.metrics["mark_sources"]


class _RedisDown:
    """A Redis client whose server is gone: every call fails as redis-py does."""

    def get(self, key: str) -> None:
        raise redis.ConnectionError(f"Error 111 connecting to 127.0.0.1:1. Connection refused. (reading {key})")


@dataclass(frozen=True)
class _Runtime:
    redis: Any
    sessions: sessionmaker[Session]


def test_snapshot_in_process_on_sqlite_and_the_database_fallback_when_redis_is_down(redis_url: str, tmp_path: Path) -> None:
    """The embedded mode's database (SQLite): build and store a snapshot, then read it back with Redis unreachable."""
    from omni_tasks.risk.snapshot import build_snapshot, latest_snapshot, save_snapshot
    from omni_tasks.settings import RiskSettings

    engine = make_engine(f"sqlite:///{tmp_path / 'omni.sqlite3'}")
    migrations.upgrade(engine)
    closes = _closes().rename(columns={"AAA": "CCC", "BBB": "DDD"})
    BarStore(engine).upsert(_bars(closes))
    sessions = session_factory(engine)
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        broker = SimulatedVenue(sessions, client, name="sim-sqlite", starting_cash=STARTING_CASH, quote_max_age_s=5.0)
        _write_quote(client, "CCC", "50.00")
        _buy(broker, "CCC", "100", "sqlite-ccc")
        client.delete(quote_key("CCC"))
        assert _runtime_latest_is_none(sessions)
        with sessions() as session, session.begin():
            # CCC's latest daily validation failed: the snapshot is computed but says it rests on that data.
            session.add(
                SeriesValidation(
                    symbol="CCC",
                    timeframe="1Day",
                    status="failed",
                    checked_at=datetime.now(tz=UTC),
                    through=datetime.now(tz=UTC).date(),
                    reason="3 OHLC breaks",
                )
            )
            session.add(
                SeriesValidation(
                    symbol="DDD",
                    timeframe="1Day",
                    status="failed",
                    checked_at=datetime.now(tz=UTC),
                    through=datetime.now(tz=UTC).date(),
                    reason="not held",
                )
            )
        result = build_snapshot(broker, redis=client, store=BarStore(engine), sessions=sessions, risk=RiskSettings(), quote_max_age_s=10.0)
        snapshot_id = save_snapshot(sessions, result)
    finally:
        client.close()
    ccc_close = Decimal(str(closes["CCC"].iloc[-1]))
    assert result.marks["CCC"].source == "close"
    assert result.metrics.gross_exposure == pytest.approx(float(100 * ccc_close))
    assert result.metrics.var["var_95_hist"] is not None
    assert result.stale_input == {"CCC": "3 OHLC breaks"}
    assert result.figures()["stale_input"] == {"CCC": "3 OHLC breaks"}
    latest = latest_snapshot(_Runtime(_RedisDown(), sessions))
    assert latest is not None
    assert latest["source"] == "database"
    assert latest["id"] == snapshot_id
    assert latest["broker"] == "sim-sqlite"
    assert Decimal(latest["equity"]) == result.metrics.equity
    assert latest["var_95"] == result.metrics.var["var_95_hist"]
    assert latest["mark_sources"] == {"quote": 0, "close": 1, "broker": 0, "cost": 0}
    assert latest["stale_input"] == ["CCC"]
    engine.dispose()


def _runtime_latest_is_none(sessions: sessionmaker[Session]) -> bool:
    from omni_tasks.risk.snapshot import latest_snapshot

    return latest_snapshot(_Runtime(_RedisDown(), sessions)) is None
