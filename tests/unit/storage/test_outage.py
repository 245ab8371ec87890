"""Database outages: which errors are one, what a task body raises instead, and how far apart the retries are."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from omni_tasks.core.errors import RetryableError, StoreUnavailable
from omni_tasks.storage.outage import backoff_s, budget_s, is_outage, store_outages_retryable


def _dbapi(cls: type[sa_exc.DBAPIError], *, invalidated: bool = False) -> sa_exc.DBAPIError:
    return cls(
        "SELECT 1", {}, Exception("server closed the connection unexpectedly\nThis probably means..."), connection_invalidated=invalidated
    )


def test_connection_failures_are_outages_and_statement_errors_are_not() -> None:
    assert is_outage(_dbapi(sa_exc.OperationalError))
    assert is_outage(_dbapi(sa_exc.InterfaceError))
    assert is_outage(_dbapi(sa_exc.DBAPIError, invalidated=True))
    assert is_outage(sa_exc.TimeoutError("QueuePool limit reached"))
    assert not is_outage(_dbapi(sa_exc.IntegrityError))
    assert not is_outage(_dbapi(sa_exc.ProgrammingError))
    assert not is_outage(ValueError("not a database error"))


def test_an_outage_inside_the_block_becomes_a_retryable_error_naming_the_work() -> None:
    # A real refused connection: nothing listens on port 1.
    engine = create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    with pytest.raises(StoreUnavailable) as caught, store_outages_retryable("running backfill partition 7"), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert isinstance(caught.value, RetryableError)
    assert str(caught.value).startswith("database unavailable while running backfill partition 7: OperationalError: ")
    assert "\n" not in str(caught.value)


def test_a_statement_error_passes_through_unchanged() -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(sa_exc.OperationalError) as caught, store_outages_retryable("x"), engine.connect() as connection:
        connection.execute(text("SELECT * FROM no_such_table"))
    assert "no such table" in str(caught.value)
    with pytest.raises(sa_exc.IntegrityError), store_outages_retryable("x"):
        raise _dbapi(sa_exc.IntegrityError)  # type: ignore[misc]


def test_backoff_grows_to_its_cap_with_the_upper_half_jittered_and_outlasts_a_long_outage() -> None:
    assert [backoff_s(n, rand=lambda: 0.0) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert [backoff_s(n, rand=lambda: 1.0) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert budget_s(12) >= 90, "the default budget outlasts a 30 s outage three times over, whatever the jitter"
    assert budget_s(40, cap_s=4) >= 60
