"""From the settings to a running streaming worker: the feed, the config, the clients."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omni_tasks.core.errors import ConfigError
from omni_tasks.settings import Settings
from omni_tasks.stream.config import StreamConfig
from omni_tasks.stream.connlock import key_fingerprint
from omni_tasks.stream.feeds import AlpacaFeed, Feed, SyntheticFeed
from omni_tasks.stream.recording import ReplayFeed
from omni_tasks.stream.shards import check_shard, split, stream_keys, worker_name


def stream_url(settings: Settings) -> str:
    """OMNI_STREAM_URL, else Alpaca's market-data stream for the configured feed (iex or sip)."""
    return settings.stream.url or f"{settings.alpaca.stream_url.rstrip('/')}/v2/{settings.alpaca.feed}"


def alpaca_credentials(settings: Settings, shard: int | None = None) -> tuple[str, str] | None:
    """(key id, secret) of the unsharded worker (OMNI_ALPACA_API_KEY) or of one shard (its OMNI_STREAM_KEYS entry); None: no key."""
    if shard is not None:
        key = stream_keys(settings)[check_shard(settings, shard)]
        return key.key_id, key.secret
    key_id, secret = settings.alpaca.api_key, settings.alpaca.secret_key
    if key_id is None or secret is None:
        return None
    return key_id.get_secret_value(), secret.get_secret_value()


def feed_factory(
    settings: Settings,
    *,
    feed: str | None = None,
    replay_file: Path | None = None,
    speed: float | None = None,
    shard: int | None = None,
) -> Callable[[], Feed]:
    """A callable making a fresh feed per connection attempt (``feed`` overrides OMNI_STREAM_FEED; ``shard``: that shard's key)."""
    kind = feed or settings.stream.feed
    if kind == "synthetic":
        rate = settings.stream.synthetic_rate
        every_s, for_s = settings.stream.synthetic_halt_every_s, settings.stream.synthetic_halt_for_s
        return lambda: SyntheticFeed(rate=rate, halt_every_s=every_s, halt_for_s=for_s)
    if kind == "replay":
        path = replay_file or (Path(settings.stream.replay_file) if settings.stream.replay_file else None)
        if path is None:
            raise ConfigError("OMNI_STREAM_REPLAY_FILE: the replay feed needs a recording (or pass --replay FILE)")
        if not path.exists():
            raise ConfigError(f"OMNI_STREAM_REPLAY_FILE: no such recording {path}")
        replay_speed = settings.stream.replay_speed if speed is None else speed
        return lambda: ReplayFeed(path, speed=replay_speed)
    if kind == "alpaca":
        credentials = alpaca_credentials(settings, shard)
        if credentials is None:
            raise ConfigError("OMNI_ALPACA_API_KEY / OMNI_ALPACA_SECRET_KEY: the alpaca stream feed needs both")
        key, secret = credentials
        url = stream_url(settings)
        if settings.stream.client == "alpaca-py":
            from omni_tasks.stream.sdk_feed import AlpacaSdkFeed

            return lambda: AlpacaSdkFeed(url, key, secret)
        return lambda: AlpacaFeed(url, key, secret)
    raise ConfigError(f"OMNI_STREAM_FEED: unknown feed {kind!r} (synthetic, replay, alpaca)")


def stream_config(
    settings: Settings, *, feed: str | None = None, symbols: list[str] | None = None, name: str = "stream", shard: int | None = None
) -> StreamConfig:
    """The worker's config; with ``shard``: that shard's name, key fingerprint and symbols (its slice of ``symbols`` or OMNI_STREAM_SYMBOLS)."""
    s = settings.stream
    kind = feed or s.feed
    fingerprint = None
    credentials = alpaca_credentials(settings, shard) if kind == "alpaca" or shard is not None else None
    if kind == "alpaca" and credentials is not None:
        fingerprint = key_fingerprint(credentials[0])
    chosen = list(symbols if symbols is not None else s.symbols)
    if shard is not None:
        chosen = split(chosen, len(stream_keys(settings)))[shard]
        name = worker_name(shard)
    return StreamConfig(
        name=name,
        shard=shard,
        symbols=chosen,
        channels=tuple(s.channels),
        quote_ttl_s=s.quote_ttl_s,
        stale_after_s=s.stale_after_s,
        mute_after_s=s.mute_after_s,
        # The synthetic feed never sleeps; a replay's silences are the recording's, not a mute socket.
        market_hours=s.market_hours if kind == "alpaca" else ("always" if kind == "synthetic" else "never"),
        reconnect_min_s=s.reconnect_min_s,
        reconnect_max_s=s.reconnect_max_s,
        connection_limit_cooldown_s=s.connection_limit_cooldown_s,
        stream_maxlen=s.stream_maxlen,
        heartbeat_s=settings.broker.heartbeat_s,
        lock_fingerprint=fingerprint,
    )
