"""Is the stream alive? The mute-socket and stale-symbol checks, run every housekeeping tick.

Only while the market is open (:meth:`StreamWorker.market_open`):

- a socket connected but mute (no market data for ``mute_after_s``) is
  closed, and the worker reconnects (not when the provider refused every
  symbol: nothing may flow, and a reconnect gets the same refusal);
- a symbol with no data for ``stale_after_s`` while others have data is
  resubscribed, once per connection (when every symbol is stale, the socket
  is the problem, not the subscriptions).
"""

from __future__ import annotations

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
        streaming = worker.subs.streaming()
        if not streaming:
            return  # nothing subscribed, or every symbol refused (the status says so): silence is expected
        now = time.time_ns()
        last = max(worker.path.last_data_ns, worker.connected_at_ns)
        silent_s = (now - last) / 1e9
        if silent_s > config.mute_after_s:
            worker.counters.mute_reconnects += 1
            worker.close_feed_soon(f"mute socket: connected but no market data for {silent_s:.1f} s while the market is open")
            return
        if silent_s < config.stale_after_s and (now - worker.connected_at_ns) / 1e9 < config.stale_after_s:
            return  # connected too recently for any symbol to be called stale
        stale = worker.path.stale_symbols(streaming, now, config.stale_after_s)
        fresh_since_connect = [s for s in stale if s not in self.stale_resubscribed]
        if fresh_since_connect and len(stale) < len(streaming) and worker.feed is not None:
            self.stale_resubscribed.update(fresh_since_connect)
            worker.counters.stale_resubscribes += 1
            worker.subs.resubscribe(fresh_since_connect)  # sent in order with the other requests (housekeeping pumps)
