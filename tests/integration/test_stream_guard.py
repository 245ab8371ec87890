"""The stream's day-loss guard on real Redis: marks the published book at served mids, alarms once past the limit."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from omni_tasks.contracts.portfolio import publish_book
from omni_tasks.contracts.venue import VenueAccountView, VenuePosition
from omni_tasks.core.keys import ALARM_CHANNEL, ALARM_LOG_KEY
from omni_tasks.safety.alarms import ALARM_LOG_MAX
from omni_tasks.stream import wire
from omni_tasks.stream.config import StreamConfig
from omni_tasks.stream.feeds import FeedClosed
from omni_tasks.stream.guard import LossGuard
from omni_tasks.stream.worker import StreamWorker

pytestmark = pytest.mark.services


class QueueFeed:
    name = "test"
    answers_subscriptions = False  # no subscription message answers a request (stream/subscriptions.py)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.subscribed: list[str] = []

    async def connect(self) -> None:
        return None

    async def subscribe(self, channels: dict[str, list[str]]) -> None:
        self.subscribed.extend(channels.get("quotes", []))

    async def unsubscribe(self, channels: dict[str, list[str]]) -> None:
        return None

    async def recv(self) -> bytes:
        frame = await self.queue.get()
        if frame == b"":
            raise FeedClosed("closed")
        return frame

    async def close(self) -> None:
        self.queue.put_nowait(b"")


def _publish(client: redis.Redis, *, qty: str = "100", avg: str = "100", cash: str = "90000", day_start: str = "100000") -> None:
    account = VenueAccountView(
        cash=Decimal(cash), equity=Decimal(day_start), day_start_equity=Decimal(day_start), peak_equity=Decimal(day_start)
    )
    assert publish_book(client, "simulated", account, [VenuePosition(symbol="AAPL", qty=Decimal(qty), avg_price=Decimal(avg))])


def test_the_guard_alarms_once_past_the_limit_re_arms_after_recovery_and_stays_quiet_when_halted(
    redis_url: str, redis_client: redis.Redis
) -> None:
    _publish(redis_client)  # long 100 AAPL at 100, cash 90,000: equity 100,000 at 100, the day's start
    alarms: list[dict[str, Any]] = []

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        pubsub = client.pubsub()
        await pubsub.subscribe(ALARM_CHANNEL)

        async def publish(alarm: dict[str, Any]) -> None:
            payload = json.dumps(alarm)
            await client.publish(ALARM_CHANNEL, payload)
            await client.lpush(ALARM_LOG_KEY, payload)
            await client.ltrim(ALARM_LOG_KEY, 0, ALARM_LOG_MAX - 1)

        guard = LossGuard(client, max_daily_loss=Decimal(1000), publish=publish)
        feed = QueueFeed()
        flushed_bids: list[float] = []  # AAPL's bid in each flush the guard has seen

        def on_flush(result: Any, path: Any) -> None:
            guard.on_flush(result, path)
            flushed_bids.extend(float(b.bid) for b in result.changed if b.symbol == "AAPL")

        worker = StreamWorker(
            StreamConfig(symbols=["MSFT"], market_hours="never", housekeeping_s=0.05),
            redis=client,
            sync_redis=redis.Redis.from_url(redis_url),
            feed_factory=lambda: feed,
            on_flush=on_flush,
            on_housekeeping=guard.on_housekeeping,
        )
        task = asyncio.create_task(worker.run())

        async def until(predicate: Any, what: str) -> None:
            deadline = time.monotonic() + 10
            while not predicate():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.01)

        def quote(bid: float, ask: float) -> None:
            feed.queue.put_nowait(wire.encode_frame([wire.quote_message("AAPL", time.time_ns(), bid, 100, ask, 100)]))

        async def next_alarm(timeout_s: float) -> dict[str, Any] | None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
            return None if message is None else json.loads(message["data"])

        await until(lambda: guard.book is not None, "the guard to read the book")
        await until(lambda: "AAPL" in worker.subscribed and "AAPL" in feed.subscribed, "the held symbol to be subscribed")
        quote(95.00, 95.02)  # loss 100 x 4.99 = 499: under the limit
        await until(lambda: worker.path.flushes >= 1, "a flush")
        assert await next_alarm(0.3) is None
        quote(89.00, 89.02)  # loss 100 x 10.99 = 1,099 > 1,000
        alarm = await next_alarm(5)
        assert alarm is not None
        assert (alarm["kind"], alarm["severity"], alarm["source"]) == ("daily_loss", "critical", "stream")
        assert alarm["value"] == pytest.approx(1099.0)
        assert alarm["limit"] == 1000.0
        alarms.append(alarm)
        quote(88.00, 88.02)  # deeper, same breach: no second alarm
        assert await next_alarm(0.5) is None
        quote(99.00, 99.02)  # recovered: the guard re-arms
        await until(lambda: 99.0 in flushed_bids, "the guard to see the recovery")
        quote(89.00, 89.02)
        alarms.append(await next_alarm(5))
        assert alarms[-1] is not None
        await client.set("omni:trading:state", "HALTED 7")  # the desk is halted: no alarm needed
        quote(99.00, 99.02)
        await until(lambda: worker.path.trading_state == "HALTED", "the flush to read HALTED")
        quote(80.00, 80.02)
        assert await next_alarm(0.5) is None
        worker.stop("test done")
        await asyncio.wait_for(task, 15)
        await pubsub.aclose()
        await client.aclose()

    asyncio.run(main())
    assert len(alarms) == 2
    assert redis_client.llen(ALARM_LOG_KEY) == 2, "every alarm is also kept in the log the listener catches up from"
    print(f"day-loss alarms: {len(alarms)} for 2 breaches (one repeat and one halted breach raised none)")
