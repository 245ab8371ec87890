"""The task-run ledger: every task outcome, first to Redis (fast, survives a worker kill), then to the database.

A worker pushes one JSON record per outcome onto a Redis list before the
message is acknowledged (built in :meth:`omni_tasks.pipeline.taskdef.OmniTask._record`:
the keys of :func:`_row` below, times in UNIX seconds, a fresh ``outcome_id``), so a SIGKILL after the task finished cannot lose the
record. The watchdog drains the list into ``task_runs`` in batches; the unique
``outcome_id`` makes a drain that is interrupted and repeated harmless.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core.keys import OUTCOMES_DRAIN_LOCK_KEY, TASK_OUTCOMES_KEY
from omni_tasks.storage.models import TaskRun

ARGS_MAX_CHARS = 2000
ERROR_MAX_CHARS = 4000


def summarize_args(args: Any, kwargs: Any) -> str:
    """Task arguments as JSON for the ledger (task arguments are JSON primitives, never credentials)."""
    try:
        text = json.dumps({"args": list(args or ()), "kwargs": dict(kwargs or {})}, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr((args, kwargs))
    return text[:ARGS_MAX_CHARS]


def pending_outcomes(client: redis.Redis) -> int:
    return int(client.llen(TASK_OUTCOMES_KEY))


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def _row(raw: bytes | str) -> dict[str, Any]:
    data = json.loads(raw)
    return {
        "outcome_id": data["outcome_id"],
        "task_id": data["task_id"],
        "name": data["name"][:200],
        "queue": data["queue"][:50],
        "state": data["state"][:20],
        "args_json": data.get("args_json") or "",
        "worker": data["worker"][:200],
        "pid": int(data["pid"]),
        "delivery": int(data.get("delivery") or 1),
        "sent_at": _ts(data.get("sent_at")),
        "started_at": _ts(data["started_at"]),
        "finished_at": _ts(data["finished_at"]),
        "runtime_s": float(data["runtime_s"]),
        "queue_wait_s": data.get("queue_wait_s"),
        "error": (data.get("error") or None) and data["error"][:ERROR_MAX_CHARS],
    }


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(TaskRun).on_conflict_do_nothing(index_elements=["outcome_id"]), rows)
    elif dialect == "sqlite":
        session.execute(sqlite.insert(TaskRun).on_conflict_do_nothing(index_elements=["outcome_id"]), rows)
    else:  # pragma: no cover - only the two supported databases reach here
        session.execute(insert(TaskRun), rows)


def drain_outcomes(client: redis.Redis, factory: sessionmaker[Session], *, batch: int = 2000, max_batches: int = 50) -> int:
    """Move outcome records from Redis into ``task_runs``. Returns the number moved.

    One drainer at a time (a Redis lock): records are trimmed from the list
    only after their batch committed, so a crash between the two re-inserts
    the batch next time, and the unique ``outcome_id`` ignores the repeats.
    A record that cannot be parsed is kept in the table with state CORRUPT
    rather than dropped.
    """
    token = uuid.uuid4().hex
    if not client.set(OUTCOMES_DRAIN_LOCK_KEY, token, nx=True, px=60_000):
        return 0
    moved = 0
    try:
        for _ in range(max_batches):
            raws = client.lrange(TASK_OUTCOMES_KEY, 0, batch - 1)
            if not raws:
                break
            rows = []
            for raw in raws:
                try:
                    rows.append(_row(raw))
                except (ValueError, KeyError, TypeError) as exc:
                    rows.append(_corrupt_row(raw, exc))
            with factory() as session, session.begin():
                _insert_ignoring_duplicates(session, rows)
            client.ltrim(TASK_OUTCOMES_KEY, len(raws), -1)
            moved += len(raws)
            if len(raws) < batch:
                break
    finally:
        # Release only our own lock.
        client.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
            1,
            OUTCOMES_DRAIN_LOCK_KEY,
            token,
        )
    return moved


def _corrupt_row(raw: bytes | str, exc: Exception) -> dict[str, Any]:
    now = datetime.now(tz=UTC)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return {
        "outcome_id": str(uuid.uuid5(uuid.NAMESPACE_OID, text)),
        "task_id": "?",
        "name": "?",
        "queue": "?",
        "state": "CORRUPT",
        "args_json": text[:ARGS_MAX_CHARS],
        "worker": "?",
        "pid": 0,
        "delivery": 0,
        "sent_at": None,
        "started_at": now,
        "finished_at": now,
        "runtime_s": 0.0,
        "queue_wait_s": None,
        "error": f"unreadable outcome record: {exc}",
    }
