"""The desk's figures on /metrics (omni_tasks.ops.desk_collectors.DeskCollector over observe.desk_snapshot) on real PostgreSQL and Redis.

Each figure is read where the CLI, /health or the watchdog read it: the
backfill ledger, the series_validation verdicts, the latest risk snapshot
(Redis, else the database), the watchdog's last tick and the shared latency
counters. A database that cannot be reached hides only the database figures.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.orm import sessionmaker

from omni_tasks.core import budgets
from omni_tasks.core.keys import RISK_LATEST_KEY, WATCHDOG_LAST_TICK_KEY
from omni_tasks.ops.desk_collectors import DeskCollector
from omni_tasks.pipeline import observe
from omni_tasks.storage import migrations
from omni_tasks.storage.engine import make_engine
from omni_tasks.storage.models import BackfillJob, BackfillPartition, RiskSnapshot, SeriesValidation

pytestmark = pytest.mark.services


def _scrape(runtime: SimpleNamespace) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(DeskCollector(lambda: observe.desk_snapshot(runtime)))
    text = generate_latest(registry).decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def _job(session, *, created_at: datetime, statuses: list[str]) -> None:  # type: ignore[no-untyped-def]
    start = created_at - timedelta(days=10)
    job = BackfillJob(
        created_at=created_at, requested_by="test", timeframe="1Day", start=start, end=created_at,
        feed="iex", adjustment="raw", symbols={"symbols": ["AAPL"]}, status="partial",
    )  # fmt: skip
    session.add(job)
    session.flush()
    for i, status in enumerate(statuses):
        begins = start + timedelta(days=i)
        session.add(
            BackfillPartition(
                job_id=job.id,
                symbol="AAPL",
                timeframe="1Day",
                start=begins,
                end=begins + timedelta(days=1),
                feed="iex",
                adjustment="raw",
                status=status,
            )
        )


def test_desk_metrics_read_ledger_verdicts_risk_watchdog_and_latency(pg_database: Callable[[], str], redis_client: redis.Redis) -> None:
    engine = make_engine(pg_database())  # a database of its own: the counts are over every row
    migrations.upgrade(engine)
    sessions = sessionmaker(engine)
    now = datetime.now(tz=UTC)
    with sessions() as session, session.begin():
        _job(session, created_at=now - timedelta(hours=1), statuses=["failed", "failed", "succeeded"])
        _job(session, created_at=now - timedelta(days=3), statuses=["failed"])  # older than 24 h: history, not news
        for symbol, status in (("AAPL", "failed"), ("MSFT", "passed"), ("SPY", "passed")):
            session.add(SeriesValidation(symbol=symbol, timeframe="1Day", status=status, checked_at=now, through=now.date(), reason=None))
        # Only in the database (no omni:risk:latest in Redis): the reading falls back to the row, as /health does.
        session.add(
            RiskSnapshot(
                ts=now - timedelta(seconds=90), broker="simulated", equity=Decimal("100000"), daily_pnl=Decimal("-850"),
                gross_exposure=5000.0, net_exposure=5000.0, gross_leverage=0.05, var_95=420.0, es_95=610.0, drawdown_pct=0.85,
                risk_score=0.85, breaches=[],
                metrics={"utilisation": {"daily_loss": 0.85, "drawdown": 0.425, "correlation": None}, "var_99_hist": 700.0, "es_99_hist": 900.0},
            )
        )  # fmt: skip
    redis_client.set(WATCHDOG_LAST_TICK_KEY, json.dumps({"ts": time.time() - 12.0}))
    budgets.count_violations(redis_client, "order_submission", 3)
    runtime = SimpleNamespace(redis=redis_client, sessions=sessions)

    got = _scrape(runtime)
    print("desk metrics:", json.dumps({k: v for k, v in got.items() if not k.startswith("python_")}, indent=1))
    assert got['omni_backfill_recent_partitions{status="failed"}'] == 2.0
    assert got['omni_backfill_recent_partitions{status="succeeded"}'] == 1.0
    assert got['omni_backfill_recent_partitions{status="pending"}'] == 0.0
    assert got['omni_validation_series{status="failed",timeframe="1Day"}'] == 1.0
    assert got['omni_validation_series{status="passed",timeframe="1Day"}'] == 2.0
    assert got['omni_risk_limit_utilisation{limit="daily_loss"}'] == 0.85
    assert got['omni_risk_limit_utilisation{limit="drawdown"}'] == 0.425
    assert not any("correlation" in key for key in got), "a limit without a figure is left out, not shown as 0"
    assert got['omni_risk_var_usd{confidence="0.95"}'] == 420.0
    assert got['omni_risk_var_usd{confidence="0.99"}'] == 700.0
    assert got['omni_risk_expected_shortfall_usd{confidence="0.99"}'] == 900.0
    assert got["omni_risk_score"] == 0.85
    assert 85.0 <= got["omni_risk_snapshot_age_seconds"] < 150.0
    assert 11.0 <= got["omni_watchdog_last_tick_age_seconds"] < 60.0
    assert got['omni_latency_budget_violations_shared_total{budget="order_submission"}'] == 3.0
    assert got['omni_latency_budget_violations_shared_total{budget="quote_processing"}'] == 0.0
    assert got["omni_market_open"] in (0.0, 1.0)
    assert got["omni_desk_scrape_up"] == 1.0

    # Redis's copy of the latest summary wins over the database's (what `omni status` and /health read).
    redis_client.set(
        RISK_LATEST_KEY, json.dumps({"ts": now.isoformat(), "risk_score": 0.2, "utilisation": {"daily_loss": 0.2}, "breaches": [{}]})
    )
    got = _scrape(runtime)
    assert got['omni_risk_limit_utilisation{limit="daily_loss"}'] == 0.2
    assert got["omni_risk_breaches"] == 1.0
    engine.dispose()


def test_desk_metrics_database_unreachable_hides_only_database_figures(redis_client: redis.Redis) -> None:
    engine = make_engine("postgresql+psycopg2://omni@127.0.0.1:1/none", pool_timeout_s=2)
    redis_client.set(WATCHDOG_LAST_TICK_KEY, json.dumps({"ts": time.time()}))
    got = _scrape(SimpleNamespace(redis=redis_client, sessions=sessionmaker(engine)))
    assert got["omni_desk_scrape_up"] == 0.0
    assert not any(key.startswith(("omni_backfill_recent_partitions", "omni_validation_series", "omni_risk_")) for key in got), got
    assert "omni_watchdog_last_tick_age_seconds" in got
    assert got['omni_latency_budget_violations_shared_total{budget="order_submission"}'] == 0.0
    engine.dispose()
