"""Validation that names the cause, and no arbitrary floor, on real databases (SQLite and PostgreSQL) with the
real router (breakers on Redis), the real BarStore and the real Alpaca adapter against a local stand-in in
Alpaca's wire format.

* a symbol Alpaca does not know gets the verdict "no data: unknown symbol", not holes and a stale series;
* a known symbol with nothing in the range (before its listing) is "no data in range", not "unknown symbol";
* a recent-SIP clamp note stays on the partition whatever the outcome (no bars, unknown symbol);
* a backfill starting in 1990 plans, stores and validates decades-old daily bars;
* a backfill starting in 1990 through Alpha Vantage (the real alpha_vantage client against a stand-in in its
  TIME_SERIES_DAILY format, whose history starts 1999-11-01 as Alpha Vantage's does): one call per symbol, the
  years before the series "no bars in range", an unknown symbol one call for all its partitions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.marketdata import backfill_plan
from omni_tasks.marketdata.backfill import create_job, partition_ids
from omni_tasks.marketdata.backfill_plan import BackfillRequestError
from omni_tasks.marketdata.backfill_run import run_partition
from omni_tasks.marketdata.providers.alpaca.client import AlpacaBars
from omni_tasks.marketdata.providers.alpha_vantage.client import AlphaVantageBars
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.marketdata.router import BarRouter
from omni_tasks.marketdata.series import SeriesCache
from omni_tasks.safety.breaker import BreakerPolicy, CircuitBreaker
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine, session_factory
from omni_tasks.storage.models import BackfillPartition, QualityReport, SeriesValidation
from omni_tasks.validation.persist import validate_stored
from tests.unit.marketdata.providers.conftest import Reply, Seen, StandIn, fixture_bytes, running_standin

pytestmark = pytest.mark.services  # the router's breakers live in Redis

QUIET = BreakerPolicy(failure_threshold=1_000, rate_min_calls=1_000_000)
START, END, TODAY = date(2024, 1, 2), date(2024, 1, 6), date(2024, 1, 8)  # four sessions


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """The provider stand-in of the unit tests: a local HTTP server answering in the providers' wire formats."""
    with running_standin() as stand:
        yield stand


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'causes.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")()
    eng = make_engine(url)
    migrations.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def make_router(redis_client: redis.Redis) -> Callable[..., BarRouter]:
    def make(*providers: BarProvider) -> BarRouter:
        return BarRouter(
            list(providers),
            breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, QUIET),
            limiter=None,
            max_attempts=1,
            sleep=lambda _s: None,
        )

    return make


def _alpaca_answers(seen: Seen) -> Reply:
    """AAPL has January 2024 bars; NEWCO is known (a latest bar in 2025) with nothing in January 2024; ZZZZ is unknown."""
    symbol = seen.query.get("symbols", "")
    if seen.path.endswith("/latest"):
        if symbol == "ZZZZ":
            return Reply(200, fixture_bytes("alpaca", "latest_bars_empty.json"))
        latest = json.loads(fixture_bytes("alpaca", "latest_bars_AAPL.json"))["bars"]["AAPL"]
        if symbol == "NEWCO":
            latest = {**latest, "t": "2025-03-03T05:00:00Z"}
        return Reply(200, json.dumps({"bars": {symbol: latest}}).encode())
    if symbol == "AAPL":
        return Reply(200, fixture_bytes("alpaca", "bars_AAPL_1Day.json"))
    return Reply(200, fixture_bytes("alpaca", "bars_empty.json"))


def _alpaca(url: str, now: datetime = datetime(2024, 1, 8, 12, tzinfo=UTC)) -> AlpacaBars:
    return AlpacaBars(api_key="PKTEST", secret_key="SKTEST", data_url=url, timeout_s=5.0, clock=lambda: now)  # noqa: S106 - a stand-in key


def _run_all(factory: sessionmaker[Session], router: BarRouter, the_plan: backfill_plan.Plan, engine: Engine) -> list[int]:
    job_id = create_job(factory, the_plan, requested_by="test")
    ids = partition_ids(factory, job_id)
    for pid in ids:
        run_partition(pid, factory=factory, store=BarStore(engine), router=router, final_attempt=True)
    return ids


def _partitions(factory: sessionmaker[Session]) -> dict[str, BackfillPartition]:
    with factory() as session:
        return {p.symbol: p for p in session.scalars(select(BackfillPartition))}


