"""The running task, for the few lines of a ``tasks.py`` that need it: its retry count, its request, a retry with backoff.

Task modules read these instead of ``celery.current_task``, so the Celery
import stays in this package. Each function is called from inside a task body
(Celery's task stack of the current thread); outside one, the request is
Celery's empty default.
"""

from __future__ import annotations

import random
from typing import Any


def running_task() -> Any:
    """The task now running in this thread (Celery's ``current_task`` proxy): what an outage helper retries."""
    from celery import current_task

    return current_task


def current_request() -> Any:
    """The running task's request: ``id``, ``retries``, ``args``, ``kwargs``, ``delivery_info``."""
    return running_task().request


def current_retries() -> int:
    """How many times the running task was retried before this attempt (0 on the first)."""
    return int(current_request().retries or 0)


def exponential_backoff_s(retries: int, *, factor: int = 1, cap_s: int, full_jitter: bool = True) -> int:
    """Whole seconds before retry number ``retries`` (0 first): ``min(cap_s, factor * 2**retries)``.

    With ``full_jitter`` a uniform draw from 0 to that bound, so siblings that
    failed together come back apart (the formula of Celery's own ``retry_backoff``).
    """
    countdown = min(cap_s, factor * (2**retries))
    if full_jitter:
        countdown = random.randrange(countdown + 1)  # noqa: S311 - spreads retries, not a secret
    return max(0, countdown)


def retry_running(*, exc: BaseException, countdown: float, max_retries: int, args: Any = None, kwargs: Any = None) -> BaseException:
    """The exception the running task raises to be retried in ``countdown`` seconds (Celery's ``Task.retry``).

    ``args``/``kwargs`` default to the running request's own; ``max_retries`` is the
    ceiling this retry is checked against (past it, ``exc`` is raised instead).
    """
    task = running_task()
    request = task.request
    return task.retry(
        args=request.args if args is None else args,
        kwargs=request.kwargs if kwargs is None else kwargs,
        exc=exc,
        countdown=countdown,
        max_retries=max_retries,
    )
