"""A leader lock in Redis with a TTL its holder renews: exactly one beat schedules.

The holder renews well inside the TTL; if it dies, the key expires and a
standby takes over at its next attempt. Renewal checks the token, so a holder
that was paused past its TTL learns it lost the lead instead of stealing it back.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

import redis

from omni_tasks.core.keys import BEAT_LEADER_KEY

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


@dataclass
class LeaderLock:
    client: redis.Redis
    ttl_s: float
    key: str = BEAT_LEADER_KEY
    token: str = ""

    def __post_init__(self) -> None:
        if not self.token:
            self.token = json.dumps(
                {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "id": uuid.uuid4().hex[:8]},
                separators=(",", ":"),
            )
        self.leading = False

    def hold(self) -> bool:
        """Acquire or renew. True while this instance leads; False when standing by or Redis is unreachable."""
        ttl_ms = int(self.ttl_s * 1000)
        try:
            if self.leading:
                self.leading = bool(self.client.eval(_RENEW, 1, self.key, self.token, ttl_ms))
            if not self.leading:
                self.leading = bool(self.client.set(self.key, self.token, nx=True, px=ttl_ms))
        except redis.RedisError:
            # Cannot prove we lead: stop scheduling rather than risk two leaders.
            self.leading = False
        return self.leading

    def release(self) -> None:
        try:
            self.client.eval(_RELEASE, 1, self.key, self.token)
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
