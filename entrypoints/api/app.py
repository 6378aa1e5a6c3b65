"""The FastAPI application: the ``/v1`` API, the Team page, the OpenAPI document.

``create_app(settings)`` builds an app; nothing happens at import. Its resources (the
database, the producer client, the event reader) are made when the server starts, so a
missing setting (CREDITS_JOB_SIGNING_KEY) stops ``credits serve`` at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.datastructures import MutableHeaders

from entrypoints.api import events, jobs, money, problems, team
from entrypoints.api.auth import ResourcesDep
from entrypoints.api.problems import Problem
from entrypoints.api.state import Resources
from shared.config import Settings, get_settings

STATIC = Path(__file__).with_name("static")
# The Team page loads only its own files; nothing may frame it.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
DESCRIPTION = """\
Credits over HTTP: who am I, the account tree, allocations, top-ups, history, jobs and a
stream of job outcomes.

**Authentication**: `Authorization: Bearer <token>`; support makes tokens with
`credits tokens create --member ID`. A token acts as its member, with the member's role.

**Errors** are RFC 9457 problem details (`application/problem+json`) whose `code` is the
CLI's error code. Not enough credits is **409** with code `InsufficientCredits`.

**Idempotency**: `POST /v1/allocations` and `POST /v1/topups` need an `Idempotency-Key`
header. A job's `job_id` is its idempotency key.
"""


def _version() -> str:
    try:
        return version("credits-worker")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.resources = Resources.build(settings)
        try:
            yield
        finally:
            await app.state.resources.close()

    app = FastAPI(
        title="Credits API", version=_version(), description=DESCRIPTION, lifespan=lifespan,
        docs_url="/docs", redoc_url=None,
    )  # fmt: skip
    problems.install(app)
    for router in (money.router, jobs.router, events.router, team.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _extra_routes(app)
    app.add_middleware(SecurityHeaders)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


class SecurityHeaders:
    """Headers for every answer, as plain ASGI: no per-request task, and streams (SSE) pass
    through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        page, api = path.startswith("/team"), path.startswith("/v1")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if page:
                    headers["Content-Security-Policy"] = PAGE_CSP
                    headers["X-Frame-Options"] = "DENY"
                if page or api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _extra_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/team", status_code=303)

    @app.get("/healthz", summary="Liveness and database check", tags=["ops"])
    def healthz(res: ResourcesDep) -> dict[str, bool]:
        with res.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"ok": True}

    @app.get("/problems", summary="Every problem type the API answers with", tags=["ops"])
    def problem_types() -> list[dict[str, Any]]:
        return problems.catalogue()

    @app.get("/problems/{code}", summary="One problem type", tags=["ops"],
             responses=problems.responses(404))  # fmt: skip
    def problem_type(code: str) -> dict[str, Any]:
        for found in problems.catalogue():
            if found["code"] == code:
                return found
        from shared.errors import NotFound

        raise NotFound("problem type", code)


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)  # fmt: skip
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        job_request, job_defs = jobs.job_schema()
        components.update(job_defs)
        components["JobRequest"] = job_request | {
            "description": "A send action. member_id comes from the token; job_id (the "
            "idempotency key) is made when omitted; source defaults to 'instant'."
        }
        components["Problem"] = Problem.model_json_schema()
        # The handler takes a plain object and validates it as the CLI does (same messages);
        # the document shows the real shape.
        schema["paths"]["/v1/jobs"]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}
            },
        }
        app.openapi_schema = schema
    return app.openapi_schema
