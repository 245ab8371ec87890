"""A second opinion: stored bars compared with the same bars from another configured provider.

For each series, a sample of stored bars (``sample`` of them, drawn with a
seed made of the symbol and window, so a re-run compares the same bars) is
fetched again from a *different* provider that can serve the same timeframe
and adjustment (raw against raw, split-adjusted against split-adjusted), in
one request spanning the sample. Each pair gives:

* ``close_diff_bp``: |stored - other| / other x 10,000;
* ``volume_diff_pct``: |stored - other| / other x 100, **only when the feeds
  are comparable**: the same feed, or both consolidated (Alpaca SIP, Yahoo,
  Alpha Vantage). IEX carries a few percent of the consolidated volume, and
  the offline feeds are their own: those pairs compare the close only and
  the record says why (``volume_compared`` False, ``note``).

A pair beyond ``tolerance_bp`` (close) or ``volume_tolerance_pct`` (a
comparable volume) is a difference. Every pair is recorded in
``reconciliation_results`` (part of the quality report: ``omni validate``
shows the differences); a series that could not be compared (no stored bars,
no second provider, the second provider failing) is listed with the reason,
never an error. Plain Python: the bar store and the providers come in as
arguments, and ``fetch`` (default: the provider itself) is how a provider is
asked, so the task can route through the shared breakers and rate limits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from omni_tasks.contracts.bars import TIMEFRAMES
from omni_tasks.marketdata.errors import ProviderError
from omni_tasks.marketdata.providers.base import BarProvider, BarRequest
from omni_tasks.storage.models import ReconciliationResult

#: Feeds whose volume is the consolidated tape (every exchange): comparable with each other.
CONSOLIDATED_FEEDS: Final = frozenset({"sip", "yahoo", "alpha_vantage"})

Fetch = Callable[[BarProvider, BarRequest], pd.DataFrame]


@dataclass(frozen=True)
class Comparison:
    """One stored bar against the same bar from the other provider."""

    symbol: str
    timeframe: str
    ts: datetime
    adjustment: str
    stored_provider: str
    stored_feed: str
    other_provider: str
    other_feed: str
    stored_close: float
    other_close: float
    close_diff_bp: float
    stored_volume: float
    other_volume: float
    volume_diff_pct: float | None
    volume_compared: bool
    tolerance_bp: float
    beyond_tolerance: bool
    note: str | None = None


@dataclass
class ReconcileReport:
    """Every comparison made, and every series (or bar) that could not be compared with the reason."""

    comparisons: list[Comparison] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def differences(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.beyond_tolerance]

    def summary(self) -> dict[str, Any]:
        return {
            "compared": len(self.comparisons),
            "differences": len(self.differences),
            "volume_compared": sum(c.volume_compared for c in self.comparisons),
            "max_close_diff_bp": max((c.close_diff_bp for c in self.comparisons), default=None),
            "skipped": [{"symbol": s, "reason": r} for s, r in self.skipped],
        }


def volume_comparable(stored_feed: str, other_feed: str) -> tuple[bool, str | None]:
    """Can the two feeds' volumes be compared? (False with the reason when not.)"""
    if stored_feed == other_feed or (stored_feed in CONSOLIDATED_FEEDS and other_feed in CONSOLIDATED_FEEDS):
        return True, None
    return (
        False,
        f"volume not compared: {stored_feed} and {other_feed} volumes are not comparable (IEX-only, consolidated and offline feeds differ)",
    )


def second_provider(providers: Sequence[BarProvider], *, stored_provider: str, timeframe: str, adjustment: str) -> BarProvider | None:
    """The first provider, in the configured order, that is not the one that served the rows and can serve the same bars."""
    for provider in providers:
        caps = provider.capabilities
        if provider.name != stored_provider and provider.available() and timeframe in caps.timeframes and adjustment in caps.adjustments:
            return provider
    return None


