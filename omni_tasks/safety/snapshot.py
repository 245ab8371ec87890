"""The emergency snapshot: what was open when the kill switch engaged, kept as a JSON file and a database row.

The file is written atomically (temp file, fsync, rename) into :func:`snapshot_dir`; the row is an
:class:`~omni_tasks.storage.models.EmergencySnapshot`. The engage sequence
(:mod:`omni_tasks.safety.engage`) decides when one is taken and records each part's failure.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.venue import VenueOrder, VenuePosition
from omni_tasks.safety.breaker import CircuitBreaker, known_breakers
from omni_tasks.safety.state_store import plain
from omni_tasks.settings import Settings
from omni_tasks.storage.models import EmergencySnapshot


def snapshot_dir(settings: Settings) -> Path:
    """Where emergency snapshot files go: OMNI_KILL_SNAPSHOT_DIR, or <data dir>/emergency."""
    return settings.kill.snapshot_dir or settings.data_dir / "emergency"


def order_dict(order: VenueOrder) -> dict[str, Any]:
    return plain(asdict(order))


def position_dict(position: VenuePosition) -> dict[str, Any]:
    return plain(asdict(position))


def write_json_atomically(path: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON to ``path`` through a temp file in the same folder, fsync and rename.

    A reader sees the old file or the whole new one, never half of it; the file is private (0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
    return path


def period_has_snapshot(sessions: sessionmaker[Session], since: datetime | None) -> bool:
    """True when a snapshot was taken since ``since`` (the engaged period's start); unknown counts as False (take one)."""
    if since is None:
        return False
    try:
        with sessions() as session:
            found = session.scalars(select(EmergencySnapshot.id).where(EmergencySnapshot.ts >= since).limit(1)).first()
            return found is not None
    except Exception:  # noqa: BLE001 - unknown: take one
        return False


def read_breakers(client: redis.Redis) -> list[dict[str, Any]]:
    """Every known circuit breaker's state, as the snapshot records it."""
    return [CircuitBreaker(name, client).state() for name in known_breakers(client)]


def snapshot_payload(
    ts: datetime,
    *,
    kill_event_id: int | None,
    actor: str,
    reason: str,
    version: int | None,
    open_orders: list[VenueOrder],
    positions: list[VenuePosition],
    breakers: list[dict[str, Any]],
) -> dict[str, Any]:
    """The snapshot as written to its file and its row (JSON-ready)."""
    return {
        "ts": ts.isoformat(),
        "kill_event_id": kill_event_id,
        "actor": actor,
        "reason": reason,
        "version": version,
        "open_orders": [order_dict(o) for o in open_orders],
        "positions": [position_dict(p) for p in positions],
        "breakers": plain(breakers),
    }


def snapshot_path(settings: Settings, ts: datetime, kill_event_id: int | None) -> Path:
    """Where the snapshot taken at ``ts`` for ``kill_event_id`` is written (``nodb`` when the engage has no KillEvent)."""
    name = f"emergency-{ts.strftime('%Y%m%dT%H%M%S.%fZ')}-{kill_event_id or 'nodb'}.json"
    return snapshot_dir(settings) / name


def save_snapshot_row(
    sessions: sessionmaker[Session], ts: datetime, kill_event_id: int | None, payload: dict[str, Any], file_path: str | None
) -> int:
    """Insert the :class:`EmergencySnapshot` row; returns its id."""
    with sessions() as session, session.begin():
        row = EmergencySnapshot(
            ts=ts,
            kill_event_id=kill_event_id,
            open_orders=payload["open_orders"],
            positions=payload["positions"],
            breakers=payload["breakers"],
            file_path=file_path,
        )
        session.add(row)
        session.flush()
        return int(row.id)
