"""Order tasks on the orders queue. Order-bearing: refused before they start while the kill switch is engaged."""

from __future__ import annotations

from typing import Any

import structlog

from omni_tasks.errors import PermanentError, RetryableError
from omni_tasks.queues import Queue
from omni_tasks.runtime import get_runtime
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.safety.killswitch import order_guard
from omni_tasks.safety.reporting import audit_transitions
from omni_tasks.taskdef import omni_task
from omni_tasks.trading.broker import InvalidOrder
from omni_tasks.trading.orders import DATABASE_BREAKER, OrderSubmitter, broker_breaker_name, parse_order
from omni_tasks.trading.wiring import make_broker

_log = structlog.get_logger("omni.orders")
_cache: dict[str, tuple[int, OrderSubmitter]] = {}
MAX_RETRIES = 2


def submitter() -> OrderSubmitter:
    """This process's order path: the configured broker with the kill switch's guard, and both breakers."""
    runtime = get_runtime()
    cached = _cache.get("submitter")
    if cached is not None and cached[0] == runtime.pid:
        return cached[1]
    broker = make_broker(runtime, guard=order_guard(runtime.redis, runtime.sessions))
    hook = audit_transitions(runtime.sessions, client=runtime.redis)
    built = OrderSubmitter(
        broker=broker,
        redis=runtime.redis,
        sessions=runtime.sessions,
        limits=runtime.settings.risk,
        exchange_tz=runtime.settings.core.exchange_tz,
        broker_breaker=CircuitBreaker(broker_breaker_name(broker.name), runtime.redis, fail_open=False, on_transition=hook),
        database_breaker=CircuitBreaker(DATABASE_BREAKER, runtime.redis, fail_open=False, on_transition=hook),
    )
    _cache["submitter"] = (runtime.pid, built)
    return built


@omni_task(
    name="omni.orders.submit",
    queue=Queue.ORDERS,
    soft_time_limit_s=20,
    time_limit_s=30,
    order_bearing=True,
    max_retries=MAX_RETRIES,
    retry_backoff_max_s=10,
    expires_s=120,
    ignore_result=False,  # the outcome (a small dict) is what a caller waits for
)
def submit_order(
    symbol: str, side: str, qty: str, order_type: str, limit_price: str | None, client_order_id: str, requested_by: str
) -> dict[str, Any]:
    """Run the pre-trade checks and send the order, or record why not (idempotent on client_order_id)."""
    try:
        request = parse_order(
            symbol=symbol, side=side, qty=qty, order_type=order_type, limit_price=limit_price,
            client_order_id=client_order_id, requested_by=requested_by,
        )  # fmt: skip
    except InvalidOrder as exc:
        raise PermanentError(f"malformed order message: {exc}") from None
    path = submitter()
    try:
        return path.submit(request).to_dict()
    except RetryableError as exc:
        attempt = int(submit_order.request.retries or 0) + 1
        if attempt > MAX_RETRIES:
            path.abandon(client_order_id, f"broker unreachable after {attempt} attempts: {exc}")
            _log.error("order abandoned", client_order_id=client_order_id, attempts=attempt)
        raise
