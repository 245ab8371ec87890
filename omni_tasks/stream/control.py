"""Remote control of a running stream worker: commands queued in Redis, applied every housekeeping tick.

``omni stream subscribe|unsubscribe|stop`` push JSON commands onto the
worker's control list (:data:`omni_tasks.core.keys.STREAM_CONTROL_KEY`):
``{"cmd": "subscribe", "symbols": [...]}``, ``{"cmd": "unsubscribe", ...}``,
``{"cmd": "stop", "by": "<operator>"}``. At most 20 are taken per tick; an
unreadable or unknown command is noted as the worker's last error and skipped.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Final

from omni_tasks.core.keys import STREAM_CONTROL_KEY

if TYPE_CHECKING:
    from omni_tasks.stream.worker import StreamWorker

log = logging.getLogger(__name__)

COMMANDS_PER_TICK: Final = 20


async def apply_commands(worker: StreamWorker) -> None:
    """Take the queued commands for ``worker`` (by its configured name) and apply them in order."""
    key = STREAM_CONTROL_KEY.format(name=worker.config.name)
    raw = await worker.redis.lpop(key, COMMANDS_PER_TICK)
    for item in raw or []:
        worker.counters.control_commands += 1
        try:
            command = json.loads(item)
            cmd = command["cmd"]
        except (ValueError, KeyError, TypeError):
            worker.set_error(f"unreadable control command {item!r:.80}")
            log.error("stream: %s", worker.last_error)
            continue
        symbols = [s for s in command.get("symbols", []) if isinstance(s, str)]
        if cmd == "subscribe":
            await worker.add_symbols(symbols, why="remote control")
        elif cmd == "unsubscribe":
            await worker.remove_symbols(symbols, why="remote control")
        elif cmd == "stop":
            worker.stop(f"stop by remote control ({command.get('by', 'unknown')})")
        else:
            worker.set_error(f"unknown control command {cmd!r}")
            log.error("stream: %s", worker.last_error)
