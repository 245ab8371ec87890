"""The day's trade limit on the real order path, on PostgreSQL and on SQLite: decided exactly at the limit.

The order path counts today's trades only up to the limit (the decision needs no more, and
the count's cost stays bounded by the limit instead of growing with the day's orders); the
count must still be exact below the limit and the decision exact at it, with orders from
earlier days and from another venue left out.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import insert

from omni_tasks.contracts.venue import OrderRequest
from omni_tasks.core.runtime import Runtime
from omni_tasks.safety.drill import serve_quote
from omni_tasks.safety.killswitch import current_state
from omni_tasks.safety.order_guard import order_guard
from omni_tasks.storage.models import Order
from omni_tasks.trading.orders import OrderSubmitter
from omni_tasks.trading.wiring import make_venue

pytestmark = [pytest.mark.services]

LIMIT = 3
LIMITS = {
    "OMNI_RISK_MAX_TRADES_PER_DAY": str(LIMIT),
    "OMNI_RISK_MAX_POSITION_NOTIONAL_USD": "100000000",
    "OMNI_RISK_MAX_CONCENTRATION_PCT": "100",
    "OMNI_RISK_MAX_GROSS_LEVERAGE": "100",
    "OMNI_RISK_QUOTE_MAX_AGE_S": "600",
    "OMNI_TRADING_QUOTE_MAX_AGE_S": "600",
    "OMNI_LOG_LEVEL": "WARNING",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def runtime(request: pytest.FixtureRequest, desk_runtime: Callable[..., Runtime], tmp_path: Path) -> Runtime:
    url = str(request.getfixturevalue("pg_database")()) if request.param == "postgresql" else f"sqlite:///{tmp_path / 'omni.db'}"
    return desk_runtime(url, **LIMITS)


def _old_and_foreign_orders(runtime: Runtime, n: int) -> None:
    """``n`` submitted orders yesterday on our venue and ``n`` today on another: neither counts toward today's trades."""
    now = datetime.now(tz=UTC)
    rows = []
    for i in range(2 * n):
        created = now - timedelta(days=2) if i < n else now
        rows.append({
            "client_order_id": f"other-{i}-{uuid.uuid4().hex[:8]}", "broker": "simulated" if i < n else "alpaca_paper",
            "symbol": "AAPL", "side": "buy", "qty": Decimal(1), "order_type": "market", "status": "filled",
            "filled_qty": Decimal(1), "requested_by": "test", "created_at": created, "submitted_at": created, "updated_at": created,
        })  # fmt: skip
    with runtime.sessions() as session, session.begin():
        session.execute(insert(Order), rows)


def test_trades_per_day_fill_up_to_the_limit_then_deny_with_the_count(runtime: Runtime) -> None:
    _old_and_foreign_orders(runtime, 5)
    venue = make_venue(runtime, guard=order_guard(runtime.redis, runtime.sessions))
    submitter = OrderSubmitter(
        venue=venue, redis=runtime.redis, sessions=runtime.sessions, limits=runtime.settings.risk, exchange_tz=runtime.settings.core.exchange_tz
    )
    serve_quote(runtime.redis, "AAPL", Decimal("100.00"), Decimal("100.02"), ttl_s=600)
    current_state(runtime.redis, runtime.sessions)
    outcomes = [
        submitter.submit(OrderRequest(f"day-{i}-{uuid.uuid4().hex[:8]}", "AAPL", "buy" if i % 2 == 0 else "sell", Decimal(1), requested_by="test"))
        for i in range(LIMIT + 2)
    ]
    print(f"max {LIMIT} trades a day (with 5 of yesterday and 5 of another venue stored): {[(o.status, o.check) for o in outcomes]}")
    assert [o.status for o in outcomes] == ["filled"] * LIMIT + ["denied"] * 2
    assert all(o.check == "trades_per_day" for o in outcomes[LIMIT:])
    assert all(f"at least {LIMIT} trades today" in (o.reason or "") for o in outcomes[LIMIT:])
