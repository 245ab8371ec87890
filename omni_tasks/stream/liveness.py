"""Is the stream alive? The mute-socket and stale-symbol checks, run every housekeeping tick.

Only while the market is open (:meth:`StreamWorker.market_open`):

- a socket connected but mute (no market data for ``mute_after_s``) is
  closed, and the worker reconnects;
- a symbol with no data for ``stale_after_s`` while others have data is
  resubscribed, once per connection (when every symbol is stale, the socket
  is the problem, not the subscriptions).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omni_tasks.stream.worker import StreamWorker


class Liveness:
    """One worker's checks; remembers the symbols already resubscribed on this connection."""

    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker
        self.stale_resubscribed: set[str] = set()  # cleared at every connect

    def check(self) -> None:
        worker = self.worker
        config = worker.config
        if not worker.connected or not worker.market_open():
            return
        now = time.time_ns()
        last = max(worker.path.last_data_ns, worker.connected_at_ns)
        silent_s = (now - last) / 1e9
        if silent_s > config.mute_after_s:
            worker.counters.mute_reconnects += 1
            worker.close_feed_soon(f"mute socket: connected but no market data for {silent_s:.1f} s while the market is open")
            return
        if silent_s < config.stale_after_s and (now - worker.connected_at_ns) / 1e9 < config.stale_after_s:
            return  # connected too recently for any symbol to be called stale
        stale = worker.path.stale_symbols(worker.subscribed, now, config.stale_after_s)
        fresh_since_connect = [s for s in stale if s not in self.stale_resubscribed]
        if fresh_since_connect and len(stale) < len(worker.subscribed) and worker.feed is not None:
            self.stale_resubscribed.update(fresh_since_connect)
            worker.counters.stale_resubscribes += 1
            feed = worker.feed
            channels = worker.channels_for(fresh_since_connect)

            async def resubscribe() -> None:
                with contextlib.suppress(Exception):
                    await feed.unsubscribe(channels)
                    await feed.subscribe(channels)

            asyncio.get_running_loop().create_task(resubscribe())
