"""RateLimiter on real Redis: one sliding minute shared by every process, and a daily quota per UTC date.

Time is an injected clock; ``sleep`` advances it, so nothing here waits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import redis

from omni_tasks.core.keys import QUOTA_KEY, RATELIMIT_WINDOW_KEY
from omni_tasks.marketdata.errors import RateLimited
from omni_tasks.marketdata.ratelimit import RateLimiter
from tests.conftest import REPO_ROOT, wait_for

pytestmark = pytest.mark.services

T0 = datetime(2025, 6, 16, 23, 59, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(redis_client: redis.Redis, clock: Clock) -> RateLimiter:
    return RateLimiter(redis_client, clock=clock, sleep=clock.sleep)


# ---- the one-minute window ---------------------------------------------------------------------


def test_ratelimit_admits_per_min_calls_then_refuses_without_waiting_past_max_wait(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(5):
        assert limiter.acquire("alpaca", 5, max_wait_s=0.0) == 0.0
    with pytest.raises(RateLimited, match="alpaca: 5 calls/min in use by all workers; next slot in 60.0 s") as info:
        limiter.acquire("alpaca", 5, max_wait_s=0.0)
    assert info.value.provider == "alpaca"
    assert info.value.retry_after_s == pytest.approx(60.0)
    assert clock.slept == []


def test_ratelimit_refusal_takes_no_slot(limiter: RateLimiter, redis_client: redis.Redis) -> None:
    limiter.acquire("alpaca", 2, max_wait_s=0.0)
    limiter.acquire("alpaca", 2, max_wait_s=0.0)
    for _ in range(5):
        with pytest.raises(RateLimited):
            limiter.acquire("alpaca", 2, max_wait_s=0.0)
    assert redis_client.zcard(RATELIMIT_WINDOW_KEY.format(provider="alpaca")) == 2


def test_ratelimit_raises_when_the_wait_would_exceed_max_wait(limiter: RateLimiter, clock: Clock) -> None:
    limiter.acquire("yahoo", 1, max_wait_s=10.0)
    clock.now += 45.0
    with pytest.raises(RateLimited) as info:
        limiter.acquire("yahoo", 1, max_wait_s=10.0)  # next slot in 15 s
    assert info.value.retry_after_s == pytest.approx(15.0)
    assert clock.slept == [], "it refuses up front instead of sleeping first"


def test_ratelimit_waits_for_the_oldest_call_to_leave_the_window(limiter: RateLimiter, clock: Clock) -> None:
    limiter.acquire("alpaca", 2)
    clock.now += 20.0
    limiter.acquire("alpaca", 2)
    clock.now += 10.0
    waited = limiter.acquire("alpaca", 2, max_wait_s=60.0)  # the first call leaves the window at T0+60
    assert waited == pytest.approx(30.0)
    assert clock.slept == [pytest.approx(30.0)]
    assert clock.now == pytest.approx(T0 + 60.0)


def test_ratelimit_window_slides_rather_than_resetting_each_minute(limiter: RateLimiter, clock: Clock) -> None:
    limiter.acquire("alpaca", 2, max_wait_s=0.0)  # t=0
    clock.now += 30.0
    limiter.acquire("alpaca", 2, max_wait_s=0.0)  # t=30
    clock.now += 31.0  # t=61: the t=0 call has left, the t=30 call has not
    assert limiter.acquire("alpaca", 2, max_wait_s=0.0) == 0.0
    with pytest.raises(RateLimited) as info:
        limiter.acquire("alpaca", 2, max_wait_s=0.0)
    assert info.value.retry_after_s == pytest.approx(29.0)


def test_ratelimit_providers_have_separate_windows(limiter: RateLimiter) -> None:
    limiter.acquire("alpaca", 1, max_wait_s=0.0)
    assert limiter.acquire("yahoo", 1, max_wait_s=0.0) == 0.0
    with pytest.raises(RateLimited, match="alpaca"):
        limiter.acquire("alpaca", 1, max_wait_s=0.0)


def test_ratelimit_window_key_expires_so_idle_providers_leave_nothing_behind(limiter: RateLimiter, redis_client: redis.Redis) -> None:
    limiter.acquire("alpaca", 5)
    ttl = redis_client.ttl(RATELIMIT_WINDOW_KEY.format(provider="alpaca"))
    assert 0 < ttl <= 65


def test_ratelimit_steady_demand_never_exceeds_the_limit_in_any_minute(limiter: RateLimiter, clock: Clock) -> None:
    admitted: list[float] = []
    for _ in range(60):
        limiter.acquire("alpha_vantage", 7, max_wait_s=120.0)
        admitted.append(clock.now)
        clock.now += 1.5
    for i, start in enumerate(admitted):
        in_window = [t for t in admitted[i:] if t < start + 60.0]
        assert len(in_window) <= 7
    assert admitted[-1] - admitted[0] >= 60.0 * (60 // 7) - 1e-6, "it waited rather than refusing"


_CHILD = """
import json, sys, redis
from omni_tasks.marketdata.errors import RateLimited
from omni_tasks.marketdata.ratelimit import RateLimiter
url, attempts, limit, now = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
client = redis.Redis.from_url(url)
client.incr("ratelimit-test:ready")
client.blpop(["ratelimit-test:go"], timeout=30)  # start together
limiter = RateLimiter(client, clock=lambda: now)
admitted = refused = 0
for _ in range(attempts):
    try:
        limiter.acquire("shared", limit, max_wait_s=0.0)
        admitted += 1
    except RateLimited:
        refused += 1
