"""The order task's refusal on the path's own first reads (``OrderSubmitter.submit(refuse_when_halted=True)``).

What it must keep from the refusal before the start: nothing of the order is recorded or
sent, and the breakers come out as they went in (a half-open trial slot taken for the
order is given back, never left reserved), whichever copy of the trading state says HALTED.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from omni_tasks.contracts.venue import OrderRequest
from omni_tasks.core.errors import TaskRefused
from omni_tasks.core.keys import TRADING_STATE_KEY
from omni_tasks.core.runtime import Runtime
from omni_tasks.safety.breaker import BreakerPolicy, CircuitBreaker
from omni_tasks.safety.drill import serve_quote
from omni_tasks.safety.killswitch import current_state
from omni_tasks.safety.order_guard import order_guard
from omni_tasks.safety.state_store import STATE_ROW_ID
from omni_tasks.storage.models import Order, OrderEvent
from omni_tasks.storage.models import TradingStateRow as StateRow
from omni_tasks.trading.order_breakers import DATABASE_BREAKER, venue_breaker_name
from omni_tasks.trading.orders import OrderSubmitter
from omni_tasks.trading.wiring import make_venue

pytestmark = [pytest.mark.services]

LIMITS = {
    "OMNI_RISK_MAX_TRADES_PER_DAY": "1000", "OMNI_RISK_MAX_POSITION_NOTIONAL_USD": "100000000", "OMNI_RISK_MAX_CONCENTRATION_PCT": "100",
    "OMNI_RISK_MAX_GROSS_LEVERAGE": "100", "OMNI_RISK_QUOTE_MAX_AGE_S": "600", "OMNI_TRADING_QUOTE_MAX_AGE_S": "600",
    "OMNI_LOG_LEVEL": "WARNING",
}  # fmt: skip
POLICY = BreakerPolicy(failure_threshold=1, rate_min_calls=1_000_000, cooldown_s=30.0, half_open_max_trials=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime(pg_database: Callable[[], str], desk_runtime: Callable[..., Runtime]) -> Runtime:
    return desk_runtime(pg_database(), **LIMITS)


def _half_open(breaker: CircuitBreaker, clock: Clock) -> None:
    breaker.record(False)
    clock.now += POLICY.cooldown_s
    assert breaker.state()["state"] == "open"


def _trial_free(breaker: CircuitBreaker) -> bool:
    """Is the one half-open trial slot free (taken and given back at once to look)?"""
    decision = breaker.allow()
    breaker.release(decision.trial)
    return bool(decision.allowed and decision.trial)


@pytest.mark.parametrize("halted_in", ["redis", "database"])
def test_a_refused_order_task_records_nothing_sends_nothing_and_gives_back_both_trials(runtime: Runtime, halted_in: str) -> None:
    clock = Clock()
    venue = make_venue(runtime, guard=order_guard(runtime.redis, runtime.sessions))
    database = CircuitBreaker(DATABASE_BREAKER, runtime.redis, POLICY, fail_open=False, clock=clock)
    broker = CircuitBreaker(venue_breaker_name(venue.name), runtime.redis, POLICY, fail_open=False, clock=clock)
    submitter = OrderSubmitter(
        venue=venue, redis=runtime.redis, sessions=runtime.sessions, limits=runtime.settings.risk,
        exchange_tz=runtime.settings.core.exchange_tz, venue_breaker=broker, database_breaker=database,
    )  # fmt: skip
    serve_quote(runtime.redis, "AAPL", Decimal("100.00"), Decimal("100.02"), ttl_s=600)
    current_state(runtime.redis, runtime.sessions)  # ACTIVE 0 in both copies
    if halted_in == "redis":  # an engage whose database write has not landed yet: Redis's copy is ahead
        runtime.redis.set(TRADING_STATE_KEY, "HALTED 1")
    else:  # Redis back from older data: it still says ACTIVE, the row says HALTED
        with runtime.sessions() as session, session.begin():
            session.merge(StateRow(id=STATE_ROW_ID, state="HALTED", version=1, changed_at=datetime.now(tz=UTC), actor="operator:test", reason="test"))
    _half_open(database, clock)
    _half_open(broker, clock)

    order_id = f"refused-{uuid.uuid4().hex[:8]}"
    with pytest.raises(TaskRefused, match="trading is HALTED"):
        submitter.submit(OrderRequest(order_id, "AAPL", "buy", Decimal(1), requested_by="test"), refuse_when_halted=True)

    with runtime.sessions() as session:
        rows = session.scalar(select(func.count()).select_from(Order).where(Order.client_order_id == order_id))
        events = session.scalar(select(func.count()).select_from(OrderEvent).where(OrderEvent.client_order_id == order_id))
    database_after, broker_after = database.state()["state"], broker.state()["state"]
    print(
        f"order task refused (HALTED in {halted_in}): order rows {rows}, events {events}; database breaker {database_after}, "
        f"its trial free {_trial_free(database) if database_after != 'closed' else 'n/a'}; venue breaker {broker_after}, "
        f"its trial free {_trial_free(broker)}"
    )
    assert (rows, events) == (0, 0)
    assert _trial_free(broker), "the venue breaker's trial was left reserved"
    if halted_in == "redis":  # refused before the record was tried: the database breaker's trial is given back
        assert database_after == "half_open"
        assert _trial_free(database), "the database breaker's trial was left reserved"
    else:  # the record's statement ran (it wrote nothing) and succeeded: the half-open database breaker closes
        assert database_after == "closed"
