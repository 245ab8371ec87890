"""The offline ``replay`` feed: canonical bars read back from Parquet or CSV files.

A folder holds one file per symbol (``AAPL.parquet`` or ``AAPL.csv``) with at
least ``ts, open, high, low, close, volume`` and optionally ``timeframe``,
``vwap``, ``trade_count``, ``feed``, ``adjustment``. Rows keep the feed and
adjustment the file records (so a recording of SIP bars stays SIP) and say
``provider=replay``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from omni_tasks.contracts.bars import TIMEFRAMES, canonical_bars, empty_bars
from omni_tasks.marketdata.errors import MalformedPayload, UnknownSymbol
from omni_tasks.marketdata.providers.base import BarRequest, BarResult, Capabilities

_REQUIRED = ("ts", "open", "high", "low", "close", "volume")


class ReplayBars:
    name = "replay"
    capabilities = Capabilities(
        timeframes=frozenset(TIMEFRAMES),
        rate_limit_per_min=1_000_000,
        needs_key=False,
        adjustments=frozenset({"raw", "split", "dividend", "all"}),
    )

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._cache: dict[str, pd.DataFrame] = {}

    def available(self) -> bool:
        return self.folder is not None and self.folder.is_dir()

    def _load(self, symbol: str) -> pd.DataFrame:
        if symbol in self._cache:
            return self._cache[symbol]
        if self.folder is None:
            raise UnknownSymbol("no replay folder configured (OMNI_PROVIDERS_REPLAY_DIR)", provider=self.name)
        for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
            path = self.folder / f"{symbol}{suffix}"
            if path.is_file():
                try:
                    frame = reader(path)
                except (ValueError, OSError) as exc:
                    raise MalformedPayload(f"{path.name}: cannot be read: {exc}", provider=self.name) from None
                missing = [c for c in _REQUIRED if c not in frame.columns]
                if missing:
                    raise MalformedPayload(f"{path.name}: missing columns {', '.join(missing)}", provider=self.name)
                frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
                self._cache[symbol] = frame
                return frame
        raise UnknownSymbol(f"no replay file for {symbol} in {self.folder}", provider=self.name)

    def fetch_bars(self, request: BarRequest) -> BarResult:
        frame = self._load(request.symbol)
        if "timeframe" in frame.columns:
            frame = frame[frame["timeframe"] == request.timeframe]
        if "adjustment" in frame.columns:
            frame = frame[frame["adjustment"] == request.adjustment]
        start, end = pd.Timestamp(request.start).tz_convert("UTC"), pd.Timestamp(request.end).tz_convert("UTC")
        frame = frame[(frame["ts"] >= start) & (frame["ts"] < end)]
        if frame.empty:
            return BarResult(empty_bars(), notes=["replay file has no bars in range"])
        pieces = []
        feeds = frame["feed"].fillna("replay") if "feed" in frame.columns else pd.Series("replay", index=frame.index)
        for feed, part in frame.groupby(feeds, sort=True):
            pieces.append(canonical_bars(part, symbol=request.symbol, timeframe=request.timeframe, provider=self.name, feed=str(feed), adjustment=request.adjustment))
        bars = pd.concat(pieces, ignore_index=True).sort_values(["ts", "feed"], kind="stable").reset_index(drop=True)
        return BarResult(bars)
