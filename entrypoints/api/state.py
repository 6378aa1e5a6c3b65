"""What one API process holds: settings, the database, the producer client, the event
reader, and the Team page's cookie signer. Built once, at start-up, so a missing setting
fails there and not on the first request."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from itsdangerous import URLSafeTimedSerializer

from shared.adapters.redis_client import make_async_redis
from shared.client import NO_SIGNING_KEY, CreditsClient
from shared.config import Settings
from shared.db import Database
from shared.errors import ConfigurationError

# Request threads (anyio's default limiter is 40) wait for a connection past this pool.
DB_POOL_SIZE = 10
DB_MAX_OVERFLOW = 10
DB_POOL_TIMEOUT_S = 10


def session_secret(settings: Settings) -> str:
    """CREDITS_API_SESSION_SECRET, or a key derived from the job signing key with its own
    label, so the session key is not the signing key and every API process agrees."""
    if settings.api_session_secret is not None:
        return settings.api_session_secret.get_secret_value()
    signing = settings.signing_key()
    if signing is None:
        raise ConfigurationError(NO_SIGNING_KEY)
    return hmac.new(signing[1].encode(), b"credits-api-session-v1", hashlib.sha256).hexdigest()


@dataclass
class Resources:
    settings: Settings
    db: Database
    client: CreditsClient
    events_redis: Any
    sessions: URLSafeTimedSerializer
    open_streams: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> Resources:
        client = CreditsClient(settings=settings)  # refuses to start without a signing key
        db = Database(settings.database_url, **_pool_options(settings))
        redis = make_async_redis(settings.redis_url, max_connections=settings.api_max_event_streams
                                 + 10)  # fmt: skip
        sessions = URLSafeTimedSerializer(session_secret(settings), salt="credits-team-session")
        return cls(settings, db, client, redis, sessions)

    async def close(self) -> None:
        self.client.close()
        self.db.dispose()
        await self.events_redis.aclose()


def _pool_options(settings: Settings) -> dict[str, Any]:
    if settings.is_sqlite:
        return {}
    return {"pool_size": DB_POOL_SIZE, "max_overflow": DB_MAX_OVERFLOW,
            "pool_timeout": DB_POOL_TIMEOUT_S}  # fmt: skip


async def resources(request: Request) -> Resources:
    return request.app.state.resources
