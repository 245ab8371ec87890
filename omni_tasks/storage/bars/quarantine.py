"""Quarantine: bar rows that failed their checks, kept in ``rejected_rows`` with the reason and the values as the provider sent them; stored bars deleted by key."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, delete, insert, or_, select, text

from omni_tasks.storage.bars.rows import SERIES_COLUMNS, TEXT_WIDTHS
from omni_tasks.storage.models import Bar, BarDigest, BarSeries, RejectedRow


def quarantine(engine: Engine, rejected: pd.DataFrame, *, partition_id: int | None, stage: str = "ingest") -> int:
    """Keep rows that failed :func:`~omni_tasks.contracts.bars.split_valid` in ``rejected_rows``; returns how many.

    ``rejected`` has a ``reason`` column and whatever else the provider
    sent (it need not be canonical). Each row's original values are kept
    in ``payload`` as JSON (timestamps ISO 8601, missing values null,
    infinities as strings); ``ts`` is NULL when the row has none or it is
    not a timestamp.
    """
    if rejected.empty:
        return 0
    created_at = datetime.now(tz=UTC)
    records = []
    for row in rejected.to_dict(orient="records"):
        payload = {str(k): _json_value(v) for k, v in row.items() if k != "reason"}
        records.append(
            {
                "created_at": created_at,
                "symbol": _text(row.get("symbol"), TEXT_WIDTHS["symbol"]),
                "timeframe": _text(row.get("timeframe"), TEXT_WIDTHS["timeframe"]),
                "ts": _timestamp_or_none(row.get("ts")),
                "provider": _text(row.get("provider"), TEXT_WIDTHS["provider"]),
                "feed": _text(row.get("feed"), TEXT_WIDTHS["feed"]),
                "reason": _text(row.get("reason"), None) or "no reason given",
                "payload": payload,
                "partition_id": partition_id,
                "stage": stage,
            }
        )
    with engine.begin() as connection:
        connection.execute(insert(RejectedRow), records)
    return len(records)


def _text(value: Any, width: int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return ""
    text = str(value)
    return text[:width] if width is not None else text


def _timestamp_or_none(value: Any) -> datetime | None:
    """A UTC datetime from a timestamp-like cell (naive taken as UTC, as frames.canonical_bars does), else None."""
    if not isinstance(value, datetime | np.datetime64 | str) or value is pd.NaT:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    if stamp is pd.NaT or pd.isna(stamp):
        return None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def _json_value(value: Any) -> Any:
    """A JSON-safe copy of one cell: timestamps ISO 8601, missing values null, non-finite floats as strings."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, bool | int | str):
        return value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def delete_bars(engine: Engine, keys: pd.DataFrame) -> int:
    """Delete the stored bars with these keys (symbol, timeframe, ts, feed, adjustment); how many were deleted.

    Rows without a symbol or ts are skipped. The digests of the series touched
    are forgotten in the same transaction (so a re-run writes those bars
    again); on PostgreSQL the series are locked as the bar store's writes lock
    them, and the ``bars_forget_digests`` trigger is told this write keeps the
    digests itself.
    """
    keyed = keys.dropna(subset=["symbol", "ts"])
    if keyed.empty:
        return 0
    by_series: dict[tuple[str, ...], list[datetime]] = {}
    for row in keyed.itertuples(index=False):
        key = tuple(str(getattr(row, name)) for name in SERIES_COLUMNS)
        by_series.setdefault(key, []).append(pd.Timestamp(row.ts).tz_convert("UTC").to_pydatetime())
    deleted = 0
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL omni.bar_digests = 'kept'"))
            connection.execute(text("LOCK TABLE bar_digests IN ROW EXCLUSIVE MODE"))
        series_keys = list(by_series)
        ids: dict[tuple[str, ...], int] = {}
        for first in range(0, len(series_keys), 200):
            chunk = series_keys[first : first + 200]
            statement = select(BarSeries.id, *(getattr(BarSeries, name) for name in SERIES_COLUMNS)).where(
                or_(*(and_(*(getattr(BarSeries, name) == value for name, value in zip(SERIES_COLUMNS, key, strict=True))) for key in chunk))
            )
            ids.update({tuple(row[1:]): int(row[0]) for row in connection.execute(statement)})
        if ids and engine.dialect.name == "postgresql":
            # The locks the bar store's writes take, in the same (id) order.
            connection.execute(
                select(BarSeries.id).where(BarSeries.id.in_(sorted(ids.values()))).order_by(BarSeries.id).with_for_update(key_share=True)
            )
        for key, stamps in by_series.items():
            series_id = ids.get(key)
            if series_id is None:
                continue
            for first in range(0, len(stamps), 500):
                result = connection.execute(delete(Bar).where(Bar.series_id == series_id, Bar.ts.in_(stamps[first : first + 500])))
                deleted += int(result.rowcount or 0)
        if ids:
            connection.execute(delete(BarDigest).where(BarDigest.series_id.in_(sorted(ids.values()))))
    return deleted
