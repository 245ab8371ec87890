"""A fill triggers a risk recalculation at any hour, debounced: real orders and risk workers on real Redis and PostgreSQL.

The test runs whatever the clock says (a night or weekend included): the
minute beat entry would skip there, the fill-triggered refresh must not.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from omni_tasks.core.keys import RISK_LATEST_KEY, RISK_REFRESH_PENDING_KEY
from omni_tasks.risk.refresh import claim_refresh
from omni_tasks.settings import load_settings
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine
from omni_tasks.storage.models import RiskSnapshot
from tests.conftest import OmniProcess, service_env, wait_for, wait_for_worker
from tests.integration.test_orders_worker import put_quote

pytestmark = [pytest.mark.services, pytest.mark.slow]

WINDOW_S = 2.0


def test_claim_opens_one_window_and_expires_with_it(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.delete(RISK_REFRESH_PENDING_KEY)
        assert claim_refresh(client, 0.3, by="first")
        assert not claim_refresh(client, 0.3, by="second"), "a second fill inside the window must share the scheduled run"
        assert client.get(RISK_REFRESH_PENDING_KEY) == b"first"
        assert 0 < client.pttl(RISK_REFRESH_PENDING_KEY) <= 300
        wait_for(lambda: client.get(RISK_REFRESH_PENDING_KEY) is None, 5, message="the claim to expire with its window")
        assert claim_refresh(client, 0.3, by="third"), "a fill after the window opens a new one"
        client.delete(RISK_REFRESH_PENDING_KEY)
        assert not claim_refresh(client, 0, by="off"), "0 turns the refresh off"
        assert client.get(RISK_REFRESH_PENDING_KEY) is None
    finally:
        client.close()


@pytest.fixture
def desk(redis_url: str, pg_database: Callable[[], str], tmp_path: Path) -> Iterator[tuple[dict[str, str], redis.Redis, object]]:
    database_url = pg_database()
    engine = make_engine(database_url)
    migrations.upgrade(engine)
    env = service_env(
        redis_url=redis_url, database_url=database_url, data_dir=tmp_path / "data", OMNI_LOG_LEVEL="WARNING",
        OMNI_RISK_FILL_REFRESH_S=str(WINDOW_S), OMNI_RISK_QUOTE_MAX_AGE_S="60", OMNI_TRADING_QUOTE_MAX_AGE_S="60",
        OMNI_STREAM_STALE_AFTER_S="600",
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.delete(RISK_LATEST_KEY, RISK_REFRESH_PENDING_KEY)
    workers = [OmniProcess(["worker", kind], env, tmp_path / "logs" / f"{kind}.log").start() for kind in ("orders", "risk")]
    try:
        for kind, proc in zip(("orders", "risk"), workers, strict=True):
            wait_for_worker(client, kind, proc)
        yield env, client, engine
    finally:
        for proc in workers:
            proc.stop()
        client.close()
        engine.dispose()


def test_fills_at_any_hour_trigger_one_debounced_risk_snapshot_showing_the_positions(
    desk: tuple[dict[str, str], redis.Redis, object],
) -> None:
    from omni_tasks.pipeline.app import create_app

    env, client, engine = desk
    sender = create_app(load_settings(env))

    def snapshots() -> int:
        with engine.connect() as connection:  # type: ignore[attr-defined]
            return int(connection.execute(select(func.count()).select_from(RiskSnapshot)).scalar_one())

    try:
        put_quote(client, "AAPL", "189.99", "190.01")
        put_quote(client, "MSFT", "409.95", "410.05")
        started = time.monotonic()
        results = [
            sender.send_task(
                "omni.orders.submit",
                queue="orders",
                kwargs={
                    "symbol": symbol,
                    "side": "buy",
                    "qty": qty,
                    "order_type": "market",
                    "limit_price": None,
                    "client_order_id": f"fill-{uuid.uuid4().hex[:16]}",
                    "requested_by": "test",
                },
            )  # fmt: skip
            for symbol, qty in (("AAPL", "1"), ("AAPL", "2"), ("MSFT", "3"))
        ]
        outcomes = [r.get(timeout=60) for r in results]
        fills_took = time.monotonic() - started
        assert [o["status"] for o in outcomes] == ["filled"] * 3, outcomes

        def latest() -> dict[str, object] | None:
            raw = client.get(RISK_LATEST_KEY)
            return json.loads(raw) if raw else None

        waited = wait_for(
            lambda: (latest() or {}).get("positions") == 2, 60, interval_s=0.1, message="a risk snapshot showing both positions"
        )
        summary = latest()
        assert summary is not None
        assert summary["gross_exposure"] == pytest.approx(3 * 190.0 + 3 * 410.0, rel=0.01)

        # Let any second window close and its run finish, then count: at most one run per window the fills spanned.
        def settled() -> bool:
            in_flight = [json.loads(raw)[2] for raw in client.hvals("unacked")]  # kombu keeps [message, exchange, routing key]
            return client.get(RISK_REFRESH_PENDING_KEY) is None and client.llen("risk") == 0 and "risk" not in in_flight

        wait_for(settled, 30, interval_s=0.1, message="every scheduled risk run to finish")
        taken = snapshots()
        windows = int(fills_took // WINDOW_S) + 1
        print(
            f"\nfills 3 in {fills_took:.2f} s; risk snapshots taken after them: {taken} (at most {windows} windows of {WINDOW_S:g} s); "
            f"snapshot with the positions {waited:.2f} s after the last fill"
        )
        assert 1 <= taken <= windows
    finally:
        sender.close()
