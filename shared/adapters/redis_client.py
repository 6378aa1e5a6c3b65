"""Redis clients from a URL; ``memory://`` gives an in-process fakeredis for the embedded mode."""

from __future__ import annotations

import threading
from typing import Any

import redis

REDIS_SOCKET_TIMEOUT_S = 10.0
_FAKE_SERVERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def make_redis(
    url: str,
    *,
    timeout_s: float = REDIS_SOCKET_TIMEOUT_S,
    connect_timeout_s: float = REDIS_SOCKET_TIMEOUT_S,
    retry_on_timeout: bool = True,
) -> Any:
    """A client for ``url``. A caller with a deadline of its own (the producer) passes
    shorter timeouts and no retry on timeout, so one call cannot outlast its bound."""
    if url.startswith("memory://"):
        import fakeredis

        with _LOCK:
            server = _FAKE_SERVERS.setdefault(url, fakeredis.FakeServer())
        return fakeredis.FakeRedis(server=server)
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        health_check_interval=30,
        retry_on_timeout=retry_on_timeout,
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
