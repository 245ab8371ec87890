"""The streaming worker's status in Redis: what it publishes, and how `omni status`, /health and the watchdog read it.

One hash for the unsharded worker, one per shard when OMNI_STREAM_KEYS runs several (:mod:`omni_tasks.stream.shards`).

Kept free of heavy imports: the health server reads it on every request.
"""

from __future__ import annotations

import json
from typing import Any, Final

from omni_tasks.stream.shards import status_key

_JSON_FIELDS: Final = ("symbols", "stale_symbols", "refused", "counts", "kinds", "channels", "counters")
_INT_FIELDS: Final = (
    "connected", "last_msg_ns", "last_quote_ns", "frames", "flushes", "garbage_frames", "updated_ns", "market_open",
    "last_error_ns", "recovered_ns",
)  # fmt: skip


def read_status(client: Any, shard: int | str | None = None) -> dict[str, Any]:
    """The stream worker's (or one shard's) last published status ({} when none), JSON fields decoded."""
    raw = client.hgetall(status_key(shard))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        text = value.decode() if isinstance(value, bytes) else value
        if name in _JSON_FIELDS:
            try:
                out[name] = json.loads(text)
            except ValueError:
                out[name] = text
        elif name in _INT_FIELDS:
            out[name] = int(text) if text.lstrip("-").isdigit() else 0
        else:
            out[name] = text
    return out


def read_shard_statuses(client: Any, shards: int) -> dict[str, dict[str, Any]]:
    """Each configured shard's status by shard ("0", "1", ...; {} for a shard that has not reported for 300 s)."""
    return {str(shard): read_status(client, shard) for shard in range(shards)}
