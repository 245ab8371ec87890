"""The provider protocol every adapter implements, and what each declares it can do."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import pandas as pd


@dataclass(frozen=True)
class Capabilities:
    """What a provider can serve, so the router and the planner ask only for what it can answer."""

    timeframes: frozenset[str]
    #: longest range one call may cover, per timeframe code (the planner splits partitions below this)
    max_range_per_call: dict[str, timedelta] = field(default_factory=dict)
    #: calls per minute the provider allows one key (the shared Redis limiter enforces it)
    rate_limit_per_min: int = 60
    needs_key: bool = False
    feeds: frozenset[str] = frozenset()
    adjustments: frozenset[str] = frozenset({"raw"})
    #: calls per day per key, when the provider meters a daily quota (Alpha Vantage)
    daily_quota: int | None = None
    #: timeframes for which one call returns the whole history whatever the range (Alpha Vantage daily):
    #: the router makes that call once per job and symbol and the partitions share the answer
    whole_series: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BarRequest:
    """One provider call: bars of ``symbol`` with ``start <= ts < end`` (aware UTC datetimes)."""

    symbol: str
    timeframe: str
    start: datetime
    end: datetime
    feed: str = "iex"
    adjustment: str = "raw"

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("BarRequest start and end must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise ValueError(f"empty range: end {self.end.isoformat()} is not after start {self.start.isoformat()}")


@dataclass
class BarResult:
    """Canonical bars and what the provider said about them (e.g. the SIP end clamped, feed switched)."""

    bars: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    calls: int = 1
    #: the first bar of the provider's whole series of the symbol, when its answer was the whole history (None: not known)
    series_start: datetime | None = None


@runtime_checkable
class BarProvider(Protocol):
    """A source of historical bars. Raises omni_tasks.marketdata.errors on failure."""

    name: str
    capabilities: Capabilities

    def available(self) -> bool:
        """False when the provider cannot be used at all here (e.g. no key configured)."""
        ...

    def fetch_bars(self, request: BarRequest) -> BarResult:
        """Canonical bars for the request (columns of frames.BAR_COLUMNS), sorted by ts."""
        ...
