"""The kill switch at the task's door: an order-bearing task does not run while trading is halted.

:class:`~omni_tasks.pipeline.taskdef.OmniTask` runs :func:`refuse_order_task_while_halted`
before every task (one of its ``BEFORE_START_HOOKS``); tasks that bear no order pass at once,
and so do those that refuse themselves on their own first reads (``refuses_itself``: the order
task, whose path reads both copies of the trading state anyway), through :func:`refuse`.
"""

from __future__ import annotations

import inspect
from typing import Any, NoReturn

import structlog
from celery.exceptions import Reject

from omni_tasks.core.runtime import get_runtime

_log = structlog.get_logger("omni.worker")


def refuse_order_task_while_halted(task: Any) -> None:
    """Before-start hook: an order-bearing task does not start while trading is HALTED (or unreadable).

    The refusal is recorded (task ledger as REFUSED, an order event when the
    order's id is in the arguments) and the message is rejected, not requeued:
    an order refused by the kill switch must not run later, after a release.
    """
    if not getattr(task, "order_bearing", False) or getattr(task, "refuses_itself", False):
        return
    from omni_tasks.safety.order_guard import order_task_refusal

    runtime = get_runtime()
    reason = order_task_refusal(runtime.redis, runtime.sessions)
    if reason is not None:
        refuse(task, reason)


def refuse(task: Any, reason: str) -> NoReturn:
    """Refuse the running order-bearing task: record why and reject its message, not requeued.

    From the check before the start or from the task's own first reads (``refuses_itself``): the
    same records either way, an order event ``refused`` (check ``kill_switch``) and REFUSED in the
    task-run ledger.
    """
    from omni_tasks.safety.order_guard import record_refused_order_task

    runtime = get_runtime()
    request = task.request
    try:
        # Positional or keyword, the order's id is found by the task's own signature.
        named = dict(inspect.signature(task.run).bind_partial(*(request.args or ()), **(request.kwargs or {})).arguments)
    except TypeError:
        named = dict(request.kwargs or {})
    record_refused_order_task(runtime.sessions, task_name=task.name, task_id=str(request.id), args=(), kwargs=named, reason=reason)
    try:
        task._record("REFUSED", request.id, request.args, request.kwargs, error=reason)
    except Exception:  # noqa: BLE001 - Redis may be why it was refused; the order event and the log remain
        _log.warning("refused order task not in the task ledger", exc_info=True)
    _log.warning("order task refused: trading is halted", task_name=task.name, task_id=request.id)
    raise Reject(reason, requeue=False)
