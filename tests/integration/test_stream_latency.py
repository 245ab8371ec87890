"""Latency histograms published to a real Redis and read back: figures, buckets and violation deltas."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio

from omni_tasks.core.keys import LATENCY_VIOLATIONS_KEY, STREAM_LATENCY_KEY
from omni_tasks.stream.latency import STAGES, Histogram, StageLatencies, read_published

pytestmark = pytest.mark.services

QUANTILES = (0, 1, 25, 50, 90, 95, 99, 99.9, 100)


def _publish_and_execute(stages: StageLatencies, client: redis.Redis) -> None:
    pipe = client.pipeline(transaction=False)
    stages.publish(pipe)
    pipe.execute()


def test_publish_then_read_published_round_trip_and_violation_deltas(redis_client: redis.Redis) -> None:
    stages = StageLatencies()
    stages["process"].record_many([40_000, 60_000, 900_000, 1_200_000, 3_000_000])  # 2 over the 1 ms budget
    stages["decode"].record_many([2_000, 3_000])
    stages["e2e"].record(2_500_000)

    _publish_and_execute(stages, redis_client)
    published = read_published(redis_client)
    assert set(published) == set(STAGES)
    for stage in STAGES:
        summary = stages[stage].summary()
        assert {k: v for k, v in published[stage].items() if k != "buckets"} == summary
        restored = Histogram.from_sparse(published[stage]["buckets"], max_ns=published[stage]["max_ns"])
        assert [restored.percentile(q) for q in QUANTILES] == [stages[stage].percentile(q) for q in QUANTILES]
    assert published["process"]["over_budget"] == 2
    assert published["flush"]["count"] == 0
    violations = LATENCY_VIOLATIONS_KEY.format(budget="quote_processing")
    assert int(redis_client.get(violations)) == 2
    assert 0 < redis_client.ttl(STREAM_LATENCY_KEY) <= 3600

    # A second publication adds only the violations since the first; the hash is replaced by the new figures.
    _publish_and_execute(stages, redis_client)
    assert int(redis_client.get(violations)) == 2
    stages["process"].record_many([1_000_001, 2_000_000, 10])
    _publish_and_execute(stages, redis_client)
    assert int(redis_client.get(violations)) == 4
    assert read_published(redis_client)["process"]["count"] == 8

    # A second worker publishing adds its own violations to the shared counter.
    other = StageLatencies()
    other["process"].record(7_000_000)
    _publish_and_execute(other, redis_client)
    assert int(redis_client.get(violations)) == 5


def test_publish_works_on_an_asyncio_pipeline(redis_url: str, redis_client: redis.Redis) -> None:
    stages = StageLatencies()
    stages["process"].record_many([500, 2_000_000])

    async def publish() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            pipe = client.pipeline(transaction=False)
            stages.publish(pipe)
            await pipe.execute()
        finally:
            await client.aclose()

    asyncio.run(publish())
    published = read_published(redis_client)
    assert published["process"]["count"] == 2
    assert published["process"]["over_budget"] == 1
    assert int(redis_client.get(LATENCY_VIOLATIONS_KEY.format(budget="quote_processing"))) == 1


def test_read_published_without_a_publication_is_empty_and_skips_unreadable_stages(redis_client: redis.Redis) -> None:
    assert read_published(redis_client) == {}
    redis_client.hset(STREAM_LATENCY_KEY, mapping={"process": "{not json", "decode": '{"count": 1}'})
    assert read_published(redis_client) == {"decode": {"count": 1}}
