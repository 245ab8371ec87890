"""The bar store on real databases: PostgreSQL (binary COPY into staging + one upsert) and SQLite (batched upserts).

Every behaviour runs on both: a fresh SQLite file in tmp_path migrated with the
project's revisions, and a PostgreSQL database of this module's own (truncated
before each test).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.orm import Session

from omni_tasks.contracts import bars as frames
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore, UpsertResult
from omni_tasks.storage.engine import make_engine
from omni_tasks.storage.models import Bar, BarDigest, BarSeries, RejectedRow

T0 = datetime(2026, 3, 9, 14, 30, tzinfo=UTC)  # a Monday, 09:30 in New York
#: Every stored value, typed (so SQLite's timestamps come back as UTC datetimes too), in key order.
ALL_ROWS = select(
    BarSeries.symbol, BarSeries.timeframe, Bar.ts, BarSeries.feed, BarSeries.adjustment, Bar.open, Bar.high, Bar.low, Bar.close,
    Bar.volume, Bar.vwap, Bar.trade_count, Bar.provider, Bar.ingested_at,
).join_from(Bar, BarSeries, BarSeries.id == Bar.series_id).order_by(BarSeries.symbol, BarSeries.timeframe, Bar.ts, BarSeries.feed, BarSeries.adjustment)


@pytest.fixture(scope="module")
def pg_bars_url(pg_database: Callable[[], str]) -> str:
    url = pg_database()
    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'bars.sqlite3'}")
        migrations.upgrade(engine)
    else:
        engine = make_engine(request.getfixturevalue("pg_bars_url"))
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE bars, bar_series, bar_digests, rejected_rows"))
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> BarStore:
    return BarStore(engine)


def bars(
    symbol: str = "AAPL",
    n: int = 5,
    *,
    start: datetime = T0,
    timeframe: str = "1Min",
    feed: str = "sip",
    adjustment: str = "raw",
    provider: str = "alpaca",
    price: float = 100.0,
    step: timedelta = timedelta(minutes=1),
) -> pd.DataFrame:
    """A canonical frame (as frames.canonical_bars makes it) of n well-formed bars."""
    close = price + np.arange(n, dtype=float)
    raw = pd.DataFrame(
        {
            "ts": [start + i * step for i in range(n)],
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": 1000.0 + np.arange(n),
            "vwap": close - 0.25,
            "trade_count": pd.array(10 + np.arange(n), dtype="Int64"),
        }
    )
    return frames.canonical_bars(raw, symbol=symbol, timeframe=timeframe, provider=provider, feed=feed, adjustment=adjustment)


def all_rows(engine: Engine) -> list[tuple]:  # type: ignore[type-arg]
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(ALL_ROWS)]


WIDE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


# ---- upserts ---------------------------------------------------------------------------


def test_bar_store_fresh_upsert_inserts_every_row_and_counts_them(store: BarStore) -> None:
    result = store.upsert(bars(n=7))
    assert (result.inserted, result.updated, result.unchanged, result.duplicates) == (7, 0, 0, 0)
    assert result.seconds > 0
    assert set(result.phases) >= {"prepare", "upsert", "commit"}
    assert store.count() == 7 == store.count("AAPL", "1Min")
    assert store.count("MSFT") == 0
    assert store.count(timeframe="1Day") == 0


def test_bar_store_rerun_of_identical_rows_changes_nothing_and_leaves_the_table_identical(store: BarStore, engine: Engine) -> None:
    frame = pd.concat([bars("AAPL", 50), bars("BRK.B", 50, feed="iex"), bars("MSFT", 50, adjustment="split")], ignore_index=True)
    store.upsert(frame)
    before = all_rows(engine)
    again = store.upsert(frame)
    after = all_rows(engine)
    print(f"re-run row delta: {len(after) - len(before)}, rows changed: {again.changed}, duplicate keys: {again.duplicates}")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 150)
    assert after == before, "a re-run must not rewrite a single value, ingested_at included"


def test_bar_store_changed_close_updates_exactly_that_row(store: BarStore, engine: Engine) -> None:
    frame = bars(n=10)
    store.upsert(frame)
    before = {row[2]: row for row in all_rows(engine)}
    changed = frame.copy()
    changed.loc[4, "close"] = 104.5
    result = store.upsert(changed)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 9)
    after = {row[2]: row for row in all_rows(engine)}
    moved = [ts for ts in after if after[ts] != before[ts]]
    assert moved == [frame["ts"][4].to_pydatetime()]
    assert after[moved[0]][8] == 104.5
    assert after[moved[0]][13] >= before[moved[0]][13], "ingested_at moves only for the changed row"


def test_bar_store_rerun_is_recognised_by_digest_on_postgresql(store: BarStore, engine: Engine) -> None:
    frame = pd.concat([bars("AAPL", 50), bars("AAPL", 50, feed="iex"), bars("MSFT", 50, adjustment="split")], ignore_index=True)
    first = store.upsert(frame)
    assert first.rerun_series == 0
    again = store.upsert(frame.sample(frac=1.0, random_state=5).reset_index(drop=True))
    print(f"re-run: {again.rerun_series} series recognised, phases {dict(again.phases)}")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 150)
    assert again.rerun_series == (3 if store.dialect == "postgresql" else 0), "row order does not matter to the digest"
    with Session(engine) as session:
        recorded = session.scalars(select(BarDigest)).all()
    assert len(recorded) == (3 if store.dialect == "postgresql" else 0)


def test_bar_store_correction_then_the_original_again_is_applied_both_times(store: BarStore) -> None:
    """A digest recorded for the original must not survive the correction: the original written again is a change."""
    frame = pd.concat([bars("AAPL", 10), bars("MSFT", 10)], ignore_index=True)
    store.upsert(frame)
    corrected = frame.copy()
    corrected.loc[4, "close"] = 104.5
    assert (store.upsert(corrected).updated, store.upsert(corrected).updated) == (1, 0)
    back = store.upsert(frame)
    assert (back.inserted, back.updated, back.unchanged) == (0, 1, 19)
    assert list(store.read("AAPL", "1Min", *WIDE)["close"]) == list(frame["close"][:10])
    assert store.upsert(frame).changed == 0


def test_bar_store_write_from_elsewhere_makes_a_rerun_write_again(store: BarStore, engine: Engine) -> None:
    frame = bars(n=6)
    store.upsert(frame)
    with engine.begin() as connection:
        assert connection.execute(update(Bar).where(Bar.ts == frame["ts"][2].to_pydatetime()).values(close=1.5)).rowcount == 1
    again = store.upsert(frame)
    assert (again.updated, again.rerun_series) == (1, 0), "plain SQL on bars forgets the digests (PostgreSQL trigger)"
    assert list(store.read("AAPL", "1Min", *WIDE)["close"]) == list(frame["close"])


def test_bar_store_delete_removes_bars_and_a_rerun_puts_them_back(store: BarStore) -> None:
    frame = pd.concat([bars("AAPL", 8), bars("AAPL", 8, feed="iex")], ignore_index=True)
    store.upsert(frame)
    gone = frame.iloc[[1, 3, 9]]
    assert store.delete(gone.assign(reason="x")) == 3
    assert store.delete(gone.iloc[:0]) == 0
    assert store.count() == 13
    again = store.upsert(frame)
    assert (again.inserted, again.updated, again.unchanged, again.rerun_series) == (3, 0, 13, 0)


def test_bar_store_part_of_a_range_and_a_fresh_series_in_one_call(store: BarStore) -> None:
    store.upsert(bars("AAPL", 10))
    mixed = pd.concat([bars("AAPL", 10).iloc[3:7], bars("MSFT", 5), bars("AAPL", 12).iloc[10:]], ignore_index=True)
    result = store.upsert(mixed)
    assert (result.inserted, result.updated, result.unchanged) == (7, 0, 4)
    assert store.count("AAPL") == 12
    assert store.upsert(mixed).changed == 0


def test_bar_store_provider_change_counts_as_a_change(store: BarStore) -> None:
    store.upsert(bars(n=3))
    result = store.upsert(bars(n=3, provider="yahoo"))
    assert (result.inserted, result.updated) == (0, 3)
    assert set(store.read("AAPL", "1Min", *WIDE)["provider"]) == {"yahoo"}


def test_bar_store_iex_and_sip_coexist_and_read_prefers_the_feed_asked_for(store: BarStore) -> None:
    sip = bars(n=4, feed="sip", price=100.0)
    iex = bars(n=6, feed="iex", price=200.0)  # two more bars than SIP: minutes 4 and 5 exist only on IEX
    store.upsert(sip)
    result = store.upsert(iex)
    assert result.inserted == 6, "IEX bars never overwrite SIP bars"
    assert store.count("AAPL") == 10

    default = store.read("AAPL", "1Min", *WIDE)
    assert list(default["feed"]) == ["sip"] * 4 + ["iex"] * 2, "SIP first by default, IEX where SIP has no bar"
    assert list(default["close"][:4]) == list(sip["close"])
    iex_first = store.read("AAPL", "1Min", *WIDE, feeds=("iex", "sip"))
    assert list(iex_first["feed"]) == ["iex"] * 6
    only_sip = store.read("AAPL", "1Min", *WIDE, feeds=("sip",))
    assert list(only_sip["feed"]) == ["sip"] * 4
    assert store.last_ts("AAPL", "1Min", "iex", "raw") == T0 + timedelta(minutes=5)
    assert store.last_ts("AAPL", "1Min", "sip", "raw") == T0 + timedelta(minutes=3)
    assert store.last_ts("AAPL", "1Min", "sip", "split") is None


def test_bar_store_raw_and_split_adjusted_bars_coexist(store: BarStore) -> None:
    store.upsert(bars(n=3, adjustment="raw", price=400.0))
    store.upsert(bars(n=3, adjustment="split", price=100.0))
    assert store.count("AAPL") == 6
    assert list(store.read("AAPL", "1Min", *WIDE)["close"]) == [400.0, 401.0, 402.0]
    split = store.read("AAPL", "1Min", *WIDE, adjustment="split")
    assert list(split["close"]) == [100.0, 101.0, 102.0]
    assert set(split["adjustment"]) == {"split"}


def test_bar_store_duplicate_keys_in_one_frame_last_row_wins(store: BarStore) -> None:
    frame = bars(n=5)
    late = frame.iloc[[1, 3]].assign(close=[555.0, 777.0])
    dupes = pd.concat([frame, late], ignore_index=True)
    result = store.upsert(dupes)
    print(f"duplicate keys: {result.duplicates}, rows stored: {store.count()}")
    assert (result.inserted, result.duplicates) == (5, 2)
    stored = store.read("AAPL", "1Min", *WIDE)
    assert list(stored["close"]) == [100.0, 555.0, 102.0, 777.0, 104.0]
    # Reversed, the earlier values are the last ones and win.
    result = store.upsert(pd.concat([late, frame], ignore_index=True))
    assert (result.updated, result.duplicates) == (2, 2)
    assert list(store.read("AAPL", "1Min", *WIDE)["close"]) == list(frame["close"])


def test_bar_store_missing_vwap_and_trade_count_round_trip_as_null(store: BarStore, engine: Engine) -> None:
    frame = bars(n=4)
    frame.loc[[0, 2], "vwap"] = np.nan
    frame.loc[[1, 2], "trade_count"] = pd.NA
    store.upsert(frame)
    with engine.connect() as connection:
        stored = connection.execute(select(Bar.vwap, Bar.trade_count).order_by(Bar.ts)).all()
    assert [tuple(r) for r in stored] == [(None, 10), (100.75, None), (None, None), (102.75, 13)]
    back = store.read("AAPL", "1Min", *WIDE)
    assert back["vwap"].isna().tolist() == [True, False, True, False]
    assert back["trade_count"].isna().tolist() == [False, True, True, False]
    assert store.upsert(frame).changed == 0, "NULL compared with NULL is no change"


def test_bar_store_read_returns_canonical_dtypes_utc_sorted_and_half_open(store: BarStore) -> None:
    frame = bars(n=10)
    store.upsert(frame.iloc[::-1].reset_index(drop=True))
    back = store.read("AAPL", "1Min", T0 + timedelta(minutes=2), T0 + timedelta(minutes=7))
    assert back.dtypes.equals(frames.empty_bars().dtypes)
    assert list(back.columns) == list(frames.BAR_COLUMNS)
    assert str(back["ts"].dt.tz) == "UTC"
    assert list(back["ts"]) == [pd.Timestamp(T0 + timedelta(minutes=m)) for m in range(2, 7)], "start inclusive, end exclusive, sorted"
    expected = frame.iloc[2:7].reset_index(drop=True).astype(frames.empty_bars().dtypes.to_dict())
    pd.testing.assert_frame_equal(back, expected)
    _, rejected = frames.split_valid(back)
    assert rejected.empty, "what comes back passes the boundary contract"

    nothing = store.read("AAPL", "1Min", T0 - timedelta(days=1), T0)
    assert nothing.empty
    assert nothing.dtypes.equals(frames.empty_bars().dtypes)
    new_york = datetime(2026, 3, 9, 10, 31, tzinfo=pd.Timestamp("2026-03-09", tz="America/New_York").tzinfo)
    assert len(store.read("AAPL", "1Min", T0, new_york)) == 1, "aware bounds in any zone are compared in UTC"
    with pytest.raises(ValueError, match="naive"):
        store.read("AAPL", "1Min", datetime(2026, 3, 9), datetime(2026, 3, 10))  # the point of the test
    with pytest.raises(ValueError, match="feeds is empty"):
        store.read("AAPL", "1Min", *WIDE, feeds=())


def test_bar_store_many_symbols_with_nulls_read_back_exactly(store: BarStore) -> None:
    """Enough rows for several COPY blocks, symbols of different lengths, NULLs scattered: every value comes back."""
    rng = np.random.default_rng(3)
    pieces = []
    for i, symbol in enumerate(["A", "BRK.B", "GOOGL", "MSFT", "X", "QQQ", "SPY", "ABCDEFGHIJ"]):
        frame = bars(symbol, 1500, price=10.0 + 37.0 * i, feed="sip" if i % 3 else "iex")
        frame.loc[rng.random(len(frame)) < 0.05, "vwap"] = np.nan
        frame.loc[rng.random(len(frame)) < 0.05, "trade_count"] = pd.NA
        pieces.append(frame)
    frame = pd.concat(pieces, ignore_index=True)
    result = store.upsert(frame)
    assert result.inserted == len(frame) == store.count()
    for piece in pieces:
        symbol, feed = piece["symbol"][0], piece["feed"][0]
        back = store.read(symbol, "1Min", *WIDE, feeds=(feed,))
        pd.testing.assert_frame_equal(back, piece.astype(frames.empty_bars().dtypes.to_dict()))
    assert store.upsert(frame).changed == 0


def test_bar_store_object_and_str_string_columns_are_both_canonical(store: BarStore) -> None:
    frame = bars(n=3)
    as_object = frame.astype({name: object for name in ("symbol", "timeframe", "provider", "feed", "adjustment")})
    assert store.upsert(as_object).inserted == 3
    assert store.upsert(frame).unchanged == 3


def test_bar_store_empty_frame_is_a_no_op(store: BarStore) -> None:
    result = store.upsert(frames.empty_bars())
    assert (result.inserted, result.updated, result.unchanged) == (0, 0, 0)
    assert store.count() == 0


def _rival_insert(connection, frame: pd.DataFrame, position: int) -> None:  # type: ignore[no-untyped-def]
    rival = frame.iloc[position]
    series_id = connection.execute(
        text("SELECT id FROM bar_series WHERE symbol = 'AAPL' AND timeframe = '1Min' AND feed = 'sip' AND adjustment = 'raw'")
    ).scalar_one()
    connection.execute(insert(Bar).values(
        series_id=series_id, ts=rival["ts"].to_pydatetime(),
        open=1.0, high=1.0, low=1.0, close=1.0, volume=1.0, vwap=None, trade_count=None, provider="rival",
        ingested_at=datetime.now(tz=UTC),
    ))  # fmt: skip


@pytest.mark.services
@pytest.mark.parametrize("rival_kind", ["bypasses the series lock", "plain SQL"])
def test_bar_store_concurrent_insert_of_a_new_key_is_upserted(pg_bars_url: str, rival_kind: str) -> None:
    """Another transaction inserts one of our new keys after our snapshot: no error, no duplicate, our values win.

    A writer that marks itself as keeping the digests but takes no series lock
    makes our COPY straight into bars meet its key: the transaction is redone
    through staging and the plain ON CONFLICT upsert (a fallback). Plain SQL
    fires the digest trigger, whose lock we wait for; then we see its row.
    """
    engine = make_engine(pg_bars_url)
    other = make_engine(pg_bars_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE bars, bar_series, bar_digests, rejected_rows"))
            connection.execute(text("INSERT INTO bar_series (symbol, timeframe, feed, adjustment) VALUES ('AAPL', '1Min', 'sip', 'raw')"))
        store = BarStore(engine)
        frame = bars(n=5)
        with other.connect() as connection:
            transaction = connection.begin()
            if rival_kind == "bypasses the series lock":
                connection.execute(text("SET LOCAL omni.bar_digests = 'kept'"))
            _rival_insert(connection, frame, 2)
            outcome: dict[str, object] = {}
            worker = threading.Thread(target=lambda: outcome.update(result=store.upsert(frame)))
            worker.start()
            waited = _wait_for_lock_wait(other, timeout_s=30.0)
            transaction.commit()
        worker.join(timeout=60)
        assert waited, "our write should have waited on the rival's uncommitted work"
        result = outcome["result"]
        assert isinstance(result, UpsertResult)
        print(f"rival {rival_kind}: fallbacks {store.fallbacks}, inserted {result.inserted}, updated {result.updated}")
        assert store.fallbacks == (1 if rival_kind == "bypasses the series lock" else 0)
        assert (result.inserted, result.updated, result.unchanged) == (4, 1, 0)
        back = store.read("AAPL", "1Min", *WIDE)
        pd.testing.assert_frame_equal(back, frame.astype(frames.empty_bars().dtypes.to_dict()))
        assert store.upsert(frame).rerun_series == 1, "what the redone write stored is recognised on a re-run"
    finally:
        other.dispose()
        engine.dispose()


def _wait_for_lock_wait(engine: Engine, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    with engine.connect() as probe:
        while time.monotonic() < deadline:
            waiting = probe.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )).scalar_one()
            probe.rollback()
            if waiting:
                return True
            time.sleep(0.05)
    return False


# ---- refusals ------------------------------------------------------------------------------


def _naive_ts(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(ts=frame["ts"].dt.tz_localize(None))


NOT_CANONICAL = {
    "missing column": (lambda f: f.drop(columns=["vwap"]), "missing columns vwap"),
    "extra column": (lambda f: f.assign(note="x"), "unexpected columns note"),
    "columns out of order": (lambda f: f[list(reversed(f.columns))], "columns out of order"),
    "naive timestamps": (_naive_ts, r"column 'ts' has dtype datetime64\[ns\], expected datetime64\[ns, UTC\]"),
    "microsecond timestamps": (lambda f: f.assign(ts=f["ts"].astype("datetime64[us, UTC]")), "expected datetime64"),
    "prices as text": (lambda f: f.assign(close=f["close"].astype(str)), "column 'close' has dtype"),
    "trade_count as int64": (lambda f: f.assign(trade_count=f["trade_count"].astype("int64")), "column 'trade_count' has dtype int64, expected Int64"),
    "missing close": (lambda f: f.assign(close=[np.nan] + list(f["close"][1:])), "column 'close' has 1 missing values"),
    "missing feed": (lambda f: f.assign(feed=pd.Series([None] + ["sip"] * (len(f) - 1), dtype=object)), "column 'feed' has 1 missing values"),
    "missing provider (pd.NA)": (lambda f: f.assign(provider=pd.array(["alpaca", pd.NA, "alpaca"], dtype="string")), "column 'provider' has 1 missing values"),
    "numbers as symbols": (lambda f: f.assign(symbol=pd.Series([1] * len(f), dtype=object)), "column 'symbol' holds a int"),
    "unknown timeframe": (lambda f: f.assign(timeframe="2Min"), "unknown timeframe '2Min'"),
    "unknown adjustment": (lambda f: f.assign(adjustment="splits"), "unknown adjustment 'splits'"),
    "lower-case symbol": (lambda f: f.assign(symbol="aapl"), "'aapl' is not a ticker symbol"),
    "feed too long": (lambda f: f.assign(feed="x" * 17), "longer than the table's 16 characters"),
}


@pytest.mark.parametrize("case", list(NOT_CANONICAL))
def test_bar_store_non_canonical_frame_is_refused_with_a_clear_message(store: BarStore, case: str) -> None:
    mangle, message = NOT_CANONICAL[case]
    with pytest.raises(ValueError, match=message):
        store.upsert(mangle(bars(n=3)))
    assert store.count() == 0, "nothing is written when the frame is refused"


def test_bar_store_refuses_something_that_is_not_a_frame(store: BarStore) -> None:
    with pytest.raises(ValueError, match="expected a canonical bar frame"):
        store.upsert([{"symbol": "AAPL"}])  # type: ignore[arg-type]


# ---- quarantine and checksum ----------------------------------------------------------------


def test_bar_store_quarantine_keeps_rejected_rows_with_reasons_and_payload(store: BarStore, engine: Engine) -> None:
    frame = bars(n=4)
    frame.loc[1, "close"] = -3.0  # negative price
    frame.loc[2, "high"] = 1.0  # high below open and close
    _, rejected = frames.split_valid(frame)
    assert len(rejected) == 2
    odd = rejected.iloc[[0]].assign(ts=pd.NaT, reason="outside the partition's range")  # a row without a timestamp
    stored = store.quarantine(pd.concat([rejected, odd], ignore_index=True), partition_id=42)
    assert stored == 3
    assert store.quarantine(rejected.iloc[0:0], partition_id=42) == 0
    with Session(engine) as session:
        rows = session.scalars(select(RejectedRow).order_by(RejectedRow.id)).all()
    assert [r.partition_id for r in rows] == [42, 42, 42]
    assert "close: greater_than" in rows[0].reason
    assert "high_is_the_high" in rows[1].reason
    assert rows[2].reason == "outside the partition's range"
    assert rows[0].ts == frame["ts"][1].to_pydatetime()
    assert rows[2].ts is None
    assert (rows[0].symbol, rows[0].timeframe, rows[0].provider, rows[0].feed) == ("AAPL", "1Min", "alpaca", "sip")
    assert rows[0].payload["close"] == -3.0
    assert rows[0].payload["ts"] == frame["ts"][1].isoformat()
    assert rows[0].payload["trade_count"] == 11
    assert "reason" not in rows[0].payload
    assert rows[2].payload["ts"] is None
    assert store.count() == 0, "quarantined rows are not bars"


def test_bar_store_quarantine_accepts_frames_that_are_not_canonical(store: BarStore, engine: Engine) -> None:
    weird = pd.DataFrame({"ts": ["not a time"], "close": [float("inf")], "symbol": [None], "reason": ["schema: column 'open' missing"]})
    assert store.quarantine(weird, partition_id=None) == 1
    with Session(engine) as session:
        row = session.scalars(select(RejectedRow)).one()
    assert (row.symbol, row.ts, row.partition_id) == ("", None, None)
    assert row.payload == {"ts": "not a time", "close": "inf", "symbol": None}


def test_bar_store_checksum_is_order_independent_and_equals_the_rows_read_back(store: BarStore) -> None:
    frame = pd.concat([bars("AAPL", 20), bars("MSFT", 20, feed="iex")], ignore_index=True)
    frame.loc[3, "vwap"] = np.nan
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert BarStore.checksum(frame) == BarStore.checksum(shuffled) == store.checksum(frame)
    changed = frame.copy()
    changed.loc[7, "volume"] += 1
    assert BarStore.checksum(changed) != BarStore.checksum(frame)
    assert BarStore.checksum(frame.iloc[:-1]) != BarStore.checksum(frame)
    store.upsert(shuffled)
    back = pd.concat([store.read("AAPL", "1Min", *WIDE, feeds=("sip",)), store.read("MSFT", "1Min", *WIDE, feeds=("iex",))], ignore_index=True)
    assert BarStore.checksum(back) == BarStore.checksum(frame), "what a partition stored has the checksum of what it wrote"
    assert len(BarStore.checksum(frames.empty_bars())) == 64