def sample_rows(symbol: str, n_rows: int, k: int, *, start: date, end: date) -> np.ndarray:
    """``k`` row positions out of ``n_rows`` (all when fewer), sorted, the same for the same symbol and window."""
    if n_rows <= k:
        return np.arange(n_rows)
    seed = int.from_bytes(hashlib.blake2b(f"{symbol}|{start}|{end}".encode(), digest_size=8).digest(), "little")
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=k, replace=False))


def _direct(provider: BarProvider, request: BarRequest) -> pd.DataFrame:
    return provider.fetch_bars(request).bars


def reconcile(
    store: Any,
    providers: Sequence[BarProvider],
    symbols: Sequence[str],
    *,
    timeframe: str,
    start: date,
    end: date,
    feeds: Sequence[str],
    adjustment: str = "raw",
    sample: int = 5,
    tolerance_bp: float = 25.0,
    volume_tolerance_pct: float = 10.0,
    fetch: Fetch = _direct,
) -> ReconcileReport:
    """Compare a sample of each series' stored bars in [start, end) with another provider's. See the module docstring."""
    tf = TIMEFRAMES[timeframe]
    lo = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    hi = datetime.combine(end, datetime.min.time(), tzinfo=UTC)
    report = ReconcileReport()
    for symbol in symbols:
        stored = store.read(symbol, timeframe, lo, hi, feeds=tuple(feeds), adjustment=adjustment)
        if stored.empty:
            report.skipped.append((symbol, f"no stored {timeframe} bars between {start} and {end}"))
            continue
        picked = stored.iloc[sample_rows(symbol, len(stored), sample, start=start, end=end)].reset_index(drop=True)
        for stored_provider, rows in picked.groupby("provider", sort=True):
            other = second_provider(providers, stored_provider=str(stored_provider), timeframe=timeframe, adjustment=adjustment)
            if other is None:
                report.skipped.append(
                    (symbol, f"no second provider configured that can serve {timeframe} {adjustment} bars besides {stored_provider}")
                )
                continue
            stored_feed = str(rows["feed"].iloc[0])
            first, last = pd.Timestamp(rows["ts"].min()).to_pydatetime(), pd.Timestamp(rows["ts"].max()).to_pydatetime()
            request = BarRequest(
                symbol, timeframe, first, last + tf.delta, feed="iex" if stored_feed == "iex" else "sip", adjustment=adjustment
            )
            try:
                theirs = fetch(other, request)
            except ProviderError as exc:
                report.skipped.append((symbol, f"{other.name} could not serve the sample: {exc}"))
                continue
            by_ts = theirs.drop_duplicates("ts", keep="first").set_index("ts") if len(theirs) else theirs
            for row in rows.itertuples(index=False):
                if row.ts not in by_ts.index:
                    report.skipped.append((symbol, f"{other.name} has no bar at {pd.Timestamp(row.ts).isoformat()}"))
                    continue
                report.comparisons.append(
                    _compare(row, by_ts.loc[row.ts], other.name, timeframe, adjustment, tolerance_bp, volume_tolerance_pct)
                )
    return report


def _compare(
    row: Any, theirs: pd.Series, other_name: str, timeframe: str, adjustment: str, tolerance_bp: float, volume_tolerance_pct: float
) -> Comparison:
    other_feed = str(theirs["feed"])
    close_a, close_b = float(row.close), float(theirs["close"])
    volume_a, volume_b = float(row.volume), float(theirs["volume"])
    close_bp = abs(close_a - close_b) / close_b * 10_000 if close_b > 0 else float("inf")
    comparable, note = volume_comparable(str(row.feed), other_feed)
    volume_pct = (abs(volume_a - volume_b) / max(volume_b, 1.0) * 100) if comparable else None
    beyond = close_bp > tolerance_bp or (volume_pct is not None and volume_pct > volume_tolerance_pct)
    return Comparison(
        symbol=str(row.symbol),
        timeframe=timeframe,
        ts=pd.Timestamp(row.ts).to_pydatetime(),
        adjustment=adjustment,
        stored_provider=str(row.provider),
        stored_feed=str(row.feed),
        other_provider=other_name,
        other_feed=other_feed,
        stored_close=close_a,
        other_close=close_b,
        close_diff_bp=round(close_bp, 4),
        stored_volume=volume_a,
        other_volume=volume_b,
        volume_diff_pct=None if volume_pct is None else round(volume_pct, 4),
        volume_compared=comparable,
        tolerance_bp=tolerance_bp,
        beyond_tolerance=beyond,
        note=note,
    )