def test_validation_unknown_symbol_is_no_data_not_holes_and_empty_range_of_a_known_symbol_is_no_data_in_range(
    standin: StandIn,
    factory: sessionmaker[Session],
    engine: Engine,
    make_router: Callable[..., BarRouter],
) -> None:
    standin.route("/v2/stocks/bars", _alpaca_answers)
    symbols = ["AAPL", "NEWCO", "ZZZZ"]
    _run_all(factory, make_router(_alpaca(standin.url)), backfill_plan.plan(symbols, "1Day", START, END, today=TODAY), engine)

    parts = _partitions(factory)
    assert (parts["AAPL"].status, parts["AAPL"].rows, parts["AAPL"].cause) == ("succeeded", 4, None)
    assert (parts["ZZZZ"].status, parts["ZZZZ"].rows, parts["ZZZZ"].cause) == ("failed", 0, "unknown_symbol")
    assert "Alpaca does not know ZZZZ" in (parts["ZZZZ"].last_error or "")
    assert (parts["NEWCO"].status, parts["NEWCO"].rows, parts["NEWCO"].cause) == ("succeeded", 0, "no_bars_in_range")
    assert "unknown symbol" not in (parts["NEWCO"].notes or "")
    assert "latest bar is 2025-03-03" in (parts["NEWCO"].notes or "")

    result, summary = validate_stored(engine, factory, symbols, timeframe="1Day", start=START, end=END, feeds=("iex",))

    with factory() as session:
        verdicts = {v.symbol: v for v in session.scalars(select(SeriesValidation))}
        days = {(q.symbol, q.session): q for q in session.scalars(select(QualityReport))}
    holes = int(result.reports.loc[result.reports.symbol == "ZZZZ", "provider_hole_bars"].sum())
    explained = int(result.reports.loc[result.reports.symbol == "ZZZZ", "no_data_bars"].sum())
    stale = bool(result.series.set_index("symbol").at["ZZZZ", "stale"])
    print(
        f"unknown symbol ZZZZ: provider-hole bars reported {holes} of {explained} expected, stale {stale}; verdict {verdicts['ZZZZ'].reason!r}"
    )
    assert (holes, explained, stale) == (0, 4, False)
    assert verdicts["ZZZZ"].status == "no_data"
    assert verdicts["ZZZZ"].reason.startswith("no data: unknown symbol")
    assert verdicts["NEWCO"].status == "no_data"
    assert verdicts["NEWCO"].reason.startswith("no data in range")
    assert verdicts["AAPL"].status == "passed"
    assert summary["failed_series"] == []
    assert summary["ok"] is True
    assert days[("ZZZZ", date(2024, 1, 3))].status == "no_data"
    assert days[("ZZZZ", date(2024, 1, 3))].gaps["no_data_bars"] == 1
    assert days[("AAPL", date(2024, 1, 3))].status == "ok"


def test_validation_symbol_listed_mid_window_reports_no_data_before_and_holes_only_where_data_should_be(
    factory: sessionmaker[Session], engine: Engine, make_router: Callable[..., BarRouter]
) -> None:
    # A provider that knows LATE only from 2024-01-04: a plan split at the listing, then one bar missing after it.
    from omni_tasks.marketdata.errors import NoBarsInRange
    from omni_tasks.marketdata.providers.base import BarResult, Capabilities

    class Listed:
        name = "alpaca"
        capabilities = Capabilities(timeframes=frozenset({"1Day"}), rate_limit_per_min=1_000_000)

        def available(self) -> bool:
            return True

        def fetch_bars(self, request: BarRequest) -> BarResult:
            if request.end <= datetime(2024, 1, 4, tzinfo=UTC):
                raise NoBarsInRange("alpaca has no bars for LATE before 2024-01-04 (listed then)", provider="alpaca")
            bars = SyntheticBars().fetch_bars(request).bars.assign(provider="alpaca", feed="iex")
            return BarResult(bars[bars.ts != datetime(2024, 1, 5, tzinfo=UTC)].reset_index(drop=True))

    router = make_router(Listed())
    _run_all(factory, router, backfill_plan.plan(["LATE"], "1Day", date(2024, 1, 2), date(2024, 1, 4), today=TODAY), engine)
    _run_all(factory, router, backfill_plan.plan(["LATE"], "1Day", date(2024, 1, 4), END, today=TODAY), engine)

    result, summary = validate_stored(engine, factory, ["LATE"], timeframe="1Day", start=START, end=END, feeds=("iex",))

    reports = result.reports.set_index("session")
    print(
        f"LATE: no-data bars {int(reports['no_data_bars'].sum())} (N=2 before listing), provider holes {int(reports['provider_hole_bars'].sum())} (N=1 after)"
    )
    assert reports.loc[date(2024, 1, 2), "no_data_bars"] == 1
    assert reports.loc[date(2024, 1, 3), "no_data_bars"] == 1
    assert reports.loc[date(2024, 1, 5), "provider_hole_bars"] == 1
    assert int(reports["provider_hole_bars"].sum()) == 1
    assert summary["failed_series"] == ["LATE"]  # the real hole still fails it: no data before listing does not


