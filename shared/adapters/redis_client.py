"""Redis clients from a URL; ``memory://`` gives an in-process fakeredis for the embedded mode."""

from __future__ import annotations

import threading
from typing import Any

import redis

REDIS_SOCKET_TIMEOUT_S = 10.0
_FAKE_SERVERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def make_redis(url: str) -> Any:
    if url.startswith("memory://"):
        import fakeredis

        with _LOCK:
            server = _FAKE_SERVERS.setdefault(url, fakeredis.FakeServer())
        return fakeredis.FakeRedis(server=server)
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=30,
        retry_on_timeout=True,
    )


def make_async_redis(url: str, *, max_connections: int | None = None) -> Any:
    """An asyncio client for the same URL as :func:`make_redis` (``memory://`` shares the
    in-process fake server): for readers that block on a stream inside an event loop."""
    if url.startswith("memory://"):
        import fakeredis

        with _LOCK:
            server = _FAKE_SERVERS.setdefault(url, fakeredis.FakeServer())
        return fakeredis.FakeAsyncRedis(server=server)
    import redis.asyncio

    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=30,
        max_connections=max_connections,
    )
