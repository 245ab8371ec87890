"""Redis clients from the configured URL (TCP, TLS or unix socket)."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis


def _unix_socket(url: str) -> tuple[str, int] | None:
    """(socket path, db) of kombu's ``redis+socket://PATH?virtual_host=N`` URL; None for any other URL."""
    if not url.startswith("redis+socket://"):
        return None
    path, _, query = url[len("redis+socket://") :].partition("?")
    db = 0
    for part in query.split("&"):
        if part.startswith(("virtual_host=", "db=")):
            db = int(part.split("=", 1)[1] or 0)
    return path, db


def redis_from_url(
    url: str, *, timeout_s: float = 5.0, decode_responses: bool = False, connect_timeout_s: float | None = None
) -> redis.Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or kombu's ``redis+socket://`` URL.

    ``connect_timeout_s`` (default ``timeout_s``): a shorter bound for connecting, for callers that must
    answer quickly when Redis is not there (`omni status`).
    """
    connect = timeout_s if connect_timeout_s is None else connect_timeout_s
    unix = _unix_socket(url)
    if unix is not None:
        return redis.Redis(
            unix_socket_path=unix[0],
            db=unix[1],
            socket_timeout=timeout_s,
            socket_connect_timeout=connect,
            decode_responses=decode_responses,
        )
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=connect, decode_responses=decode_responses)


def async_redis_from_url(url: str, *, timeout_s: float = 5.0) -> aioredis.Redis:
    """The asyncio client for the same URLs as :func:`redis_from_url` (the streaming worker's)."""
    unix = _unix_socket(url)
    if unix is not None:
        return aioredis.Redis(unix_socket_path=unix[0], db=unix[1], socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
