"""The one task decorator: an explicit keyword signature, safe defaults, every outcome recorded.

    @omni_task(name="omni.system.ping", queue=Queue.WATCHDOG, soft_time_limit_s=5, time_limit_s=10)
    def ping(sent_at: float) -> dict: ...

Every option is a keyword argument of :func:`omni_task`, so a misspelt option
is a ``TypeError`` when the module is imported, not a silently ignored
setting. Defaults: late acknowledgement with rejection on worker loss (tasks
must be idempotent; pass ``idempotent=False`` otherwise), JSON arguments,
results ignored, retries only for :class:`~omni_tasks.core.errors.RetryableError`
with exponential backoff and jitter, dead-lettering after ``max_deliveries``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from celery import Task
from celery.exceptions import Reject

from omni_tasks.core.errors import OmniError, RetryableError
from omni_tasks.core.keys import DELIVERIES_KEY, TASK_OUTCOMES_KEY
from omni_tasks.core.runtime import get_runtime
from omni_tasks.ops import prometheus as metrics
from omni_tasks.pipeline.app import TASK_MODULES, app
from omni_tasks.pipeline.headers import LEDGER_STATE_ATTR, SENT_AT_HEADER
from omni_tasks.pipeline.outcomes import summarize_args
from omni_tasks.pipeline.queues import Queue, queue_of
from omni_tasks.pipeline.refusal import refuse_order_task_while_halted

F = TypeVar("F", bound=Callable[..., Any])

#: task name -> queue, filled by the decorator; the router reads it.
ROUTES: dict[str, str] = {}
#: task name -> hard time limit (s), for the start-up visibility-timeout check.
TIME_LIMITS: dict[str, float] = {}
#: Callables run before every task starts; raising Reject/Ignore or an error stops it.
#: The kill switch's check is the first.
BEFORE_START_HOOKS: list[Callable[[OmniTask], None]] = [refuse_order_task_while_halted]

_TASK_NAME = re.compile(r"^omni(\.[a-z][a-z0-9_]*){2,}$")
_log = structlog.get_logger("omni.task")


class DeadLettered(OmniError):
    """Raised into the ledger for a task delivered more than ``max_deliveries`` times."""


def _json_primitive(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if depth > 8:
        return False
    if isinstance(value, list | tuple):
        return all(_json_primitive(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_primitive(v, depth + 1) for k, v in value.items())
    return False


class _NoSentEvent:
    """An event dispatcher that publishes nothing: a task with ``send_events=False`` sends no task-sent event either."""

    enabled = False

    def publish(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_NO_SENT_EVENT = _NoSentEvent()


class OmniTask(Task):
    """Base class behind :func:`omni_task`: delivery counting, outcome ledger, metrics, log context."""

    #: None: the OMNI_BROKER_MAX_DELIVERIES setting applies.
    max_deliveries: int | None = None
    idempotent: bool = True
    order_bearing: bool = False
    #: An order-bearing task whose own first reads decide the kill switch's refusal (see :func:`omni_task`).
    refuses_itself: bool = False

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if not _json_primitive(list(args or ())) or not _json_primitive(dict(kwargs or {})):
            raise TypeError(f"{self.name}: task arguments must be JSON primitives (ids, symbols, ISO dates)")
        _refuse_secrets(self.name, args, kwargs)
        delay_s = options.get("countdown")
        eta = options.get("eta")
        if eta is not None:
            eta_dt = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
            if eta_dt.tzinfo is None:
                eta_dt = eta_dt.replace(tzinfo=UTC)  # a naive ETA is taken as UTC, as Celery does with enable_utc
            delay_s = (eta_dt - datetime.now(tz=UTC)).total_seconds()
        if delay_s is not None:
            visibility = get_runtime().settings.broker.visibility_timeout_s
            if delay_s >= visibility:
                raise ValueError(
                    f"{self.name}: an ETA {delay_s:.0f} s ahead is beyond the broker visibility timeout "
                    f"({visibility} s) and would run twice; schedule it with beat instead"
                )
        if not self.send_events:
            # Celery's task_send_sent_event is global; a quiet task's sender skips it through its dispatcher.
            options.setdefault("event_dispatcher", _NO_SENT_EVENT)
        return super().apply_async(args, kwargs, **options)

    # ---- worker side ----------------------------------------------------
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        request = self.request
        request.omni_started_at = time.time()
        request.omni_t0 = time.perf_counter()
        queue = queue_of((request.delivery_info or {}).get("routing_key")) or ROUTES.get(self.name, "?")
        request.omni_queue = queue
        structlog.contextvars.bind_contextvars(task_id=task_id, task_name=self.name, queue=queue)
        runtime = get_runtime()
        key = DELIVERIES_KEY.format(task_id=task_id)
        # Deliveries are counted from the first redelivery on: a first delivery (the common
        # case) costs no round trip. kombu marks every restored message redelivered (requeue
        # on worker loss, the visibility sweep, our dead-worker sweep), and so does RabbitMQ.
        if (request.delivery_info or {}).get("redelivered"):
            pipe = runtime.redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, runtime.settings.broker.visibility_timeout_s * 4)
            delivery = int(pipe.execute()[0]) + 1
        else:
            delivery = 1
        request.omni_delivery = delivery
        hostname = request.hostname or runtime.hostname
        metrics.TASK_STARTED.labels(self.name, hostname, queue).inc()
        sent_at = (request.headers or {}).get(SENT_AT_HEADER) if isinstance(request.headers, dict) else None
        if sent_at is None:
            sent_at = getattr(request, SENT_AT_HEADER, None)
        request.omni_sent_at = float(sent_at) if sent_at is not None else None
        if request.omni_sent_at is not None:
            metrics.TASK_QUEUE_WAIT.labels(self.name, hostname, queue).observe(
                max(0.0, request.omni_started_at - request.omni_sent_at)
            )
        max_deliveries = self.max_deliveries or runtime.settings.broker.max_deliveries
        if delivery > max_deliveries:
            error = f"delivered {delivery} times (max {max_deliveries}): dead-lettered, not run again"
            self._record("DEAD_LETTER", task_id, args, kwargs, error=error)
            metrics.DEAD_LETTERS.labels(self.name, queue).inc()
            _log.error("task dead-lettered", delivery=delivery)
            runtime.redis.delete(key)
            raise Reject(DeadLettered(error), requeue=False)
        for hook in BEFORE_START_HOOKS:
            hook(self)

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        self._record("RETRY", task_id, args, kwargs, error=_error_text(exc))
        metrics.TASK_RETRIED.labels(self.name, self._hostname(), self._queue()).inc()

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        error = _error_text(retval) if status != "SUCCESS" else None
        # One round trip: the outcome record, and forgetting the delivery count of a finished redelivered task.
        forget = status in {"SUCCESS", "FAILURE"} and int(getattr(self.request, "omni_delivery", 1) or 1) > 1
        state = (getattr(self.request, LEDGER_STATE_ATTR, None) or status) if status == "SUCCESS" else status
        self._record(state, task_id, args, kwargs, error=error, forget_deliveries=forget)
        counter = metrics.TASK_SUCCEEDED if status == "SUCCESS" else metrics.TASK_FAILED
        counter.labels(self.name, self._hostname(), self._queue()).inc()
        structlog.contextvars.clear_contextvars()

    # ---- helpers ----------------------------------------------------------
    def _hostname(self) -> str:
        return str(self.request.hostname or get_runtime().hostname)

    def _queue(self) -> str:
        return str(getattr(self.request, "omni_queue", None) or ROUTES.get(self.name, "?"))

    def _record(self, state: str, task_id: str, args: Any, kwargs: Any, *, error: str | None, forget_deliveries: bool = False) -> None:
        request = self.request
        now = time.time()
        t0 = getattr(request, "omni_t0", None)
        runtime_s = (time.perf_counter() - t0) if t0 is not None else 0.0
        started_at = getattr(request, "omni_started_at", now)
        sent_at = getattr(request, "omni_sent_at", None)
        queue = self._queue()
        hostname = self._hostname()
        record = {
            "task_id": task_id,
            "name": self.name,
            "queue": queue,
            "state": state,
            "worker": hostname,
            "pid": os.getpid(),
            "started_at": started_at,
            "finished_at": now,
            "runtime_s": runtime_s,
            "args_json": summarize_args(args, kwargs),
            "delivery": int(getattr(request, "omni_delivery", 1) or 1),
            "sent_at": sent_at,
            "queue_wait_s": (max(0.0, started_at - sent_at) if sent_at is not None else None),
            "error": error,
            "outcome_id": uuid.uuid4().hex,
        }
        client = get_runtime().redis
        if forget_deliveries:
            pipe = client.pipeline(transaction=False)
            pipe.rpush(TASK_OUTCOMES_KEY, json.dumps(record, separators=(",", ":")))
            pipe.delete(DELIVERIES_KEY.format(task_id=task_id))
            pipe.execute()
        else:
            client.rpush(TASK_OUTCOMES_KEY, json.dumps(record, separators=(",", ":")))
        if state != "RETRY":
            metrics.TASK_RUNTIME.labels(self.name, hostname, queue).observe(runtime_s)


def _refuse_secrets(name: str, args: Any, kwargs: Any) -> None:
    """Credentials never travel in task messages (they would sit in Redis and show in Flower)."""
    text = json.dumps([args or [], kwargs or {}], default=str)
    for secret in get_runtime().settings.secret_values():
        if len(secret) >= 6 and secret in text:
            raise ValueError(f"{name}: a configured secret appears in the task arguments; pass an id and re-read it inside the task")


def _error_text(value: Any) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"[:4000]
    return str(value)[:4000]


def omni_task(
    *,
    name: str,
    queue: Queue,
    soft_time_limit_s: float,
    time_limit_s: float,
    idempotent: bool = True,
    order_bearing: bool = False,
    refuses_itself: bool = False,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    max_retries: int = 3,
    retry_backoff_max_s: int = 300,
    max_deliveries: int | None = None,
    ignore_result: bool = True,
    expires_s: float | None = None,
    rate_limit: str | None = None,
    send_events: bool = True,
) -> Callable[[F], OmniTask]:
    """Register a plain function as a Celery task with the pipeline's guarantees.

    ``name`` is the stable wire name (``omni.<domain>.<action>``): renaming the
    Python function never orphans queued messages. Time limits are seconds;
    the hard limit must exceed the soft one. ``send_events=False``: no task
    events at all (sent, received, started, succeeded...), so a frequent
    housekeeping task does not fill Flower's task list; its worker still sends
    heartbeats, and its runs are still in the task-run ledger and the metrics.

    ``order_bearing``: refused while the kill switch is engaged, by a read of both copies of the trading
    state before the task starts (:mod:`omni_tasks.pipeline.refusal`). ``refuses_itself`` (with
    ``order_bearing``): the task reads both copies on its own first round trips anyway and refuses
    itself there, before anything is checked or sent (:func:`omni_tasks.pipeline.refusal.refuse`), so
    the read before the start is skipped.
    """
    if refuses_itself and not order_bearing:
        raise ValueError(f"{name}: refuses_itself is for order-bearing tasks")
    if not _TASK_NAME.match(name):
        raise ValueError(f"task name {name!r} must look like omni.<domain>.<action>")
    if not isinstance(queue, Queue):
        raise TypeError(f"{name}: queue must be a Queue member, not {queue!r}")
    if not (0 < soft_time_limit_s < time_limit_s) or not math.isfinite(time_limit_s):
        raise ValueError(f"{name}: need 0 < soft_time_limit_s ({soft_time_limit_s}) < time_limit_s ({time_limit_s})")
    if name in ROUTES:
        raise ValueError(f"task name {name!r} is registered twice")

    def register(func: F) -> OmniTask:
        options: dict[str, Any] = {
            "name": name,
            "base": OmniTask,
            "soft_time_limit": soft_time_limit_s,
            "time_limit": time_limit_s,
            "acks_late": idempotent,
            "reject_on_worker_lost": idempotent,
            "ignore_result": ignore_result,
            "max_retries": max_retries,
            "autoretry_for": retry_on,
            "retry_backoff": True,
            "retry_backoff_max": retry_backoff_max_s,
            "retry_jitter": True,
            "serializer": "json",
            "max_deliveries": max_deliveries,
            "idempotent": idempotent,
            "order_bearing": order_bearing,
            "refuses_itself": refuses_itself,
            "send_events": send_events,
        }
        if expires_s is not None:
            options["expires"] = expires_s
        if rate_limit is not None:
            options["rate_limit"] = rate_limit
        ROUTES[name] = queue.value
        TIME_LIMITS[name] = float(time_limit_s)
        return app.task(**options)(func)

    return register


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any) -> dict[str, str] | None:
    """Celery router: the queue registered for a stable task name (celery.* internals go to the default)."""
    queue = ROUTES.get(name)
    if queue is None and not name.startswith("celery."):
        import_task_modules()
        queue = ROUTES.get(name)
        if queue is None:
            raise LookupError(f"no route for task {name!r}: is it defined with @omni_task?")
    return {"queue": queue} if queue else None


def import_task_modules() -> None:
    """Import every task module (``TASK_MODULES``), so each stable name has its task and route."""
    import importlib

    for module in TASK_MODULES:
        importlib.import_module(module)


def task_time_limits() -> list[tuple[str, float]]:
    import_task_modules()
    return sorted(TIME_LIMITS.items())


def dumps_args(args: Any) -> str:
    return json.dumps(args, separators=(",", ":"), sort_keys=True, default=str)
