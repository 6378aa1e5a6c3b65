"""Run the API with uvicorn: one process with an app object, or N worker processes that
each build the app from the ``CREDITS_*`` environment."""

from __future__ import annotations

import os
from typing import Any

from shared.config import Settings

APP_FACTORY = "entrypoints.api.app:create_app"
# Open event streams would hold a shutdown forever: give them this long, then close.
GRACEFUL_SHUTDOWN_S = 5


def uvicorn_options(host: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "proxy_headers": True,  # X-Forwarded-Proto from the proxies uvicorn trusts
        "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        **extra,
    }


def serve(settings: Settings, host: str, port: int, *, workers: int = 1, **extra: Any) -> None:
    import uvicorn

    if workers == 1:
        from entrypoints.api.app import create_app

        uvicorn.run(create_app(settings), **uvicorn_options(host, port, **extra))
        return
    # Worker processes read their settings from the environment, as every process does.
    os.environ["CREDITS_DATABASE_URL"] = settings.database_url
    uvicorn.run(APP_FACTORY, factory=True, workers=workers, **uvicorn_options(host, port, **extra))


def server(settings: Settings, host: str, port: int, app: Any = None, **extra: Any):
    """A uvicorn Server to run in this process (the demo), not yet started."""
    import uvicorn

    from entrypoints.api.app import create_app

    config = uvicorn.Config(app or create_app(settings), **uvicorn_options(host, port, **extra))
    return uvicorn.Server(config)
