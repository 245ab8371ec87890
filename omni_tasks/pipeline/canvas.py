"""Composing and sending tasks: a fan-out with one merge (a chord), a follow-up task by its stable name, waiting for a result.

Task modules and the CLI use these instead of Celery's canvas, so the Celery
import stays in this package, and one domain's tasks never import another
domain's ``tasks`` module: a follow-up is sent by its name
(``omni.validation.backfill_job``), which the router and the decorator's
guards (JSON arguments, no secrets, ETAs within the visibility timeout) treat
exactly as a call on the task object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from omni_tasks.core.errors import OmniError
from omni_tasks.pipeline.app import app
from omni_tasks.pipeline.taskdef import ROUTES, import_task_modules


class ResultTimeout(OmniError):
    """No worker produced the awaited task's result within the time given."""


def task_by_name(name: str) -> Any:
    """The registered task called ``name`` (its module imported when this process has not yet)."""
    if name not in ROUTES:
        import_task_modules()
    return app.tasks[name]


def send(name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
    """Send the task called ``name`` now (``options``: ``countdown``, ``expires``...). Returns its async result."""
    return task_by_name(name).apply_async(args=list(args), kwargs=dict(kwargs or {}), **options)


def fan_out(pieces: Iterable[Any], merge: Any, *, on_error: Any | None = None) -> Any:
    """Run every signature of ``pieces`` in parallel, then ``merge`` with their results (a chord); ``on_error`` when one fails for good."""
    from celery import chord

    if on_error is not None:
        merge = merge.on_error(on_error)
    return chord(pieces)(merge)


def wait_for(result: Any, timeout_s: float) -> Any:
    """The result of a sent task (its return value, or its exception when it failed), waiting up to ``timeout_s``.

    Raises :class:`ResultTimeout` when no worker finished it in time.
    """
    from celery.exceptions import TimeoutError as CeleryTimeout

    try:
        return result.get(timeout=timeout_s, propagate=False)
    except CeleryTimeout as exc:
        raise ResultTimeout(f"no result within {timeout_s:g} s") from exc
