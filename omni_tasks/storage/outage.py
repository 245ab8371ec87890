"""Database outages inside tasks: recognise them, turn them into a retryable error, and space the retries.

A PostgreSQL restart or failover shows up in SQLAlchemy as an ``OperationalError``
(connection refused, "server closed the connection unexpectedly", "terminating
connection due to administrator command"), an ``InterfaceError`` (a connection
already closed) or a ``DBAPIError`` whose connection was invalidated; a full
pool times out. None of these says anything about the work itself: the same
call succeeds once the database is back. :func:`store_outages_retryable` turns
them into :class:`~omni_tasks.core.errors.StoreUnavailable`, and :func:`retry_after_outage`
gives a task the retry it needs to outlast the outage (its own budget, apart
from the task's other retries, with exponential backoff and jitter).

Every ledger write these tasks make is idempotent (upserts, status updates
guarded by the row's current state), so a retry after an outage that cut a
task short in the middle repeats nothing that matters.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc as sa_exc

from omni_tasks.core.errors import StoreUnavailable

#: The keyword argument a task retried after an outage carries: how many outage retries it has had.
STORE_RETRIES_KW = "store_retries"
_SQLITE_OUTAGE_WORDS = ("locked", "busy", "unable to open", "disk i/o")


def is_outage(error: BaseException) -> bool:
    """True when ``error`` means the database was unreachable, not that the statement was wrong."""
    if isinstance(error, sa_exc.OperationalError) and isinstance(error.orig, sqlite3.Error):
        # SQLite reports a missing table as an OperationalError too: only a busy or unreachable file is an outage.
        return any(word in str(error.orig).lower() for word in _SQLITE_OUTAGE_WORDS)
    if isinstance(error, StoreUnavailable | sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    return isinstance(error, sa_exc.DBAPIError) and bool(error.connection_invalidated)


@contextmanager
def store_outages_retryable(what: str) -> Iterator[None]:
    """Inside this block a database outage raises :class:`StoreUnavailable` naming ``what`` was being done."""
    try:
        yield
    except sa_exc.SQLAlchemyError as error:
        if isinstance(error, StoreUnavailable) or not is_outage(error):
            raise
        first_line = (
            (str(error.orig) if isinstance(error, sa_exc.DBAPIError) and error.orig is not None else str(error)).strip().splitlines()
        )
        raise StoreUnavailable(f"database unavailable while {what}: {type(error).__name__}: {(first_line or [''])[0][:300]}") from error


def backoff_s(attempt: int, *, base_s: float = 1.0, cap_s: float = 30.0, rand: Callable[[], float] = random.random) -> float:
    """Seconds before outage retry ``attempt`` (0 first): ``min(cap, base * 2**attempt)``, the upper half jittered.

    "Equal jitter": never less than half the step, so a budget of N retries
    always waits at least half its nominal total, and workers that failed
    together do not come back together.
    """
    step = min(cap_s, base_s * (2 ** max(0, attempt)))
    return step / 2 + rand() * step / 2


def budget_s(retries: int, *, base_s: float = 1.0, cap_s: float = 30.0) -> float:
    """The least time ``retries`` outage retries wait in all (every jitter at its minimum)."""
    return sum(min(cap_s, base_s * 2**n) / 2 for n in range(retries))


def retry_after_outage(task: Any, error: StoreUnavailable, *, max_retries: int, cap_s: float) -> BaseException:
    """The exception a Celery task raises after an outage: a retry with backoff, or ``error`` once the budget is spent.

    ``task`` is the running task (``celery.current_task``). The count of outage
    retries travels in the retried message's keyword ``store_retries``, so it
    does not eat into the task's retry budget for other transient failures.
    Usage: ``raise retry_after_outage(current_task, exc, ...)``.
    """
    request = task.request
    kwargs = dict(request.kwargs or {})
    done = int(kwargs.get(STORE_RETRIES_KW, 0) or 0)
    if done >= max_retries:
        return error
    kwargs[STORE_RETRIES_KW] = done + 1
    countdown = backoff_s(done, cap_s=cap_s)
    # max_retries: Celery's own counter includes these retries; this budget is counted above instead.
    retried: BaseException = task.retry(
        args=request.args, kwargs=kwargs, exc=error, countdown=countdown, max_retries=int(request.retries or 0) + 1, throw=False
    )
    # Celery keeps an explicit max_retries on the task object, where autoretry would read it for the next task run.
    if hasattr(task, "override_max_retries"):
        delattr(task, "override_max_retries")
    return retried


@contextmanager
def outages_retried(task: Any, what: str, database: Any) -> Iterator[None]:
    """In a task body: a database outage inside the block retries ``task`` (the running task) after a backoff.

    ``database`` is the settings group with ``outage_retries`` and ``outage_backoff_max_s``.
    Once that budget is spent the :class:`StoreUnavailable` error itself is raised.
    """
    try:
        with store_outages_retryable(what):
            yield
    except StoreUnavailable as error:
        raise retry_after_outage(task, error, max_retries=database.outage_retries, cap_s=database.outage_backoff_max_s) from error
