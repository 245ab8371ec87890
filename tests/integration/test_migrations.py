"""Alembic revisions in db/ migrate SQLite and PostgreSQL to the models, with no drift."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect

from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import AuditLog, Base


def _roundtrip(url: str) -> None:
    engine = make_engine(url)
    try:
        migrations.upgrade(engine)
        migrations.upgrade(engine)  # idempotent
        assert migrations.current_revision(engine) == migrations.head_revision(engine)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        assert migrations.drift(engine) == [], "models and migrations disagree: write a revision"
        factory = session_factory(engine)
        stamp = datetime(2026, 3, 9, 14, 30, tzinfo=UTC)
        with factory() as session, session.begin():
            session.add(AuditLog(ts=stamp, actor="test", action="migrate", subject="db", detail={"ok": True}))
        with factory() as session:
            row = session.query(AuditLog).one()
            assert row.ts == stamp
            assert row.ts.tzinfo is not None, "timestamps come back timezone-aware UTC"
        migrations.command.downgrade(migrations.alembic_config(engine), "base")
        assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
        migrations.upgrade(engine)
        assert migrations.drift(engine) == []
    finally:
        engine.dispose()


def test_migrations_on_sqlite_reach_head_without_drift(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'omni.sqlite3'}")


@pytest.mark.services
def test_migrations_on_postgresql_reach_head_without_drift(pg_database) -> None:  # type: ignore[no-untyped-def]
    _roundtrip(pg_database())


def test_naive_timestamps_are_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'omni.sqlite3'}")
    migrations.upgrade(engine)
    factory = session_factory(engine)
    with pytest.raises(Exception, match="timezone-aware"), factory() as session, session.begin():
        session.add(AuditLog(ts=datetime(2026, 1, 1), actor="t", action="a", subject="s", detail={}))  # the point of the test
    engine.dispose()
