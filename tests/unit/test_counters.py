"""The shared counters: fields, reading back, and the buffer that keeps what Redis refused."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from omni_tasks.core import counters


class FakeRedis:
    """A hash store with pipelines; ``down`` makes every write fail as a dead server would."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, int]] = {}
        self.down = False

    def hincrby(self, key: str, field: str, by: int) -> int:
        if self.down:
            raise ConnectionError("redis is down")
        bucket = self.hashes.setdefault(key, {})
        bucket[field] = bucket.get(field, 0) + by
        return bucket[field]

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {k.encode(): str(v).encode() for k, v in self.hashes.get(key, {}).items()}

    def pipeline(self, transaction: bool = False) -> Any:
        redis = self
        calls: list[Any] = []

        class Pipe:
            def hincrby(self, *args: Any) -> None:
                calls.append(lambda: redis.hincrby(*args))

            def hgetall(self, key: str) -> None:
                calls.append(lambda: redis.hgetall(key))

            def execute(self) -> list[Any]:
                if redis.down:
                    raise ConnectionError("redis is down")
                return [call() for call in calls]

        return Pipe()


def test_increments_read_back_by_label_values_and_a_wrong_label_count_is_refused() -> None:
    client = FakeRedis()
    assert counters.BREAKER_TRANSITIONS.inc(client, "broker:simulated", "forced:open")
    assert counters.BREAKER_TRANSITIONS.inc(client, "broker:simulated", "forced:open", by=2)
    assert counters.KILL_SWITCH_DRILLS.inc(client, "passed")
    read = counters.read_all(client)
    assert read["omni_breaker_transitions"] == {("broker:simulated", "forced:open"): 3.0}
    assert read["omni_kill_switch_drills"] == {("passed",): 1.0}
    assert read["omni_kill_switch_changes"] == {}
    with pytest.raises(ValueError, match="2 label values expected"):
        counters.BREAKER_TRANSITIONS.inc(client, "only-one")


def test_an_increment_redis_refuses_is_reported_not_raised() -> None:
    client = FakeRedis()
    client.down = True
    assert counters.KILL_SWITCH_CHANGES.inc(client, "engage", "operator") is False


def test_buffered_counts_survive_a_failed_flush_and_are_written_once_redis_answers() -> None:
    client = FakeRedis()
    buffer = counters.Buffered(lambda: client, interval_s=3600)
    for _ in range(3):
        buffer.inc(counters.TASKS_SENT, "omni.orders.submit", "host", "orders")
    client.down = True
    assert buffer.flush() == 0
    client.down = False
    buffer.inc(counters.TASKS_SENT, "omni.orders.submit", "host", "orders")
    assert buffer.flush() == 4
    assert buffer.flush() == 0
    assert counters.read_all(client)["celery_task_sent"] == {("omni.orders.submit", "host", "orders"): 4.0}


def test_a_redis_that_stays_down_is_reported_once_then_once_a_minute_and_its_return_once() -> None:
    client = FakeRedis()
    buffer = counters.Buffered(lambda: client, interval_s=3600)
    client.down = True
    with capture_logs() as logs:
        for _ in range(5):  # five flushes a second apart: one warning, not five
            buffer.inc(counters.TASKS_SENT, "omni.orders.submit", "host", "orders")
            assert buffer.flush() == 0
        buffer._warned_at -= counters.Buffered.WARN_EVERY_S  # a minute later, still down: said again
        assert buffer.flush() == 0
        client.down = False
        assert buffer.flush() == 5
    said = [(log["log_level"], log["event"]) for log in logs]
    assert said == [
        ("warning", "shared counters not flushed (kept for the next try)"),
        ("warning", "shared counters not flushed (kept for the next try)"),
        ("info", "shared counters flushed again"),
    ]


def test_the_collector_exports_each_counter_once_with_its_series() -> None:
    collected = list(counters.collector(lambda: {"omni_breaker_transitions": {("database", "open"): 2.0}}).collect())
    assert [family.name for family in collected] == [c.name for c in counters.ALL]
    transitions = next(f for f in collected if f.name == "omni_breaker_transitions")
    assert [(s.name, s.labels, s.value) for s in transitions.samples] == [
        ("omni_breaker_transitions_total", {"breaker": "database", "to_state": "open"}, 2.0)
    ]
    assert list(counters.collector(lambda: 1 / 0).collect()) == []  # type: ignore[arg-type,return-value]
