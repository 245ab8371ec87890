"""One Redis lock with a TTL its holder renews, over a blocking or an asyncio client.

A holder takes the key with ``SET NX PX`` and a token only it knows; renewal
and release check the token in one Lua script, so a holder that was paused
past its TTL learns it lost the lock instead of stealing it back or deleting
the new holder's key. If a holder dies, the key expires and another takes it
at its next attempt.

Two users: the beat's leader lock (:class:`LeaderLock`: exactly one beat
schedules) and the stream worker's one-connection-per-API-key lock
(:class:`AsyncRedisLock`, in :mod:`omni_tasks.stream.connlock`).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import redis

from omni_tasks.core.keys import BEAT_LEADER_KEY

RENEW_LUA: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_LUA: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def identity_token() -> str:
    """A token that also says who holds the lock: host, pid, since (epoch s) and a random id."""
    return json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "id": uuid.uuid4().hex[:8]},
        separators=(",", ":"),
    )


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _Lease:
    client: Any
    key: str
    token: str
    ttl_s: float

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)


class RedisLock(_Lease):
    """The lock over a blocking client. Redis errors propagate: the caller decides what an unprovable lock means."""

    def acquire(self) -> bool:
        """Take the key if nobody holds it."""
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def holder(self) -> str | None:
        """The token of whoever holds the key (None: nobody)."""
        return _text(self.client.get(self.key))

    def renew(self) -> bool:
        """Extend the TTL if this token still holds the key; False: the lock was lost."""
        return bool(self.client.eval(RENEW_LUA, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        """Delete the key if this token still holds it."""
        self.client.eval(RELEASE_LUA, 1, self.key, self.token)


class AsyncRedisLock(_Lease):
    """The same lock over an asyncio client (``redis.asyncio``): the same scripts, awaited."""

    async def acquire(self) -> bool:
        return bool(await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def holder(self) -> str | None:
        return _text(await self.client.get(self.key))

    async def renew(self) -> bool:
        return bool(await self.client.eval(RENEW_LUA, 1, self.key, self.token, self.ttl_ms))

    async def release(self) -> None:
        await self.client.eval(RELEASE_LUA, 1, self.key, self.token)


class LeaderLock:
    """The beat's leader lock: :meth:`hold` acquires or renews, so exactly one beat schedules."""

    def __init__(self, client: redis.Redis, ttl_s: float, key: str = BEAT_LEADER_KEY, token: str = "") -> None:
        self.lock = RedisLock(client, key, token or identity_token(), ttl_s)
        self.leading = False

    @property
    def key(self) -> str:
        return self.lock.key

    @property
    def token(self) -> str:
        return self.lock.token

    @property
    def ttl_s(self) -> float:
        return self.lock.ttl_s

    def hold(self) -> bool:
        """Acquire or renew. True while this instance leads; False when standing by or Redis is unreachable."""
        try:
            if self.leading:
                self.leading = self.lock.renew()
            if not self.leading:
                self.leading = self.lock.acquire()
        except redis.RedisError:
            # Cannot prove we lead: stop scheduling rather than risk two leaders.
            self.leading = False
        return self.leading

    def release(self) -> None:
        try:
            self.lock.release()
        except redis.RedisError:
            pass
        self.leading = False


def current_leader(client: redis.Redis, key: str = BEAT_LEADER_KEY) -> dict[str, object] | None:
    """The leader's identity and remaining TTL, or None when nobody leads."""
    pipe = client.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    raw, ttl_ms = pipe.execute()
    if raw is None:
        return None
    data: dict[str, object] = json.loads(raw)
    data["ttl_s"] = max(0, int(ttl_ms)) / 1000
    return data
