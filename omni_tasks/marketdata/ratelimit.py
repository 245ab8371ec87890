"""Per-provider rate limits and daily quotas shared by every worker (in Redis).

A sliding one-minute window per provider: N workers together make at most the
provider's calls per minute. A daily quota (Alpha Vantage meters calls per key
per day) is a counter per UTC date. Both are single Lua scripts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from omni_tasks.marketdata.errors import RateLimited

WINDOW_KEY = "omni:ratelimit:{provider}"
QUOTA_KEY = "omni:quota:{provider}:{day}"

# KEYS[1] zset. ARGV: now, window_s, limit, member. Returns 0 when admitted, else seconds to wait.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', now - window)
local count = redis.call('zcard', KEYS[1])
if count < tonumber(ARGV[3]) then
  redis.call('zadd', KEYS[1], now, ARGV[4])
  redis.call('expire', KEYS[1], math.ceil(window) + 5)
  return '0'
end
local oldest = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + window - now)
"""

# KEYS[1] counter. ARGV: quota. Returns the count after this call, or -1 when exhausted (not counted).
_QUOTA = """
local used = tonumber(redis.call('get', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return -1 end
local n = redis.call('incr', KEYS[1])
redis.call('expire', KEYS[1], 172800)
return n
"""


class RateLimiter:
    """Admit calls to a provider at most ``per_min`` times per minute across all processes."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._clock = clock
        self._sleep = sleep

    def acquire(self, provider: str, per_min: int, *, max_wait_s: float = 10.0) -> float:
        """Wait for a slot; returns seconds waited. Raises RateLimited if it would wait longer than max_wait_s."""
        waited = 0.0
        key = WINDOW_KEY.format(provider=provider)
        while True:
            wait = float(self._client.eval(_ACQUIRE, 1, key, repr(self._clock()), "60", per_min, uuid.uuid4().hex))
            if wait <= 0:
                return waited
            if waited + wait > max_wait_s:
                raise RateLimited(
                    f"{provider}: {per_min} calls/min in use by all workers; next slot in {wait:.1f} s",
                    provider=provider,
                    retry_after_s=wait,
                )
            self._sleep(wait)
            waited += wait

    def charge(self, provider: str, calls: int) -> None:
        """Count calls already made (pages of one request) against the window without waiting."""
        if calls <= 0:
            return
        now = repr(self._clock())
        key = WINDOW_KEY.format(provider=provider)
        pipe = self._client.pipeline(transaction=False)
        pipe.zadd(key, {uuid.uuid4().hex: float(now) for _ in range(calls)})
        pipe.expire(key, 65)
        pipe.execute()

    def take_quota(self, provider: str, quota: int, *, day: str | None = None) -> int:
        """Count one call against today's quota; RateLimited when the quota is used up."""
        day = day or datetime.fromtimestamp(self._clock(), tz=UTC).strftime("%Y-%m-%d")
        used = int(self._client.eval(_QUOTA, 1, QUOTA_KEY.format(provider=provider, day=day), quota))
        if used < 0:
            raise RateLimited(f"{provider}: daily quota of {quota} calls used up for {day} (UTC)", provider=provider)
        return used

    def quota_used(self, provider: str, *, day: str | None = None) -> int:
        day = day or datetime.fromtimestamp(self._clock(), tz=UTC).strftime("%Y-%m-%d")
        return int(self._client.get(QUOTA_KEY.format(provider=provider, day=day)) or 0)
