"""Loading a scan's bars: the batch read returns what BarStore.read returns per symbol; the range covers the window."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine

from omni_tasks.marketdata import calendar
from omni_tasks.scans.indicators import Lookbacks
from omni_tasks.scans.loading import PerSymbolReader, history_start, load_bars
from omni_tasks.scans.scanner import ScanConfig, scan
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine
from tests.unit.scans.factories import random_walk, sessions

AS_OF = datetime(2024, 10, 1, 12, 0, tzinfo=UTC)
DAYS = sessions(320, last=date(2024, 9, 30))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A migrated SQLite bar store: AAA on SIP with IEX overlapping and filling a hole, BBB on IEX only, split-adjusted rows too."""
    path: Path = tmp_path_factory.mktemp("scan-store") / "bars.db"
    engine = make_engine(f"sqlite:///{path}")
    migrations.upgrade(engine)
    store = BarStore(engine)
    sip = random_walk("AAA", DAYS, seed=1)
    hole = sip["ts"] == pd.Timestamp(DAYS[-5], tz="UTC")
    iex = random_walk("AAA", DAYS[-40:], seed=2).assign(feed="iex")
    adjusted = sip.assign(adjustment="split", close=sip["close"] / 2, open=sip["open"] / 2, high=sip["high"] / 2, low=sip["low"] / 2)
    bbb = random_walk("BBB", DAYS, seed=3).assign(feed="iex")
    store.upsert(pd.concat([sip[~hole], iex, adjusted, bbb], ignore_index=True))
    yield engine
    engine.dispose()


@pytest.mark.parametrize("feeds", [("sip", "iex"), ("iex", "sip"), ("iex",)])
def test_batch_read_equals_bar_store_read_per_symbol(engine: Engine, feeds: tuple[str, ...]) -> None:
    start, end = datetime(2024, 1, 1, tzinfo=UTC), AS_OF
    symbols = ["BBB", "AAA", "NONE"]
    batch = BarStore(engine).read_many(symbols, "1Day", start, end, feeds=feeds)
    per_symbol = PerSymbolReader(BarStore(engine)).read_many(symbols, "1Day", start, end, feeds=feeds)
    pd.testing.assert_frame_equal(batch, per_symbol, check_exact=True)
    assert len(batch) > 0
    assert batch["symbol"].is_monotonic_increasing


def test_batch_read_prefers_the_first_feed_and_fills_holes_from_the_next(engine: Engine) -> None:
    frame = BarStore(engine).read_many(["AAA"], "1Day", datetime(2024, 1, 1, tzinfo=UTC), AS_OF, feeds=("sip", "iex"))
    by_ts = frame.set_index("ts")["feed"]
    assert by_ts[pd.Timestamp(DAYS[-5], tz="UTC")] == "iex"  # the SIP hole
    assert (by_ts.drop(pd.Timestamp(DAYS[-5], tz="UTC")) == "sip").all()
    assert frame["ts"].is_unique


def test_batch_read_of_nothing_is_an_empty_canonical_frame(engine: Engine) -> None:
    frame = BarStore(engine).read_many(["NONE"], "1Day", datetime(2024, 1, 1, tzinfo=UTC), AS_OF)
    assert frame.empty
    assert "close" in frame.columns
    with pytest.raises(ValueError, match="feeds is empty"):
        BarStore(engine).read_many(["AAA"], "1Day", datetime(2024, 1, 1, tzinfo=UTC), AS_OF, feeds=())


def test_load_bars_reads_enough_for_the_window_and_scans_like_the_whole_history(engine: Engine) -> None:
    config = ScanConfig()
    loaded = load_bars(BarStore(engine), ["AAA", "BBB"], as_of=AS_OF, config=config, feeds=("sip", "iex"))
    counts = loaded.groupby("symbol").size()
    assert (counts >= config.lookbacks.window_bars).all()
    assert (counts < len(DAYS)).all()
    everything = BarStore(engine).read_many(["AAA", "BBB"], "1Day", datetime(2000, 1, 3, tzinfo=UTC), AS_OF, feeds=("sip", "iex"))
    assert len(everything) > len(loaded)
    # bars counts differ (more history loaded); every indicator, score and rank is the same
    compare = [c for c in scan(loaded, as_of=AS_OF, config=config).frame.columns if c != "bars"]
    pd.testing.assert_frame_equal(
        scan(loaded, as_of=AS_OF, config=config).frame[compare], scan(everything, as_of=AS_OF, config=config).frame[compare], check_exact=True
    )


def test_history_start_daily_covers_the_window_plus_margin() -> None:
    start = history_start(AS_OF, "1Day", 252)
    assert start.tzinfo is not None
    assert start.time() == datetime.min.time()
    covered = calendar.sessions(start.date(), date(2024, 9, 30))
    assert len(covered) == 283  # ceil(252 * 1.1) + 5


def test_history_start_intraday_starts_at_a_session_open() -> None:
    as_of = datetime(2024, 10, 1, 18, 0, tzinfo=UTC)  # during Tuesday's session
    start = history_start(as_of, "5Min", Lookbacks().window_bars)
    opens = set(calendar.schedule(date(2024, 9, 1), date(2024, 10, 1))["open"])
    assert pd.Timestamp(start) in opens
    assert len(calendar.sessions(start.date(), as_of.date())) == 5  # 283 bars at 78 a session: 4, plus the one in progress
