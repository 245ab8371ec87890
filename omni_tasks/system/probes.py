"""Plain helpers behind the system probes."""

from __future__ import annotations

import time


def pong(sent_at: float, *, host: str, pid: int) -> dict[str, object]:
    return {"sent_at": sent_at, "answered_at": time.time(), "host": host, "pid": pid}
