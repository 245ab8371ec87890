"""The order-path check of /health on the stream: stale only while the exchange is open (the watchdog's stale_stream rule)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from omni_tasks.ops.health import _stale_stream
from omni_tasks.settings import load_settings

#: A Wednesday at 15:00 UTC (10:00 in New York: open) and the Sunday before (closed).
OPEN = datetime(2026, 11, 18, 15, 0, tzinfo=UTC).timestamp()
CLOSED = datetime(2026, 11, 15, 15, 0, tzinfo=UTC).timestamp()


class _Client:
    def __init__(self, age_s: float, now: float) -> None:
        stamp = str(int((now - age_s) * 1e9)).encode()
        self._status = {b"last_quote_ns": stamp, b"last_msg_ns": stamp}

    def hgetall(self, _key: str) -> dict[bytes, bytes]:
        return self._status


@pytest.mark.parametrize(
    ("now", "age_s", "stale"),
    [(OPEN, 1.0, False), (OPEN, 3600.0, True), (CLOSED, 1.0, False), (CLOSED, 3600.0, False)],
)
def test_stream_is_stale_for_the_order_path_only_when_old_in_market_hours(now: float, age_s: float, stale: bool) -> None:
    reason = _stale_stream(_Client(age_s, now), load_settings({}), now)  # type: ignore[arg-type]
    assert (reason is not None) == stale
    if stale:
        assert reason is not None
        assert reason.startswith("stream stale: market open and the last quote is 3600.0 s old")