def record(factory: sessionmaker[Session], report: ReconcileReport, *, checked_at: datetime | None = None) -> int:
    """Upsert every comparison into ``reconciliation_results`` (one row per bar and other provider). Returns rows written."""
    if not report.comparisons:
        return 0
    checked_at = checked_at or datetime.now(tz=UTC)
    rows = [{**asdict(c), "checked_at": checked_at} for c in report.comparisons]
    with factory() as session, session.begin():
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(ReconciliationResult)
        keys = {"symbol", "timeframe", "ts", "adjustment", "stored_feed", "other_provider"}
        session.execute(
            stmt.on_conflict_do_update(index_elements=sorted(keys), set_={c: getattr(stmt.excluded, c) for c in rows[0] if c not in keys}),
            rows,
        )
    return len(rows)


def read_differences(
    factory: sessionmaker[Session], symbols: Sequence[str], *, timeframe: str, start: date, end: date, limit: int = 200
) -> list[dict[str, Any]]:
    """Recorded differences beyond tolerance for these series in [start, end), newest bar first."""
    lo = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    hi = datetime.combine(end, datetime.min.time(), tzinfo=UTC)
    with factory() as session:
        found = session.scalars(
            select(ReconciliationResult)
            .where(
                ReconciliationResult.symbol.in_(list(symbols)),
                ReconciliationResult.timeframe == timeframe,
                ReconciliationResult.ts >= lo,
                ReconciliationResult.ts < hi,
                ReconciliationResult.beyond_tolerance.is_(True),
            )
            .order_by(ReconciliationResult.ts.desc(), ReconciliationResult.symbol)
            .limit(limit)
        ).all()
        return [
            {
                c: getattr(r, c)
                for c in (
                    "symbol",
                    "ts",
                    "stored_provider",
                    "stored_feed",
                    "other_provider",
                    "other_feed",
                    "stored_close",
                    "other_close",
                    "close_diff_bp",
                    "stored_volume",
                    "other_volume",
                    "volume_diff_pct",
                    "volume_compared",
                    "tolerance_bp",
                    "note",
                    "checked_at",
                )
            }
            for r in found
        ]


def reconcile_stored(
    settings: Any,
    client: Any,
    engine: Any,
    factory: sessionmaker[Session],
    symbols: Sequence[str],
    *,
    timeframe: str,
    start: date,
    end: date,
    feed: str,
    adjustment: str,
    sample: int | None = None,
    tolerance_bp: float | None = None,
) -> ReconcileReport:
    """Reconcile with the configured providers through the shared breakers and rate limits, and record the result.

    ``settings`` (omni_tasks.settings.Settings), ``client`` (Redis, for breakers
    and limits); ``sample`` and ``tolerance_bp`` default to OMNI_RECONCILE_*.
    """
    from omni_tasks.marketdata.router import serving_feeds
    from omni_tasks.marketdata.wiring import build_router, build_store

    router = build_router(settings, client, factory)
    options = settings.reconcile
    report = reconcile(
        build_store(engine),
        router.providers,
        symbols,
        timeframe=timeframe,
        start=start,
        end=end,
        feeds=serving_feeds(settings.providers.order, feed),
        adjustment=adjustment,
        sample=sample or options.sample_sessions,
        tolerance_bp=tolerance_bp or options.tolerance_bp,
        volume_tolerance_pct=options.volume_tolerance_pct,
        fetch=lambda provider, request: router.only(provider).fetch(request).bars,
    )
    record(factory, report)
    return report
