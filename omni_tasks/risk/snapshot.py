"""One risk snapshot: read the book from the trading venue, mark it, compute the figures and breaches, keep them.

    result = build_snapshot(venue, redis=..., store=BarStore(engine), sessions=..., risk=settings.risk,
                            quote_max_age_s=settings.stream.stale_after_s)
    snapshot_id = save_snapshot(sessions, result)       # a risk_snapshots row
    publish_latest(redis, result.summary(snapshot_id))  # omni:risk:latest, for omni status and /health

Steps, and what each says about itself in the snapshot:

1. **The book.** Cash and the equity marks (day start, peak) from
   ``venue.account()``, signed positions from ``venue.positions()``.
2. **Marks.** Each position is priced at the mid of its latest quote in Redis
   when that quote is at most ``quote_max_age_s`` old (``source: quote``);
   otherwise at the last daily close in the bar store (``close``, with the
   bar's session date), then at the venue's own price (``broker``), and only
   as a last resort at the average cost (``cost``). ``metrics.marks`` lists
   every mark with its source, and the summary counts them, so a snapshot
   priced from yesterday's closes says so. Equity is recomputed from these
   marks (cash + sum of qty x mark, exact Decimal); the venue's own equity
   figure is kept beside it as ``broker_equity``.
3. **History.** Daily closes of the held symbols and the benchmark over the
   last ``var_lookback_days`` sessions (``BarStore.read_many``, 1Day bars,
   preferred feed), aligned by session; a session without a bar carries the
   previous close forward (a zero return: the move is counted on the next
   bar, never lost); returns before a symbol's first bar are NaN (see the NaN
   policy in :mod:`omni_tasks.risk.figures`).
4. **Figures and breaches** (:mod:`.metrics`, :mod:`.limits`), the 0..1 risk
   score from each limit's utilisation.
5. **Stale input.** Held symbols whose latest daily-bar validation failed
   (``series_validation``) are listed in ``stale_input``: the snapshot is
   computed but marked as resting on data that failed its checks (DESIGN
   section 5: validation gates risk).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import numpy as np
import pandas as pd
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.quotes import LatestQuote, read_latest
from omni_tasks.contracts.venue import Venue, VenuePosition
from omni_tasks.core.keys import RISK_LATEST_KEY
from omni_tasks.risk.figures import History, Portfolio, RiskMetrics, compute_metrics, risk_score
from omni_tasks.risk.limits import Breach, breaches, utilisation

# Reading snapshots back lives in snapshot_reads (no pandas: /health, `omni status`, the watchdog); re-exported.
from omni_tasks.risk.snapshot_reads import latest_snapshot as latest_snapshot
from omni_tasks.risk.snapshot_reads import recent_snapshots as recent_snapshots
from omni_tasks.risk.snapshot_reads import snapshot_figures as snapshot_figures
from omni_tasks.risk.snapshot_reads import summary_of_row as summary_of_row
from omni_tasks.settings import RiskSettings
from omni_tasks.storage.bars import BarStore
from omni_tasks.storage.models import RiskSnapshot, SeriesValidation

TIMEFRAME: Final = "1Day"
MARK_SOURCES: Final = ("quote", "close", "broker", "cost")
_log = structlog.get_logger("omni.risk")


@dataclass(frozen=True)
class Mark:
    """The price a position is valued at, where it came from, and how old it is."""

    symbol: str
    price: Decimal
    source: str
    as_of: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"price": str(self.price), "source": self.source, "as_of": self.as_of.isoformat() if self.as_of else None}


@dataclass(frozen=True)
class Close:
    """The last daily close of a symbol and its bar's timestamp (the session date, 00:00 UTC)."""

    price: Decimal
    ts: datetime


def choose_marks(
    positions: Iterable[VenuePosition],
    quotes: Mapping[str, LatestQuote],
    closes: Mapping[str, Close],
    *,
    max_quote_age_s: float,
    now_ns: int,
) -> dict[str, Mark]:
    """The mark of each position: a fresh quote's mid, else the last daily close, else the venue's price, else the cost."""
    marks: dict[str, Mark] = {}
    for position in positions:
        symbol = position.symbol
        quote = quotes.get(symbol)
        if quote is not None and quote.is_fresh(max_quote_age_s, now_ns):
            marks[symbol] = Mark(symbol, quote.mid, "quote", datetime.fromtimestamp(quote.ts_ns / 1e9, tz=UTC))
        elif symbol in closes:
            marks[symbol] = Mark(symbol, closes[symbol].price, "close", closes[symbol].ts)
        elif position.market_price is not None:
            marks[symbol] = Mark(symbol, position.market_price, "broker", None)
        else:
            marks[symbol] = Mark(symbol, position.avg_price, "cost", None)
    return marks


@dataclass(frozen=True)
class DailyHistory:
    """Daily returns of ``symbols`` (columns, in that order) and of the benchmark over the same sessions, and last closes."""

    symbols: tuple[str, ...]
    sessions: tuple[datetime, ...]
    returns: np.ndarray
    benchmark: np.ndarray | None
    closes: dict[str, Close]


