"""Building Alpaca bar requests: pure functions from a BarRequest to the query alpaca-py sends.

The request model is alpaca-py's own ``StockBarsRequest`` (it validates the
feed, adjustment and timeframe and serialises the datetimes as RFC 3339), so
what goes on the wire is what alpaca-py would send. Paging is added here
(``limit`` is the page size on the wire, ``page_token`` the cursor) because
the adapter walks the pages itself, one call at a time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum
from typing import Final

from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from omni_tasks.marketdata.providers.base import BarRequest

#: The frames.TIMEFRAMES codes and alpaca-py's TimeFrame for each (its str() is the same code).
TIMEFRAMES: Final[dict[str, TimeFrame]] = {
    "1Min": TimeFrame(1, TimeFrameUnit.Minute),
    "5Min": TimeFrame(5, TimeFrameUnit.Minute),
    "15Min": TimeFrame(15, TimeFrameUnit.Minute),
    "30Min": TimeFrame(30, TimeFrameUnit.Minute),
    "1Hour": TimeFrame(1, TimeFrameUnit.Hour),
    "1Day": TimeFrame(1, TimeFrameUnit.Day),
}
FEEDS: Final = ("iex", "sip")
ADJUSTMENTS: Final = ("raw", "split", "dividend", "all")
#: Bars per page: Alpaca's maximum (alpaca-py's DATA_V2_MAX_LIMIT).
PAGE_SIZE: Final = 10_000
#: The free plan refuses SIP data newer than this ("subscription does not permit querying recent SIP data").
SIP_RECENT_WINDOW: Final = timedelta(minutes=15)


def stock_bars_request(request: BarRequest, *, feed: str, end: datetime) -> StockBarsRequest:
    """alpaca-py's request for ``request`` on ``feed`` up to ``end`` (UTC).

    ``end`` is passed separately because the adapter may clamp it (recent SIP
    refusal). Raises ValueError for a timeframe, feed or adjustment Alpaca
    does not have.
    """
    try:
        timeframe = TIMEFRAMES[request.timeframe]
    except KeyError:
        raise ValueError(f"Alpaca has no {request.timeframe!r} bars: choose from {', '.join(TIMEFRAMES)}") from None
    if feed not in FEEDS:
        raise ValueError(f"Alpaca has no {feed!r} stock feed here: choose from {', '.join(FEEDS)}")
    if request.adjustment not in ADJUSTMENTS:
        raise ValueError(f"Alpaca has no {request.adjustment!r} adjustment: choose from {', '.join(ADJUSTMENTS)}")
    return StockBarsRequest(
        symbol_or_symbols=request.symbol,
        timeframe=timeframe,
        start=request.start,
        end=end,
        feed=DataFeed(feed),
        adjustment=Adjustment(request.adjustment),
    )


def bars_query(
    request: BarRequest,
    *,
    feed: str,
    end: datetime,
    page_token: str | None = None,
    page_size: int = PAGE_SIZE,
) -> dict[str, str]:
    """The query string of one ``GET /v2/stocks/bars`` page, every value a plain string."""
    fields = stock_bars_request(request, feed=feed, end=end).to_request_fields()
    query = {key: _wire_value(value) for key, value in fields.items()}
    query["limit"] = str(page_size)
    if page_token is not None:
        query["page_token"] = page_token
    return query


def _wire_value(value: object) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)  # TimeFrame's str() is the wire code ("5Min"); datetimes are already RFC 3339 strings


def latest_bar_query(symbol: str, *, feed: str = "iex") -> dict[str, str]:
    """The query of ``GET /v2/stocks/bars/latest`` for one symbol (the probe that tells an unknown symbol from an empty range)."""
    if feed not in FEEDS:
        raise ValueError(f"Alpaca has no {feed!r} stock feed here: choose from {', '.join(FEEDS)}")
    return {"symbols": symbol, "feed": feed}


def sip_recent_limit(now: datetime) -> datetime:
    """The latest end the free plan accepts for SIP data: ``now`` minus 15 minutes, floored to the minute."""
    return (now - SIP_RECENT_WINDOW).replace(second=0, microsecond=0)
