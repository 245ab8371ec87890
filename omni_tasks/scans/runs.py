"""Scan runs in the database: create a run, store its merged result, read it back.

A run keeps its universe and config (so every chunk task re-reads them by id,
never from a message), its status and, per symbol, the indicators, score,
rank or the reason there is none. A symbol whose series last failed
validation is scored but flagged ``stale_input``: the run says so instead of
looking fresh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.storage.models import ScanResult as ScanResultRow
from omni_tasks.storage.models import ScanRun, SeriesValidation

if TYPE_CHECKING:
    from omni_tasks.scans.scanner import ScanConfig, ScanResult


def create_run(
    factory: sessionmaker[Session], symbols: Sequence[str], *, as_of: datetime, config: ScanConfig, chunk_size: int, requested_by: str
) -> int:
    """Record a run (status running) with its universe and config. Returns its id."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    chunks = max(1, math.ceil(len(symbols) / chunk_size)) if symbols else 0
    with factory() as session, session.begin():
        run = ScanRun(
            created_at=datetime.now(tz=UTC),
            requested_by=requested_by[:100],
            as_of=as_of,
            symbols=len(symbols),
            chunks=chunks,
            status="running" if symbols else "failed",
            stale_input=False,
            error=None if symbols else "empty universe: no symbols to scan",
            finished_at=None if symbols else datetime.now(tz=UTC),
            config={"symbols": list(symbols), "chunk_size": chunk_size, "scan": config.to_dict()},
        )
        session.add(run)
        session.flush()
        return int(run.id)


def load_run(factory: sessionmaker[Session], run_id: int) -> dict[str, Any]:
    from omni_tasks.scans.scanner import ScanConfig  # the scanner carries pandas: only where a run is loaded

    with factory() as session:
        run = session.get(ScanRun, run_id)
        if run is None:
            raise LookupError(f"scan run {run_id} does not exist")
        return {
            "id": run.id,
            "status": run.status,
            "as_of": run.as_of,
            "symbols": list(run.config.get("symbols", [])),
            "chunk_size": int(run.config.get("chunk_size", 100)),
            "config": ScanConfig.from_dict(run.config.get("scan", {})),
            "created_at": run.created_at,
            "finished_at": run.finished_at,
            "error": run.error,
            "stale_input": run.stale_input,
            "requested_by": run.requested_by,
            "chunks": run.chunks,
        }


def fail_run(factory: sessionmaker[Session], run_id: int, error: str, *, only_running: bool = False) -> bool:
    """Record a run as failed with ``error``; ``only_running``: unless it already finished. True if the row changed."""
    with factory() as session, session.begin():
        query = update(ScanRun).where(ScanRun.id == run_id)
        if only_running:
            query = query.where(ScanRun.status == "running")
        changed = session.execute(query.values(status="failed", error=error[:4000], finished_at=datetime.now(tz=UTC)))
        return bool(cast("CursorResult[Any]", changed).rowcount)  # an UPDATE's result is its cursor's


def running_runs(factory: sessionmaker[Session]) -> list[tuple[int, datetime]]:
    """(id, created_at UTC) of every run still ``running``, oldest first: what the ledger reconciler watches."""
    with factory() as session:
        rows = session.execute(select(ScanRun.id, ScanRun.created_at).where(ScanRun.status == "running").order_by(ScanRun.id)).all()
    return [(int(r[0]), r[1]) for r in rows]


def failed_validation(factory: sessionmaker[Session], symbols: Sequence[str], timeframe: str) -> dict[str, str]:
    """symbol -> reason, for series whose latest validation failed (validation gates what is computed from them)."""
    with factory() as session:
        rows = session.execute(
            select(SeriesValidation.symbol, SeriesValidation.reason).where(
                SeriesValidation.timeframe == timeframe, SeriesValidation.status == "failed", SeriesValidation.symbol.in_(list(symbols))
            )
        ).all()
    return {r.symbol: r.reason or "latest validation failed" for r in rows}


def store_result(factory: sessionmaker[Session], run_id: int, result: ScanResult, *, stale: dict[str, str]) -> dict[str, Any]:
    """Write every symbol's row and finish the run. A re-delivered merge rewrites the same rows."""
    records = result.to_records()
    scored = sum(1 for r in records if r.get("rank") is not None)
    status = "succeeded" if scored else "failed"
    error = None if scored else "no symbol could be scored: " + "; ".join(sorted({str(r.get("reason")) for r in records}))[:1000]
    with factory() as session, session.begin():
        session.execute(delete(ScanResultRow).where(ScanResultRow.run_id == run_id))
        session.add_all(
            ScanResultRow(
                run_id=run_id,
                symbol=r["symbol"],
                rank=int(r["rank"]) if r.get("rank") is not None else None,
                score=float(r["score"]) if r.get("score") is not None else None,
                indicators={k: v for k, v in r.items() if k not in {"symbol", "rank", "score", "reason"}},
                reason=r.get("reason") or (f"stale input: {stale[r['symbol']]}" if r["symbol"] in stale else None),
                stale_input=r["symbol"] in stale,
            )
            for r in records
        )
        session.execute(
            update(ScanRun)
            .where(ScanRun.id == run_id)
            .values(status=status, error=error, stale_input=bool(stale), finished_at=datetime.now(tz=UTC))
        )
    return {"run_id": run_id, "status": status, "scored": scored, "symbols": len(records), "stale_input": len(stale)}


def results(factory: sessionmaker[Session], run_id: int, *, top: int | None = None) -> list[dict[str, Any]]:
    with factory() as session:
        rows = session.scalars(select(ScanResultRow).where(ScanResultRow.run_id == run_id)).all()
    ordered = sorted(rows, key=lambda r: (r.rank is None, r.rank or 0, r.symbol))
    if top is not None:
        ordered = [r for r in ordered if r.rank is not None][:top] + [r for r in ordered if r.rank is None]
    return [
        {"symbol": r.symbol, "rank": r.rank, "score": r.score, "reason": r.reason, "stale_input": r.stale_input, **r.indicators}
        for r in ordered
    ]


def latest_run(factory: sessionmaker[Session]) -> dict[str, Any] | None:
    """The most recent scan run for `omni status`: id, status, who asked, when, symbols, ranked, top symbols, error. None: no run yet."""
    with factory() as session:
        run = session.scalars(select(ScanRun).order_by(ScanRun.id.desc()).limit(1)).first()
        if run is None:
            return None
        top = session.scalars(
            select(ScanResultRow.symbol).where(ScanResultRow.run_id == run.id, ScanResultRow.rank.is_not(None)).order_by(ScanResultRow.rank).limit(5)
        ).all()
        ranked = session.scalar(select(func.count()).select_from(ScanResultRow).where(ScanResultRow.run_id == run.id, ScanResultRow.rank.is_not(None)))
        return {
            "id": int(run.id), "status": run.status, "requested_by": run.requested_by, "as_of": run.as_of.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None, "symbols": run.symbols, "ranked": int(ranked or 0),
            "top": list(top), "stale_input": run.stale_input, "error": (run.error or "")[:300] or None,
        }  # fmt: skip
