"""Redis clients from the configured URL (TCP, TLS or unix socket)."""

from __future__ import annotations

import redis


def redis_from_url(url: str, *, timeout_s: float = 5.0, decode_responses: bool = False) -> redis.Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or kombu's ``redis+socket://`` URL."""
    if url.startswith("redis+socket://"):
        path, _, query = url[len("redis+socket://") :].partition("?")
        db = 0
        for part in query.split("&"):
            if part.startswith(("virtual_host=", "db=")):
                db = int(part.split("=", 1)[1] or 0)
        return redis.Redis(
            unix_socket_path=path,
            db=db,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=decode_responses,
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=decode_responses,
    )


def async_redis_from_url(url: str, *, timeout_s: float = 5.0) -> redis.asyncio.Redis:
    """The asyncio client for the same URLs as :func:`redis_from_url` (the streaming worker's)."""
    import redis.asyncio as aioredis

    if url.startswith("redis+socket://"):
        path, _, query = url[len("redis+socket://") :].partition("?")
        db = 0
        for part in query.split("&"):
            if part.startswith(("virtual_host=", "db=")):
                db = int(part.split("=", 1)[1] or 0)
        return aioredis.Redis(unix_socket_path=path, db=db, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