print(json.dumps({"admitted": admitted, "refused": refused}))
"""


def test_ratelimit_two_processes_together_never_exceed_the_per_minute_limit(redis_client: redis.Redis, redis_url: str) -> None:
    limit, attempts = 150, 200
    now = str(T0)
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD, redis_url, str(attempts), str(limit), now], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        for _ in range(2)
    ]
    try:
        wait_for(lambda: int(redis_client.get("ratelimit-test:ready") or 0) == 2, 30.0, message="both processes ready")
        redis_client.rpush("ratelimit-test:go", "go", "go")
        outputs = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    results = []
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    admitted = sum(r["admitted"] for r in results)
    split = " + ".join(str(r["admitted"]) for r in results)
    print(f"admitted in one window by 2 processes: {admitted} ({split}) of {2 * attempts} attempts (limit {limit})")
    assert admitted == limit
    assert sum(r["refused"] for r in results) == 2 * attempts - limit
    assert redis_client.zcard(RATELIMIT_WINDOW_KEY.format(provider="shared")) == limit


# ---- the daily quota -----------------------------------------------------------------------------------


def test_ratelimit_daily_quota_counts_and_refuses_when_used_up(limiter: RateLimiter) -> None:
    assert [limiter.take_quota("alpha_vantage", 3) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(RateLimited, match="alpha_vantage: daily quota of 3 calls used up for 2025-06-16 \\(UTC\\)") as info:
        limiter.take_quota("alpha_vantage", 3)
    assert info.value.provider == "alpha_vantage"
    assert limiter.quota_used("alpha_vantage") == 3, "a refused call is not counted"


def test_ratelimit_daily_quota_is_separate_per_utc_day(limiter: RateLimiter, clock: Clock) -> None:
    limiter.take_quota("alpha_vantage", 2)
    limiter.take_quota("alpha_vantage", 2)
    with pytest.raises(RateLimited, match="2025-06-16"):
        limiter.take_quota("alpha_vantage", 2)
    clock.now += 61.0  # 00:00:01 UTC on the 17th
    assert limiter.take_quota("alpha_vantage", 2) == 1
    assert limiter.quota_used("alpha_vantage") == 1
    assert limiter.quota_used("alpha_vantage", day="2025-06-16") == 2


def test_ratelimit_daily_quota_explicit_day_and_separate_providers(limiter: RateLimiter, redis_client: redis.Redis) -> None:
    assert limiter.take_quota("alpha_vantage", 1, day="2025-01-02") == 1
    assert limiter.take_quota("alpha_vantage", 1, day="2025-01-03") == 1
    assert limiter.take_quota("yahoo", 1, day="2025-01-02") == 1
    with pytest.raises(RateLimited):
        limiter.take_quota("alpha_vantage", 1, day="2025-01-02")
    ttl = redis_client.ttl(QUOTA_KEY.format(provider="alpha_vantage", day="2025-01-02"))
    assert 86_400 < ttl <= 172_800, "counters expire after two days"
