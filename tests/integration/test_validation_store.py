"""Validation over stored bars: reports and verdicts stored, invariant breaches moved to quarantine, outliers kept."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.scans import runs
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import Bar, BarSeries, QualityReport, RejectedRow, SeriesValidation
from omni_tasks.validation.persist import validate_stored

START, END = date(2024, 11, 25), date(2024, 12, 3)
SYMBOLS = ["AAPL", "MSFT", "NVDA"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'v.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")()
    eng = make_engine(url)
    migrations.upgrade(eng)
    yield eng
    eng.dispose()


def _bars() -> pd.DataFrame:
    synthetic = SyntheticBars()
    frames = [
        synthetic.fetch_bars(BarRequest(s, "1Min", datetime(2024, 11, 25, tzinfo=UTC), datetime(2024, 12, 3, tzinfo=UTC))).bars for s in SYMBOLS
    ]
    return pd.concat(frames, ignore_index=True)


def test_validate_stored_reports_gaps_moves_breaches_keeps_outliers_and_gates_scans(engine) -> None:  # type: ignore[no-untyped-def]
    bars = _bars()
    # MSFT loses one bar (a provider hole); NVDA gets a bar on Saturday (outside any session: an invariant
    # breach) and a 10% one-minute jump (an outlier: flagged, kept).
    bars = bars.drop(bars[(bars.symbol == "MSFT") & (bars.ts == pd.Timestamp("2024-11-26T15:00:00Z"))].index)
    saturday = bars[bars.symbol == "NVDA"].iloc[[0]].assign(ts=pd.Timestamp("2024-11-30T15:00:00Z"))
    jump = bars[(bars.symbol == "NVDA") & (bars.ts == pd.Timestamp("2024-11-27T16:00:00Z"))].index
    bars.loc[jump, ["open", "high", "low", "close"]] = bars.loc[jump, ["open", "high", "low", "close"]] * 1.10
    bars.loc[jump, "high"] = bars.loc[jump, ["open", "close", "high"]].max(axis=1)
    bars = pd.concat([bars, saturday], ignore_index=True)
    store = BarStore(engine)
    store.upsert(bars)
    factory = session_factory(engine)

    result, summary = validate_stored(engine, factory, SYMBOLS, timeframe="1Min", start=START, end=END, feeds=("synthetic",))

    assert summary["quarantined"] == 1
    assert summary["failed_series"] == ["MSFT", "NVDA"]
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Bar).join(BarSeries, BarSeries.id == Bar.series_id).where(BarSeries.symbol == "NVDA", Bar.ts == datetime(2024, 11, 30, 15, tzinfo=UTC))) == 0
        moved = session.scalars(select(RejectedRow).where(RejectedRow.stage == "validation")).all()
        assert [(r.symbol, r.ts) for r in moved] == [("NVDA", datetime(2024, 11, 30, 15, tzinfo=UTC))]
        assert "outside" in moved[0].reason
        verdicts = {v.symbol: v for v in session.scalars(select(SeriesValidation)).all()}
        assert verdicts["AAPL"].status == "passed"
        assert verdicts["MSFT"].status == "failed"
        assert "1 missing bars" in (verdicts["MSFT"].reason or "")
        reports = {(r.symbol, r.session): r for r in session.scalars(select(QualityReport)).all()}
    thanksgiving = reports[("AAPL", date(2024, 11, 28))]
    assert thanksgiving.status == "closed"
    assert thanksgiving.gaps["kind"] == "holiday"
    half_day = reports[("AAPL", date(2024, 11, 29))]
    assert (half_day.expected, half_day.present, half_day.status) == (210, 210, "ok")
    hole = reports[("MSFT", date(2024, 11, 26))]
    assert (hole.present, hole.status, hole.gaps["provider_hole_bars"]) == (389, "fail", 1)
    flagged = reports[("NVDA", date(2024, 11, 27))]
    assert flagged.outliers >= 1
    assert flagged.present == 390, "an outlier is kept, not quarantined"
    assert runs.failed_validation(factory, SYMBOLS, "1Min").keys() == {"MSFT", "NVDA"}
    print(f"validation: {summary['bars']} bars, quarantined {summary['quarantined']}, outliers kept {summary['outliers']}, failed series {summary['failed_series']}")

    # Validating again changes nothing: reports are upserted per (symbol, day), nothing more is moved.
    _, again = validate_stored(engine, factory, SYMBOLS, timeframe="1Min", start=START, end=END, feeds=("synthetic",))
    assert again["quarantined"] == 0
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(QualityReport)) == len(reports)
