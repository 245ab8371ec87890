"""SQLAlchemy 2 typed models. The schema's history lives in ``db/`` (Alembic).

Market data may be double precision; money in the ledger is Numeric (exact).
Every timestamp is timezone-aware UTC (:class:`UtcDateTime`).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    Double,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from omni_tasks.storage.types import UtcDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Reusable column types.
BigId = Annotated[int, mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)]
UtcTs = Annotated[datetime, mapped_column(UtcDateTime())]
Name = Annotated[str, mapped_column(String(200))]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON}


class TaskRun(Base):
    """One outcome of one task delivery (Flower forgets on restart; this does not)."""

    __tablename__ = "task_runs"

    id: Mapped[BigId]
    outcome_id: Mapped[str] = mapped_column(String(36), unique=True)
    task_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[Name] = mapped_column(index=True)
    queue: Mapped[str] = mapped_column(String(50))
    state: Mapped[str] = mapped_column(String(20))
    args_json: Mapped[str] = mapped_column(Text, default="")
    worker: Mapped[Name]
    pid: Mapped[int]
    delivery: Mapped[int] = mapped_column(default=1)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[UtcTs]
    finished_at: Mapped[UtcTs]
    runtime_s: Mapped[float] = mapped_column(Float)
    queue_wait_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_task_runs_finished_at", "finished_at"),
        Index("ix_task_runs_state_finished_at", "state", "finished_at"),
    )


class AuditLog(Base):
    """Who did what, when and why: operator actions, breaker and kill-switch transitions."""

    __tablename__ = "audit_log"

    id: Mapped[BigId]
    ts: Mapped[UtcTs] = mapped_column(index=True)
    actor: Mapped[Name]
    action: Mapped[str] = mapped_column(String(100), index=True)
    subject: Mapped[Name]
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class WorkerHeartbeat(Base):
    """The last heartbeat of every worker instance the watchdog has seen."""

    __tablename__ = "worker_heartbeats"

    instance_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[Name] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(50))
    queues: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    started_at: Mapped[UtcTs]
    last_seen: Mapped[UtcTs]
    active: Mapped[int] = mapped_column(default=0)
    processed: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[str] = mapped_column(String(50))


# ---- market data -----------------------------------------------------------------
# Prices are double precision (market data; DESIGN section 5), not ledger money.
Price = Annotated[float, mapped_column(Double())]


class BarSeries(Base):
    """One series of bars: (symbol, timeframe, feed, adjustment), named by a small integer.

    The bars table is keyed by (series_id, ts): a narrow key, so the server keeps
    its primary key cheaply. IEX and SIP, raw and adjusted bars are different
    series and never overwrite each other. Rows here are only ever added.
    """

    __tablename__ = "bar_series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    symbol: Mapped[str] = mapped_column(String(12))
    timeframe: Mapped[str] = mapped_column(String(8))
    feed: Mapped[str] = mapped_column(String(16))
    adjustment: Mapped[str] = mapped_column(String(8))

    __table_args__ = (UniqueConstraint("symbol", "timeframe", "feed", "adjustment", name="uq_bar_series_key"),)


class Bar(Base):
    """A canonical bar of one :class:`BarSeries` (``series_id``: no foreign key, which would cost a lookup per row written)."""

    __tablename__ = "bars"

    series_id: Mapped[int] = mapped_column(Integer)
    ts: Mapped[datetime] = mapped_column(UtcDateTime())
    open: Mapped[Price]
    high: Mapped[Price]
    low: Mapped[Price]
    close: Mapped[Price]
    volume: Mapped[Price]
    vwap: Mapped[float | None] = mapped_column(Double())
    trade_count: Mapped[int | None] = mapped_column(BigInteger)
    provider: Mapped[str] = mapped_column(String(32))
    ingested_at: Mapped[UtcTs]

    __table_args__ = (PrimaryKeyConstraint("series_id", "ts", name="pk_bars"),)


class BarDigest(Base):
    """What a bar store write left stored: the ``rows`` bars of a series with ``lo <= ts <= hi`` it wrote hash to ``digest``.

    A re-run of exactly those rows is recognised by its digest and not sent
    again (:mod:`omni_tasks.storage.bars.postgres`). A record is removed
    whenever one of its bars may have changed: by the store when it updates or
    deletes bars of the series in that range, and on PostgreSQL by a trigger
    when anything else writes to ``bars``.
    """

    __tablename__ = "bar_digests"

    series_id: Mapped[int] = mapped_column(Integer)
    lo: Mapped[datetime] = mapped_column(UtcDateTime())
    hi: Mapped[datetime] = mapped_column(UtcDateTime())
    rows: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))

    __table_args__ = (PrimaryKeyConstraint("series_id", "lo", "hi", name="pk_bar_digests"),)


class RejectedRow(Base):
    """A provider row that failed the boundary contract, kept with its reason (never dropped)."""

    __tablename__ = "rejected_rows"

    id: Mapped[BigId]
    created_at: Mapped[UtcTs] = mapped_column(index=True)
    symbol: Mapped[str] = mapped_column(String(12), index=True)
    timeframe: Mapped[str] = mapped_column(String(8))
    ts: Mapped[datetime | None] = mapped_column(UtcDateTime())
    provider: Mapped[str] = mapped_column(String(32))
    feed: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    partition_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    #: where the row was caught: ingest (the boundary contract) or validation (moved out of bars)
    stage: Mapped[str] = mapped_column(String(12), default="ingest", server_default="ingest")


class BackfillJob(Base):
    """A requested backfill: symbols x timeframe x range x feed, split into partitions."""

    __tablename__ = "backfill_jobs"

    id: Mapped[BigId]
    created_at: Mapped[UtcTs]
    requested_by: Mapped[str] = mapped_column(String(100))
    timeframe: Mapped[str] = mapped_column(String(8))
    start: Mapped[UtcTs]
    end: Mapped[UtcTs]
    feed: Mapped[str] = mapped_column(String(16))
    adjustment: Mapped[str] = mapped_column(String(8))
    symbols: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    note: Mapped[str | None] = mapped_column(Text)


class BackfillPartition(Base):
    """One unit of backfill work, small enough to finish well inside the visibility timeout."""

    __tablename__ = "backfill_partitions"

    id: Mapped[BigId]
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("backfill_jobs.id", ondelete="CASCADE"), index=True)
    symbol: Mapped[str] = mapped_column(String(12))
    timeframe: Mapped[str] = mapped_column(String(8))
    start: Mapped[UtcTs]
    end: Mapped[UtcTs]
    feed: Mapped[str] = mapped_column(String(16))
    adjustment: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(20), index=True)
    rows: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    checksum: Mapped[str | None] = mapped_column(String(64))
    provider: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[str | None] = mapped_column(Text)
    #: why there was no data: unknown_symbol (failed) or no_bars_in_range (succeeded, no rows); validation reads it
    cause: Mapped[str | None] = mapped_column(String(30))
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: a ``deferred`` partition runs again at this time (a provider's next slot, a quota's reset)
    resume_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: the provider's whole series of the symbol begins here, inside the partition: before it there are no bars to
    #: have (a listing, the start of the provider's history), and validation says "no data", not holes
    data_from: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (
        UniqueConstraint("job_id", "symbol", "timeframe", "start", "feed", "adjustment", name="uq_backfill_partitions_slice"),
    )


# ---- validation and scans --------------------------------------------------------------


class QualityReport(Base):
    """Data quality of one symbol's bars on one session day: completeness, gaps, violations."""

    __tablename__ = "quality_reports"

    id: Mapped[BigId]
    symbol: Mapped[str] = mapped_column(String(12))
    timeframe: Mapped[str] = mapped_column(String(8))
    session: Mapped[date] = mapped_column(Date)
    created_at: Mapped[UtcTs]
    expected: Mapped[int]
    present: Mapped[int]
    completeness: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(10), index=True)  # ok, warn, fail, closed
    gaps: Mapped[dict[str, Any]] = mapped_column(default=dict)
    violations: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outliers: Mapped[int] = mapped_column(default=0)
    quarantined: Mapped[int] = mapped_column(default=0)

    __table_args__ = (UniqueConstraint("symbol", "timeframe", "session", name="uq_quality_reports_symbol_day"),)


