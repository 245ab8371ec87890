"""SQLAlchemy 2 typed models. The schema's history lives in ``db/`` (Alembic).

Market data may be double precision; money in the ledger is Numeric (exact).
Every timestamp is timezone-aware UTC (:class:`UtcDateTime`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from omni_tasks.storage.types import UtcDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Reusable column types.
BigId = Annotated[int, mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)]
UtcTs = Annotated[datetime, mapped_column(UtcDateTime())]
Name = Annotated[str, mapped_column(String(200))]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON}


class TaskRun(Base):
    """One outcome of one task delivery (Flower forgets on restart; this does not)."""

    __tablename__ = "task_runs"

    id: Mapped[BigId]
    outcome_id: Mapped[str] = mapped_column(String(36), unique=True)
    task_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[Name] = mapped_column(index=True)
    queue: Mapped[str] = mapped_column(String(50))
    state: Mapped[str] = mapped_column(String(20))
    args_json: Mapped[str] = mapped_column(Text, default="")
    worker: Mapped[Name]
    pid: Mapped[int]
    delivery: Mapped[int] = mapped_column(default=1)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[UtcTs]
    finished_at: Mapped[UtcTs]
    runtime_s: Mapped[float] = mapped_column(Float)
    queue_wait_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_task_runs_finished_at", "finished_at"),
        Index("ix_task_runs_state_finished_at", "state", "finished_at"),
    )


class AuditLog(Base):
    """Who did what, when and why: operator actions, breaker and kill-switch transitions."""

    __tablename__ = "audit_log"

    id: Mapped[BigId]
    ts: Mapped[UtcTs] = mapped_column(index=True)
    actor: Mapped[Name]
    action: Mapped[str] = mapped_column(String(100), index=True)
    subject: Mapped[Name]
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class WorkerHeartbeat(Base):
    """The last heartbeat of every worker instance the watchdog has seen."""

    __tablename__ = "worker_heartbeats"

    instance_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[Name] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(50))
    queues: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    started_at: Mapped[UtcTs]
    last_seen: Mapped[UtcTs]
    active: Mapped[int] = mapped_column(default=0)
    processed: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[str] = mapped_column(String(50))
