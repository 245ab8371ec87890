"""The stream worker's connection lock: one connection per API key, across processes and hosts.

Alpaca allows one market-data connection per key; a second one is refused
with 406 and may knock the first off. So before it connects, a worker takes a
Redis lock named after the key's fingerprint (never the key itself), renews
it every housekeeping tick, disconnects the moment it loses it, and lets go
when it stops. The lock is :class:`omni_tasks.core.lock.AsyncRedisLock`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any

from omni_tasks.core.keys import STREAM_CONNLOCK_KEY
from omni_tasks.core.lock import AsyncRedisLock

log = logging.getLogger(__name__)


def key_fingerprint(api_key: str) -> str:
    """A stable, non-reversible name for an API key (the lock key must not reveal the key)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class ConnectionLock:
    """The lock for one key fingerprint; with no fingerprint (a feed without the limit) it is always held."""

    def __init__(self, redis: Any, fingerprint: str | None, *, token: str, ttl_s: float) -> None:
        self.lock = (
            None if fingerprint is None else AsyncRedisLock(redis, STREAM_CONNLOCK_KEY.format(fingerprint=fingerprint), token, ttl_s)
        )
        self.held = fingerprint is None
        self.other_holder = ""  # who held it at the last refused attempt

    async def acquire(self) -> bool:
        """True when this worker holds the lock (now or already); False: wait (Redis down, or ``other_holder`` has it)."""
        self.other_holder = ""
        if self.lock is None:
            return True
        try:
            if await self.lock.acquire():
                self.held = True
                return True
            holder = await self.lock.holder()
        except Exception as exc:  # noqa: BLE001 - without Redis the lock cannot be proven free: do not connect
            log.warning("stream: cannot take the connection lock (%s); waiting", exc)
            return False
        if holder == self.lock.token:
            self.held = True
            return True
        self.other_holder = str(holder)
        return False

    async def renew(self) -> bool:
        """Renew a held lock. False only when it was held and is now lost (the caller disconnects)."""
        if self.lock is None or not self.held:
            return True
        if await self.lock.renew():
            return True
        self.held = False
        log.error("stream: lost the connection lock for this API key; disconnecting")
        return False

    async def release(self) -> None:
        if self.lock is None:
            return
        with contextlib.suppress(Exception):
            await self.lock.release()
        self.held = False
