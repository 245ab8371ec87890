"""Order deadlines on a real (SQLite) ledger: the conditional expiry, the watchdog's reconciliation, retry waits, intake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import Order, OrderEvent
from omni_tasks.trading.expiry import expire_order, expire_overdue, retry_delay_s
from omni_tasks.trading.intake import NotQueued, accept_order
from omni_tasks.trading.order_records import order_row_values
from omni_tasks.trading.parsing import parse_order

T0 = datetime(2026, 3, 9, 15, 0, tzinfo=UTC)


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'omni.sqlite3'}")
    migrations.upgrade(engine)
    return session_factory(engine)


def request(coid: str) -> Any:
    return parse_order(symbol="AAPL", side="buy", qty="1", client_order_id=coid, requested_by="test")


def record(sessions: sessionmaker[Session], coid: str, *, created: datetime, deadline: datetime | None, **changes: Any) -> None:
    with sessions() as session, session.begin():
        session.add(Order(**{**order_row_values(request(coid), venue="simulated", now=created, deadline=deadline), **changes}))


def status_and_events(sessions: sessionmaker[Session], coid: str) -> tuple[str | None, list[tuple[str, str | None]]]:
    with sessions() as session:
        status = session.execute(select(Order.status).where(Order.client_order_id == coid)).scalar_one_or_none()
        events = session.execute(select(OrderEvent.event, OrderEvent.check).where(OrderEvent.client_order_id == coid)).all()
    return status, [(e[0], e[1]) for e in events]


def test_expire_order_changes_only_a_pending_unsent_row_and_records_one_event(sessions: sessionmaker[Session]) -> None:
    record(sessions, "pending-1", created=T0, deadline=T0 + timedelta(seconds=5))
    record(sessions, "filled-1", created=T0, deadline=T0 + timedelta(seconds=5), status="filled")
    record(sessions, "claimed-1", created=T0, deadline=T0 + timedelta(seconds=5), submitted_at=T0)
    later = T0 + timedelta(seconds=10)
    with sessions() as session, session.begin():
        assert expire_order(session, client_order_id="pending-1", reason="late", now=later) == "expired"
        assert expire_order(session, client_order_id="pending-1", reason="late again", now=later) == "expired"  # already: no second event
        assert expire_order(session, client_order_id="filled-1", reason="late", now=later) == "filled"
        assert expire_order(session, client_order_id="claimed-1", reason="late", now=later) == "pending"  # at the venue: not ours
        assert expire_order(session, client_order_id="unknown-1", reason="late", now=later) is None
    assert status_and_events(sessions, "pending-1") == ("expired", [("expired", "deadline")])
    assert status_and_events(sessions, "filled-1") == ("filled", [])
    assert status_and_events(sessions, "claimed-1") == ("pending", [])
    with sessions() as session:
        assert session.execute(select(Order.reason).where(Order.client_order_id == "pending-1")).scalar_one() == "deadline: late"


def test_an_order_never_recorded_is_recorded_expired_from_its_message(sessions: sessionmaker[Session]) -> None:
    values = order_row_values(request("lost-1"), venue="simulated", now=T0, deadline=T0)
    with sessions() as session, session.begin():
        assert expire_order(session, client_order_id="lost-1", reason="late", now=T0, row_values=values) == "expired"
    assert status_and_events(sessions, "lost-1") == ("expired", [("requested", None), ("expired", "deadline")])


def test_the_reconciliation_expires_only_pending_unsent_orders_past_deadline_plus_grace(sessions: sessionmaker[Session]) -> None:
    now = T0 + timedelta(seconds=100)
    record(sessions, "overdue", created=T0, deadline=now - timedelta(seconds=31))
    record(sessions, "in-grace", created=T0, deadline=now - timedelta(seconds=29))
    record(sessions, "not-due", created=T0, deadline=now + timedelta(seconds=60))
    record(sessions, "decided", created=T0, deadline=now - timedelta(seconds=60), status="denied", reason="price_collar: x")
    record(sessions, "at-broker", created=T0, deadline=now - timedelta(seconds=60), submitted_at=T0)
    record(sessions, "legacy-old", created=now - timedelta(seconds=200), deadline=None)  # no deadline: TTL from its creation
    record(sessions, "legacy-new", created=now - timedelta(seconds=100), deadline=None)
    with sessions() as session, session.begin():
        session.add(
            OrderEvent(ts=T0, client_order_id="overdue", event="refused", check="kill_switch", reason="trading is HALTED", detail={})
        )
    expired = expire_overdue(sessions, now=now, ttl_s=120, grace_s=30)
    assert sorted(expired) == ["legacy-old", "overdue"]
    assert expire_overdue(sessions, now=now, ttl_s=120, grace_s=30) == []  # a second tick finds nothing
    with sessions() as session:
        reason = session.execute(select(Order.reason).where(Order.client_order_id == "overdue")).scalar_one()
        statuses = dict(session.execute(select(Order.client_order_id, Order.status)).all())
    assert reason.startswith("deadline: not sent by its deadline 2026-03-09T15:01:09Z")
    assert "last event: refused kill_switch: trading is HALTED" in reason
    assert statuses == {
        "overdue": "expired", "in-grace": "pending", "not-due": "pending", "decided": "denied",
        "at-broker": "pending", "legacy-old": "expired", "legacy-new": "pending",
    }  # fmt: skip


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 10, 30])
def test_retry_waits_grow_with_jitter_up_to_the_cap_and_never_far_past_the_deadline(attempt: int) -> None:
    base = min(10.0, 0.5 * 2 ** (attempt - 1))
    low = retry_delay_s(attempt, seconds_left=1000, cap_s=10, rand=lambda: 0.0)
    high = retry_delay_s(attempt, seconds_left=1000, cap_s=10, rand=lambda: 0.999999)
    assert low == pytest.approx(base / 2)
    assert high == pytest.approx(base, rel=1e-5)
    assert retry_delay_s(attempt, seconds_left=0.2, cap_s=10, rand=lambda: 1.0) <= 0.25  # the next attempt sees the deadline
    assert retry_delay_s(attempt, seconds_left=-5, cap_s=10, rand=lambda: 1.0) == pytest.approx(base)  # past it: keep backing off


def test_intake_records_before_it_queues_and_finalises_an_order_it_could_not_queue(sessions: sessionmaker[Session]) -> None:
    sent: list[dict[str, Any]] = []
    accepted = accept_order(request("ok-1"), sessions=sessions, venue="simulated", ttl_s=120, send=sent.append, clock=T0.timestamp)
    assert accepted.expires_at == T0 + timedelta(seconds=120)
    assert sent[0]["client_order_id"] == "ok-1"
    assert sent[0]["expires_at"] == (T0 + timedelta(seconds=120)).timestamp()
    assert status_and_events(sessions, "ok-1") == ("pending", [("requested", None)])

    def broker_down(_: dict[str, Any]) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with pytest.raises(NotQueued, match="could not be queued: the broker failed .*: recorded as rejected, nothing sent"):
        accept_order(request("down-1"), sessions=sessions, venue="simulated", ttl_s=120, send=broker_down, clock=T0.timestamp)
    assert status_and_events(sessions, "down-1") == ("rejected", [("requested", None), ("rejected", "queue")])


def test_intake_with_the_database_down_records_nothing_and_sends_nothing() -> None:
    def database_away() -> Session:
        raise OperationalError("connect", {}, ConnectionRefusedError("connection to server failed: Connection refused"))

    sent: list[dict[str, Any]] = []
    with pytest.raises(NotQueued, match="the database is unavailable .*: nothing recorded, nothing queued"):
        accept_order(request("db-1"), sessions=database_away, venue="simulated", ttl_s=120, send=sent.append)  # type: ignore[arg-type]
    assert sent == []


def test_a_claimed_row_is_not_expired_by_a_late_reconciliation(sessions: sessionmaker[Session]) -> None:
    record(sessions, "race-1", created=T0, deadline=T0)
    with sessions() as session, session.begin():  # the orders path claims it for a venue without our ledger
        session.execute(update(Order).where(Order.client_order_id == "race-1", Order.status == "pending").values(submitted_at=T0))
    assert expire_overdue(sessions, now=T0 + timedelta(hours=1), ttl_s=120, grace_s=30) == []
    assert status_and_events(sessions, "race-1") == ("pending", [])