def daily_history(bars: pd.DataFrame, symbols: Sequence[str], benchmark: str | None, *, lookback_days: int) -> DailyHistory:
    """Returns over the last ``lookback_days`` sessions from canonical daily bars (any symbols; others are ignored).

    Sessions are the bar timestamps seen in ``bars``; a symbol without a bar on
    a session carries its previous close forward (zero return); returns before
    its first bar are NaN. The benchmark is None when it has no bar at all.
    """
    names = tuple(symbols)
    wanted = set(names) | ({benchmark} if benchmark else set())
    frame = bars.loc[bars["symbol"].isin(list(wanted)), ["symbol", "ts", "close"]] if len(bars) else bars
    if not len(frame):
        return DailyHistory(names, (), np.zeros((0, len(names))), None, {})
    closes = frame.pivot(index="ts", columns="symbol", values="close").sort_index()
    last_rows = frame.sort_values("ts").groupby("symbol", sort=False).tail(1)
    last = {str(r.symbol): Close(Decimal(repr(float(r.close))), pd.Timestamp(r.ts).to_pydatetime()) for r in last_rows.itertuples()}
    filled = closes.ffill()
    returns = (filled / filled.shift(1) - 1.0).iloc[1:].tail(lookback_days)
    matrix = returns.reindex(columns=list(names)).to_numpy(dtype=np.float64, na_value=np.nan)
    bench = None
    if benchmark and benchmark in returns.columns:
        bench = returns[benchmark].to_numpy(dtype=np.float64, na_value=np.nan)
    sessions = tuple(pd.Timestamp(ts).to_pydatetime() for ts in returns.index)
    return DailyHistory(names, sessions, np.ascontiguousarray(matrix), bench, last)


def read_daily_history(
    store: BarStore, symbols: Sequence[str], benchmark: str | None, *, lookback_days: int, now: datetime
) -> DailyHistory:
    """:func:`daily_history` over the daily bars the store holds before ``now`` (one read for every symbol)."""
    # lookback_days sessions + the one before the first return, in calendar days with room for holidays.
    span = timedelta(days=int((lookback_days + 1) * 7 / 5) + 14)
    wanted = sorted(set(symbols) | ({benchmark} if benchmark else set()))
    bars = store.read_many(wanted, TIMEFRAME, now - span, now) if wanted else pd.DataFrame()
    return daily_history(bars, symbols, benchmark, lookback_days=lookback_days)


def stale_inputs(sessions: sessionmaker[Session], symbols: Sequence[str]) -> dict[str, str]:
    """symbol -> reason for held symbols whose latest daily-bar validation failed."""
    if not symbols:
        return {}
    with sessions() as session:
        rows = session.execute(
            select(SeriesValidation.symbol, SeriesValidation.reason).where(
                SeriesValidation.timeframe == TIMEFRAME, SeriesValidation.status == "failed", SeriesValidation.symbol.in_(list(symbols))
            )
        ).all()
    return {r.symbol: r.reason or "latest validation failed" for r in rows}


@dataclass(frozen=True)
class SnapshotResult:
    """One recalculation, before and after it is stored."""

    ts: datetime
    broker: str  # the venue's name (the risk_snapshots column and the summary key keep this name)
    metrics: RiskMetrics
    breaches: list[Breach]
    utilisation: dict[str, float | None]
    risk_score: float
    drawdown_from: str
    marks: dict[str, Mark]
    broker_equity: Decimal
    benchmark: str
    history_from: datetime | None
    history_to: datetime | None
    stale_input: dict[str, str] = field(default_factory=dict)

    @property
    def drawdown_pct(self) -> float | None:
        if self.drawdown_from == "peak":
            return self.metrics.drawdown_from_peak_pct
        return self.metrics.drawdown_from_day_start_pct

    def mark_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(MARK_SOURCES, 0)
        for mark in self.marks.values():
            counts[mark.source] += 1
        return counts

    def figures(self) -> dict[str, Any]:
        """The ``metrics`` JSON of the row: every figure, the marks, the utilisation and where the inputs came from."""
        out = self.metrics.to_json()
        out.update(
            {
                "risk_score": self.risk_score,
                "utilisation": self.utilisation,
                "drawdown_from": self.drawdown_from,
                "drawdown_pct": self.drawdown_pct,
                "broker_equity": str(self.broker_equity),
                "benchmark": self.benchmark,
                "history_from": self.history_from.isoformat() if self.history_from else None,
                "history_to": self.history_to.isoformat() if self.history_to else None,
                "marks": {symbol: mark.to_json() for symbol, mark in sorted(self.marks.items())},
                "mark_sources": self.mark_counts(),
                "stale_input": dict(self.stale_input),
            }
        )
        return out

    def summary(self, snapshot_id: int | None) -> dict[str, Any]:
        """The few figures `omni status`, /health and the watchdog read (JSON primitives, finite floats)."""
        m = self.metrics
        out = {
            "id": snapshot_id,
            "ts": self.ts.isoformat(),
            "broker": self.broker,
            "positions": m.positions,
            "equity": str(m.equity),
            "daily_pnl": str(m.daily_pnl),
            "gross_exposure": m.gross_exposure,
            "net_exposure": m.net_exposure,
            "gross_leverage": m.gross_leverage,
            "concentration_pct": m.concentration_pct,
            "max_pair_correlation": m.max_pair_correlation,
            "var_95": m.var.get("var_95_hist"),
            "es_95": m.var.get("es_95_hist"),
            "var_99": m.var.get("var_99_hist"),
            "es_99": m.var.get("es_99_hist"),
            "drawdown_pct": self.drawdown_pct,
            "drawdown_from": self.drawdown_from,
            "sharpe": m.sharpe,
            "beta": m.beta,
            "risk_score": self.risk_score,
            "utilisation": dict(self.utilisation),
            "breaches": [b.to_json() for b in self.breaches],
            "mark_sources": self.mark_counts(),
            "stale_input": sorted(self.stale_input),
            "notes": dict(m.notes),
        }
        json.dumps(out, allow_nan=False)  # finite floats only: fail here, not in a reader
        return out


