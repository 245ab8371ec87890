"""Redis commands of several owners sent in one pipelined round trip, each owner handed its own reply.

Why: the order path ends with writes of different rooms right after one another (the
venue's book after its commit, both breakers' outcomes); each alone is a round trip
and, in redis-py, about 0.1-0.2 ms of CPU. An owner queues its command with what to do
with the reply; whoever holds the batch sends it once, at the point the first of them
would have been sent. A failure to send reaches every owner as its reply (an
exception), exactly as a failed command of a pipeline run with ``raise_on_error=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

Queue = Callable[[Any], None]
OnReply = Callable[[Any], None]


class RedisBatch:
    """Queued commands for one client; :meth:`flush` sends them (one round trip) and hands each reply back. Not thread-safe."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._queued: list[tuple[Queue, OnReply]] = []

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, queue: Queue, on_reply: OnReply) -> None:
        """``queue(pipe)`` queues exactly one command on the pipeline; ``on_reply`` gets its reply (or the exception)."""
        self._queued.append((queue, on_reply))

    def flush(self) -> None:
        """Send what is queued (nothing to do when empty); every owner gets its reply, even when sending failed."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        pipe = self.client.pipeline(transaction=False)
        for queue, _ in queued:
            queue(pipe)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            replies = [exc] * len(queued)
        for (_, on_reply), reply in zip(queued, replies, strict=True):
            on_reply(reply)
