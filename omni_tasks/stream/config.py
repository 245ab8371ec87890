"""What a stream worker is told (:class:`StreamConfig`, built from the settings by
:func:`omni_tasks.stream.wiring.stream_config`) and what it counts (:class:`Counters`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omni_tasks.stream.feeds import CHANNELS


@dataclass
class StreamConfig:
    """What the worker needs from the settings (built by :func:`omni_tasks.stream.wiring.stream_config`)."""

    name: str = "stream"
    symbols: list[str] = field(default_factory=list)
    channels: tuple[str, ...] = CHANNELS
    quote_ttl_s: int = 30
    stale_after_s: float = 10.0
    mute_after_s: float = 15.0
    market_hours: str = "calendar"  # calendar: checks only while XNYS is open; always: a 24-hour feed; never: no checks
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connection_limit_cooldown_s: float = 60.0
    stream_maxlen: int = 100_000
    housekeeping_s: float = 0.25
    # Writes in flight at once (order at Redis does not matter: see StreamWorker._kick). One: since a write costs
    # about 1 ms, a second one in flight halved the quotes per write and so doubled the rows built and written per
    # quote (bench/stream.py in process: 4.4-5.3 us of worker CPU per quote with two, 2.7-4.5 with one) for no
    # latency seen over the websocket (p99 within noise of each other at 50k and 100k quotes/s).
    flushes_in_flight: int = 1
    heartbeat_s: float = 2.0
    lock_fingerprint: str | None = None  # set for feeds that allow one connection per key
    lock_ttl_s: float = 15.0
    shard: int | None = None  # this worker's shard of OMNI_STREAM_KEYS (None: the unsharded worker)


@dataclass
class Counters:
    connects: int = 0
    reconnects: int = 0
    mute_reconnects: int = 0
    connection_limit: int = 0
    flush_errors: int = 0
    stale_resubscribes: int = 0
    provider_errors: int = 0
    control_commands: int = 0