def build_snapshot(
    venue: Venue,
    *,
    redis: Any,
    store: BarStore,
    sessions: sessionmaker[Session],
    risk: RiskSettings,
    quote_max_age_s: float,
    now: datetime | None = None,
) -> SnapshotResult:
    """Read the book, mark it, compute every figure and breach (nothing is stored here)."""
    now = now or datetime.now(tz=UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    account = venue.account()
    positions = [p for p in venue.positions() if p.qty != 0]
    symbols = tuple(sorted(p.symbol for p in positions))
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"venue {venue.name!r} reported a symbol twice: {symbols}")
    by_symbol = {p.symbol: p for p in positions}
    history = read_daily_history(store, symbols, risk.benchmark_symbol, lookback_days=risk.var_lookback_days, now=now)
    quotes = read_latest(redis, symbols)
    marks = choose_marks(positions, quotes, history.closes, max_quote_age_s=quote_max_age_s, now_ns=int(now.timestamp() * 1e9))
    market_values = [by_symbol[s].qty * marks[s].price for s in symbols]
    equity = account.cash + sum(market_values, Decimal(0))
    portfolio = Portfolio(
        symbols=symbols,
        values=np.array([float(v) for v in market_values], dtype=np.float64),
        equity=equity,
        cash=account.cash,
        day_start_equity=account.day_start_equity,
        peak_equity=account.peak_equity,
    )
    metrics = compute_metrics(
        portfolio,
        History(history.returns, history.benchmark),
        risk_free_rate_pct=risk.risk_free_rate_pct,
        min_history_days=risk.var_min_history_days,
    )
    used = utilisation(metrics, risk)
    return SnapshotResult(
        ts=now,
        broker=venue.name,
        metrics=metrics,
        breaches=breaches(metrics, risk),
        utilisation=used,
        risk_score=risk_score(used),
        drawdown_from=risk.drawdown_from,
        marks=marks,
        broker_equity=account.equity,
        benchmark=risk.benchmark_symbol,
        history_from=history.sessions[0] if history.sessions else None,
        history_to=history.sessions[-1] if history.sessions else None,
        stale_input=stale_inputs(sessions, symbols),
    )


def save_snapshot(sessions: sessionmaker[Session], result: SnapshotResult) -> int:
    """Write the ``risk_snapshots`` row; returns its id."""
    m = result.metrics
    row = RiskSnapshot(
        ts=result.ts,
        broker=result.broker,
        equity=m.equity,
        daily_pnl=m.daily_pnl,
        gross_exposure=m.gross_exposure,
        net_exposure=m.net_exposure,
        gross_leverage=m.gross_leverage,
        var_95=m.var.get("var_95_hist"),
        es_95=m.var.get("es_95_hist"),
        drawdown_pct=result.drawdown_pct,
        risk_score=result.risk_score,
        breaches=[b.to_json() for b in result.breaches],
        metrics=result.figures(),
    )
    with sessions() as session, session.begin():
        session.add(row)
        session.flush()
        return int(row.id)


def publish_latest(redis: Any, summary: Mapping[str, Any]) -> None:
    """Keep the latest snapshot's summary at ``omni:risk:latest`` (no expiry: its ``ts`` says how old it is)."""
    redis.set(RISK_LATEST_KEY, json.dumps(summary, separators=(",", ":"), allow_nan=False))


def recalculate(
    venue: Venue,
    *,
    redis: Any,
    store: BarStore,
    sessions: sessionmaker[Session],
    risk: RiskSettings,
    quote_max_age_s: float,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Build, store and publish one snapshot; returns its summary (with the row id)."""
    result = build_snapshot(venue, redis=redis, store=store, sessions=sessions, risk=risk, quote_max_age_s=quote_max_age_s, now=now)
    snapshot_id = save_snapshot(sessions, result)
    summary = result.summary(snapshot_id)
    publish_latest(redis, summary)
    _log.info(
        "risk snapshot",
        snapshot_id=snapshot_id,
        positions=result.metrics.positions,
        risk_score=round(result.risk_score, 4),
        breaches=[b.rule for b in result.breaches],
        marks=result.mark_counts(),
    )
    return summary
