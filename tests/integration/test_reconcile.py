"""A second opinion on real databases (SQLite and PostgreSQL): stored bars compared with another provider.

The offline pair serves as the two providers: bars stored from ``synthetic`` are compared with a ``replay``
recording of the same bars in which one close (or one volume) was changed. Volumes are compared only when
the feeds are comparable, and every comparison is recorded once however often the run is repeated.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.providers.replay import ReplayBars
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import ReconciliationResult
from omni_tasks.validation.reconcile import read_differences, reconcile, record

START, END = date(2024, 1, 2), date(2024, 4, 1)
CHANGED = pd.Timestamp("2024-02-14", tz="UTC")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'rec.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")()
    eng = make_engine(url)
    migrations.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def _synthetic(symbol: str = "AAPL") -> pd.DataFrame:
    lo, hi = (datetime.combine(d, datetime.min.time(), tzinfo=UTC) for d in (START, END))
    return SyntheticBars().fetch_bars(BarRequest(symbol, "1Day", lo, hi)).bars


def _recording(
    folder: Path, bars: pd.DataFrame, *, feed: str | None = None, close_factor: float = 1.0, volume_factor: float = 1.0
) -> ReplayBars:
    frame = bars[["ts", "open", "high", "low", "close", "volume"]].copy()
    at = frame["ts"] == CHANGED
    frame.loc[at, ["open", "high", "low", "close"]] *= close_factor
    frame.loc[at, "volume"] *= volume_factor
    frame["timeframe"] = "1Day"
    if feed is not None:
        frame["feed"] = feed
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / f"{bars['symbol'].iloc[0]}.csv", index=False)
    return ReplayBars(folder)


def _rows(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(ReconciliationResult)) or 0)


def test_reconcile_synthetic_against_replay_records_the_changed_close_once_and_does_not_compare_volumes(
    engine: Engine, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    bars = _synthetic()
    BarStore(engine).upsert(bars)
    replay = _recording(tmp_path / "replay", bars, close_factor=1.01)

    report = reconcile(
        BarStore(engine),
        [SyntheticBars(), replay],
        ["AAPL"],
        timeframe="1Day",
        start=START,
        end=END,
        feeds=("synthetic",),
        sample=len(bars),
        tolerance_bp=25.0,
    )
    written = record(factory, report)
    record(
        factory,
        reconcile(
            BarStore(engine),
            [SyntheticBars(), replay],
            ["AAPL"],
            timeframe="1Day",
            start=START,
            end=END,
            feeds=("synthetic",),
            sample=len(bars),
        ),
    )

    (diff,) = report.differences
    print(
        f"synthetic vs replay: {len(report.comparisons)} bars compared of {len(bars)}, {len(report.differences)} beyond 25 bp "
        f"(the changed close: {diff.close_diff_bp:.1f} bp); volumes compared {report.summary()['volume_compared']}; rows after two runs {_rows(factory)}"
    )
    assert len(report.comparisons) == len(bars) == written
    assert diff.ts == CHANGED.to_pydatetime()
    assert diff.close_diff_bp == pytest.approx(99.0099, abs=0.01)
    assert (diff.stored_provider, diff.other_provider, diff.other_feed) == ("synthetic", "replay", "replay")
    assert not any(c.volume_compared for c in report.comparisons)
    assert "volume not compared: synthetic and replay" in (diff.note or "")
    assert _rows(factory) == len(bars), "a repeated run updates the same rows"
    (shown,) = read_differences(factory, ["AAPL"], timeframe="1Day", start=START, end=END)
    assert shown["close_diff_bp"] == pytest.approx(99.0099, abs=0.01)
    assert shown["volume_diff_pct"] is None


def test_reconcile_comparable_feeds_compare_volume_and_flag_a_volume_difference(
    engine: Engine, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    stored = _synthetic("MSFT").assign(provider="alpaca", feed="sip")
    BarStore(engine).upsert(stored)
    replay = _recording(tmp_path / "replay", stored, feed="sip", volume_factor=1.5)

    report = reconcile(
        BarStore(engine),
        [replay],
        ["MSFT"],
        timeframe="1Day",
        start=START,
        end=END,
        feeds=("sip",),
        sample=len(stored),
        tolerance_bp=25.0,
        volume_tolerance_pct=10.0,
    )

    (diff,) = report.differences
    print(
        f"sip vs sip: {len(report.comparisons)} bars compared, volumes compared {report.summary()['volume_compared']}, "
        f"differences {len(report.differences)} (volume {diff.volume_diff_pct:.1f}% on {diff.ts.date()}, close {diff.close_diff_bp} bp)"
    )
    assert len(report.comparisons) == len(stored)
    assert all(c.volume_compared for c in report.comparisons)
    assert all(c.close_diff_bp == 0 for c in report.comparisons)
    assert diff.ts == CHANGED.to_pydatetime()
    assert diff.volume_diff_pct == pytest.approx(100 / 3, abs=0.01)
    # A sample is the same every time: a re-run compares the same bars.
    first = reconcile(BarStore(engine), [replay], ["MSFT"], timeframe="1Day", start=START, end=END, feeds=("sip",), sample=10)
    again = reconcile(BarStore(engine), [replay], ["MSFT"], timeframe="1Day", start=START, end=END, feeds=("sip",), sample=10)
    assert len(first.comparisons) == 10
    assert [c.ts for c in again.comparisons] == [c.ts for c in first.comparisons]


def test_reconcile_without_a_second_provider_or_stored_bars_says_why_and_compares_nothing(engine: Engine) -> None:
    BarStore(engine).upsert(_synthetic())

    report = reconcile(BarStore(engine), [SyntheticBars()], ["AAPL", "NONE"], timeframe="1Day", start=START, end=END, feeds=("synthetic",))

    assert report.comparisons == []
    assert dict(report.skipped) == {
        "AAPL": "no second provider configured that can serve 1Day raw bars besides synthetic",
        "NONE": f"no stored 1Day bars between {START} and {END}",
    }
