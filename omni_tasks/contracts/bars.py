"""The canonical bar and quote frames, and the pandera contract checked where provider data enters.

Canonical bar columns (DESIGN section 5)::

    symbol, timeframe, ts (UTC), open, high, low, close, volume,
    vwap?, trade_count?, provider, feed, adjustment

Every adapter returns exactly these columns in this order, ``ts`` as
``datetime64[ns, UTC]``, prices as float64 (market data may be double
precision), volume as float64 (fractional shares exist in some feeds),
``trade_count`` as nullable Int64. ``feed`` is ``iex``/``sip`` for Alpaca and
the provider's name otherwise; ``adjustment`` is ``raw``, ``split``,
``dividend`` or ``all``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from omni_tasks.core import inputs
from omni_tasks.core.lazy import lazy_exports

BAR_COLUMNS: Final = (
    "symbol", "timeframe", "ts", "open", "high", "low", "close", "volume",
    "vwap", "trade_count", "provider", "feed", "adjustment",
)
QUOTE_COLUMNS: Final = ("symbol", "ts", "bid", "bid_size", "ask", "ask_size", "source")

ADJUSTMENTS: Final = ("raw", "split", "dividend", "all")
#: The exchange whose sessions daily bars are labelled by.
EXCHANGE_TZ: Final = "America/New_York"
SYMBOL_PATTERN: Final = inputs.SYMBOL_PATTERN


@dataclass(frozen=True)
class Timeframe:
    """A bar size: ``1Min``, ``5Min``, ``15Min``, ``30Min``, ``1Hour``, ``1Day``."""

    code: str
    delta: timedelta

    @property
    def intraday(self) -> bool:
        return self.delta < timedelta(days=1)


TIMEFRAMES: Final[dict[str, Timeframe]] = {
    tf.code: tf
    for tf in (
        Timeframe("1Min", timedelta(minutes=1)),
        Timeframe("5Min", timedelta(minutes=5)),
        Timeframe("15Min", timedelta(minutes=15)),
        Timeframe("30Min", timedelta(minutes=30)),
        Timeframe("1Hour", timedelta(hours=1)),
        Timeframe("1Day", timedelta(days=1)),
    )
}


def parse_timeframe(code: str) -> Timeframe:
    try:
        return TIMEFRAMES[code]
    except KeyError:
        raise ValueError(f"unknown timeframe {code!r}: choose from {', '.join(TIMEFRAMES)}") from None


def check_symbol(symbol: str) -> str:
    """The symbol upper-cased, or ValueError naming it: 1-10 of A-Z, 0-9, '.', '-' starting with a letter."""
    return inputs.symbol(symbol)


#: The frame half of the contract (pandas and pandera) lives in :mod:`omni_tasks.contracts.bar_frames`;
#: its names are served from here on first use (PEP 562), so a process that only names a timeframe or
#: checks a symbol (the watchdog, beat, the CLI) never imports pandas.
_FRAME_NAMES: Final = frozenset({"BarFrame", "empty_bars", "canonical_bars", "split_valid"})

__getattr__ = lazy_exports(__name__, dict.fromkeys(_FRAME_NAMES, "omni_tasks.contracts.bar_frames"))
