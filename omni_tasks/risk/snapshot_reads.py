"""Risk snapshots read back: the latest summary (Redis first, then the database), recent rows, one row's figures.

Apart from :mod:`omni_tasks.risk.snapshot` (which computes them with pandas) so the readers, `/health`,
`omni status` and the watchdog, never import pandas.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.core.keys import RISK_LATEST_KEY
from omni_tasks.storage.models import RiskSnapshot

_log = structlog.get_logger("omni.risk")


def summary_of_row(row: RiskSnapshot) -> dict[str, Any]:
    """The summary (as :meth:`SnapshotResult.summary` makes it) of a stored row."""
    figures = dict(row.metrics or {})
    return {
        "id": int(row.id),
        "ts": row.ts.isoformat(),
        "broker": row.broker,
        "positions": figures.get("positions"),
        "equity": str(figures.get("equity", row.equity)),
        "daily_pnl": str(figures.get("daily_pnl", row.daily_pnl)),
        "gross_exposure": row.gross_exposure,
        "net_exposure": row.net_exposure,
        "gross_leverage": row.gross_leverage,
        "concentration_pct": figures.get("concentration_pct"),
        "max_pair_correlation": figures.get("max_pair_correlation"),
        "var_95": row.var_95,
        "es_95": row.es_95,
        "var_99": figures.get("var_99_hist"),
        "es_99": figures.get("es_99_hist"),
        "drawdown_pct": row.drawdown_pct,
        "drawdown_from": figures.get("drawdown_from"),
        "sharpe": figures.get("sharpe"),
        "beta": figures.get("beta"),
        "risk_score": row.risk_score,
        "utilisation": dict(figures.get("utilisation") or {}),
        "breaches": list(row.breaches or []),
        "mark_sources": figures.get("mark_sources", {}),
        "stale_input": sorted(figures.get("stale_input") or {}),
        "notes": figures.get("notes", {}),
    }


def recent_snapshots(sessions: sessionmaker[Session], limit: int = 1) -> list[dict[str, Any]]:
    """The last ``limit`` snapshots, newest first, as summaries."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    with sessions() as session:
        rows = session.execute(select(RiskSnapshot).order_by(RiskSnapshot.ts.desc(), RiskSnapshot.id.desc()).limit(limit)).scalars().all()
        return [summary_of_row(row) for row in rows]


def snapshot_figures(sessions: sessionmaker[Session], snapshot_id: int) -> dict[str, Any]:
    """Every figure of one stored snapshot (the row's ``metrics`` JSON). LookupError when there is no such row."""
    with sessions() as session:
        row = session.get(RiskSnapshot, snapshot_id)
        if row is None:
            raise LookupError(f"no risk snapshot with id {snapshot_id}")
        return dict(row.metrics or {})


def latest_snapshot(runtime: Any) -> dict[str, Any] | None:
    """The latest snapshot's summary for `omni status` and /health: Redis first, the database when Redis has none or fails.

    ``runtime`` is anything with ``.redis`` and ``.sessions`` (the process
    runtime). The dict carries ``source`` ("redis" or "database"). None when
    no snapshot was ever taken. A database error propagates (the caller shows it).
    """
    try:
        raw = runtime.redis.get(RISK_LATEST_KEY)
    except Exception as exc:  # noqa: BLE001 - any Redis failure: fall back to the database
        _log.warning("risk snapshot: Redis unreadable, reading the database", error=str(exc))
        raw = None
    if raw:
        try:
            summary = json.loads(raw)
        except ValueError:
            summary = None
        if isinstance(summary, dict):
            summary["source"] = "redis"
            return summary
    rows = recent_snapshots(runtime.sessions, 1)
    if not rows:
        return None
    rows[0]["source"] = "database"
    return rows[0]
