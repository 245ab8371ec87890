"""The circuit breakers of the order path: their names, how a venue's failure is told from a refusal, the guarded transaction.

* ``broker:<venue name>`` (:func:`venue_breaker_name`; the name operators know, kept
  as it was) wraps every venue call of the order path. Only the venue failing
  (unreachable, 5xx, retryable errors, unexpected exceptions) counts against it
  (:func:`is_venue_failure`); a refusal (the guard, an invalid order, a 4xx) is the
  venue answering.
* ``database`` (:data:`DATABASE_BREAKER`) wraps each database transaction of the order
  path (:func:`guarded_transaction`), read with ``fail_open=False``: open or unreadable,
  or the database failing, means nothing is recorded or sent now and
  :class:`~omni_tasks.core.errors.DatabaseUnavailable` (retryable) is raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import InvalidOrder, OrderBlocked, VenueError
from omni_tasks.core.errors import DatabaseUnavailable
from omni_tasks.safety.breaker import CircuitBreaker
from omni_tasks.storage.direct import Direct, direct
from omni_tasks.trading.checks import BreakerReading
from omni_tasks.trading.expiry import is_database_failure

DATABASE_BREAKER: Final = "database"


def venue_breaker_name(venue_name: str) -> str:
    """The breaker that guards calls to the venue named ``venue_name`` (``broker:<name>``, an operator's identifier)."""
    return f"broker:{venue_name}"


def breaker_reading(name: str, decision: Any) -> BreakerReading:
    """A :class:`BreakerReading` from a :class:`~omni_tasks.safety.breaker.Decision` (state "unknown": unreadable)."""
    readable = decision.state != "unknown"
    return BreakerReading(
        name=name, readable=readable, allowed=bool(decision.allowed) and readable, state=decision.state, forced=decision.forced
    )


def is_venue_failure(exc: BaseException) -> bool:
    """Does this exception say the venue is failing (counts against its breaker), not merely refusing?"""
    if isinstance(exc, OrderBlocked | InvalidOrder):
        return False
    if isinstance(exc, VenueError):
        return exc.retryable or exc.http_status is None or exc.http_status >= 500
    return True


@contextmanager
def guarded_transaction(
    sessions: sessionmaker[Session], breaker: CircuitBreaker, *, decision: Any = None, settle: list[str] | None = None
) -> Iterator[Session]:
    """One transaction inside the database breaker (fail closed on the order path).

    ``decision``: the breaker's :meth:`~omni_tasks.safety.breaker.CircuitBreaker.allow` asked already (with another
    breaker's, in one round trip). ``settle``: the success is not recorded here; its trial id is appended, and the
    caller records it (:meth:`~omni_tasks.safety.breaker.CircuitBreaker.record_in`, with its next Redis round trip).
    A failure is recorded at once.
    """
    with _guarded(breaker, decision, settle), sessions() as session, session.begin():
        yield session


@contextmanager
def guarded_direct(engine: Engine, breaker: CircuitBreaker, *, decision: Any = None, settle: list[str] | None = None) -> Iterator[Direct]:
    """:func:`guarded_transaction` for fixed statements on a lent DB-API connection (:mod:`omni_tasks.storage.direct`)."""
    with _guarded(breaker, decision, settle), direct(engine) as db:
        yield db


@contextmanager
def _guarded(breaker: CircuitBreaker, decision: Any, settle: list[str] | None) -> Iterator[None]:
    decision = decision if decision is not None else breaker.allow()
    if not decision.allowed:
        raise DatabaseUnavailable(f"order not recorded and not sent: {decision.reason}")
    try:
        yield
    except BaseException as exc:
        breaker.record(not is_database_failure(exc), trial=decision.trial)
        if is_database_failure(exc):
            raise DatabaseUnavailable(f"order not recorded and not sent: database failed ({type(exc).__name__}: {str(exc)[:200]})") from exc
        raise
    if settle is not None:
        settle.append(decision.trial)
    else:
        breaker.record(True, trial=decision.trial)
