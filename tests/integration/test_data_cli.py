"""`omni backfill reconcile`, `omni validate`, `omni news` and `omni backfill plan` as a quant runs them: the real CLI
as a subprocess on real Redis and PostgreSQL, the offline pair (synthetic stored, a replay recording with one close
changed) as the two providers."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import redis

from omni_tasks.marketdata.providers.alpha_vantage.news_mappings import NewsItem, TickerSentiment
from omni_tasks.marketdata.providers.base import BarRequest
from omni_tasks.marketdata.providers.synthetic import SyntheticBars
from omni_tasks.news.store import store_articles
from omni_tasks.storage import migrations
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.engine import make_engine, session_factory
from tests.conftest import REPO_ROOT, service_env

pytestmark = [pytest.mark.services]


@pytest.fixture
def database(pg_database) -> str:  # type: ignore[no-untyped-def]
    url = pg_database()
    engine = make_engine(url)
    migrations.upgrade(engine)
    bars = SyntheticBars().fetch_bars(BarRequest("AAPL", "1Day", datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))).bars
    BarStore(engine).upsert(bars)
    store_articles(
        session_factory(engine),
        "alpha_vantage",
        [
            NewsItem(
                url="https://www.benzinga.com/a",
                title="Apple downgraded",
                published_at=datetime(2024, 1, 2, 15, 30, tzinfo=UTC),
                source="Benzinga",
                overall_sentiment_score=-0.21,
                overall_sentiment_label="Somewhat-Bearish",
                tickers=[TickerSentiment("AAPL", 0.86, -0.39, "Bearish")],
            )
        ],
        fetched_at=datetime(2024, 1, 3, tzinfo=UTC),
        symbol="AAPL",
    )
    engine.dispose()
    return url


@pytest.fixture
def env(redis_url: str, database: str, tmp_path: Path, redis_client: redis.Redis) -> dict[str, str]:
    bars = SyntheticBars().fetch_bars(BarRequest("AAPL", "1Day", datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))).bars
    recording = bars[["ts", "open", "high", "low", "close", "volume"]].copy()
    changed = recording["ts"] == pd.Timestamp("2024-02-14", tz="UTC")
    recording.loc[changed, ["open", "high", "low", "close"]] *= 1.02
    (tmp_path / "replay").mkdir()
    recording.to_csv(tmp_path / "replay" / "AAPL.csv", index=False)
    return service_env(
        redis_url=redis_url,
        database_url=database,
        data_dir=tmp_path / "data",
        OMNI_PROVIDERS_ORDER="synthetic,replay",
        OMNI_PROVIDERS_REPLAY_DIR=str(tmp_path / "replay"),
    )


def omni(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omni_tasks", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )  # fixed argv


def test_reconcile_then_validate_show_the_changed_close_and_news_shows_stored_sentiment(env: dict[str, str]) -> None:
    done = omni(env, "backfill", "reconcile", "AAPL", "--start", "2024-01-02", "--end", "2024-04-01", "--sample", "100", "--json")
    assert done.returncode == 1, done.stdout + done.stderr  # a difference beyond tolerance
    report = json.loads(done.stdout)
    print(
        f"omni backfill reconcile: {report['compared']} bars compared, {report['differences']} beyond tolerance, volumes compared {report['volume_compared']}"
    )
    assert (report["compared"], report["differences"], report["volume_compared"]) == (61, 1, 0)

    shown = omni(env, "validate", "AAPL", "--start", "2024-01-02", "--end", "2024-04-01", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    (difference,) = json.loads(shown.stdout)["reconciliation_differences"]
    assert difference["ts"].startswith("2024-02-14")
    assert difference["other_provider"] == "replay"
    table = omni(env, "validate", "AAPL", "--start", "2024-01-02", "--end", "2024-04-01")
    assert "second opinion" in table.stdout
    assert "1 second-opinion differences" in " ".join(table.stdout.split())

    news = omni(env, "news", "AAPL", "--json")
    assert news.returncode == 0, news.stdout + news.stderr
    (article,) = json.loads(news.stdout)["articles"]
    assert (article["source"], article["ticker_sentiment_score"], article["relevance_score"]) == ("Benzinga", -0.39, 0.86)
    assert article["published_at"] == "2024-01-02T15:30:00+00:00"
    bad = omni(env, "news", "AA PL")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1


def test_backfill_plan_from_1990_is_planned_and_before_the_earliest_date_is_refused(env: dict[str, str]) -> None:
    done = omni(env, "backfill", "plan", "IBM", "--start", "1990-01-02", "--end", "1991-01-01", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["expected_bars"] == 253
    refused = omni(env, "backfill", "plan", "IBM", "--start", "1950-01-03", "--end", "1951-01-01")
    assert refused.returncode == 2
    assert "before 1962-01-02, the earliest backfill date (OMNI_BACKFILL_EARLIEST_DATE)" in " ".join(refused.stderr.split())
    wider = omni(
        {**env, "OMNI_BACKFILL_EARLIEST_DATE": "1927-01-03"},
        "backfill",
        "plan",
        "IBM",
        "--start",
        "1950-01-03",
        "--end",
        "1951-01-01",
        "--json",
    )
    assert wider.returncode == 0, wider.stdout + wider.stderr


def test_backfill_status_shows_a_deferred_partition_and_when_it_resumes(env: dict[str, str], database: str) -> None:
    from datetime import date

    from omni_tasks.marketdata import backfill_plan
    from omni_tasks.marketdata.backfill import PartitionOutcome, create_job, partition_ids, record_outcome

    factory = session_factory(make_engine(database))
    job = create_job(factory, backfill_plan.plan(["MSFT"], "1Day", date(2022, 1, 3), date(2024, 1, 1), today=date(2024, 1, 8)), requested_by="test")
    first, *_ = partition_ids(factory, job)
    waited = PartitionOutcome(first, "deferred", error="deferred 3600.0 s: alpha_vantage: daily quota of 25 calls used up", defer_s=3600.0)
    record_outcome(factory, first, waited, notes=None)

    shown = omni({**env, "COLUMNS": "250"}, "backfill", "status", str(job))
    listed = omni({**env, "COLUMNS": "250"}, "backfill", "status")
    detail = json.loads(omni(env, "backfill", "status", str(job), "--json").stdout)

    print(f"omni backfill status {job}: {next(line.strip() for line in shown.stdout.splitlines() if 'resumes' in line)[:160]}")
    assert shown.returncode == 0, shown.stderr
    resume_at = next(p["resume_at"] for p in detail["partitions_detail"] if p["id"] == first)
    assert f"deferred, resumes {resume_at[:10]} {resume_at[11:19]} UTC" in shown.stdout
    assert "daily quota of 25 calls used up" in shown.stdout
    assert "deferred 1" in listed.stdout
