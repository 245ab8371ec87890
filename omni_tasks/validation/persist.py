"""Run validation over stored bars and keep what it found: quality reports, quarantine, series verdicts.

Plain Python over the bar store and a session factory (the task and the CLI
both call :func:`validate_stored`). Rows that break an invariant are moved:
copied to ``rejected_rows`` (stage ``validation``) with the reason, then
deleted from ``bars``. Outliers stay, flagged in the report. Each series gets
a verdict in ``series_validation`` that scans and risk consult: a series
whose latest validation failed is "stale input", never fresh.

The backfill ledger names why a series has no data: a partition that ended
``unknown_symbol`` or ``no_bars_in_range`` explains the bars missing in its
range (:func:`no_data_ranges`). Those bars are "no data", not provider holes,
and a series with no bar at all that the ledger explains gets the verdict
``no_data`` ("no data: unknown symbol ..." or "no data in range ..."), never
holes and a stale series.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.models import BackfillPartition, QualityReport, SeriesValidation
from omni_tasks.validation.bars import validate_bars
from omni_tasks.validation.report import ValidationResult

#: Verdict wording per no-data cause.
NO_DATA_VERDICTS = {"unknown_symbol": "no data: unknown symbol", "no_bars_in_range": "no data in range"}


def _day_status(row: dict[str, Any]) -> str:
    if row["expected_bars"] == 0 and row["quarantined_rows"] == 0:
        return "closed"
    if row["no_data_bars"] > 0 and row["present_bars"] == 0 and row["missing_bars"] == 0 and row["quarantined_rows"] == 0:
        return "no_data"
    if row["missing_bars"] > 0 or row["quarantined_rows"] > 0:
        return "fail"
    if row["flagged_rows"] > 0:
        return "warn"
    return "ok"


def validate_stored(
    engine: Engine,
    factory: sessionmaker[Session],
    symbols: Sequence[str],
    *,
    timeframe: str,
    start: date,
    end: date,
    feeds: Sequence[str],
    adjustment: str = "raw",
    as_of: datetime | None = None,
) -> tuple[ValidationResult, dict[str, Any]]:
    """Validate the stored bars of ``symbols`` in [start, end) and record the outcome. Returns (result, summary)."""
    lo = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    hi = datetime.combine(end, datetime.min.time(), tzinfo=UTC)
    as_of = as_of or datetime.now(tz=UTC)
    bars = BarStore(engine).read_many(list(symbols), timeframe, lo, hi, feeds=tuple(feeds), adjustment=adjustment)
    explained = no_data_ranges(factory, symbols, timeframe=timeframe, start=lo, end=hi, adjustment=adjustment)
    no_data = {s: [(a, b, cause or "") for a, b, cause, _ in ranges] for s, ranges in explained.items()}
    result = validate_bars(bars, timeframe=timeframe, start=lo, end=hi, symbols=list(symbols), as_of=min(as_of, hi), no_data=no_data)
    moved = _move_to_quarantine(engine, result.quarantine) if len(result.quarantine) else 0
    reports = result.reports.to_dict(orient="records")
    now = datetime.now(tz=UTC)
    report_rows = [
        {
            "symbol": r["symbol"], "timeframe": timeframe, "session": r["session"], "created_at": now,
            "expected": int(r["expected_bars"]), "present": int(r["present_bars"]),
            "completeness": float(r["completeness"]) if pd.notna(r["completeness"]) else 1.0,
            "status": _day_status(r),
            "gaps": {
                "kind": r["status"], "closure": r.get("closure_name"), "provider_hole_bars": int(r["provider_hole_bars"]),
                "halt_bars": int(r["halt_bars"]), "quarantined_bars": int(r["quarantined_bars"]), "no_data_bars": int(r["no_data_bars"]),
                "half_day_bars": int(r["half_day_bars"]), "stretches": int(r["gap_stretches"]),
            },
            "violations": dict(r["violations"] or {}),
            "outliers": int(r["outliers"]), "quarantined": int(r["quarantined_rows"]),
        }
        for r in reports
        if isinstance(r["session"], date)
    ]
    verdicts = _verdicts(result, symbols, timeframe, through=end - timedelta(days=1), now=now, explained=explained)
    with factory() as session, session.begin():
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        if report_rows:
            stmt = dialect.insert(QualityReport)
            update = {c: getattr(stmt.excluded, c) for c in ("created_at", "expected", "present", "completeness", "status", "gaps", "violations", "outliers", "quarantined")}
            session.execute(stmt.on_conflict_do_update(index_elements=["symbol", "timeframe", "session"], set_=update), report_rows)
        if verdicts:
            stmt = dialect.insert(SeriesValidation)
            update = {c: getattr(stmt.excluded, c) for c in ("status", "checked_at", "through", "reason")}
            session.execute(stmt.on_conflict_do_update(index_elements=["symbol", "timeframe"], set_=update), verdicts)
    summary = {
        "symbols": len(symbols), "bars": len(bars), "days": len(report_rows), "quarantined": moved,
        "failed_series": sorted(v["symbol"] for v in verdicts if v["status"] == "failed"),
        "no_data_series": {v["symbol"]: v["reason"] for v in verdicts if v["status"] == "no_data"},
        "outliers": int(sum(r["outliers"] for r in report_rows)), "ok": bool(result.ok),
    }
    return result, summary


#: One ledger range: (start, end, cause or None when data came, what the provider said).
LedgerRange = tuple[datetime, datetime, str | None, str]


def no_data_ranges(
    factory: sessionmaker[Session], symbols: Sequence[str], *, timeframe: str, start: datetime, end: datetime, adjustment: str
) -> dict[str, list[LedgerRange]]:
    """What the backfill ledger knows about missing data of ``symbols`` in [start, end), per symbol, oldest first.

    Every finished partition overlapping the window counts, in the order it
    finished: one that ended ``unknown_symbol`` or ``no_bars_in_range`` explains
    its range; a later one that found data (cause None) takes the explanation
    back for its range. Symbols the ledger never marked are left out.
    """
    with factory() as session:
        rows = session.execute(
            select(
                BackfillPartition.symbol, BackfillPartition.start, BackfillPartition.end, BackfillPartition.cause, BackfillPartition.last_error,
                BackfillPartition.notes, BackfillPartition.data_from,
            )
            .where(
                BackfillPartition.symbol.in_(list(symbols)),
                BackfillPartition.timeframe == timeframe,
                BackfillPartition.adjustment == adjustment,
                BackfillPartition.status.in_(("succeeded", "failed")),
                BackfillPartition.start < end,
                BackfillPartition.end > start,
            )
            .order_by(BackfillPartition.finished_at, BackfillPartition.id)
        ).all()
    out: dict[str, list[LedgerRange]] = {}
    marked = {r.symbol for r in rows if r.cause or r.data_from}
    for r in rows:
        if r.symbol not in marked:
            continue
        if r.data_from is not None and r.start < r.data_from < r.end:
            # Data came, from where the provider's series begins: before that, no bars in range.
            said = f"the provider's series starts {r.data_from.date().isoformat()}"
            out.setdefault(r.symbol, []).append((r.start, r.data_from, "no_bars_in_range", said))
            out[r.symbol].append((r.data_from, r.end, None, ""))
            continue
        out.setdefault(r.symbol, []).append((r.start, r.end, r.cause, (r.last_error or r.notes or "")[:300]))
    return out


def _verdicts(
    result: ValidationResult, symbols: Sequence[str], timeframe: str, *, through: date, now: datetime, explained: dict[str, list[LedgerRange]] | None = None
) -> list[dict[str, Any]]:
    explained = explained or {}
    series_rows = result.series.set_index("symbol") if len(result.series) and "symbol" in result.series else None
    no_data: dict[str, str] = {}
    for symbol, ranges in explained.items():
        present = int(series_rows.at[symbol, "present_bars"]) if series_rows is not None and symbol in series_rows.index else 0
        causes = [cause for _, _, cause, _ in ranges if cause]
        if present == 0 and causes and ranges[-1][2]:
            # Nothing stored, and the ledger's last word is "no data": that is the verdict, not holes.
            cause, detail = ranges[-1][2], ranges[-1][3]
            no_data[symbol] = f"{NO_DATA_VERDICTS.get(str(cause), 'no data')} ({detail})" if detail else NO_DATA_VERDICTS.get(str(cause), "no data")
    reasons: dict[str, list[str]] = {s: [] for s in symbols}
    gaps = result.gaps[result.gaps["is_gap"]] if len(result.gaps) else result.gaps
    for symbol, count in gaps.groupby("symbol")["bars"].sum().items() if len(gaps) else []:
        reasons.setdefault(str(symbol), []).append(f"{int(count)} missing bars")
    if len(result.quarantine):
        for symbol, count in result.quarantine.groupby("symbol").size().items():
            reasons.setdefault(str(symbol), []).append(f"{int(count)} rows quarantined")
    series = result.series.set_index("symbol") if len(result.series) and "symbol" in result.series else None
    if series is not None and "stale" in series:
        for symbol in series.index[series["stale"].astype(bool)]:
            reasons.setdefault(str(symbol), []).append("stale series")
    out = []
    for s, why in reasons.items():
        if s in no_data:
            out.append({"symbol": s, "timeframe": timeframe, "status": "no_data", "checked_at": now, "through": through, "reason": no_data[s][:4000]})
        else:
            out.append({"symbol": s, "timeframe": timeframe, "status": "failed" if why else "passed", "checked_at": now, "through": through, "reason": "; ".join(why) or None})
    return out


def _move_to_quarantine(engine: Engine, quarantine: pd.DataFrame) -> int:
    """Copy invariant-breaking stored rows to rejected_rows (stage validation), then delete them from bars."""
    store = BarStore(engine)
    store.quarantine(quarantine, partition_id=None, stage="validation")
    store.delete(quarantine)
    return len(quarantine)


def verdict_summary(factory: sessionmaker[Session]) -> dict[str, Any] | None:
    """The latest validation verdicts for `omni status`: series per status, per timeframe, and the last check. None: nothing validated yet."""
    with factory() as session:
        rows = session.execute(
            select(SeriesValidation.timeframe, SeriesValidation.status, func.count(), func.max(SeriesValidation.checked_at)).group_by(
                SeriesValidation.timeframe, SeriesValidation.status
            )
        ).all()
        if not rows:
            return None
        failed = session.scalars(select(SeriesValidation.symbol).where(SeriesValidation.status == "failed").order_by(SeriesValidation.symbol).limit(10)).all()
    by: dict[str, dict[str, int]] = {}
    for timeframe, status, count, _ in rows:
        by.setdefault(timeframe, {})[status] = int(count)
    last = max(r[3] for r in rows)
    return {"series": by, "last_checked_at": last.isoformat() if hasattr(last, "isoformat") else str(last), "failed_examples": list(failed)}