def test_backfill_recent_sip_clamp_note_survives_an_empty_and_a_failed_partition(
    standin: StandIn,
    factory: sessionmaker[Session],
    engine: Engine,
    make_router: Callable[..., BarRouter],
) -> None:
    def answers(seen: Seen) -> Reply:
        if not seen.path.endswith("/latest") and seen.query.get("feed") == "sip" and seen.query.get("end", "") > "2024-01-02T13:45:00Z":
            return Reply(403, fixture_bytes("alpaca", "error_recent_sip.json"))
        return _alpaca_answers(seen) if seen.path.endswith("/latest") else Reply(200, fixture_bytes("alpaca", "bars_empty.json"))

    standin.route("/v2/stocks/bars", answers)
    # 14:00Z on 2024-01-02, before the open: SIP is refused after 13:45Z, the clamped range has no bars yet.
    router = make_router(_alpaca(standin.url, now=datetime(2024, 1, 2, 14, 0, tzinfo=UTC)))
    _run_all(
        factory,
        router,
        backfill_plan.plan(["AAPL", "ZZZZ"], "1Min", date(2024, 1, 2), date(2024, 1, 3), feed="sip", today=date(2024, 1, 2)),
        engine,
    )

    parts = _partitions(factory)
    print(
        f"clamp notes kept: AAPL {'clamped' in (parts['AAPL'].notes or '')}, ZZZZ {'clamped' in (parts['ZZZZ'].notes or '')} (N=2 partitions)"
    )
    assert (parts["AAPL"].status, parts["AAPL"].rows, parts["AAPL"].cause) == ("succeeded", 0, "no_bars_in_range")
    assert "end clamped from" in (parts["AAPL"].notes or "")
    assert (parts["ZZZZ"].status, parts["ZZZZ"].cause) == ("failed", "unknown_symbol")
    assert "end clamped from" in (parts["ZZZZ"].notes or "")


def test_backfill_starting_in_1990_plans_stores_and_validates_decades_old_daily_bars(
    factory: sessionmaker[Session], engine: Engine, make_router: Callable[..., BarRouter]
) -> None:
    the_plan = backfill_plan.plan(["IBM"], "1Day", date(1990, 1, 2), date(1992, 1, 1), today=TODAY)
    ids = _run_all(factory, make_router(SyntheticBars()), the_plan, engine)

    stored = BarStore(engine).read("IBM", "1Day", datetime(1990, 1, 1, tzinfo=UTC), datetime(1992, 1, 1, tzinfo=UTC), feeds=("synthetic",))
    result, summary = validate_stored(
        engine, factory, ["IBM"], timeframe="1Day", start=date(1990, 1, 2), end=date(1992, 1, 1), feeds=("synthetic",)
    )

    print(
        f"1990-1991 backfill: {len(ids)} partitions, {len(stored)} bars stored of {the_plan.expected_bars} expected sessions; "
        f"first {stored.ts.iloc[0].date()}, last {stored.ts.iloc[-1].date()}; validation ok {summary['ok']}"
    )
    assert the_plan.expected_bars == 253 + 253  # NYSE sessions in 1990 and in 1991
    assert len(stored) == the_plan.expected_bars
    assert stored.ts.iloc[0] == datetime(1990, 1, 2, tzinfo=UTC)
    assert summary["ok"] is True
    assert summary["failed_series"] == []
    assert int(result.reports["provider_hole_bars"].sum()) == 0
    # Closures of the time are closures, not gaps: Good Friday 1990 (13 April) is in the report as a holiday.
    day = result.reports.set_index("session").loc[date(1990, 4, 13)]
    assert day["status"] == "holiday"