class SeriesValidation(Base):
    """The latest validation verdict per series: what scans and risk consult before trusting the data."""

    __tablename__ = "series_validation"

    symbol: Mapped[str] = mapped_column(String(12), primary_key=True)
    timeframe: Mapped[str] = mapped_column(String(8), primary_key=True)
    status: Mapped[str] = mapped_column(String(10))  # passed, failed
    checked_at: Mapped[UtcTs]
    through: Mapped[date] = mapped_column(Date)
    reason: Mapped[str | None] = mapped_column(Text)


class ReconciliationResult(Base):
    """One stored bar compared with the same bar from a second provider (DESIGN section 5: a second opinion).

    ``close_diff_bp``: |stored - other| / other in basis points. ``volume_diff_pct``
    is None when the feeds are not comparable (IEX-only against consolidated
    volume): ``volume_compared`` says so and ``note`` why. ``beyond_tolerance``:
    the close (or a comparable volume) differs by more than the run's tolerance.
    Re-running a reconciliation of the same bar against the same provider updates the row.
    """

    __tablename__ = "reconciliation_results"

    id: Mapped[BigId]
    checked_at: Mapped[UtcTs] = mapped_column(index=True)
    symbol: Mapped[str] = mapped_column(String(12))
    timeframe: Mapped[str] = mapped_column(String(8))
    ts: Mapped[UtcTs]
    adjustment: Mapped[str] = mapped_column(String(8))
    stored_provider: Mapped[str] = mapped_column(String(32))
    stored_feed: Mapped[str] = mapped_column(String(16))
    other_provider: Mapped[str] = mapped_column(String(32))
    other_feed: Mapped[str] = mapped_column(String(16))
    stored_close: Mapped[float] = mapped_column(Double())
    other_close: Mapped[float] = mapped_column(Double())
    close_diff_bp: Mapped[float] = mapped_column(Double())
    stored_volume: Mapped[float] = mapped_column(Double())
    other_volume: Mapped[float] = mapped_column(Double())
    volume_diff_pct: Mapped[float | None] = mapped_column(Double())
    volume_compared: Mapped[bool]
    tolerance_bp: Mapped[float] = mapped_column(Double())
    beyond_tolerance: Mapped[bool] = mapped_column(index=True)
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("symbol", "timeframe", "ts", "adjustment", "stored_feed", "other_provider", name="uq_reconciliation_results_bar"),
    )


