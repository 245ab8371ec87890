"""Sharded streaming: several Alpaca data keys, one stream worker per key, each with its own slice of the symbols.

Alpaca allows one market-data connection per key, so a desk with more
symbols than one connection should carry runs several keys
(``OMNI_STREAM_KEYS=KEYID:SECRET,KEYID:SECRET``): shard ``i`` uses key ``i``,
holds that key's connection lock (:mod:`omni_tasks.stream.connlock`), and
subscribes to the symbols :func:`shard_of` puts on it. Every shard writes
the same latest-quote keys (a symbol lives on exactly one shard); each
publishes its own status and latency hashes (:func:`status_key`,
:func:`latency_key`), which ``omni status``, ``/metrics``, ``/health`` and the
watchdog read shard by shard.

The split is automatic and stable: a symbol's shard is a SHA-256 of the
symbol modulo the shard count. Not Python's ``hash`` (salted per process:
two hosts would disagree), and not a position in OMNI_STREAM_SYMBOLS (adding
one symbol would move others between connections). The same symbol lands on
the same shard in every process, on every host, for a given number of keys,
with no second list to keep in step with the symbols. The price: small lists
split unevenly (a few hundred symbols and more come out within a few percent).

Without OMNI_STREAM_KEYS nothing changes: one worker, OMNI_ALPACA_API_KEY,
the status in ``omni:stream:status``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from omni_tasks.core.errors import ConfigError
from omni_tasks.core.keys import STREAM_LATENCY_KEY, STREAM_SHARD_LATENCY_KEY, STREAM_SHARD_STATUS_KEY, STREAM_STATUS_KEY

if TYPE_CHECKING:
    from omni_tasks.settings import Settings


@dataclass(frozen=True, repr=False)
class StreamKey:
    """One Alpaca data key of a sharded stream (repr never shows the secret)."""

    key_id: str
    secret: str

    def __repr__(self) -> str:
        return "StreamKey(****)"


def shard_of(symbol: str, shards: int) -> int:
    """The shard (0 .. shards-1) serving ``symbol``: stable across processes, hosts and orderings of the symbol list."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    digest = hashlib.sha256(symbol.upper().encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def split(symbols: list[str], shards: int) -> list[list[str]]:
    """The symbols of each shard (index = shard), each list in the order given, duplicates dropped."""
    out: list[list[str]] = [[] for _ in range(shards)]
    for symbol in dict.fromkeys(symbols):
        out[shard_of(symbol, shards)].append(symbol)
    return out


def stream_keys(settings: Settings) -> list[StreamKey]:
    """The keys of OMNI_STREAM_KEYS (decrypted; [] when unset: the stream is not sharded)."""
    from omni_tasks.settings import check_key_pairs

    value = settings.stream.keys
    if value is None or not value.get_secret_value().strip():
        return []
    try:
        return [StreamKey(key_id, secret) for key_id, secret in check_key_pairs(value.get_secret_value())]
    except ValueError as exc:
        raise ConfigError(f"OMNI_STREAM_KEYS: {exc}") from None


def shard_count(settings: Settings) -> int:
    """How many stream shards are configured (0: one unsharded worker, as without OMNI_STREAM_KEYS)."""
    return len(stream_keys(settings))


def shard_labels(shards: int) -> list[str | None]:
    """The shards a reader looks at: [None] (the unsharded worker) or 0 .. shards-1."""
    return [None] if shards < 1 else [str(i) for i in range(shards)]


def check_shard(settings: Settings, shard: int) -> int:
    """``shard`` when OMNI_STREAM_KEYS has a key for it; a ConfigError otherwise."""
    count = shard_count(settings)
    if count == 0:
        raise ConfigError("--shard needs OMNI_STREAM_KEYS (KEYID:SECRET,KEYID:SECRET: one key per shard)")
    if not 0 <= shard < count:
        raise ConfigError(f"--shard {shard}: OMNI_STREAM_KEYS has {count} key(s): shards 0 to {count - 1}")
    return shard


def worker_name(shard: int | str | None) -> str:
    """The stream worker's name (its remote-control key): ``stream``, or ``stream-<shard>``."""
    return "stream" if shard is None else f"stream-{shard}"


def status_key(shard: int | str | None) -> str:
    return STREAM_STATUS_KEY if shard is None else STREAM_SHARD_STATUS_KEY.format(shard=shard)


def latency_key(shard: int | str | None) -> str:
    return STREAM_LATENCY_KEY if shard is None else STREAM_SHARD_LATENCY_KEY.format(shard=shard)