def test_backfill_earliest_date_is_a_setting_and_the_calendar_bounds_it() -> None:
    with pytest.raises(BackfillRequestError, match="before 1962-01-02, the earliest backfill date"):
        backfill_plan.plan(["IBM"], "1Day", date(1961, 6, 1), date(1961, 7, 1), today=TODAY)
    older = backfill_plan.plan(["IBM"], "1Day", date(1950, 6, 1), date(1950, 7, 1), today=TODAY, earliest=date(1885, 1, 2))
    assert older.partitions[0].start.date() == date(1950, 6, 1)
    with pytest.raises(BackfillRequestError, match="first session of the exchange calendar"):
        backfill_plan.plan(["IBM"], "1Day", date(1880, 1, 5), date(1880, 2, 1), today=TODAY, earliest=date(1800, 1, 1))


AV_HISTORY_START = date(1999, 11, 1)  # where Alpha Vantage's TIME_SERIES_DAILY history of IBM begins


def _av_daily_body(symbol: str, start: date, end: date) -> bytes:
    """A whole daily history in TIME_SERIES_DAILY's format (outputsize=full: newest first, numbers as strings)."""
    bars = (
        SyntheticBars()
        .fetch_bars(
            BarRequest(
                symbol, "1Day", datetime(start.year, start.month, start.day, tzinfo=UTC), datetime(end.year, end.month, end.day, tzinfo=UTC)
            )
        )
        .bars
    )
    rows = {
        ts.strftime("%Y-%m-%d"): {
            "1. open": f"{o:.4f}",
            "2. high": f"{h:.4f}",
            "3. low": f"{lo:.4f}",
            "4. close": f"{c:.4f}",
            "5. volume": str(int(v)),
        }
        for ts, o, h, lo, c, v in zip(bars["ts"], bars["open"], bars["high"], bars["low"], bars["close"], bars["volume"], strict=True)
    }
    meta = {
        "1. Information": "Daily Prices (open, high, low, close) and Volumes",
        "2. Symbol": symbol,
        "3. Last Refreshed": max(rows),
        "4. Output Size": "Full size",
        "5. Time Zone": "US/Eastern",
    }
    return json.dumps({"Meta Data": meta, "Time Series (Daily)": dict(sorted(rows.items(), reverse=True))}).encode()