# ---- news --------------------------------------------------------------------------------


class NewsArticle(Base):
    """A news article with its overall sentiment, as the provider scored it (Alpha Vantage NEWS_SENTIMENT).

    One row per (provider, url): fetching the same article again updates it.
    Scores are the provider's, -1 (bearish) .. +1 (bullish).
    """

    __tablename__ = "news_articles"

    id: Mapped[BigId]
    provider: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    title: Mapped[str] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(200))
    source_domain: Mapped[str | None] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(200))
    authors: Mapped[list[Any]] = mapped_column(JSON, default=list)
    topics: Mapped[list[Any]] = mapped_column(JSON, default=list)
    banner_image: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[UtcTs] = mapped_column(index=True)
    overall_sentiment_score: Mapped[float | None] = mapped_column(Double())
    overall_sentiment_label: Mapped[str | None] = mapped_column(String(40))
    fetched_at: Mapped[UtcTs]

    __table_args__ = (UniqueConstraint("provider", "url", name="uq_news_articles_provider_url"),)


class NewsTickerSentiment(Base):
    """One ticker an article is about: its relevance (0..1) and the sentiment towards it (-1..+1)."""

    __tablename__ = "news_ticker_sentiment"

    article_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("news_articles.id", ondelete="CASCADE"), primary_key=True)
    #: as the provider writes it: AAPL, CRYPTO:BTC, FOREX:USD
    ticker: Mapped[str] = mapped_column(String(40), primary_key=True)
    relevance_score: Mapped[float | None] = mapped_column(Double())
    sentiment_score: Mapped[float | None] = mapped_column(Double())
    sentiment_label: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (Index("ix_news_ticker_sentiment_ticker", "ticker"),)


class ScanRun(Base):
    """One scan of a universe: when, over what, and how it ended."""

    __tablename__ = "scan_runs"

    id: Mapped[BigId]
    created_at: Mapped[UtcTs] = mapped_column(index=True)
    requested_by: Mapped[str] = mapped_column(String(100))
    as_of: Mapped[UtcTs]
    symbols: Mapped[int]
    chunks: Mapped[int]
    status: Mapped[str] = mapped_column(String(20))  # running, succeeded, failed
    stale_input: Mapped[bool] = mapped_column(default=False)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    error: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ScanResult(Base):
    """One symbol's indicators, score and rank in a scan run (no score: the reason says why)."""

    __tablename__ = "scan_results"

    run_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("scan_runs.id", ondelete="CASCADE"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(12), primary_key=True)
    rank: Mapped[int | None]
    score: Mapped[float | None] = mapped_column(Float)
    indicators: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    stale_input: Mapped[bool] = mapped_column(default=False)


# --- Trading and safety (DESIGN sections 7 and 8). Money and quantities are exact decimals.

Money = Annotated[Decimal, mapped_column(Numeric(24, 8))]


