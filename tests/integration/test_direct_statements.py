"""Fixed statements on a lent DB-API connection (omni_tasks.storage.direct), against a real PostgreSQL.

What the money path relies on: a prepared statement is prepared once per connection
and survives a connection that lost it (or holds one we did not know of); a failed
transaction is rolled back before the connection goes back to the pool; a dead
connection is invalidated and reported as SQLAlchemy's ``OperationalError`` with
``connection_invalidated`` (the order path's "database down, retry" signal); a
constraint violation is SQLAlchemy's ``IntegrityError`` (the venue's race backstop).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from omni_tasks.storage.direct import Prepared, direct
from omni_tasks.storage.engine import make_engine
from omni_tasks.trading.expiry import is_database_failure
from tests.conftest import terminate_backend

pytestmark = [pytest.mark.services]


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """One pooled connection (so every block gets the same one back), and a table of the test's own."""
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def table(engine: Engine) -> Iterator[str]:
    name = f"direct_{uuid.uuid4().hex[:10]}"
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {name} (id int PRIMARY KEY, note text)"))
    yield name
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {name}"))


def _backend_pid(engine: Engine) -> int:
    with direct(engine) as db:
        return int(db.fetch_one("SELECT pg_backend_pid()")[0])


def _prepared_on_server(engine: Engine) -> set[str]:
    with direct(engine) as db:
        return {str(name) for (name,) in db.fetch("SELECT name FROM pg_prepared_statements")}


def test_a_prepared_statement_is_prepared_once_per_connection_and_runs_with_its_parameters(engine: Engine, table: str) -> None:
    insert = Prepared("t_insert", f"INSERT INTO {table} (id, note) VALUES (%(id)s, %(note)s) RETURNING id, note")
    with direct(engine) as db:
        assert db.fetch_one(insert, params={"id": 1, "note": "a"}) == (1, "a")
        assert db.fetch_one(insert, params={"id": 2, "note": "it's"}) == (2, "it's")  # quoted by the driver
    assert "t_insert" in _prepared_on_server(engine)
    assert insert.body.count("$1") == 1
    assert insert.body.count("$2") == 1
    assert insert.call == "EXECUTE t_insert(%(id)s, %(note)s)"


def test_a_connection_that_lost_its_prepared_statements_prepares_them_again(engine: Engine, table: str) -> None:
    count = Prepared("t_count", f"SELECT count(*) FROM {table} WHERE id > %(above)s")
    with direct(engine) as db:
        assert db.fetch_one(count, params={"above": 0}) == (0,)
        db.fetch("DEALLOCATE ALL")  # behind our back: the pool's record still says prepared
        assert db.fetch_one(count, params={"above": 0}) == (0,)
    with direct(engine) as db:  # and one we did not know of is taken as it is
        db._fairy.info["omni_prepared"].discard("t_count")
        assert db.fetch_one(count, params={"above": -1}) == (0,)


def test_a_failed_transaction_is_rolled_back_before_the_connection_goes_back(engine: Engine, table: str) -> None:
    with direct(engine) as db:
        db.fetch(f"INSERT INTO {table} (id, note) VALUES (1, 'first')")
    with direct(engine) as db:
        db.begin_with(f"INSERT INTO {table} (id, note) VALUES (5, 'in the failed transaction')")
        with pytest.raises(IntegrityError):  # the constraint, as SQLAlchemy's error
            db.commit_with(f"INSERT INTO {table} (id, note) VALUES (1, 'duplicate')")
        assert db.in_transaction  # still open (aborted): the block's end rolls it back
    with engine.connect() as connection:  # the same (only) pooled connection: no transaction left open, nothing kept
        assert connection.execute(text("SELECT txid_current_if_assigned()")).scalar_one() is None
        assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1


def test_a_dead_connection_is_an_outage_the_order_path_retries_and_the_pool_replaces_it(engine: Engine, pg_url: str) -> None:
    pid = _backend_pid(engine)
    terminate_backend(pid, pg_url)
    with pytest.raises(OperationalError) as caught, direct(engine) as db:
        db.begin_with("SELECT 1")
    assert caught.value.connection_invalidated
    assert is_database_failure(caught.value)
    assert _backend_pid(engine) != pid  # a new connection, not the dead one handed out again


def test_a_server_that_refuses_the_connection_is_an_outage_the_order_path_retries() -> None:
    """Checkout against a server that is down: the driver's own error comes out of ``raw_connection()``; it must
    reach the order path as SQLAlchemy's ``OperationalError`` (CI once saw psycopg2's escape and orders fail)."""
    with socket.socket() as probe:  # a port nothing listens on: connection refused, as with the server stopped
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = make_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/test", pool_size=1, max_overflow=0)
    try:
        with pytest.raises(OperationalError) as caught, direct(refused) as db:  # raised by the checkout itself
            db.fetch("SELECT 1")
        assert "Connection refused" in str(caught.value)
        assert is_database_failure(caught.value)
    finally:
        refused.dispose()