def test_backfill_from_1990_through_alpha_vantage_one_call_per_symbol_years_before_its_history_are_no_bars_in_range(
    standin: StandIn, factory: sessionmaker[Session], engine: Engine, redis_client: redis.Redis
) -> None:
    ibm = _av_daily_body("IBM", AV_HISTORY_START, date(2001, 1, 1))
    calls: dict[str, int] = {}

    def answers(seen: Seen) -> Reply:
        assert (seen.query.get("function"), seen.query.get("outputsize")) == ("TIME_SERIES_DAILY", "full")
        symbol = seen.query.get("symbol", "")
        calls[symbol] = calls.get(symbol, 0) + 1
        return Reply(200, ibm) if symbol == "IBM" else Reply(200, fixture_bytes("alpha_vantage", "error_invalid_api_call.json"))

    standin.route("/query", answers)
    router = BarRouter(
        [AlphaVantageBars(api_key="AVTESTKEY", base_url=standin.url, timeout_s=5.0)],
        breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, QUIET),
        limiter=None,
        max_attempts=1,
        sleep=lambda _s: None,
        series=SeriesCache(redis_client),
    )
    start, end = date(1990, 1, 2), date(2001, 1, 1)
    the_plan = backfill_plan.plan(["IBM", "ZZZZ"], "1Day", start, end, today=TODAY)
    _run_all(factory, router, the_plan, engine)

    with factory() as session:
        parts = list(session.scalars(select(BackfillPartition).order_by(BackfillPartition.symbol, BackfillPartition.start)))
    ibm_parts = [p for p in parts if p.symbol == "IBM"]
    zzzz_parts = [p for p in parts if p.symbol == "ZZZZ"]
    before = [p for p in ibm_parts if p.end.date() <= AV_HISTORY_START]
    after = [p for p in ibm_parts if p.end.date() > AV_HISTORY_START]
    stored = BarStore(engine).read(
        "IBM", "1Day", datetime(1990, 1, 1, tzinfo=UTC), datetime(2001, 1, 1, tzinfo=UTC), feeds=("alpha_vantage",)
    )
    result, summary = validate_stored(engine, factory, ["IBM", "ZZZZ"], timeframe="1Day", start=start, end=end, feeds=("alpha_vantage",))
    with factory() as session:
        verdicts = {v.symbol: v for v in session.scalars(select(SeriesValidation))}
    ibm_reports = result.reports[result.reports.symbol == "IBM"]
    print(
        f"alpha vantage backfill 1990-2000: data calls {calls} (N=1 per symbol) for {len(ibm_parts)} + {len(zzzz_parts)} partitions; "
        f"IBM {len(before)} partitions before 1999-11-01 {sorted({(p.status, p.cause) for p in before})}, "
        f"{len(after)} after {sorted({(p.status, p.cause) for p in after})}, {len(stored)} bars from {stored.ts.iloc[0].date()}; "
        f"no-data bars {int(ibm_reports['no_data_bars'].sum())}, provider holes {int(ibm_reports['provider_hole_bars'].sum())}; "
        f"ZZZZ {sorted({(p.status, p.cause) for p in zzzz_parts})}, verdict {verdicts['ZZZZ'].reason[:60]!r}"
    )
    assert calls == {"IBM": 1, "ZZZZ": 1}, "one call returns the whole series or says the symbol is unknown: the partitions share it"
    assert before
    assert after
    assert all((p.status, p.rows, p.cause) == ("succeeded", 0, "no_bars_in_range") for p in before), [
        (p.start, p.status, p.cause) for p in before
    ]
    assert "its series starts 1999-11-01" in (before[0].notes or "")
    assert "series of IBM starts 1999-11-01: no bars before it" in (after[0].notes or "")
    assert after[0].data_from == datetime(1999, 11, 1, tzinfo=UTC)
    assert all((p.status, p.cause) == ("succeeded", None) and p.rows > 0 for p in after)
    assert stored.ts.iloc[0] == datetime(1999, 11, 1, tzinfo=UTC)
    assert all((p.status, p.cause) == ("failed", "unknown_symbol") for p in zzzz_parts)
    assert int(ibm_reports["provider_hole_bars"].sum()) == 0
    assert int(ibm_reports["no_data_bars"].sum()) > 2000  # 1990-01-02 .. 1999-10-29: ten years of sessions, explained
    assert verdicts["ZZZZ"].status == "no_data"
    assert verdicts["ZZZZ"].reason.startswith("no data: unknown symbol")
    assert "IBM" not in summary["failed_series"]


def test_backfill_wholly_before_alpha_vantage_history_is_no_bars_in_range_with_one_call(
    standin: StandIn, factory: sessionmaker[Session], engine: Engine, redis_client: redis.Redis
) -> None:
    """A research backfill of 1990-1994 where the provider's series starts in 1999: no bars in range, not an empty answer
    retried partition after partition."""
    ibm = _av_daily_body("IBM", AV_HISTORY_START, date(2000, 1, 1))
    calls: list[str] = []

    def answers(seen: Seen) -> Reply:
        calls.append(seen.query.get("symbol", ""))
        return Reply(200, ibm)

    standin.route("/query", answers)
    router = BarRouter(
        [AlphaVantageBars(api_key="AVTESTKEY", base_url=standin.url, timeout_s=5.0)],
        breaker_for=lambda name: CircuitBreaker(f"provider:{name}", redis_client, QUIET),
        limiter=None,
        max_attempts=1,
        sleep=lambda _s: None,
        series=SeriesCache(redis_client),
    )
    _run_all(factory, router, backfill_plan.plan(["IBM"], "1Day", date(1990, 1, 2), date(1995, 1, 1), today=TODAY), engine)

    parts = list(_partitions_of(factory))
    print(
        f"alpha vantage 1990-1994 (its series from 1999-11-01): {len(calls)} call(s) for {len(parts)} partitions; {sorted({(p.status, p.cause) for p in parts})}"
    )
    assert calls == ["IBM"]
    assert len(parts) == 5
    assert all((p.status, p.rows, p.cause) == ("succeeded", 0, "no_bars_in_range") for p in parts)
    assert all("its series runs 1999-11-01.." in (p.notes or "") for p in parts), parts[0].notes


def _partitions_of(factory: sessionmaker[Session]) -> list[BackfillPartition]:
    with factory() as session:
        return list(session.scalars(select(BackfillPartition).order_by(BackfillPartition.start)))
