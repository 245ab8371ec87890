"""Order tasks on the orders queue. Order-bearing: refused while the kill switch is engaged.

The refusal is decided on the order path's own first reads (both copies of the trading state
come with the breakers' pipeline and the request's record: ``refuses_itself``), before any check
runs or anything is sent; the records are those of a refusal before the start
(:func:`omni_tasks.pipeline.refusal.refuse`).

An order's lifetime is its own deadline (``expires_at``, set when it was accepted),
not Celery's ``expires``: a message past it is recorded ``expired`` by the task,
never discarded unseen (:mod:`omni_tasks.trading.expiry`).
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from omni_tasks.contracts.venue import InvalidOrder
from omni_tasks.core.errors import DatabaseUnavailable, PermanentError, RetryableError, TaskRefused
from omni_tasks.core.runtime import get_runtime
from omni_tasks.pipeline.headers import LEDGER_STATE_ATTR
from omni_tasks.pipeline.queues import Queue
from omni_tasks.pipeline.refusal import refuse
from omni_tasks.pipeline.taskdef import omni_task
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.safety.order_guard import order_guard
from omni_tasks.safety.reporting import audit_transitions
from omni_tasks.trading.expiry import EXPIRED, deadline_of, retry_delay_s
from omni_tasks.trading.order_breakers import DATABASE_BREAKER, venue_breaker_name
from omni_tasks.trading.orders import OrderSubmitter
from omni_tasks.trading.parsing import parse_order
from omni_tasks.trading.wiring import make_venue

_log = structlog.get_logger("omni.orders")
_cache: dict[str, tuple[int, OrderSubmitter]] = {}
#: Retries while the broker is unreachable; then the order is recorded rejected.
MAX_VENUE_RETRIES = 2
#: A ceiling on retries of any kind (the order's deadline ends database retries long before it).
RETRY_CEILING = 1000
#: The task-run ledger's state for a delivery that found its order past its deadline.
LEDGER_EXPIRED = "EXPIRED"


def submitter() -> OrderSubmitter:
    """This process's order path: the configured broker with the kill switch's guard, and both breakers."""
    runtime = get_runtime()
    cached = _cache.get("submitter")
    if cached is not None and cached[0] == runtime.pid:
        return cached[1]
    venue = make_venue(runtime, guard=order_guard(runtime.redis, runtime.sessions))
    hook = audit_transitions(runtime.sessions, settings=runtime.settings, client=runtime.redis)
    built = OrderSubmitter(
        venue=venue,
        redis=runtime.redis,
        sessions=runtime.sessions,
        limits=runtime.settings.risk,
        exchange_tz=runtime.settings.core.exchange_tz,
        venue_breaker=CircuitBreaker(venue_breaker_name(venue.name), runtime.redis, fail_open=False, on_transition=hook),
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
    refuses_itself=True,
    max_retries=RETRY_CEILING,
    retry_backoff_max_s=10,
    ignore_result=False,  # the outcome (a small dict) is what a caller waits for
)
def submit_order(
    symbol: str,
    side: str,
    qty: str,
    order_type: str,
    limit_price: str | None,
    client_order_id: str,
    requested_by: str,
    expires_at: float | None = None,
    broker_attempts: int = 0,
) -> dict[str, Any]:
    """Run the pre-trade checks and send the order, or record why not (idempotent on client_order_id).

    ``expires_at``: the order's deadline in UNIX seconds (absent: the TTL from when it was sent).
    """
    try:
        request = parse_order(
            symbol=symbol, side=side, qty=qty, order_type=order_type, limit_price=limit_price,
            client_order_id=client_order_id, requested_by=requested_by,
        )  # fmt: skip
    except InvalidOrder as exc:
        raise PermanentError(f"malformed order message: {exc}") from None
    trading = get_runtime().settings.trading
    task = submit_order.request
    deadline = deadline_of(expires_at, accepted_at=getattr(task, "omni_sent_at", None) or time.time(), ttl_s=trading.order_ttl_s)
    again = {
        "symbol": symbol, "side": side, "qty": qty, "order_type": order_type, "limit_price": limit_price,
        "client_order_id": client_order_id, "requested_by": requested_by, "expires_at": deadline.timestamp(),
        "broker_attempts": broker_attempts,
    }  # fmt: skip
    path = submitter()
    try:
        outcome = path.submit(request, deadline=deadline, refuse_when_halted=True)
    except TaskRefused as exc:
        refuse(submit_order, str(exc))
    except DatabaseUnavailable as exc:
        seconds_left = deadline.timestamp() - time.time()
        if seconds_left < -trading.order_expiry_grace_s:
            # Still down after the deadline and its grace: the watchdog records the expiry once the database answers.
            raise PermanentError(f"order {client_order_id} past its deadline while the database was unavailable: {exc}") from exc
        attempt = max(1, int(task.retries or 0) - broker_attempts + 1)
        delay = retry_delay_s(attempt, seconds_left=seconds_left, cap_s=trading.order_retry_max_s)
        _log.warning("order waits for the database", client_order_id=client_order_id, attempt=attempt, retry_in_s=round(delay, 2))
        raise submit_order.retry(exc=exc, countdown=delay, args=(), kwargs=again, max_retries=RETRY_CEILING) from exc
    except RetryableError as exc:  # the broker unreachable
        attempt = broker_attempts + 1
        if attempt > MAX_VENUE_RETRIES:
            path.abandon(client_order_id, f"broker unreachable after {attempt} attempts: {exc}")
            _log.error("order abandoned", client_order_id=client_order_id, attempts=attempt)
            raise PermanentError(f"order {client_order_id} abandoned: broker unreachable after {attempt} attempts: {exc}") from exc
        delay = retry_delay_s(attempt, seconds_left=deadline.timestamp() - time.time(), cap_s=trading.order_retry_max_s)
        again["broker_attempts"] = attempt
        raise submit_order.retry(exc=exc, countdown=delay, args=(), kwargs=again, max_retries=RETRY_CEILING) from exc
    result = outcome.to_dict()
    started = getattr(task, "omni_t0", None)
    if isinstance(started, float):  # from the task's start (before the kill switch's pre-start gate) to the outcome recorded
        result["task_ms"] = round((time.perf_counter() - started) * 1000, 3)
    sent_at, started_at = getattr(task, "omni_sent_at", None), getattr(task, "omni_started_at", None)
    if isinstance(sent_at, float) and isinstance(started_at, float):  # from the sender's publish to the task's start
        result["queue_ms"] = round(max(0.0, started_at - sent_at) * 1000, 3)
    if outcome.status == EXPIRED:
        setattr(task, LEDGER_STATE_ATTR, LEDGER_EXPIRED)
    if not outcome.repeat and outcome.status in FILLED:
        _refresh_risk(client_order_id)
    return result


#: Order statuses after which the book changed: the risk snapshot is refreshed (debounced).
FILLED = frozenset({"filled", "partially_filled"})


def _refresh_risk(client_order_id: str) -> None:
    """The fill is recorded; a failure to schedule the refresh must not fail the order (the next beat run catches up)."""
    from omni_tasks.risk.tasks import refresh_after_fill

    try:
        refresh_after_fill(client_order_id)
    except Exception:  # noqa: BLE001 - the order is done; only its follow-up failed
        _log.exception("could not schedule the risk recalculation after a fill", client_order_id=client_order_id)
