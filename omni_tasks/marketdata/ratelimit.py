"""Per-provider rate limits and daily quotas shared by every worker (in Redis).

A sliding window per provider (one minute unless ``window_s`` says otherwise:
tests scale it down): N workers together make at most the provider's calls per
window. A refusal says when the next slot opens (``RateLimited.retry_after_s``),
so a partition can be re-scheduled for then instead of failing. A daily quota
(Alpha Vantage meters calls per key per day) is a counter per UTC date; once it
is spent (counted here; the provider said so about two different symbols; or it
kept saying so about one symbol while serving no other), no call is made until 00:00 UTC (:class:`QuotaExhausted`, with the wait).
Both are single Lua scripts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from omni_tasks.core.keys import QUOTA_KEY, QUOTA_REFUSED_KEY, QUOTA_SERVED_KEY, RATELIMIT_WINDOW_KEY
from omni_tasks.marketdata.errors import QuotaExhausted, RateLimited

#: Symbols the provider answered "daily quota spent" about today (one symbol alone does not spend the quota).
#: Distinct symbols refused with the daily-quota wording before the quota counts as spent.
QUOTA_REFUSED_SYMBOLS = 2

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
        window_s: float = 60.0,
    ) -> None:
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self.window_s = float(window_s)

    def acquire(self, provider: str, per_min: int, *, max_wait_s: float = 10.0) -> float:
        """Wait for a slot; returns seconds waited. Raises RateLimited if it would wait longer than max_wait_s."""
        waited = 0.0
        key = RATELIMIT_WINDOW_KEY.format(provider=provider)
        while True:
            wait = float(self._client.eval(_ACQUIRE, 1, key, repr(self._clock()), repr(self.window_s), per_min, uuid.uuid4().hex))
            if wait <= 0:
                return waited
            if waited + wait > max_wait_s:
                raise RateLimited(
                    f"{provider}: {per_min} calls/{'min' if self.window_s == 60 else f'{self.window_s:g} s'} in use by all workers; "
                    f"next slot in {wait:.1f} s",
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
        key = RATELIMIT_WINDOW_KEY.format(provider=provider)
        pipe = self._client.pipeline(transaction=False)
        pipe.zadd(key, {uuid.uuid4().hex: float(now) for _ in range(calls)})
        pipe.expire(key, int(self.window_s) + 5)
        pipe.execute()

    def take_quota(self, provider: str, quota: int, *, day: str | None = None) -> int:
        """Count one call against today's quota; QuotaExhausted (with the wait until 00:00 UTC) when it is used up."""
        day = day or self._day()
        used = int(self._client.eval(_QUOTA, 1, QUOTA_KEY.format(provider=provider, day=day), quota))
        if used < 0:
            raise self._spent(provider, quota, day)
        return used

    def check_quota(self, provider: str, quota: int) -> None:
        """QuotaExhausted when today's quota is already spent (no slot of the window is taken then)."""
        day = self._day()
        if self.quota_used(provider, day=day) >= quota:
            raise self._spent(provider, quota, day)

    def quota_refused(self, provider: str, quota: int, symbol: str) -> bool:
        """The provider said its daily quota is spent, answering about ``symbol``. True when that now counts as spent.

        One symbol answering so may be that symbol's own refusal; a second symbol
        refused the same day spends the quota until 00:00 UTC.
        """
        day = self._day()
        key = QUOTA_REFUSED_KEY.format(provider=provider, day=day)
        pipe = self._client.pipeline(transaction=True)
        pipe.sadd(key, symbol)
        pipe.expire(key, 172800)
        pipe.scard(key)
        refused = int(pipe.execute()[-1])
        if refused < QUOTA_REFUSED_SYMBOLS:
            return False
        self.spend(provider, quota)
        return True

    def spend(self, provider: str, quota: int) -> None:
        """Count today's quota as used up: no call to ``provider`` until 00:00 UTC."""
        self._client.set(QUOTA_KEY.format(provider=provider, day=self._day()), quota, ex=172800)

    def note_served(self, provider: str, symbol: str) -> None:
        """The provider answered a data call for ``symbol`` (evidence that its daily quota was not spent then)."""
        key = QUOTA_SERVED_KEY.format(provider=provider)
        pipe = self._client.pipeline(transaction=False)
        pipe.zadd(key, {symbol: self._clock()})
        pipe.zremrangebyscore(key, "-inf", self._clock() - 172800)
        pipe.expire(key, 172800)
        pipe.execute()

    def served_other_since(self, provider: str, symbol: str, since: float) -> bool:
        """Whether the provider answered a data call for a symbol other than ``symbol`` at or after ``since`` (clock seconds)."""
        members = self._client.zrangebyscore(QUOTA_SERVED_KEY.format(provider=provider), since, "+inf")
        return any((m.decode() if isinstance(m, bytes) else str(m)) != symbol for m in members)

    def now(self) -> float:
        """The limiter's clock (wall seconds; tests set their own)."""
        return self._clock()

    def seconds_to_reset(self) -> float:
        """Seconds until one second past the next UTC midnight, when daily quotas reset.

        The second's margin keeps a deferred call (and the ``resume_at`` shown for it, stamped a moment
        later on another clock) on the new day, never a fraction of a second before the reset.
        """
        now = self._clock()
        return 86400.0 - (now % 86400.0) + 1.0

    def _day(self) -> str:
        return datetime.fromtimestamp(self._clock(), tz=UTC).strftime("%Y-%m-%d")

    def _spent(self, provider: str, quota: int, day: str) -> QuotaExhausted:
        wait = self.seconds_to_reset()
        return QuotaExhausted(
            f"{provider}: daily quota of {quota} calls used up for {day} (UTC); resets at 00:00 UTC, in {wait / 60:.0f} min",
            provider=provider,
            retry_after_s=wait,
        )

    def quota_used(self, provider: str, *, day: str | None = None) -> int:
        day = day or datetime.fromtimestamp(self._clock(), tz=UTC).strftime("%Y-%m-%d")
        return int(self._client.get(QUOTA_KEY.format(provider=provider, day=day)) or 0)