class Order(Base):
    """One order as the desk sees it, from the request to its last broker state.

    ``status``: pending (checks passed, not yet at the broker), new/accepted
    (at the broker), partially_filled, filled, cancelled, rejected (by the
    broker), denied (by a pre-trade check; never left), expired (not sent
    before ``expires_at``: see :mod:`omni_tasks.trading.expiry`).
    """

    __tablename__ = "orders"

    id: Mapped[BigId]
    client_order_id: Mapped[str] = mapped_column(String(64), unique=True)
    broker: Mapped[str] = mapped_column(String(20))
    broker_order_id: Mapped[str | None] = mapped_column(String(64), index=True)
    symbol: Mapped[str] = mapped_column(String(12), index=True)
    side: Mapped[str] = mapped_column(String(4))  # buy, sell
    qty: Mapped[Money]
    order_type: Mapped[str] = mapped_column(String(10))  # market, limit
    limit_price: Mapped[Decimal | None] = mapped_column(Numeric(24, 8))
    status: Mapped[str] = mapped_column(String(20), index=True)
    filled_qty: Mapped[Money] = mapped_column(default=Decimal(0))
    avg_fill_price: Mapped[Decimal | None] = mapped_column(Numeric(24, 8))
    requested_by: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[UtcTs] = mapped_column(index=True)
    submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    updated_at: Mapped[UtcTs]
    #: Not sent after this moment: a pending order past it is recorded ``expired`` (None: rows from before deadlines).
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Fill(Base):
    """One execution of (part of) an order."""

    __tablename__ = "fills"

    id: Mapped[BigId]
    order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    broker: Mapped[str] = mapped_column(String(20))
    symbol: Mapped[str] = mapped_column(String(12), index=True)
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[Money]
    price: Mapped[Money]
    ts: Mapped[UtcTs] = mapped_column(index=True)


class Position(Base):
    """The signed quantity held per broker and symbol (short is negative), at its average price."""

    __tablename__ = "positions"

    broker: Mapped[str] = mapped_column(String(20), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(12), primary_key=True)
    qty: Mapped[Money]
    avg_price: Mapped[Money]
    realized_pnl: Mapped[Money] = mapped_column(default=Decimal(0))
    updated_at: Mapped[UtcTs]


class BrokerAccount(Base):
    """Cash and the equity marks drawdown and daily loss are measured from, per broker."""

    __tablename__ = "broker_accounts"

    broker: Mapped[str] = mapped_column(String(20), primary_key=True)
    cash: Mapped[Money]
    day: Mapped[date] = mapped_column(Date)
    day_start_equity: Mapped[Money]
    peak_equity: Mapped[Money]
    updated_at: Mapped[UtcTs]


class OrderEvent(Base):
    """Every step of an order's life, and every denial with the check and reason that denied it."""

    __tablename__ = "order_events"

    id: Mapped[BigId]
    ts: Mapped[UtcTs] = mapped_column(index=True)
    client_order_id: Mapped[str] = mapped_column(String(64), index=True)
    event: Mapped[str] = mapped_column(String(20), index=True)  # requested, denied, submitted, filled, cancelled, rejected, ...
    check: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TradingStateRow(Base):
    """The one durable trading state (ACTIVE, REDUCING, HALTED); HALTED is the kill switch engaged.

    One row (id 1). ``version`` grows with every change, so the Redis fast path
    can tell an old copy from the current one.
    """

    __tablename__ = "trading_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(10))
    version: Mapped[int] = mapped_column(BigInteger)
    changed_at: Mapped[UtcTs]
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)


class KillEvent(Base):
    """One engage or release of the kill switch (or a trading state change): who, why, when, how long each step took."""

    __tablename__ = "kill_events"

    id: Mapped[BigId]
    ts: Mapped[UtcTs] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(20))  # engage, release, reduce, activate, drill
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    state_before: Mapped[str] = mapped_column(String(10))
    state_after: Mapped[str] = mapped_column(String(10))
    timings_ms: Mapped[dict[str, Any]] = mapped_column(default=dict)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EmergencySnapshot(Base):
    """What was open when the kill switch engaged: orders, positions and breaker states."""

    __tablename__ = "emergency_snapshots"

    id: Mapped[BigId]
    ts: Mapped[UtcTs] = mapped_column(index=True)
    kill_event_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("kill_events.id", ondelete="SET NULL"))
    open_orders: Mapped[list[Any]] = mapped_column(JSON, default=list)
    positions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    breakers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    file_path: Mapped[str | None] = mapped_column(Text)


class RiskSnapshot(Base):
    """One recalculation of the portfolio's risk; ``metrics`` holds every figure, the columns the ones queried."""

    __tablename__ = "risk_snapshots"

    id: Mapped[BigId]
    ts: Mapped[UtcTs] = mapped_column(index=True)
    broker: Mapped[str] = mapped_column(String(20))
    equity: Mapped[Money]
    daily_pnl: Mapped[Money]
    gross_exposure: Mapped[float] = mapped_column(Float)
    net_exposure: Mapped[float] = mapped_column(Float)
    gross_leverage: Mapped[float | None] = mapped_column(Float)  # None: equity not positive while positions are held
    var_95: Mapped[float | None] = mapped_column(Float)
    es_95: Mapped[float | None] = mapped_column(Float)
    drawdown_pct: Mapped[float | None] = mapped_column(Float)  # None: no positive equity mark to measure from
    risk_score: Mapped[float] = mapped_column(Float)
    breaches: Mapped[list[Any]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
